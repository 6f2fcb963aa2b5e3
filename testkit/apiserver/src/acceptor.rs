//! A TCP accept loop on its own thread and Tokio runtime, shared by the test API server and
//! the forwarder.
//!
//! Its own runtime, so it serves sync tests and async ones alike, and a test's runtime
//! stalling or ending never stalls it. Each accepted connection becomes a task in one set;
//! dropping the [`Acceptor`] stops the loop and drops the set, which aborts every connection
//! task and so closes its sockets.

use std::{future::Future, thread, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{net::TcpStream, sync::oneshot, task::JoinSet};

/// A running accept loop; stops it and closes every connection on drop.
#[derive(Debug)]
pub struct Acceptor {
    name: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Acceptor {
    /// Accepts on `listener` (bound by the caller, in whatever namespace it chose) and hands
    /// each connection to `handle`, which returns the connection's task or `None` to drop it.
    /// Beyond `max_connections` open at once, new connections are closed at once.
    pub fn start<H, F>(
        name: &'static str,
        listener: std::net::TcpListener,
        max_connections: usize,
        handle: H,
    ) -> Result<Self>
    where
        H: FnMut(TcpStream) -> Option<F> + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("building the {name} runtime"))?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(listener).context("registering the listener")?
        };
        let (tx, rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                rt.block_on(accept_loop(name, listener, max_connections, handle, rx));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .with_context(|| format!("spawning the {name} thread"))?;
        Ok(Self {
            name,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("{} thread panicked", self.name);
        }
    }
}

async fn accept_loop<H, F>(
    name: &'static str,
    listener: tokio::net::TcpListener,
    max_connections: usize,
    mut handle: H,
    mut shutdown: oneshot::Receiver<()>,
) where
    H: FnMut(TcpStream) -> Option<F>,
    F: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "{name}: accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if conns.len() >= max_connections {
                    tracing::warn!("{name}: at {max_connections} connections, closing a new one");
                    continue;
                }
                if let Some(task) = handle(stream) {
                    conns.spawn(task);
                }
            }
        }
    }
}
