//! A private directory on the host bpffs, removed on drop: where one agent (or one loader in a
//! test) pins its maps and links.
//!
//! Pins live in the root namespace's bpffs (see [`crate::command_in`] for why agents keep the
//! host mount namespace), so unlike interfaces they do not vanish with a topology's
//! namespaces: without this guard a failed test would leave maps, and pinned links keeping
//! programs alive, behind.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};

use crate::netns::unique_prefix;

/// Where the host bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// `/sys/fs/bpf/<name>`, emptied when created and removed (with everything pinned under it)
/// on drop. The directory itself is left for its user to create: the agent and the loader
/// create their pin root themselves.
#[derive(Debug)]
pub struct PinRoot {
    path: PathBuf,
}

impl PinRoot {
    /// The pin root `/sys/fs/bpf/<name>`; leftovers of an earlier run under that name are
    /// removed first.
    pub fn new(name: &str) -> Result<Self> {
        ensure!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "invalid pin root name {name:?}"
        );
        let path = Path::new(BPFFS).join(name);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing leftover pins at {}", path.display()))
            }
            _ => Ok(Self { path }),
        }
    }

    /// A pin root named like the namespaces of a run (`oh<pid>-<n>-<tag>`), so parallel tests
    /// never share one.
    pub fn unique(tag: &str) -> Result<Self> {
        Self::new(&format!("{}{tag}", unique_prefix("oh")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            // Drop cannot fail; say what is left behind.
            eprintln!(
                "onehop-testkit: removing pins at {} failed: {e}",
                self.path.display()
            );
        }
    }
}
