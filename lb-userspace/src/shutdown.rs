//! The shutdown request both programs obey.

use anyhow::{Context as _, Result};
use tokio::signal::unix::{self, SignalKind};

/// Resolves on SIGTERM (what the kubelet sends) or SIGINT.
pub async fn signal() -> Result<()> {
    let mut term =
        unix::signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = unix::signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
