//! The benchmark's frames, built by hand with their checksums and padded to
//! the Ethernet minimum of 60 bytes, as they arrive from a wire. Every frame
//! has the same length, so one `bench_restore_only` measurement (which
//! copies `min(len, 128)` bytes twice) is the restore cost of all of them.

pub const FRAME_LEN: usize = 60;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

const ETH_IPV4: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;

fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if let [a, b] = c {
            u16::from_be_bytes([*a, *b])
        } else {
            u16::from(c[0]) << 8
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // Folded to 16 bits by the loop above.
    !u16::try_from(acc).unwrap_or(0xffff)
}

fn pad(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < FRAME_LEN {
        f.resize(FRAME_LEN, 0);
    }
    f
}

/// Ethernet + IPv4 (TTL 64, DF) + 20-byte TCP header, no payload.
pub fn tcp(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1000u32.to_be_bytes());
    let ack: u32 = if flags & TCP_ACK != 0 { 77 } else { 0 };
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags]);
    tcp.extend_from_slice(&64_240u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let c = fold(ones_sum(&tcp, ones_sum(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 40, 0x42, 0x42, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = fold(ones_sum(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&ETH_IPV4.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    pad(f)
}

/// Broadcast ARP request "who has `tpa`, tell `spa`".
pub fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&ETH_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    pad(f)
}
