//! Many long-lived keep-alive HTTP connections through a VIP, each sending a
//! request as soon as the pacing allows after its previous answer, driven by
//! a few threads that each poll their share of the sockets (so 200
//! connections take 4 threads, not 200). Every answer must come from the pod
//! the connection's first request reached; a reset, a close, an answer from
//! another pod or no answer within [`Swarm::REPLY_LIMIT`] breaks the
//! connection (it is not used again). A test marks what is happening with
//! [`Swarm::begin`]: a request is charged to the phase it was sent in, and
//! each phase reports the longest time any of its requests waited for its
//! answer (its stall). Bounded: the threads stop at [`Swarm::finish`], and
//! on their own after [`Swarm::MAX_RUN`].

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use onehop_testkit::{Answer, netns::NsName, netns::in_netns};

/// Why a connection stopped being usable, and when.
#[derive(Debug, Clone)]
pub struct Break {
    pub conn: usize,
    pub pod: String,
    /// The phase it broke in.
    pub phase: String,
    pub why: String,
}

/// What one phase saw.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    /// Requests sent in this phase that were answered.
    pub answered: u64,
    /// The longest of them, send to answer.
    pub longest: Duration,
}

#[derive(Debug)]
pub struct Report {
    pub connections: usize,
    /// Connections per pod (from their first request).
    pub per_pod: BTreeMap<String, usize>,
    pub phases: Vec<Phase>,
    pub broken: Vec<Break>,
}

impl Report {
    /// The phase named `name`.
    #[track_caller]
    pub fn phase(&self, name: &str) -> &Phase {
        self.phases
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no phase {name}: {:?}", self.phases))
    }

    /// One line per phase, for the test's output.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} connections ({:?}), {} broke\n",
            self.connections,
            self.per_pod,
            self.broken.len()
        );
        for p in &self.phases {
            let _ = writeln!(
                out,
                "  {:<32} {:>6} answers, longest stall {:?}",
                p.name, p.answered, p.longest
            );
        }
        out
    }
}

/// State the threads share with the test.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Stop without waiting for the answers in flight (a test that failed).
    abort: AtomicBool,
    /// Index into `names` of the phase requests are charged to now.
    phase: AtomicUsize,
    names: Mutex<Vec<String>>,
    /// Per phase: answers, longest stall in µs.
    answered: Mutex<Vec<(u64, u64)>>,
    broken: Mutex<Vec<Break>>,
    broken_count: AtomicUsize,
    /// [`Swarm::settle`]'s round: a connection counts once it has an
    /// answer to a request sent in this round or later.
    round: AtomicU64,
    settled: AtomicUsize,
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn phase_name(&self, i: usize) -> String {
        Self::lock(&self.names).get(i).cloned().unwrap_or_default()
    }

    fn answered(&self, phase: usize, stall: Duration) {
        let mut a = Self::lock(&self.answered);
        if a.len() <= phase {
            a.resize(phase + 1, (0, 0));
        }
        a[phase].0 += 1;
        let us = u64::try_from(stall.as_micros()).unwrap_or(u64::MAX);
        a[phase].1 = a[phase].1.max(us);
    }

    fn broke(&self, c: &Conn, why: String) {
        let phase = self.phase_name(self.phase.load(Ordering::Relaxed));
        Self::lock(&self.broken).push(Break {
            conn: c.index,
            pod: c.pod.clone(),
            phase,
            why,
        });
        self.broken_count.fetch_add(1, Ordering::Relaxed);
    }
}

struct Conn {
    index: usize,
    stream: TcpStream,
    pod: String,
    buf: Vec<u8>,
    /// (sent at, phase, round) of the request in flight.
    in_flight: Option<(Instant, usize, u64)>,
    next_send: Instant,
    /// The last settle round this connection was counted in.
    settled_round: u64,
    broken: bool,
}

pub struct Swarm {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    per_pod: BTreeMap<String, usize>,
    connections: usize,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";

impl Swarm {
    /// A request unanswered for this long breaks its connection: far beyond
    /// a failover (the Lease duration plus TCP's retransmission backoff),
    /// and what bounds the run when a connection hangs.
    pub const REPLY_LIMIT: Duration = Duration::from_secs(15);
    /// The threads stop on their own after this long.
    pub const MAX_RUN: Duration = Duration::from_mins(3);

    /// Opens `n` connections from `ns` to `addr` (a first request on each
    /// names its pod) and starts `threads` threads driving them in phase
    /// `first`, each connection sending a request at most every `pace`.
    pub fn start<N: NsName + ?Sized>(
        ns: &N,
        addr: SocketAddr,
        n: usize,
        threads: usize,
        pace: Duration,
        first: &str,
    ) -> Result<Self> {
        let conns = in_netns(ns, || {
            (0..n)
                .map(|i| open(i, addr).with_context(|| format!("connection {i} to {addr}")))
                .collect::<Result<Vec<Conn>>>()
        })??;
        let mut per_pod = BTreeMap::new();
        for c in &conns {
            *per_pod.entry(c.pod.clone()).or_default() += 1;
        }
        let shared = Arc::new(Shared::default());
        Shared::lock(&shared.names).push(first.to_owned());
        let mut groups: Vec<Vec<Conn>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
        let len = groups.len();
        for (i, mut c) in conns.into_iter().enumerate() {
            // Spread the first sends over one pacing interval.
            let (at, of) = (u32::try_from(i).unwrap_or(0), u32::try_from(n).unwrap_or(1));
            c.next_send = Instant::now() + pace * at / of.max(1);
            groups[i % len].push(c);
        }
        let workers = groups
            .into_iter()
            .enumerate()
            .map(|(t, group)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("swarm{t}"))
                    .spawn(move || drive(group, &shared, pace))
                    .context("spawning a swarm thread")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shared,
            workers,
            per_pod,
            connections: n,
        })
    }

    /// Connections per pod (from their first request).
    pub fn per_pod(&self) -> &BTreeMap<String, usize> {
        &self.per_pod
    }

    /// Requests sent from now on are charged to phase `name`.
    pub fn begin(&self, name: &str) {
        let mut names = Shared::lock(&self.shared.names);
        names.push(name.to_owned());
        self.shared.phase.store(names.len() - 1, Ordering::Relaxed);
    }

    /// Connections broken so far.
    pub fn broken(&self) -> usize {
        self.shared.broken_count.load(Ordering::Relaxed)
    }

    /// Waits (at most `within`) until every connection has either broken or
    /// had an answer to a request sent after this call: each has come
    /// through whatever happened before. Returns whether all did.
    pub fn settle(&self, within: Duration) -> bool {
        self.shared.settled.store(0, Ordering::Relaxed);
        self.shared.round.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + within;
        loop {
            let done = self.shared.settled.load(Ordering::Relaxed) + self.broken();
            if done >= self.connections {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the threads (each waits for the answers in flight, within
    /// [`Self::REPLY_LIMIT`]) and reports.
    pub fn finish(mut self) -> Report {
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            w.join().expect("a swarm thread panicked");
        }
        let names = Shared::lock(&self.shared.names).clone();
        let answered = Shared::lock(&self.shared.answered).clone();
        let phases = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let (n, us) = answered.get(i).copied().unwrap_or((0, 0));
                Phase {
                    name,
                    answered: n,
                    longest: Duration::from_micros(us),
                }
            })
            .collect();
        Report {
            connections: self.connections,
            per_pod: std::mem::take(&mut self.per_pod),
            phases,
            broken: std::mem::take(&mut *Shared::lock(&self.shared.broken)),
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.shared.abort.store(true, Ordering::Relaxed);
        self.shared.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Connects and sends the first request (blocking, 3 s each), then turns
/// the socket non-blocking for [`drive`].
fn open(index: usize, addr: SocketAddr) -> Result<Conn> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(REQUEST)?;
    let mut buf = Vec::new();
    let answer = loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .context("reading the first answer")?;
        ensure!(n > 0, "closed before the first answer");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(a) = take_answer(&mut buf)? {
            break a;
        }
    };
    stream.set_nonblocking(true)?;
    Ok(Conn {
        index,
        stream,
        pod: answer.pod,
        buf,
        in_flight: None,
        next_send: Instant::now(),
        settled_round: 0,
        broken: false,
    })
}

/// The first complete response in `buf`, removed from it (`None`: not all
/// of it has arrived yet).
fn take_answer(buf: &mut Vec<u8>) -> Result<Option<Answer>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        ensure!(buf.len() < 16 * 1024, "no end of the response head");
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("non-UTF-8 head")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "response {head:?}");
    let len: usize = head
        .split("\r\n")
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .with_context(|| format!("no Content-Length in {head:?}"))?;
    let body_at = end + 4;
    if buf.len() < body_at + len {
        return Ok(None);
    }
    let body = String::from_utf8_lossy(&buf[body_at..body_at + len]).into_owned();
    buf.drain(..body_at + len);
    Answer::parse(&body).map(Some)
}

fn drive(mut conns: Vec<Conn>, shared: &Shared, pace: Duration) {
    let started = Instant::now();
    loop {
        let stopping = shared.stop.load(Ordering::Relaxed) || started.elapsed() > Swarm::MAX_RUN;
        let now = Instant::now();
        if !stopping {
            for c in conns
                .iter_mut()
                .filter(|c| !c.broken && c.in_flight.is_none() && now >= c.next_send)
            {
                let phase = shared.phase.load(Ordering::Relaxed);
                let round = shared.round.load(Ordering::Relaxed);
                match c.stream.write(REQUEST) {
                    Ok(n) if n == REQUEST.len() => c.in_flight = Some((now, phase, round)),
                    // Nothing is in flight, so the socket's buffer is empty
                    // and takes the whole request, unless the connection is gone.
                    Ok(n) => {
                        c.broken = true;
                        shared.broke(c, format!("wrote {n} of {} bytes", REQUEST.len()));
                    }
                    Err(e) => {
                        c.broken = true;
                        shared.broke(c, format!("sending: {e}"));
                    }
                }
            }
        }
        let mut waiting: Vec<usize> = Vec::new();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        for (i, c) in conns.iter().enumerate() {
            if !c.broken && c.in_flight.is_some() {
                waiting.push(i);
                fds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        if stopping && (waiting.is_empty() || shared.abort.load(Ordering::Relaxed)) {
            return;
        }
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        // SAFETY: `fds` is a live array of `fds.len()` pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        if rc < 0 {
            // EINTR: poll again.
            continue;
        }
        let now = Instant::now();
        for (slot, &i) in waiting.iter().enumerate() {
            let c = &mut conns[i];
            if fds[slot].revents != 0 {
                receive(c, shared, pace, now);
            }
            if let Some((sent, _, _)) = c.in_flight
                && !c.broken
                && now.duration_since(sent) > Swarm::REPLY_LIMIT
            {
                c.broken = true;
                shared.broke(c, format!("no answer within {:?}", Swarm::REPLY_LIMIT));
            }
        }
    }
}

/// Reads what arrived on `c` and, once its answer is complete, checks it.
fn receive(c: &mut Conn, shared: &Shared, pace: Duration, now: Instant) {
    let mut chunk = [0u8; 2048];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                c.broken = true;
                shared.broke(c, "closed by the peer".into());
                return;
            }
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                c.broken = true;
                shared.broke(c, format!("receiving: {e}"));
                return;
            }
        }
    }
    let answer = match take_answer(&mut c.buf) {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            c.broken = true;
            shared.broke(c, format!("bad answer: {e:#}"));
            return;
        }
    };
    let Some((sent, phase, round)) = c.in_flight.take() else {
        c.broken = true;
        shared.broke(c, "an answer nobody asked for".into());
        return;
    };
    if answer.pod != c.pod {
        c.broken = true;
        shared.broke(c, format!("answered by {} instead", answer.pod));
        return;
    }
    shared.answered(phase, now.duration_since(sent));
    let current = shared.round.load(Ordering::Relaxed);
    if round == current && c.settled_round < current {
        c.settled_round = current;
        shared.settled.fetch_add(1, Ordering::Relaxed);
    }
    c.next_send = now + pace;
}

/// A new connection from `ns` to `addr` with one request, from source
/// address `from` (bound, so one client can speak from several addresses):
/// the pod that answered and the client address it saw.
pub fn one_shot_from<N: NsName + ?Sized>(
    ns: &N,
    from: std::net::Ipv4Addr,
    addr: SocketAddr,
) -> Result<Answer> {
    use socket2::{Domain, Socket, Type};
    in_netns(ns, || -> Result<Answer> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&SocketAddr::new(from.into(), 0).into())
            .with_context(|| format!("binding {from}"))?;
        s.connect_timeout(&addr.into(), Duration::from_secs(3))
            .with_context(|| format!("connecting from {from} to {addr}"))?;
        let mut stream: TcpStream = s.into();
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).context("reading the answer")?;
            if n == 0 {
                bail!("closed before the answer");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(a) = take_answer(&mut buf)? {
                return Ok(a);
            }
        }
    })?
}
