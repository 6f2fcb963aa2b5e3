//! Which toolchain builds the eBPF crate: the nightly pinned by date in
//! `rust-toolchain-ebpf` at the workspace root. One module for the build
//! scripts (through [`crate::build`]) and the xtask, so the two cannot
//! drift apart.
//!
//! The pinned toolchain is used under the name `nightly` when that is the
//! same build (machines whose only nightly is the pinned one keep building
//! offline), or under its dated name when that is installed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The pin's file name, at the workspace root.
pub const FILE: &str = "rust-toolchain-ebpf";

/// The pinned toolchain, e.g. `nightly-2026-05-20`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub toolchain: String,
    /// Its rustup date, `2026-05-20`.
    pub date: String,
}

/// The pin file of the workspace at `root`.
pub fn pin_file(root: &Path) -> PathBuf {
    root.join(FILE)
}

/// Parses the pin: the first line that is neither blank nor a `#` comment,
/// `nightly-YYYY-MM-DD`.
pub fn parse(text: &str) -> Result<Pin, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| format!("{FILE} names no toolchain"))?;
    let date = line
        .strip_prefix("nightly-")
        .ok_or_else(|| format!("{FILE}: {line:?} is not nightly-YYYY-MM-DD"))?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = date.split('-').collect();
    if !(parts.len() == 3 && digits(parts[0], 4) && digits(parts[1], 2) && digits(parts[2], 2)) {
        return Err(format!("{FILE}: {line:?} is not nightly-YYYY-MM-DD"));
    }
    Ok(Pin {
        toolchain: line.to_owned(),
        date: date.to_owned(),
    })
}

/// Reads and parses the pin of the workspace at `root`.
pub fn read(root: &Path) -> Result<Pin, String> {
    let path = pin_file(root);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text)
}

/// What rustup says about an installed toolchain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// Rustup's date of the toolchain (from its channel manifest).
    pub date: String,
    /// `rustc -vV`'s `release` and `commit-date`, for messages.
    pub rustc: String,
}

/// Facts about the toolchain installed as `name`, or `None` when rustup has
/// no such toolchain.
pub fn installed(name: &str) -> Option<Installed> {
    let out = Command::new("rustc")
        .arg(format!("+{name}"))
        .args(["--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let manifest = sysroot.join("lib/rustlib/multirust-channel-manifest.toml");
    let date = std::fs::read_to_string(manifest).ok().and_then(|m| {
        m.lines().find_map(|l| {
            let v = l.strip_prefix("date")?.trim_start().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_owned())
        })
    })?;
    let vv = Command::new("rustc")
        .arg(format!("+{name}"))
        .arg("-vV")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .ok()?;
    let vv = String::from_utf8_lossy(&vv.stdout).into_owned();
    let field = |key: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    Some(Installed {
        date,
        rustc: format!("rustc {} ({})", field("release:"), field("commit-date:")),
    })
}

/// The rustup command that installs the pinned toolchain.
pub fn install_command(pin: &Pin) -> String {
    format!(
        "rustup toolchain install {} --profile minimal --component rust-src",
        pin.toolchain
    )
}

/// The toolchain name to build with, given what is installed as `nightly`
/// and under the pin's dated name.
pub fn choose(
    pin: &Pin,
    nightly: Option<&Installed>,
    dated: Option<&Installed>,
) -> Result<String, String> {
    if nightly.is_some_and(|n| n.date == pin.date) {
        return Ok("nightly".to_owned());
    }
    if dated.is_some_and(|d| d.date == pin.date) {
        return Ok(pin.toolchain.clone());
    }
    let have = match nightly {
        Some(n) => format!("`nightly` is {}, rustup date {}", n.rustc, n.date),
        None => "no `nightly` toolchain is installed".to_owned(),
    };
    Err(format!(
        "the eBPF crate is built with {wanted} (named in {FILE}), but {have} and {wanted} \
         is not installed. Install it with `{install}` (or make {FILE} name the \
         installed nightly's date if that is the one you mean to use).",
        wanted = pin.toolchain,
        install = install_command(pin),
    ))
}

/// [`choose`] with the facts of this machine.
pub fn resolve(pin: &Pin) -> Result<String, String> {
    let nightly = installed("nightly");
    if nightly.as_ref().is_some_and(|n| n.date == pin.date) {
        return Ok("nightly".to_owned());
    }
    choose(pin, nightly.as_ref(), installed(&pin.toolchain).as_ref())
}

/// The LLVM major version of a toolchain's rustc (bpf-linker must link the
/// same one).
pub fn llvm_major(toolchain: &str) -> Option<u32> {
    let out = Command::new("rustc")
        .arg(format!("+{toolchain}"))
        .arg("-vV")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix("LLVM version:")?
            .trim()
            .split('.')
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(date: &str) -> Installed {
        Installed {
            date: date.to_owned(),
            rustc: format!("rustc 1.97.0-nightly (day before {date})"),
        }
    }

    fn pin() -> Pin {
        parse("# comment\n\n  nightly-2026-05-20  \n").expect("a pin")
    }

    #[test]
    fn the_pin_is_a_dated_nightly() {
        assert_eq!(
            pin(),
            Pin {
                toolchain: "nightly-2026-05-20".into(),
                date: "2026-05-20".into()
            }
        );
        for bad in [
            "",
            "# only a comment",
            "nightly",
            "stable",
            "nightly-2026-5-20",
            "1.95.0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_workspace_pin_parses() {
        // lb-ebpf/embed → the workspace root.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        read(&root).expect("rust-toolchain-ebpf");
    }

    #[test]
    fn nightly_is_used_when_it_is_the_pinned_build() {
        let p = pin();
        assert_eq!(
            choose(&p, Some(&at("2026-05-20")), None).unwrap(),
            "nightly"
        );
        assert_eq!(
            choose(&p, Some(&at("2026-05-20")), Some(&at("2026-05-20"))).unwrap(),
            "nightly"
        );
    }

    #[test]
    fn the_dated_toolchain_is_used_when_nightly_is_another() {
        let p = pin();
        assert_eq!(
            choose(&p, Some(&at("2026-06-01")), Some(&at("2026-05-20"))).unwrap(),
            "nightly-2026-05-20"
        );
        assert_eq!(
            choose(&p, None, Some(&at("2026-05-20"))).unwrap(),
            "nightly-2026-05-20"
        );
    }

    #[test]
    fn a_mismatch_says_what_is_installed_what_is_wanted_and_how_to_get_it() {
        let p = pin();
        let err = choose(&p, Some(&at("2026-06-01")), None).unwrap_err();
        assert!(err.contains("2026-06-01"), "{err}");
        assert!(err.contains("nightly-2026-05-20"), "{err}");
        assert!(
            err.contains(
                "rustup toolchain install nightly-2026-05-20 --profile minimal --component rust-src"
            ),
            "{err}"
        );
        let err = choose(&p, None, None).unwrap_err();
        assert!(err.contains("no `nightly` toolchain is installed"), "{err}");
    }
}
