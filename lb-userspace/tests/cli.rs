//! The `onehop` binary's own commands, as a user runs them: the services
//! files shown in the README and shipped with the demo must validate, a bad
//! file must fail with every problem named, and `--help` must describe the
//! commands the README documents.

use std::{path::PathBuf, process::Command};

fn onehop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onehop"))
}

fn workspace_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// The first YAML code block of the README's "Services file" section.
fn readme_services_example() -> String {
    let readme = std::fs::read_to_string(workspace_file("README.md")).expect("README.md");
    let section = readme
        .split("### Services file")
        .nth(1)
        .expect("README has a Services file section");
    let block = section.split("```yaml\n").nth(1).expect("a yaml block");
    block.split("```").next().expect("closed block").to_owned()
}

fn check_config(text: &str) -> (bool, String) {
    let dir =
        std::env::temp_dir().join(format!("onehop-cli-{}-{}", std::process::id(), text.len()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("services.yaml");
    std::fs::write(&path, text).expect("write");
    let out = onehop()
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run onehop");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn readme_example_validates() {
    let (ok, out) = check_config(&readme_services_example());
    assert!(ok, "the README's services file example is rejected:\n{out}");
    assert!(out.contains("OK (1 services)"), "{out}");
}

#[test]
fn demo_config_validates() {
    let text = std::fs::read_to_string(workspace_file("xtask/src/demo-services.yaml"))
        .expect("demo config");
    let (ok, out) = check_config(&text);
    assert!(ok, "the demo's services file is rejected:\n{out}");
}

#[test]
fn bad_file_lists_every_problem_with_field_and_line() {
    let bad = "announce: [192.168.50.9]\nservices:\n  - name: web\n    vip: 192.168.50.100\n    ports:\n      - { port: 0, protocol: SCTP }\n    backends:\n      - { ip: 10.42.0.500, node_ip: 192.168.50.11 }\n";
    let (ok, out) = check_config(bad);
    assert!(!ok, "a bad file must fail:\n{out}");
    for needle in [
        "announce[0] (line 1)",
        "services[0].ports[0].port (line 6)",
        "services[0].backends[0].ip (line 8)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn help_lists_the_documented_commands() {
    let out = onehop().arg("--help").output().expect("run onehop");
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["agent", "status", "cleanup", "check-config"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
    let readme = std::fs::read_to_string(workspace_file("README.md")).expect("README.md");
    for cmd in [
        "onehop agent",
        "onehop status",
        "onehop cleanup",
        "onehop check-config",
    ] {
        assert!(readme.contains(cmd), "README lacks {cmd}");
    }
}

#[test]
fn empty_or_cut_files_fail_check_config_and_an_explicit_empty_list_passes() {
    for (text, needle) in [
        ("", "is empty"),
        ("  \n", "is empty"),
        ("node: { ip: 192.168.50.11 }\n", "services: missing"),
    ] {
        let (ok, out) = check_config(text);
        assert!(!ok, "{text:?} must fail:\n{out}");
        assert!(
            out.contains(needle),
            "{text:?}: missing {needle:?} in:\n{out}"
        );
        assert!(
            out.contains("services: []"),
            "{text:?}: no advice in:\n{out}"
        );
    }
    let (ok, out) = check_config("services: []\n");
    assert!(ok, "{out}");
    assert!(out.contains("OK (0 services)"), "{out}");
}

/// The agent and the controller take the same listener flags, and by default keep
/// `/metrics` on loopback (it names pods and node addresses) while the probes listen on
/// every address for the kubelet.
#[test]
fn metrics_default_to_loopback_with_the_same_flags_for_both_programs() {
    for (cmd, metrics, health) in [
        ("agent", "127.0.0.1:9478", "0.0.0.0:9477"),
        ("controller", "127.0.0.1:9479", "0.0.0.0:9480"),
    ] {
        let out = onehop().args([cmd, "--help"]).output().expect("run onehop");
        let text = String::from_utf8_lossy(&out.stdout);
        for flag in [
            "--metrics-addr",
            "--no-metrics",
            "--health-addr",
            "--no-health",
        ] {
            assert!(text.contains(flag), "{cmd} --help lacks {flag}:\n{text}");
        }
        for default in [metrics, health] {
            assert!(
                text.contains(&format!("[default: {default}]")),
                "{cmd}: no default {default}:\n{text}"
            );
        }
        assert!(
            !text.contains("0.0.0.0:9478") && !text.contains("0.0.0.0:9479"),
            "{text}"
        );
    }
}
