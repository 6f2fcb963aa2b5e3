//! `cargo xtask test`: exactly what CI runs.

use std::process::Command;

use anyhow::Result;

use crate::{run_cmd, workspace_root};

pub fn run(extra: &[String]) -> Result<()> {
    let root = workspace_root();
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(&root);
        c
    };
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The default members are the host crates; privileged tests need root
    // and build their own namespaces. One test thread per core is plenty:
    // the namespace tests are I/O bound and isolated by unique names.
    run_cmd(cargo().arg("test").args(extra))?;
    Ok(())
}
