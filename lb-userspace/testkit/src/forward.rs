//! A TCP forwarder from inside a topology to the root network namespace.
//!
//! The topology's namespaces have no route out, on purpose. Processes in them (agents in node
//! namespaces, a controller on the LAN) still need the Kubernetes API server, which lives in
//! the root namespace: on loopback (the test API server) or wherever the user's kubeconfig
//! points (a real cluster). The forwarder's listening socket is bound inside a namespace (see
//! [`crate::in_netns`]); its own thread stays in the root namespace, so every upstream
//! connection is made from there, to the one address it was given and nowhere else. It copies
//! bytes only: TLS stays end to end between the client and the API server.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{net::TcpStream, sync::oneshot, task::JoinSet};

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
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Forwards every connection accepted on `listener` to `upstream`. Call it from a thread
    /// in the root namespace: the forwarder's thread inherits the caller's namespace, and
    /// upstream connections are made from there.
    pub fn start(listener: std::net::TcpListener, upstream: SocketAddr) -> Result<Self> {
        let addr = listener.local_addr().context("listener address")?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the forwarder runtime")?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(listener).context("registering the listener")?
        };
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let (tx, rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("tcp-forwarder".into())
            .spawn(move || {
                rt.block_on(serve(listener, upstream, counter, rx));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawning the forwarder thread")?;
        Ok(Self {
            addr,
            upstream,
            accepted,
            shutdown: Some(tx),
            thread: Some(thread),
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

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("forwarder thread panicked");
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
    accepted: Arc<AtomicU64>,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Dropping the set on shutdown aborts every connection task, closing both sockets.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => {
                let down = match r {
                    Ok((down, _)) => down,
                    Err(e) => {
                        tracing::warn!(error = %e, "forwarder accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!("forwarder at {MAX_CONNECTIONS} connections, closing a new one");
                    continue;
                }
                accepted.fetch_add(1, Ordering::Relaxed);
                conns.spawn(forward(down, upstream));
            }
        }
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
