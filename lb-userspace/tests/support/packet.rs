//! Frame builders. They compute checksums with the test's own one's
//! complement sum; outputs are re-checked with etherparse (see `check`), an
//! independent implementation.

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;

/// One's complement sum of `data` folded to 16 bits (not complemented).
pub fn ones_sum(data: &[u8], mut acc: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        acc += u32::from(w);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).expect("folded to 16 bits")
}

pub fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&u16::try_from(len).expect("L4 length").to_be_bytes());
    u32::from(ones_sum(&p, 0))
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
    },
    /// `zero_csum`: send without a checksum (allowed for UDP over IPv4).
    Udp {
        zero_csum: bool,
    },
    IcmpEcho {
        ty: u8,
        code: u8,
        id: u16,
        seq: u16,
    },
    Other(u8),
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;

/// An Ethernet/IPv4 frame, described field by field.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub id: u16,
    /// Flags (DF/MF) and fragment offset, as on the wire.
    pub frag: u16,
    /// IPv4 options (padded by the caller to a multiple of 4).
    pub options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        Self::new(
            src,
            sport,
            dst,
            dport,
            L4::Tcp {
                flags,
                seq: 1000,
                ack: if flags & ACK != 0 { 77 } else { 0 },
            },
        )
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self::new(src, sport, dst, dport, L4::Udp { zero_csum: false })
    }

    pub fn icmp_echo(src: [u8; 4], dst: [u8; 4]) -> Self {
        Self::new(
            src,
            0,
            dst,
            0,
            L4::IcmpEcho {
                ty: 8,
                code: 0,
                id: 0x1234,
                seq: 7,
            },
        )
    }

    fn new(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, l4: L4) -> Self {
        Self {
            eth_src: [0x02, 0, 0, 0, 0, 0x50],
            eth_dst: [0x02, 0, 0, 0, 0, 0x01],
            src,
            dst,
            sport,
            dport,
            ttl: 64,
            id: 0x4242,
            frag: 0x4000, // DF
            options: Vec::new(),
            l4,
            payload: b"onehop test payload".to_vec(),
        }
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::IcmpEcho { .. } => 1,
            L4::Other(p) => p,
        }
    }

    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.l4 {
            L4::Tcp { flags, seq, ack } => {
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
                l4.extend_from_slice(&self.payload);
                let s = ones_sum(&l4, pseudo_sum(self.src, self.dst, 6, l4.len()));
                l4[16..18].copy_from_slice(&(!s).to_be_bytes());
            }
            L4::Udp { zero_csum } => {
                let len = u16::try_from(8 + self.payload.len()).expect("udp len");
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&self.payload);
                if !zero_csum {
                    let s = !ones_sum(&l4, pseudo_sum(self.src, self.dst, 17, l4.len()));
                    let s = if s == 0 { 0xffff } else { s };
                    l4[6..8].copy_from_slice(&s.to_be_bytes());
                }
            }
            L4::IcmpEcho { ty, code, id, seq } => {
                l4.extend_from_slice(&[ty, code, 0, 0]);
                l4.extend_from_slice(&id.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&self.payload);
                let s = !ones_sum(&l4, 0);
                l4[2..4].copy_from_slice(&s.to_be_bytes());
            }
            L4::Other(_) => l4.extend_from_slice(&self.payload),
        }
        l4
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let ihl = 5 + self.options.len() / 4;
        let tot = u16::try_from(ihl * 4 + l4.len()).expect("tot_len");
        let mut f = Vec::new();
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&ETH_IPV4.to_be_bytes());
        let ip_start = f.len();
        f.push(0x40 | u8::try_from(ihl).expect("ihl"));
        f.push(0);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&self.id.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.push(self.ttl);
        f.push(self.proto());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.options);
        let c = !ones_sum(&f[ip_start..], 0);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&l4);
        f
    }
}

/// Recomputes the IPv4 header checksum of a frame in place (after a test
/// changed a header field on purpose).
pub fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24] = 0;
    f[25] = 0;
    let c = !ones_sum(&f[14..14 + ihl], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

#[derive(Clone, Debug)]
pub struct Arp {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub htype: u16,
    pub ptype: u16,
    pub hlen: u8,
    pub plen: u8,
    pub oper: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

impl Arp {
    pub fn request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Self {
        Self {
            eth_src: sha,
            eth_dst: [0xff; 6],
            htype: 1,
            ptype: 0x0800,
            hlen: 6,
            plen: 4,
            oper: 1,
            sha,
            spa,
            tha: [0; 6],
            tpa,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&ETH_ARP.to_be_bytes());
        f.extend_from_slice(&self.htype.to_be_bytes());
        f.extend_from_slice(&self.ptype.to_be_bytes());
        f.push(self.hlen);
        f.push(self.plen);
        f.extend_from_slice(&self.oper.to_be_bytes());
        f.extend_from_slice(&self.sha);
        f.extend_from_slice(&self.spa);
        f.extend_from_slice(&self.tha);
        f.extend_from_slice(&self.tpa);
        f
    }
}

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
