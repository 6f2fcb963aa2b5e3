//! Pod-side servers: tiny HTTP/1.1 and UDP responders that say who answered and whom they
//! saw, so a test can check both where the load balancer sent a flow and whether the client's
//! source address survived the trip.
//!
//! Both bind their socket inside the pod namespace (via [`in_netns`]) and then serve on
//! ordinary threads: a socket stays in the namespace it was created in. Both stop when their
//! handle drops: a shared flag, checked at least every [`POLL`].

use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    http::Framed,
    netns::{NsName, in_netns},
};

/// How often blocked server loops look at their stop flag (and so the worst-case latency of
/// dropping a server handle).
pub const POLL: Duration = Duration::from_millis(100);
/// A keep-alive connection idle for this long is closed by the server.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What both servers answer: `pod=<pod name> client=<peer ip>:<peer port>\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The answering pod's logical name.
    pub pod: String,
    /// The peer address the pod's socket saw (the client's, unless something translated it).
    pub client: SocketAddr,
}

impl Answer {
    /// The wire line, newline included.
    pub fn line(pod: &str, client: SocketAddr) -> String {
        format!("pod={pod} client={client}\n")
    }

    /// Parses the first line of `text`.
    pub fn parse(text: &str) -> Result<Self> {
        let line = text.lines().next().unwrap_or_default();
        let mut pod = None;
        let mut client = None;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("pod=") {
                pod = Some(v.to_owned());
            } else if let Some(v) = field.strip_prefix("client=") {
                client = Some(
                    v.parse()
                        .with_context(|| format!("bad client in {line:?}"))?,
                );
            }
        }
        Ok(Self {
            pod: pod.with_context(|| format!("no pod= in {line:?}"))?,
            client: client.with_context(|| format!("no client= in {line:?}"))?,
        })
    }
}

/// Counters a server keeps (shared with its threads).
#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
}

/// Waits until `fd` is readable or `timeout` passes; a poll error counts as readable so the
/// caller's next syscall reports it.
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd on the stack.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    rc != 0
}

/// An HTTP/1.1 server in a pod. Every request (any method, any path) gets
/// `200 OK` with the [`Answer`] line as body. Keep-alive is the default (HTTP/1.1);
/// `Connection: close` is honoured. Stops when dropped.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `bind` inside `ns` and serves as `pod`.
    pub fn start<N: NsName + ?Sized>(ns: &N, pod: &str, bind: SocketAddr) -> Result<Self> {
        let listener = in_netns(ns, || TcpListener::bind(bind))?
            .with_context(|| format!("binding {bind} in netns {}", ns.ns_name()))?;
        // Non-blocking so a connection reset between poll and accept cannot wedge the loop.
        listener
            .set_nonblocking(true)
            .context("listener non-blocking")?;
        let addr = listener.local_addr().context("listener address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let (pod, stop2, stats2) = (pod.to_owned(), stop.clone(), stats.clone());
        let thread = thread::Builder::new()
            .name(format!("http:{pod}"))
            .spawn(move || accept_loop(&listener, &pod, &stop2, &stats2))
            .context("spawning the HTTP accept thread")?;
        Ok(Self {
            addr,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

fn accept_loop(listener: &TcpListener, pod: &str, stop: &Arc<AtomicBool>, stats: &Arc<Stats>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(listener.as_raw_fd(), POLL) {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let (pod, stop, stats) = (pod.to_owned(), stop.clone(), stats.clone());
                match thread::Builder::new()
                    .name(format!("http-conn:{pod}"))
                    .spawn(move || {
                        if let Err(e) = serve_conn(stream, peer, &pod, &stop, &stats) {
                            tracing::debug!(%pod, %peer, error = %format!("{e:#}"), "connection ended");
                        }
                    }) {
                    Ok(h) => conns.push(h),
                    Err(e) => tracing::warn!(error = %e, "cannot spawn a connection thread"),
                }
                conns.retain(|h| !h.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    for h in conns {
        h.join().ok();
    }
}

fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    pod: &str,
    stop: &AtomicBool,
    stats: &Stats,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    let mut conn = Framed::new(stream);
    let body = Answer::line(pod, peer);
    loop {
        // Idle time counts from the end of the previous response.
        let since = Instant::now();
        let mut keep_waiting = || !stop.load(Ordering::Relaxed) && since.elapsed() < IDLE_TIMEOUT;
        let Some(head) = conn.read_head(&mut keep_waiting)? else {
            return Ok(());
        };
        let len = head.content_length()?.unwrap_or(0);
        conn.read_body(len, &mut keep_waiting)?;
        let http10 = head.start.ends_with("HTTP/1.0");
        let close = head.connection_has("close") || (http10 && !head.connection_has("keep-alive"));
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" },
        );
        // Counted before the write: once a client holds the response, the count includes it.
        stats.requests.fetch_add(1, Ordering::Relaxed);
        conn.stream
            .write_all(reply.as_bytes())
            .context("writing response")?;
        if close {
            return Ok(());
        }
    }
}

/// A UDP responder in a pod: each datagram gets one reply, the [`Answer`] line followed by
/// the datagram's own payload (so a client can match replies to requests). Stops when dropped.
#[derive(Debug)]
pub struct UdpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    /// Binds `bind` inside `ns` and serves as `pod`.
    pub fn start<N: NsName + ?Sized>(ns: &N, pod: &str, bind: SocketAddr) -> Result<Self> {
        let sock = in_netns(ns, || UdpSocket::bind(bind))?
            .with_context(|| format!("binding udp {bind} in netns {}", ns.ns_name()))?;
        sock.set_read_timeout(Some(POLL))
            .context("udp read timeout")?;
        let addr = sock.local_addr().context("udp address")?;
        ensure!(addr.port() != 0, "udp bound to port 0");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let (pod, stop2, stats2) = (pod.to_owned(), stop.clone(), stats.clone());
        let thread = thread::Builder::new()
            .name(format!("udp:{pod}"))
            .spawn(move || udp_loop(&sock, &pod, &stop2, &stats2))
            .context("spawning the UDP thread")?;
        Ok(Self {
            addr,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams answered so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

fn udp_loop(sock: &UdpSocket, pod: &str, stop: &AtomicBool, stats: &Stats) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let mut reply = Answer::line(pod, peer).into_bytes();
                reply.extend_from_slice(&buf[..n]);
                // Counted before the send, as for HTTP.
                stats.requests.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = sock.send_to(&reply, peer) {
                    tracing::debug!(%pod, %peer, error = %e, "udp reply failed");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::debug!(%pod, error = %e, "udp recv failed");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_round_trips() {
        let a = Answer {
            pod: "node1-pod2".into(),
            client: "192.168.50.2:40000".parse().expect("addr"),
        };
        assert_eq!(
            Answer::parse(&Answer::line(&a.pod, a.client)).expect("parses"),
            a
        );
        assert!(Answer::parse("pod=x").is_err());
        assert!(Answer::parse("client=1.2.3.4:5").is_err());
    }
}
