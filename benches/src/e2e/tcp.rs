//! Short TCP connections for `bench-e2e`: the TCP half of "new flows per second".
//!
//! One thread in the client namespace keeps a fixed number of non-blocking connects in
//! flight (epoll). A connection counts as completed when the handshake is done (the socket
//! turns writable with `SO_ERROR` 0: the client got the SYN-ACK and sent its ACK); the next
//! connect starts at once, and the completed one is closed [`CLOSE_AFTER`] later, sending
//! nothing, with `SO_LINGER {on, 0}`. Each connection is therefore SYN, SYN-ACK, ACK, RST
//! through the path under test: a new flow in every connection-tracking table along the way,
//! and nothing else.
//!
//! Why the close waits: the client's kernel sends the ACK from the softirq that took the
//! SYN-ACK, on whichever CPU that was, and the RST from this thread's CPU. On veth each goes
//! to its own CPU's backlog, and a RST closed at once can overtake its own ACK: the pod then
//! drops the half-open connection (`TcpExt: EmbryonicRsts`) and never counts the handshake
//! the client counted. The CI machine saw 1% of 50,000 handshakes go that way.
//!
//! Why RST instead of FIN: an orderly close leaves the client's side in `TIME_WAIT` for 60 s.
//! At thousands of connections per second to one VIP:port the client would run out of
//! source ports (64k per destination) within seconds, and the measurement would become one
//! of the client's port allocator. An abortive close frees the port at once, and the pod's
//! socket is gone at once too (no `TIME_WAIT`, no FIN exchange to pay for on either end).
//!
//! Concurrency (default 128): the loop is closed, so with few connections in flight (wrk's 8)
//! the rate measures round trips, not capacity. A round trip here takes 100–500 µs, so 128 in
//! flight could offer far more than the 2 CPUs complete: the path is the bottleneck, not the
//! generator waiting. It stays far below the pods' listen backlog (nginx's 4096), so no
//! handshake is lost to a full accept queue, and the state held in flight is trivial.
//!
//! Counting: at the pods, `Tcp: PassiveOpens` of each pod's namespace (incremented when the
//! final ACK creates the server-side socket: a handshake that really completed at the pod),
//! read from `/proc/thread-self/net/snmp` in the pod's namespace before and after. Something
//! must accept (a full accept queue drops the final ACK): the bench's nginx, or in the test
//! the test kit's HTTP servers, already listen on every pod's HTTP target port.
//! `TcpExt: ListenDrops` of the pods is read the same way: not 0 means a server, not the path,
//! limited the run (the test kit's thread-per-connection HTTP server did, hence nginx).
//! Failures: connects that fail (`SO_ERROR`, e.g. a reset or unreachable) and connects still
//! unanswered after [`CONNECT_TIMEOUT`] (a lost SYN or SYN-ACK; the kernel would retransmit
//! the SYN after its 1 s initial RTO), both closed and replaced by a new connect.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddrV4,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use onehop_testkit::{Topology, netns::in_netns};

use super::{
    load,
    paths::{Installed, Target, World},
};

/// A connect not established after this long counts as a timeout (see the module docs).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a completed connection stays open before its RST (see the module docs): far
/// longer than a backlog takes to drain, far shorter than any timeout on the way.
pub const CLOSE_AFTER: Duration = Duration::from_millis(10);
/// Completed connections waiting for [`CLOSE_AFTER`] at most (the oldest is closed early
/// beyond): a few hundred at the rates of this machine, far below the descriptor limit.
const MAX_WAITING: usize = 1024;

/// Result of one run of the short-connection generator.
#[derive(Debug, Clone, Default)]
pub struct TcpSent {
    /// Handshakes completed (seen by the client).
    pub completed: u64,
    /// Connects that failed with an error, by errno.
    pub errors: BTreeMap<i32, u64>,
    /// Connects without an answer within [`CONNECT_TIMEOUT`].
    pub timeouts: u64,
    /// Connects still in flight when the run ended (neither counted nor failed).
    pub abandoned: u64,
    pub secs: f64,
    /// CPU time of the generator thread (as [`super::load::Sent::thread_cpu_ns`]: on veth
    /// the receive side of every hop runs in the sender's softirq context).
    pub thread_cpu_ns: u64,
}

impl TcpSent {
    /// Failed connects: errors and timeouts.
    pub fn failures(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.timeouts
    }

    /// `errno=count` pairs, e.g. `ECONNREFUSED=3`, for logs.
    pub fn error_text(&self) -> String {
        self.errors
            .iter()
            .map(|(e, n)| format!("{}={n}", std::io::Error::from_raw_os_error(*e)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Starts a non-blocking connect to `dst` with an abortive close set. `Ok(fd)`: in progress
/// (or, rarely, already connected: epoll reports it writable at once); `Err(errno)`: failed
/// immediately.
fn start_connect(dst: SocketAddrV4) -> std::result::Result<OwnedFd, i32> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Close sends RST and frees the port at once (module docs: no TIME_WAIT).
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a linger value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            u32::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8),
        )
    };
    if rc != 0 {
        return Err(last_errno());
    }
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = u16::try_from(libc::AF_INET).unwrap_or(2);
    sa.sin_port = dst.port().to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
    // SAFETY: sa is a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16),
        )
    };
    if rc != 0 {
        let e = last_errno();
        if e != libc::EINPROGRESS {
            return Err(e);
        }
    }
    Ok(fd)
}

fn socket_error(fd: &OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = u32::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: getsockopt into a c_int of the size given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    };
    if rc != 0 { last_errno() } else { err }
}

struct Conn {
    fd: OwnedFd,
    started: Instant,
}

/// Adds `fd` to (or deletes it from) the epoll set `ep`, writable events tagged `slot`.
fn epoll_ctl(ep: &OwnedFd, op: i32, fd: &OwnedFd, slot: u64) -> Result<()> {
    let mut ev = libc::epoll_event {
        events: u32::try_from(libc::EPOLLOUT).unwrap_or(4),
        u64: slot,
    };
    // SAFETY: valid epoll and socket descriptors, a valid event (DEL ignores it).
    let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd.as_raw_fd(), &raw mut ev) };
    ensure!(rc == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    Ok(())
}

/// The epoll loop, in the calling thread's namespace.
fn run_here(targets: &[Target], concurrency: usize, duration: Duration) -> Result<TcpSent> {
    // SAFETY: plain epoll_create1; the fd is owned at once.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    ensure!(
        ep >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: ep is a fresh, valid descriptor that nothing else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut slots: Vec<Option<Conn>> = (0..concurrency).map(|_| None).collect();
    let mut out = TcpSent::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; concurrency.max(1)];
    let mut next_target = 0usize;
    let start = Instant::now();
    let cpu0 = load::thread_cpu_ns();
    let mut last_sweep = start;
    let mut waiting: VecDeque<(Instant, OwnedFd)> = VecDeque::new();
    while start.elapsed() < duration {
        // Refill: every free slot gets a new connect.
        let mut empty = false;
        for (i, slot) in slots.iter_mut().enumerate().filter(|(_, s)| s.is_none()) {
            let dst = targets[next_target % targets.len()].addr;
            next_target += 1;
            match start_connect(dst) {
                Ok(fd) => {
                    epoll_ctl(&ep, libc::EPOLL_CTL_ADD, &fd, i as u64)?;
                    *slot = Some(Conn {
                        fd,
                        started: Instant::now(),
                    });
                }
                Err(e) => {
                    *out.errors.entry(e).or_default() += 1;
                    empty = true;
                }
            }
        }
        // A connect that failed at once leaves its slot free: retry it soon, not at once,
        // so a path that refuses everything does not turn this into a busy loop.
        let wait_ms = if empty { 1 } else { 10 };
        // SAFETY: events has room for the count given.
        let n = unsafe {
            libc::epoll_wait(
                ep.as_raw_fd(),
                events.as_mut_ptr(),
                i32::try_from(events.len()).unwrap_or(i32::MAX),
                wait_ms,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("epoll_wait");
        }
        for ev in &events[..usize::try_from(n).unwrap_or(0)] {
            let Some(conn) = usize::try_from(ev.u64)
                .ok()
                .and_then(|i| slots.get_mut(i))
                .and_then(Option::take)
            else {
                continue;
            };
            match socket_error(&conn.fd) {
                0 => {
                    out.completed += 1;
                    // Out of the epoll set now: its slot number belongs to the next connect.
                    epoll_ctl(&ep, libc::EPOLL_CTL_DEL, &conn.fd, 0)?;
                    waiting.push_back((Instant::now(), conn.fd));
                }
                // Dropping the fd closes it (RST) and removes it from the epoll set.
                e => *out.errors.entry(e).or_default() += 1,
            }
        }
        let now = Instant::now();
        // Dropping an fd closes it (RST).
        while waiting
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= CLOSE_AFTER)
            || waiting.len() > MAX_WAITING
        {
            waiting.pop_front();
        }
        if now.duration_since(last_sweep) >= Duration::from_millis(10) {
            last_sweep = now;
            for slot in &mut slots {
                if slot
                    .as_ref()
                    .is_some_and(|c| now.duration_since(c.started) >= CONNECT_TIMEOUT)
                {
                    out.timeouts += 1;
                    *slot = None;
                }
            }
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    out.thread_cpu_ns = load::thread_cpu_ns().saturating_sub(cpu0);
    out.abandoned = slots.iter().filter(|s| s.is_some()).count() as u64;
    Ok(out)
}

/// Runs short TCP connections from the client of `topo` to `targets` (round robin) for
/// `duration` with `concurrency` connects in flight, on one thread in the client namespace.
pub fn short_connections(
    topo: &Topology,
    targets: &[Target],
    concurrency: usize,
    duration: Duration,
) -> Result<TcpSent> {
    ensure!(!targets.is_empty(), "no targets");
    ensure!(concurrency > 0, "concurrency must be at least 1");
    let targets = targets.to_vec();
    in_netns(topo.client().ns(), move || {
        run_here(&targets, concurrency, duration)
    })?
}

/// A counter of `/proc/net/snmp` or `/proc/net/netstat`: its file, line group and name.
#[derive(Debug, Clone, Copy)]
pub struct Counter {
    file: &'static str,
    group: &'static str,
    name: &'static str,
}

/// Handshakes completed by a listener (the final ACK created the socket).
pub const PASSIVE_OPENS: Counter = Counter {
    file: "snmp",
    group: "Tcp:",
    name: "PassiveOpens",
};
/// SYNs and final ACKs a listener dropped (full accept queue or SYN backlog).
pub const LISTEN_DROPS: Counter = Counter::tcp_ext("ListenDrops");
/// SYNs a `TIME_WAIT` socket of the same 4-tuple rejected because their timestamp was older
/// than the last one it saw (PAWS): the sender retries after its SYN timeout (1 s).
pub const PAWS_TIMEWAIT: Counter = Counter::tcp_ext("PAWSTimewait");
/// Half-open connections a listener dropped on a RST before the final ACK came.
pub const EMBRYONIC_RSTS: Counter = Counter::tcp_ext("EmbryonicRsts");
/// SYNs retransmitted by a connecting socket.
pub const SYN_RETRANS: Counter = Counter::tcp_ext("TCPSynRetrans");

impl Counter {
    /// A `TcpExt:` counter of `/proc/net/netstat`.
    const fn tcp_ext(name: &'static str) -> Self {
        Self {
            file: "netstat",
            group: "TcpExt:",
            name,
        }
    }

    /// Its value in the calling thread's namespace.
    pub fn here(self) -> Result<u64> {
        let path = format!("/proc/thread-self/net/{}", self.file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mut lines = text.lines().filter(|l| l.starts_with(self.group));
        let (names, values) = (
            lines
                .next()
                .with_context(|| format!("no {} header line in {path}", self.group))?,
            lines
                .next()
                .with_context(|| format!("no {} value line in {path}", self.group))?,
        );
        let i = names
            .split_whitespace()
            .position(|n| n == self.name)
            .with_context(|| format!("no {} in {path}", self.name))?;
        values
            .split_whitespace()
            .nth(i)
            .with_context(|| format!("short {} value line in {path}", self.group))?
            .parse()
            .with_context(|| format!("{} in {path}", self.name))
    }

    /// Its value in every pod, pod by pod (`topo.pods()` order).
    pub fn pods(self, topo: &Topology) -> Result<Vec<u64>> {
        topo.pods()
            .map(|p| in_netns(p.ns(), || self.here())?)
            .collect()
    }

    /// Its value in the client's namespace.
    pub fn client(self, topo: &Topology) -> Result<u64> {
        in_netns(topo.client().ns(), || self.here())?
    }
}

/// What the endpoints' TCP stacks counted during a run: where lost handshakes went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Handshakes {
    /// SYNs the pods' `TIME_WAIT` sockets rejected (PAWS).
    pub paws_rejected: u64,
    /// SYNs the client retransmitted.
    pub syn_retrans: u64,
}

impl Handshakes {
    /// Counts from now until `Handshakes::since` is called with the result.
    pub fn start(topo: &Topology) -> Result<Self> {
        Ok(Self {
            paws_rejected: PAWS_TIMEWAIT.pods(topo)?.iter().sum(),
            syn_retrans: SYN_RETRANS.client(topo)?,
        })
    }

    /// The counts since `start`.
    pub fn since(self, topo: &Topology) -> Result<Self> {
        let now = Self::start(topo)?;
        Ok(Self {
            paws_rejected: now.paws_rejected.saturating_sub(self.paws_rejected),
            syn_retrans: now.syn_retrans.saturating_sub(self.syn_retrans),
        })
    }

    /// `runs.log` fields.
    pub fn fields(&self) -> String {
        format!(
            "paws_rejected={} syn_retrans={}",
            self.paws_rejected, self.syn_retrans
        )
    }
}

/// One measured run of short TCP connections.
#[derive(Debug, Clone)]
pub struct TcpMeasured {
    /// Handshakes completed at the pods per second.
    pub pods_per_s: f64,
    /// Per pod (`topo.pods()` order), handshakes completed during the run.
    pub per_pod: Vec<u64>,
    /// Handshakes completed as the client saw them, per second.
    pub client_per_s: f64,
    /// Machine-wide system + irq + softirq ns per connection completed at the pods, less
    /// the same window's share measured idle just before (as for UDP).
    pub cpu_ns: f64,
    /// The generator thread's CPU ns per connection completed at the pods.
    pub thread_ns: f64,
    /// SYNs or final ACKs the pods' listeners dropped (`TcpExt: ListenDrops`): not 0 means
    /// the servers, not the path, limited the run.
    pub listen_drops: u64,
    /// Where lost handshakes went.
    pub handshakes: Handshakes,
    pub sent: TcpSent,
}

/// Measures short TCP connections through `inst` (its HTTP targets: the VIP, or the pods for
/// routing) for `secs`, from empty flow tables as the UDP runs start.
pub fn measure(
    world: &World,
    inst: &Installed,
    concurrency: usize,
    secs: u32,
) -> Result<TcpMeasured> {
    measure_to(world, inst, &inst.http, concurrency, secs)
}

/// [`measure`] to `targets` of `inst` (the remote test service's, for the remote workloads).
pub fn measure_to(
    world: &World,
    inst: &Installed,
    targets: &[Target],
    concurrency: usize,
    secs: u32,
) -> Result<TcpMeasured> {
    inst.forget_flows(world)?;
    let window = Duration::from_secs(secs.into());
    // Other processes' system time meanwhile (see load::cpu_ticks).
    let (i0, _) = load::cpu_ticks()?;
    std::thread::sleep(window);
    let (i1, _) = load::cpu_ticks()?;
    let p0 = PASSIVE_OPENS.pods(&world.topo)?;
    let d0: u64 = LISTEN_DROPS.pods(&world.topo)?.iter().sum();
    let h0 = Handshakes::start(&world.topo)?;
    let (c0, _) = load::cpu_ticks()?;
    let sent = short_connections(&world.topo, targets, concurrency, window)?;
    // The last final ACKs still queued on the way (an overloaded veth XDP ring or backlog
    // drains within this).
    std::thread::sleep(Duration::from_millis(250));
    let (c1, _) = load::cpu_ticks()?;
    let p1 = PASSIVE_OPENS.pods(&world.topo)?;
    let d1: u64 = LISTEN_DROPS.pods(&world.topo)?.iter().sum();
    let handshakes = h0.since(&world.topo)?;
    let per_pod: Vec<u64> = p1
        .iter()
        .zip(&p0)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let at_pods: u64 = per_pod.iter().sum();
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let m = TcpMeasured {
        pods_per_s: at_pods as f64 / sent.secs,
        client_per_s: sent.completed as f64 / sent.secs,
        cpu_ns: (c1 - c0).saturating_sub(i1 - i0) as f64 * load::ns_per_tick()
            / at_pods.max(1) as f64,
        thread_ns: sent.thread_cpu_ns as f64 / at_pods.max(1) as f64,
        listen_drops: d1.saturating_sub(d0),
        handshakes,
        per_pod,
        sent,
    };
    Ok(m)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;

    /// Every counter the bench reads exists under its name on this kernel (a misspelt name
    /// would fail every run).
    #[test]
    fn counters_are_found() {
        for c in [
            PASSIVE_OPENS,
            LISTEN_DROPS,
            PAWS_TIMEWAIT,
            SYN_RETRANS,
            EMBRYONIC_RSTS,
        ] {
            c.here().unwrap_or_else(|e| panic!("{c:?}: {e:#}"));
        }
    }

    /// Every completed handshake the generator counts is one the listener took, though each
    /// connection stays open after its slot took the next connect.
    #[test]
    fn completed_connects_are_the_listeners() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            panic!("v4");
        };
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                let quiet_since = loop {
                    match l.accept() {
                        Ok(_) => n += 1,
                        Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => {
                            break Instant::now();
                        }
                        Err(_) => std::thread::sleep(Duration::from_micros(200)),
                    }
                };
                // Drain what the last connects left in the queue.
                while quiet_since.elapsed() < Duration::from_millis(200) {
                    if l.accept().is_ok() {
                        n += 1;
                    } else {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                n
            })
        };
        let target = Target {
            addr,
            mac: onehop_testkit::MacAddr([0; 6]),
        };
        let r = run_here(&[target], 8, Duration::from_millis(300)).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let accepted = acceptor.join().unwrap();
        assert!(r.completed > 100, "{r:?}");
        assert_eq!(r.failures(), 0, "{r:?}");
        assert_eq!(r.completed, accepted, "{r:?}");
    }

    /// Nothing listens: every connect is refused, none completes, the loop does not spin.
    #[test]
    fn refused_connects_are_failures() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            panic!("v4");
        };
        drop(l);
        let target = Target {
            addr,
            mac: onehop_testkit::MacAddr([0; 6]),
        };
        let r = run_here(&[target], 4, Duration::from_millis(100)).unwrap();
        assert_eq!(r.completed, 0, "{r:?}");
        assert!(
            r.errors.get(&libc::ECONNREFUSED).copied().unwrap_or(0) > 0,
            "{r:?}"
        );
        assert_eq!(r.failures(), r.errors.values().sum::<u64>(), "{r:?}");
    }
}
