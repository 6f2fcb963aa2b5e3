//! `cargo xtask bundle` (the install bundle from `manifests/`) and `cargo xtask
//! image` (the image the bundle names, built with docker and optionally saved or
//! imported into this machine's k3s).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use lb_userspace::k8s::bundle;

use crate::{run_cmd, workspace_root};

/// Writes `deploy/onehop.yaml` and `kustomization.yaml` from `manifests/`.
pub fn write_bundle() -> Result<()> {
    let root = workspace_root();
    let files = [
        (
            bundle::BUNDLE_PATH,
            bundle::bundle(&root.join("manifests"))?,
        ),
        (bundle::KUSTOMIZATION_PATH, bundle::kustomization()),
    ];
    for (rel, text) in files {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Builds the image from the repository's Dockerfile for this machine's
/// platform, tagged as the manifests name it; then writes it to `save` as a tar
/// file (for `k3s ctr images import` on other nodes) and/or imports it into
/// this machine's k3s.
pub fn build(save: Option<&Path>, import: bool) -> Result<()> {
    let image = bundle::image();
    run_cmd(
        Command::new("docker")
            .current_dir(workspace_root())
            .args(["build", "--tag", &image, "."]),
    )
    .context("building the image (needs a running Docker engine with BuildKit)")?;
    println!("built {image}");
    if let Some(path) = save {
        run_cmd(
            Command::new("docker")
                .args(["save", "--output"])
                .arg(path)
                .arg(&image),
        )?;
        println!(
            "saved {image} to {}; on each node: sudo k3s ctr images import {}",
            path.display(),
            path.display()
        );
    }
    if import {
        import_into_k3s(&image)?;
        println!("imported {image} into this machine's k3s containerd");
    }
    Ok(())
}

/// `docker save IMAGE | k3s ctr images import -`.
fn import_into_k3s(image: &str) -> Result<()> {
    let mut save = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting docker save")?;
    let stdout = save.stdout.take().context("docker save's output")?;
    let status = Command::new("k3s")
        .args(["ctr", "images", "import", "-"])
        .stdin(stdout)
        .status()
        .context("starting `k3s ctr images import` (is k3s installed here? run as root)")?;
    let saved = save.wait().context("waiting for docker save")?;
    if !saved.success() {
        bail!("docker save {image} failed: {saved}");
    }
    if !status.success() {
        bail!("k3s ctr images import failed: {status}");
    }
    Ok(())
}
