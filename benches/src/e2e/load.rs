//! Load for `bench-e2e`: a UDP frame generator on a packet socket in the client namespace,
//! per-pod delivery counters and CPU accounting.
//!
//! The generator writes complete Ethernet/IPv4/UDP frames (correct IPv4 and UDP checksums,
//! 60 bytes, what a wire delivers) with `sendmmsg` on an `AF_PACKET` socket bound to the
//! client's `eth0`. For new flows every frame gets its own 5-tuple: source port
//! 1024–61023 and, above that, source addresses from 198.18.0.0/15 (RFC 2544's benchmarking
//! range; nothing needs to route back: the pods do not answer). Flow numbers come from one
//! process-wide counter, so no tuple repeats within a run or across runs (onehop's connection
//! table keeps entries across runs; kernel conntrack is flushed between runs).
//!
//! Delivery is counted at the pods: received packets of each pod's `eth0` (from
//! `/proc/thread-self/net/dev` inside the pod's namespace). A bound UDP socket that never
//! reads absorbs the datagrams (no ICMP port unreachable); a reading server would compete
//! for the 2 CPUs with the path under test.

use std::{
    net::{Ipv4Addr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use onehop_testkit::{MacAddr, Topology, netns::in_netns};

use super::paths::Target;

/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// Frame length (Ethernet minimum without FCS).
pub const FRAME_LEN: usize = 60;
const PORTS_PER_IP: u64 = 60_000;
/// The next flow number of the new-flows workload, shared by both generators.
pub(crate) static NEXT_FLOW: AtomicU64 = AtomicU64::new(0);

/// What to send.
#[derive(Debug, Clone, Copy)]
pub enum Flows {
    /// Every frame a new 5-tuple.
    New,
    /// One 5-tuple per target for the whole run: the client's address and this source port.
    One { sport: u16 },
}

/// Result of one generator run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub frames: u64,
    pub secs: f64,
    /// CPU time of the sending thread. On a veth the receive side runs in the sender's
    /// softirq context (without `CONFIG_IRQ_TIME_ACCOUNTING` it is charged to the thread),
    /// so this holds most of the path's cost and none of other processes' work.
    pub thread_cpu_ns: u64,
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu_ns() -> u64 {
    // SAFETY: timespec is plain old data.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let s = sum as u16;
    !s
}

fn csum_add(sum: u32, data: &[u8]) -> u32 {
    data.chunks(2).fold(sum, |acc, c| {
        acc + (u32::from(c[0]) << 8 | c.get(1).copied().map_or(0, u32::from))
    })
}

/// How far a generator that has sent `sent` frames since `start` is ahead of
/// `rate` frames/s (`None`: not ahead, or unpaced); both generators pace with it.
pub fn ahead_of_rate(sent: u64, rate: Option<u64>, start: Instant) -> Option<Duration> {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let due = Duration::from_secs_f64(sent as f64 / rate? as f64);
    due.checked_sub(start.elapsed()).filter(|a| !a.is_zero())
}

/// One frame `src:sport → dst` from `src_mac` to `dst_mac`.
pub fn udp_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    sport: u16,
    dst: std::net::SocketAddrV4,
) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac.octets());
    f[6..12].copy_from_slice(&src_mac.octets());
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len: u16 = 20 + 8 + 18;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = csum_fold(csum_add(0, ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp_len: u16 = 8 + 18;
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dst.port().to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f[42..60].copy_from_slice(b"onehop-bench-e2e!!");
    let mut sum = csum_add(0, &src.octets());
    sum = csum_add(sum, &dst.ip().octets());
    sum += 17 + u32::from(udp_len);
    sum = csum_add(sum, &f[34..60]);
    let c = match csum_fold(sum) {
        0 => 0xffff,
        c => c,
    };
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

fn flow_source(k: u64) -> (Ipv4Addr, u16) {
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let ip = base + u32::try_from((k / PORTS_PER_IP) % 131_072).unwrap_or(0);
    let port = 1024 + u16::try_from(k % PORTS_PER_IP).unwrap_or(0);
    (Ipv4Addr::from(ip), port)
}

fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    ensure!(
        fd >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ifindex = onehop_testkit::netns::ifindex(ifname)?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    // Protocol 0: the socket receives nothing, it only sends.
    sll.sll_protocol = 0;
    sll.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(20),
        )
    };
    ensure!(
        rc == 0,
        "bind(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // Bypass the qdisc: the generator should cost as little as possible.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int option value.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            4,
        );
    }
    Ok(fd)
}

/// Sends for `duration` from the client of `topo` to `targets` (round robin), at `rate`
/// frames per second (`None`: as fast as possible). Runs on a thread in the client namespace.
pub fn send(
    topo: &Topology,
    targets: &[Target],
    flows: Flows,
    rate: Option<u64>,
    duration: Duration,
) -> Result<Sent> {
    ensure!(!targets.is_empty(), "no targets");
    let client = topo.client();
    let (src_mac, client_ip) = (client.mac(), client.ip());
    let targets = targets.to_vec();
    in_netns(client.ns(), move || -> Result<Sent> {
        let fd = packet_socket("eth0")?;
        let mut frames = vec![[0u8; FRAME_LEN]; BATCH];
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
        let start = Instant::now();
        let cpu0 = thread_cpu_ns();
        let mut sent = 0u64;
        let mut t = 0usize;
        while start.elapsed() < duration {
            if let Some(ahead) = ahead_of_rate(sent, rate, start) {
                std::thread::sleep(ahead.min(Duration::from_millis(5)));
                continue;
            }
            let k0 = match flows {
                Flows::New => NEXT_FLOW.fetch_add(BATCH as u64, Ordering::Relaxed),
                Flows::One { .. } => 0,
            };
            for (i, f) in frames.iter_mut().enumerate() {
                let tgt = targets[t % targets.len()];
                t += 1;
                let (src, sport) = match flows {
                    Flows::New => flow_source(k0 + i as u64),
                    Flows::One { sport } => (client_ip, sport),
                };
                *f = udp_frame(src_mac, tgt.mac, src, sport, tgt.addr);
            }
            iov.clear();
            msgs.clear();
            for f in &mut frames {
                iov.push(libc::iovec {
                    iov_base: f.as_mut_ptr().cast(),
                    iov_len: FRAME_LEN,
                });
            }
            for v in &mut iov {
                // SAFETY: msghdr is plain old data; all-zero is a valid value.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_iov = std::ptr::from_mut(v);
                h.msg_iovlen = 1;
                msgs.push(libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                });
            }
            // SAFETY: msgs/iov/frames outlive the call and describe valid buffers.
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    u32::try_from(BATCH).unwrap_or(1),
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // ENOBUFS: the device queue is full; back off briefly and go on.
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    std::thread::yield_now();
                    continue;
                }
                return Err(e).context("sendmmsg");
            }
            sent += u64::try_from(n).unwrap_or(0);
        }
        Ok(Sent {
            frames: sent,
            secs: start.elapsed().as_secs_f64(),
            thread_cpu_ns: thread_cpu_ns().saturating_sub(cpu0),
        })
    })?
}

/// Received packets of `dev` in the calling thread's namespace.
fn rx_packets_here(dev: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .context("reading /proc/thread-self/net/dev")?;
    for line in text.lines() {
        if let Some((name, rest)) = line.split_once(':')
            && name.trim() == dev
        {
            return rest
                .split_whitespace()
                .nth(1)
                .context("short /proc/net/dev line")?
                .parse()
                .context("rx_packets");
        }
    }
    anyhow::bail!("no {dev} in /proc/net/dev")
}

/// Received packets of every pod's `eth0`, pod by pod (`topo.pods()` order).
pub fn pod_rx(topo: &Topology) -> Result<Vec<u64>> {
    topo.pods()
        .map(|p| in_netns(p.ns(), || rx_packets_here("eth0"))?)
        .collect()
}

/// Packets every pod received since `before` (an earlier [`pod_rx`]), pod by pod.
pub fn pod_rx_since(topo: &Topology, before: &[u64]) -> Result<Vec<u64>> {
    Ok(pod_rx(topo)?
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect())
}

/// Bound, never-read UDP sockets on every pod's `UDP_TARGET_PORT`: the kernel delivers and
/// then drops on a full receive buffer, and never answers with ICMP.
pub fn udp_sinks(topo: &Topology, port: u16) -> Result<Vec<UdpSocket>> {
    topo.pods()
        .map(|p| {
            let addr = p.addr(port);
            in_netns(p.ns(), move || UdpSocket::bind(addr))?
                .with_context(|| format!("binding {addr} in {}", p.name()))
        })
        .collect()
}

/// CPU time (jiffies) from the `cpu` line of `/proc/stat`: (system + irq + softirq, total).
/// All namespaces share one kernel: this is the whole machine, generator included.
pub fn cpu_ticks() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    ensure!(v.len() >= 7, "short cpu line");
    Ok((v[2] + v[5] + v[6], v.iter().take(8).sum()))
}

/// Nanoseconds per jiffy (`USER_HZ`).
pub fn ns_per_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(clippy::cast_precision_loss, reason = "small")]
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    1e9 / hz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_checksums_verify() {
        let f = udp_frame(
            MacAddr([2, 0, 1, 2, 3, 4]),
            MacAddr([2, 0, 5, 6, 7, 8]),
            Ipv4Addr::new(198, 18, 0, 1),
            1234,
            "192.168.50.200:9000".parse().unwrap(),
        );
        assert_eq!(csum_fold(csum_add(0, &f[14..34])), 0, "ip header");
        let mut sum = csum_add(0, &f[26..34]);
        sum += 17 + 26;
        sum = csum_add(sum, &f[34..60]);
        assert_eq!(csum_fold(sum), 0, "udp");
    }

    #[test]
    fn flow_sources_are_distinct() {
        let a: std::collections::HashSet<_> = (0..200_000u64).map(flow_source).collect();
        assert_eq!(a.len(), 200_000);
        assert_eq!(flow_source(0), (Ipv4Addr::new(198, 18, 0, 0), 1024));
        assert_eq!(flow_source(60_000), (Ipv4Addr::new(198, 18, 0, 1), 1024));
    }
}
