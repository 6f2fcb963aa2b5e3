//! A TCP forwarder from inside a topology to the root network namespace.
//!
//! The topology's namespaces have no route out, on purpose. Processes in them (agents in node
//! namespaces, a controller on the LAN) still need the Kubernetes API server, which lives in
//! the root namespace: on loopback (the test API server) or wherever the user's kubeconfig
//! points (a real cluster). The forwarder's listening socket is bound inside a namespace (see
//! `onehop_testkit::in_netns`); its own thread stays in the root namespace, so every upstream
//! connection is made from there, to the one address it was given and nowhere else. It copies
//! bytes only: TLS stays end to end between the client and the API server.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::net::TcpStream;

use crate::acceptor::Acceptor;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// How long an upstream connect may take before the client's connection is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running forwarder; closes its listener and every connection on drop.
#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    upstream: SocketAddr,
    accepted: Arc<AtomicU64>,
    _acceptor: Acceptor,
}

impl Forwarder {
    /// Forwards every connection accepted on `listener` to `upstream`. Call it from a thread
    /// in the root namespace: the forwarder's thread inherits the caller's namespace, and
    /// upstream connections are made from there.
    pub fn start(listener: std::net::TcpListener, upstream: SocketAddr) -> Result<Self> {
        let addr = listener.local_addr().context("listener address")?;
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let acceptor = Acceptor::start("tcp-forwarder", listener, MAX_CONNECTIONS, move |down| {
            counter.fetch_add(1, Ordering::Relaxed);
            Some(forward(down, upstream))
        })?;
        Ok(Self {
            addr,
            upstream,
            accepted,
            _acceptor: acceptor,
        })
    }

    /// The listening address (inside the namespace the listener was bound in).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn forward(mut down: TcpStream, upstream: SocketAddr) {
    let mut up = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %upstream, "forwarder connect failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%upstream, "forwarder connect timed out");
            return;
        }
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    // Ends when either side closes or resets; dropping both sockets then closes the other.
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "forwarded connection ended");
    }
}
