//! The frame builder is the harness's (`onehop_testrun::frame`, shared with
//! `bench xdp`); the random-frame test's generator lives here.

pub use onehop_testrun::frame::*;

/// Small deterministic PRNG (xorshift64*): random-frame tests print their
/// seed, so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
    pub fn u8(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }
    pub fn u16(&mut self) -> u16 {
        let b = self.next_u64().to_le_bytes();
        u16::from_le_bytes([b[0], b[1]])
    }
    /// Uniform in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("index fits")
    }
    /// Between 0 and `max - 1` random bytes.
    pub fn bytes_upto(&mut self, max: u64) -> Vec<u8> {
        let n = usize::try_from(self.below(max)).expect("length");
        self.bytes(n)
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[usize::try_from(self.below(xs.len() as u64)).expect("index")]
    }
}

/// `f` (Ethernet, then an IP header of `ip_len` bytes) damaged as a bad
/// link or sender would: a bit of the IP header flipped one time in ten, a
/// bit past it one time in ten, the frame cut short (never inside its
/// Ethernet header) one time in ten, up to 19 bytes of trailer one time in
/// twenty.
pub fn damage(rng: &mut Rng, mut f: Vec<u8>, ip_len: usize) -> Vec<u8> {
    if rng.chance(10) {
        let i = 14 + rng.index(ip_len);
        f[i] ^= 1 << rng.below(8);
    }
    let l4 = 14 + ip_len;
    if rng.chance(10) && f.len() > l4 {
        let i = l4 + rng.index(f.len() - l4);
        f[i] ^= 1 << rng.below(8);
    }
    if rng.chance(10) {
        f.truncate(14 + rng.index(f.len() - 14 + 1));
    }
    if rng.chance(5) {
        f.extend_from_slice(&rng.bytes_upto(20));
    }
    f
}
