//! Minimal HTTP/1.1 framing shared by the pod server and the client helpers: heads up to
//! [`MAX_HEAD`] bytes, bodies by `Content-Length` (or to EOF when the peer closes) up to
//! [`MAX_BODY`]. No chunked encoding: neither side here ever produces it.

use std::io::{self, Read};

use anyhow::{Context as _, Result, bail, ensure};

/// Largest accepted request/response head.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest accepted body.
pub const MAX_BODY: usize = 1 << 20;

/// A parsed head: the start line and the header fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET / HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start: String,
    /// Header fields, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Content-Length`, if present and valid.
    pub fn content_length(&self) -> Result<Option<usize>> {
        self.header("content-length")
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .with_context(|| format!("bad Content-Length {v:?}"))
            })
            .transpose()
    }

    /// Whether `Connection` lists `token` (e.g. `close`, `keep-alive`).
    pub fn connection_has(&self, token: &str) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn parse(bytes: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes).context("non-UTF-8 HTTP head")?;
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_owned();
        ensure!(!start.is_empty(), "empty start line");
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (n, v) = line
                .split_once(':')
                .with_context(|| format!("bad header line {line:?}"))?;
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(Self { start, headers })
    }
}

/// A byte stream with a read-ahead buffer, so pipelined or early bytes are never lost.
#[derive(Debug)]
pub struct Framed<S> {
    /// The underlying stream (write to it directly).
    pub stream: S,
    buf: Vec<u8>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<S: Read> Framed<S> {
    /// Wraps `stream` (whose read timeout decides how often `keep_waiting` is asked).
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads one chunk into the buffer; `Ok(0)` at EOF. On a read timeout asks
    /// `keep_waiting`, and gives up with a `TimedOut` error when it says no.
    fn fill(&mut self, keep_waiting: &mut dyn FnMut() -> bool) -> Result<usize> {
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    if !keep_waiting() {
                        return Err(
                            io::Error::new(io::ErrorKind::TimedOut, "read timed out").into()
                        );
                    }
                }
                Err(e) => return Err(e).context("reading"),
            }
        }
    }

    /// Reads a head. `Ok(None)` on a clean EOF before its first byte (peer done).
    pub fn read_head(&mut self, keep_waiting: &mut dyn FnMut() -> bool) -> Result<Option<Head>> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = Head::parse(&self.buf[..end])?;
                self.buf.drain(..end + 4);
                return Ok(Some(head));
            }
            ensure!(
                self.buf.len() <= MAX_HEAD,
                "HTTP head larger than {MAX_HEAD} bytes"
            );
            if self.fill(keep_waiting)? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("EOF inside an HTTP head");
            }
        }
    }

    /// Reads exactly `len` body bytes.
    pub fn read_body(
        &mut self,
        len: usize,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<u8>> {
        ensure!(len <= MAX_BODY, "body of {len} bytes exceeds {MAX_BODY}");
        while self.buf.len() < len {
            if self.fill(keep_waiting)? == 0 {
                bail!("EOF after {} of {len} body bytes", self.buf.len());
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// Reads until EOF (a `Connection: close` body without length).
    pub fn read_to_eof(&mut self, keep_waiting: &mut dyn FnMut() -> bool) -> Result<Vec<u8>> {
        while self.fill(keep_waiting)? > 0 {
            ensure!(self.buf.len() <= MAX_BODY, "body exceeds {MAX_BODY} bytes");
        }
        Ok(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_requests_are_split_at_heads() {
        let data = b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut f = Framed::new(&data[..]);
        let mut never = || false;
        let h = f.read_head(&mut never).expect("head").expect("not EOF");
        assert_eq!(h.start, "GET /a HTTP/1.1");
        assert_eq!(h.content_length().expect("length"), Some(3));
        assert_eq!(f.read_body(3, &mut never).expect("body"), b"abc");
        let h = f.read_head(&mut never).expect("head").expect("not EOF");
        assert_eq!(h.start, "GET /b HTTP/1.1");
        assert!(h.connection_has("close"));
        assert!(f.read_head(&mut never).expect("EOF").is_none());
    }

    #[test]
    fn truncated_head_is_an_error() {
        let mut f = Framed::new(&b"GET / HTTP/1.1\r\nHost"[..]);
        assert!(f.read_head(&mut || false).is_err());
    }
}
