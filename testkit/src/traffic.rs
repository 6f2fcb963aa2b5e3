//! Client-side traffic from inside a namespace: one-shot HTTP GETs, keep-alive connections
//! and UDP request/reply. Every call is bounded: connect and I/O timeouts, size caps on
//! replies, and a fixed number of attempts (one).
//!
//! Sockets are created on a thread inside the namespace ([`in_netns`]); a keep-alive
//! connection can then be used from any thread, it stays in its namespace.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    http::{Framed, Head},
    netns::{NsName, in_netns},
    server::Answer,
};

/// Time limits of a client call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect (SYN to established).
    pub connect: Duration,
    /// Whole reply, from the request being written to the last byte read.
    pub reply: Duration,
}

impl Default for Timeouts {
    /// 3 s each: far above anything a healthy namespace path takes (sub-millisecond), short
    /// enough that a broken data path fails a test quickly. ARP resolution and a SYN
    /// retransmit (1 s) fit.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            reply: Duration::from_secs(3),
        }
    }
}

/// An HTTP response plus the connection's endpoints.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Our end of the connection (what the server should report as `client=`, unless translated).
    pub local: SocketAddr,
    /// The address we connected to.
    pub peer: SocketAddr,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as the pod servers' [`Answer`].
    pub fn answer(&self) -> Result<Answer> {
        Answer::parse(&self.text())
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect_here(addr: SocketAddr, t: Timeouts) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, t.connect)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    // Short socket timeouts; the overall reply deadline is enforced on top of them.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    stream.set_write_timeout(Some(t.reply))?;
    Ok(stream)
}

fn exchange(conn: &mut Framed<TcpStream>, request: &str, t: Timeouts) -> Result<(Head, Vec<u8>)> {
    conn.stream
        .write_all(request.as_bytes())
        .context("writing request")?;
    let deadline = Instant::now() + t.reply;
    let mut keep_waiting = || Instant::now() < deadline;
    let head = conn
        .read_head(&mut keep_waiting)?
        .context("connection closed before a response")?;
    let body = match head.content_length()? {
        Some(n) => conn.read_body(n, &mut keep_waiting)?,
        None => conn.read_to_eof(&mut keep_waiting)?,
    };
    Ok((head, body))
}

fn to_response(head: Head, body: Vec<u8>, local: SocketAddr, peer: SocketAddr) -> Result<Response> {
    let mut parts = head.start.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1.x response: {:?}",
        head.start
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {:?}", head.start))?;
    Ok(Response {
        status,
        headers: head.headers,
        body,
        local,
        peer,
    })
}

/// `GET /` to `addr` from `ns` with `Connection: close` and default [`Timeouts`].
pub fn http_get<N: NsName + ?Sized>(ns: &N, addr: SocketAddr) -> Result<Response> {
    http_get_with(ns, addr, "/", Timeouts::default())
}

/// `GET path` to `addr` from `ns`: one request on a fresh connection, `Connection: close`.
pub fn http_get_with<N: NsName + ?Sized>(
    ns: &N,
    addr: SocketAddr,
    path: &str,
    t: Timeouts,
) -> Result<Response> {
    in_netns(ns, || http_get_here(addr, path, t))?
        .with_context(|| format!("from netns {}", ns.ns_name()))
}

/// [`http_get_with`] from the calling thread's namespace: for loops that already run inside
/// one [`in_netns`] closure or [`crate::spawn_thread_in`] thread (benchmarks), where a thread
/// per request would distort the measurement.
pub fn http_get_here(addr: SocketAddr, path: &str, t: Timeouts) -> Result<Response> {
    let stream = connect_here(addr, t)?;
    let local = stream.local_addr()?;
    let mut conn = Framed::new(stream);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (head, body) = exchange(&mut conn, &req, t)
        .with_context(|| format!("GET {path} from {addr} ({local})"))?;
    to_response(head, body, local, addr)
}

/// One TCP connection carrying several requests (HTTP/1.1 keep-alive), e.g. to check that a
/// flow stays on its backend. Closed when dropped.
#[derive(Debug)]
pub struct HttpConn {
    conn: Framed<TcpStream>,
    local: SocketAddr,
    peer: SocketAddr,
    timeouts: Timeouts,
    requests: u32,
    closed: bool,
}

impl HttpConn {
    /// Most requests one connection sends; a guard against runaway loops in callers.
    pub const MAX_REQUESTS: u32 = 100_000;

    /// Connects from `ns` to `addr` with default [`Timeouts`].
    pub fn connect<N: NsName + ?Sized>(ns: &N, addr: SocketAddr) -> Result<Self> {
        Self::connect_with(ns, addr, Timeouts::default())
    }

    /// Connects from `ns` to `addr`.
    pub fn connect_with<N: NsName + ?Sized>(
        ns: &N,
        addr: SocketAddr,
        timeouts: Timeouts,
    ) -> Result<Self> {
        in_netns(ns, || Self::connect_here(addr, timeouts))?
            .with_context(|| format!("from netns {}", ns.ns_name()))
    }

    /// Connects from the calling thread's namespace (see [`http_get_here`]).
    pub fn connect_here(addr: SocketAddr, timeouts: Timeouts) -> Result<Self> {
        let stream = connect_here(addr, timeouts)?;
        let local = stream.local_addr()?;
        Ok(Self {
            conn: Framed::new(stream),
            local,
            peer: addr,
            timeouts,
            requests: 0,
            closed: false,
        })
    }

    /// Our end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// `GET path` on this connection (keep-alive). Fails if the server closed it.
    pub fn get(&mut self, path: &str) -> Result<Response> {
        ensure!(
            !self.closed,
            "connection to {} was closed by the server",
            self.peer
        );
        ensure!(
            self.requests < Self::MAX_REQUESTS,
            "more than {} requests on one connection",
            Self::MAX_REQUESTS
        );
        self.requests += 1;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.peer);
        let (head, body) = exchange(&mut self.conn, &req, self.timeouts).with_context(|| {
            format!(
                "request {} on {} -> {}",
                self.requests, self.local, self.peer
            )
        })?;
        if head.connection_has("close") {
            self.closed = true;
        }
        to_response(head, body, self.local, self.peer)
    }
}

/// A UDP reply.
#[derive(Debug, Clone)]
pub struct UdpReply {
    /// Where the reply came from (for a load-balanced service: must be the VIP).
    pub from: SocketAddr,
    /// Our socket's address.
    pub local: SocketAddr,
    /// The server's [`Answer`] line.
    pub answer: Answer,
    /// The bytes after the answer line (the pod servers echo the request payload).
    pub echo: Vec<u8>,
}

/// Sends `payload` to `addr` from `ns` (ephemeral port) and returns the first reply within
/// the default reply timeout.
pub fn udp_request<N: NsName + ?Sized>(
    ns: &N,
    addr: SocketAddr,
    payload: &[u8],
) -> Result<UdpReply> {
    udp_request_with(ns, addr, payload, None, Timeouts::default().reply)
}

/// Sends `payload` to `addr` from `ns`, from `bind` if given (to pick a source port, e.g.
/// to steer a flow hash), and waits up to `timeout` for one reply. One datagram, no retry:
/// the namespace LAN does not lose packets, so a missing reply is a finding.
///
/// The socket is not `connect`ed, so a reply from an unexpected source (a pod ip where the
/// VIP was expected) is still received and reported in [`UdpReply::from`].
pub fn udp_request_with<N: NsName + ?Sized>(
    ns: &N,
    addr: SocketAddr,
    payload: &[u8],
    bind: Option<SocketAddr>,
    timeout: Duration,
) -> Result<UdpReply> {
    in_netns(ns, || udp_request_here(addr, payload, bind, timeout))?
        .with_context(|| format!("from netns {}", ns.ns_name()))
}

/// [`udp_request_with`] from the calling thread's namespace (see [`http_get_here`]).
pub fn udp_request_here(
    addr: SocketAddr,
    payload: &[u8],
    bind: Option<SocketAddr>,
    timeout: Duration,
) -> Result<UdpReply> {
    let bind = bind.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding udp {bind}"))?;
    sock.send_to(payload, addr)
        .with_context(|| format!("sending udp to {addr}"))?;
    let local = sock.local_addr()?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no udp reply from {addr} to {local} within {timeout:?}");
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let data = &buf[..n];
                let split = data.iter().position(|&b| b == b'\n').map_or(n, |p| p + 1);
                let answer = Answer::parse(&String::from_utf8_lossy(&data[..split]))
                    .with_context(|| format!("udp reply from {from}"))?;
                return Ok(UdpReply {
                    from,
                    local,
                    answer,
                    echo: data[split..].to_vec(),
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("udp recv from {addr}")),
        }
    }
}
