//! A real `kubectl` against a test API server, as an operator runs it: its own kubeconfig
//! and discovery cache, validation left at kubectl's default (`--validate=strict`).
//!
//! The binary is `$KUBECTL` or `kubectl` on `PATH` (the test machines carry v1.32, Debian's
//! `kubernetes-client`); without one the tests that use it fail and say so.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::ApiServer;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// What one `kubectl` run did.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `kubectl` for one server; its files are removed on drop.
#[derive(Debug)]
pub struct Kubectl {
    binary: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// For `server`, with `namespace` as the kubeconfig's default namespace.
    pub fn new(server: &ApiServer, namespace: &str) -> Result<Self> {
        let binary =
            std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
        let found = Command::new(&binary)
            .args(["version", "--client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !found.is_ok_and(|s| s.success()) {
            bail!(
                "no kubectl at {} (set KUBECTL, or install Debian's kubernetes-client): the \
                 kubectl tests need one",
                binary.display()
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "onehop-kubectl-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig, namespace)?;
        Ok(Self {
            binary,
            dir,
            kubeconfig,
        })
    }

    /// The kubeconfig this kubectl uses.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl <args>` with `stdin` as its input.
    pub fn run_with(&self, args: &[&str], stdin: &str) -> Result<Output> {
        let mut child = Command::new(&self.binary)
            .args(args)
            // A discovery cache of its own: another server may have had this port before.
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting kubectl {}", args.join(" ")))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.as_bytes())
                .context("writing kubectl's input")?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("running kubectl {}", args.join(" ")))?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.run_with(args, "")
    }

    /// Runs `kubectl <args>`; its stdout, or an error with what it said if it failed.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.success {
            bail!(
                "kubectl {} failed:\n{}{}",
                args.join(" "),
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// `kubectl apply -f -` of `yaml`, plus `args`.
    pub fn apply(&self, yaml: &str, args: &[&str]) -> Result<Output> {
        let mut all = vec!["apply", "-f", "-"];
        all.extend_from_slice(args);
        self.run_with(&all, yaml)
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A table as `kubectl get` prints it: the header's column names and each row's cells,
/// split where two or more spaces separate them (cells such as `AUTO ASSIGN` hold one).
pub fn parse_table(text: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    // Column starts, from the header: a non-space after two spaces (or at 0).
    let b = header.as_bytes();
    let starts: Vec<usize> = (0..b.len())
        .filter(|&i| b[i] != b' ' && (i == 0 || (i >= 2 && b[i - 1] == b' ' && b[i - 2] == b' ')))
        .collect();
    let cut = |line: &str| -> Vec<String> {
        starts
            .iter()
            .enumerate()
            .map(|(n, &s)| {
                let end = starts.get(n + 1).copied().unwrap_or(usize::MAX);
                let end = end.min(line.len());
                line.get(s.min(end)..end)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect()
    };
    std::iter::once(header).chain(lines).map(cut).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_split_at_column_starts() {
        let t = parse_table(
            "NAME   AUTO ASSIGN   ADDRESSES\n\
             lan    true          [\"10.0.0.0/24\"]\n\
             b      <none>        x\n",
        );
        assert_eq!(t[0], ["NAME", "AUTO ASSIGN", "ADDRESSES"]);
        assert_eq!(t[1], ["lan", "true", "[\"10.0.0.0/24\"]"]);
        assert_eq!(t[2], ["b", "<none>", "x"]);
    }
}
