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
    assert!(out.contains("OK (2 services)"), "{out}");
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
    for cmd in ["agent", "status", "cleanup", "uninstall", "check-config"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
    let readme = std::fs::read_to_string(workspace_file("README.md")).expect("README.md");
    for cmd in [
        "onehop agent",
        "onehop status",
        "onehop cleanup",
        "onehop uninstall",
        "onehop check-config",
    ] {
        assert!(readme.contains(cmd), "README lacks {cmd}");
    }
}

/// `--log-format json`: every log line is one JSON object with the level,
/// the message and the event's fields at the top level. The controller,
/// pointed at a port nobody listens on, logs its failed attempts.
#[test]
fn log_format_json_writes_one_object_per_line() {
    use std::io::{BufRead as _, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = onehop()
        .args(["controller", "--no-metrics", "--identity", "cli-test"])
        .args(["--retry-period-ms", "100"])
        .args(["--api-server", &format!("http://127.0.0.1:{port}")])
        .args(["--log-format", "json"])
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run onehop controller");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Up to the first failed attempt (a WARN line), whatever the start logs before it.
    while !lines
        .last()
        .is_some_and(|l: &String| l.contains("\"WARN\""))
        && lines.len() < 20
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!lines.is_empty(), "no log lines");
    let mut warned = false;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for field in ["timestamp", "level", "message", "target"] {
            assert!(v.get(field).is_some(), "{field} missing: {line}");
        }
        // Flattened: the event's fields sit beside the message.
        assert!(v.get("fields").is_none(), "nested fields: {line}");
        warned |= v["level"] == "WARN" && v.get("error").is_some();
    }
    assert!(warned, "no WARN line with an error field: {lines:?}");
}

#[test]
fn log_format_is_a_flag_of_every_command() {
    for cmd in ["agent", "controller", "status"] {
        let out = onehop().args([cmd, "--help"]).output().expect("run onehop");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--log-format <LOG_FORMAT>"), "{cmd}:\n{help}");
    }
    let out = onehop()
        .args(["status", "--help"])
        .output()
        .expect("run onehop");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("-o, --output <OUTPUT>"), "{help}");
    assert!(help.contains("formatVersion"), "{help}");
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

/// The agent and the controller spell each shared concept the same way; the former
/// spellings are accepted but not advertised.
#[test]
fn agent_and_controller_share_flag_names_and_hide_the_old_ones() {
    for cmd in ["agent", "controller"] {
        let out = onehop().args([cmd, "--help"]).output().expect("run onehop");
        let text = String::from_utf8_lossy(&out.stdout);
        for flag in [
            "--load-balancer-class <LOAD_BALANCER_CLASS>",
            "--ignore-unclassed",
            "--lease-duration-ms <LEASE_DURATION_MS>",
            "--namespace <NAMESPACE>",
        ] {
            assert!(text.contains(flag), "{cmd} --help lacks {flag}:\n{text}");
        }
        for old in ["--class", "--unclassed", "--lease-duration-secs"] {
            assert!(
                !text.contains(&format!("{old} ")),
                "{cmd} --help shows the old {old}:\n{text}"
            );
        }
    }
}

/// The first JSON log line whose message is `message`, from `onehop args...`
/// (which is killed once it is seen, or once it exits).
fn settings_logged(args: &[&str], message: &str) -> serde_json::Value {
    use std::io::{BufRead as _, BufReader};
    let mut child = onehop()
        .args(args)
        .args(["--log-format", "json"])
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .env_remove("NODE_NAME")
        .env_remove("POD_NAME")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run onehop");
    let stderr = child.stderr.take().expect("stderr");
    let mut found = None;
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
        if v["message"] == message {
            found = Some(v);
            break;
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("{args:?}: no {message:?} line in:\n{}", seen.join("\n")))
}

/// `--class`, `--unclassed false` and `--lease-duration-secs` (the controller's former
/// flags) set what `--load-balancer-class`, `--ignore-unclassed` and
/// `--lease-duration-ms` set, in both programs, as each logs it on start.
#[test]
fn old_flag_spellings_still_work_in_both_programs() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let api = format!("http://127.0.0.1:{port}");
    let controller = |flags: &[&str]| {
        let mut args = vec!["controller", "--no-metrics", "--no-health"];
        args.extend_from_slice(&["--identity", "cli-test", "--api-server", &api]);
        args.extend_from_slice(flags);
        settings_logged(&args, "controller starting")
    };
    let new = controller(&[
        "--load-balancer-class",
        "example.com/x",
        "--ignore-unclassed",
        "--lease-duration-ms",
        "3000",
    ]);
    let old = controller(&[
        "--class",
        "example.com/x",
        "--unclassed",
        "false",
        "--lease-duration-secs",
        "3",
    ]);
    for v in [&new, &old] {
        assert_eq!(v["load_balancer_class"], "example.com/x", "{v}");
        assert_eq!(v["unclassed"], false, "{v}");
        assert_eq!(v["lease_duration_ms"], 3000, "{v}");
    }
    // The agent logs its settings before it touches the interface; this one does not
    // exist, so it stops right after, attaching nothing.
    let agent = |flags: &[&str]| {
        let mut args = vec!["agent", "--kubernetes", "--no-metrics", "--no-health"];
        args.extend_from_slice(&["--interface", "onehop-cli-none", "--node-name", "n1"]);
        args.extend_from_slice(&["--api-server", &api]);
        args.extend_from_slice(flags);
        settings_logged(&args, "agent starting with the Kubernetes source")
    };
    let new = agent(&[
        "--load-balancer-class",
        "example.com/x",
        "--ignore-unclassed",
    ]);
    let old = agent(&["--class", "example.com/x", "--unclassed", "false"]);
    for v in [&new, &old] {
        assert_eq!(v["load_balancer_class"], "example.com/x", "{v}");
        assert_eq!(v["unclassed"], false, "{v}");
    }
}
