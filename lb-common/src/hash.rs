//! The flow hash: the kernel indexes Maglev tables with it, and userspace
//! uses the same function to predict where a flow goes (tests, simulator).
//! `MurmurHash3` (`x86_32`) over 12 bytes, fixed seed: cheap in BPF (no loops,
//! no tables) and well mixed in every output bit, which Maglev's
//! `hash % prime` needs.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
const SEED: u32 = 0x6f6e_6568; // "oneh"

#[expect(
    clippy::inline_always,
    reason = "BPF hot path: must be inlined into the program"
)]
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[expect(
    clippy::inline_always,
    reason = "BPF hot path: must be inlined into the program"
)]
#[inline(always)]
const fn finish(h: u32, len: u32) -> u32 {
    let mut h = h ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow: addresses in wire order, ports in host order.
#[expect(
    clippy::inline_always,
    reason = "BPF hot path: must be inlined into the program"
)]
#[inline(always)]
pub const fn flow_hash(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = mix(SEED, u32::from_be_bytes(src));
    h = mix(h, u32::from_be_bytes(dst));
    h = mix(
        h,
        ((sport as u32) << 16 | dport as u32) ^ ((proto as u32) << 8),
    );
    finish(h, 12)
}

/// Hash used for `sessionAffinity: ClientIP`: only the client address, so all
/// of a client's flows pick the same backend even before the affinity
/// entry exists.
#[expect(
    clippy::inline_always,
    reason = "BPF hot path: must be inlined into the program"
)]
#[inline(always)]
pub const fn client_hash(client: [u8; 4]) -> u32 {
    finish(mix(SEED, u32::from_be_bytes(client)), 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_vector() {
        // MurmurHash3_x86_32 of the 4 bytes 0x00,0x00,0x00,0x00 with seed 0
        // is 0x2362f9de (reference implementation); check our mixer and
        // finaliser against it.
        assert_eq!(finish(mix(0, 0), 4), 0x2362_f9de);
    }

    #[test]
    fn ports_and_protocol_change_the_hash() {
        let a = flow_hash([10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, 6);
        assert_ne!(a, flow_hash([10, 0, 0, 1], [10, 0, 0, 2], 1001, 80, 6));
        assert_ne!(a, flow_hash([10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, 17));
        assert_ne!(a, flow_hash([10, 0, 0, 1], [10, 0, 0, 3], 1000, 80, 6));
        assert_eq!(a, flow_hash([10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, 6));
    }
}
