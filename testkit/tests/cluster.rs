//! The nodes-with-agents fixture against the real kernel (root), with a stand-in agent: a
//! shell script that reports how it was started (arguments, network namespace, environment)
//! and then waits, so what the fixture promises is checked without building onehop.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use onehop_testkit::{
    PinRoot, Topology,
    cluster::{Agent, Cluster, Source},
    netns::list_with_prefix,
};

/// Removes the stand-in agent script on drop.
struct Script(PathBuf);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `agent --interface eth0 --bpffs-root <root> ...`: logs its arguments, its network
/// namespace's inode and `$MARK`, makes a directory under its pin root (as the agent's pins
/// would), and exits 3 when asked to by `--exit`, else waits.
fn stand_in_agent(tag: &str) -> Script {
    let path = std::env::temp_dir().join(format!(
        "onehop-stand-in-agent-{}-{tag}",
        std::process::id()
    ));
    std::fs::write(
        &path,
        r#"#!/bin/sh
echo "args: $*" >&2
echo "netns: $(stat -L -c %i /proc/self/ns/net)" >&2
echo "mark: $MARK" >&2
mkdir -p "$5/maps"
case " $* " in *" --exit "*) exit 3 ;; esac
exec sleep 60
"#,
    )
    .expect("write the stand-in agent");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Script(path)
}

fn wait_for_log(c: &Cluster, node: u8, needle: &str) -> String {
    let mut log = String::new();
    c.wait_agent(node, needle, Duration::from_secs(10), || {
        log = c.log(node);
        log.contains(needle)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    log
}

#[test]
fn agents_start_in_their_node_with_their_pins_source_and_log_and_all_goes_on_drop() {
    let script = stand_in_agent("lifecycle");
    let topo = Topology::builder()
        .nodes(2)
        .pods_per_node(1)
        .build()
        .expect("topology");
    let prefix = topo.prefix().to_owned();
    let agent = Agent::new(&script.0)
        .args(["--maglev-slots", "1024"])
        .env("MARK", "every agent");
    let c = Cluster::new(topo, agent).expect("cluster");
    let (pins, scratch): (Vec<PathBuf>, PathBuf) = (
        vec![c.pin_root(1).to_owned(), c.pin_root(2).to_owned()],
        c.scratch().to_owned(),
    );
    assert_ne!(pins[0], pins[1], "each node has its own pin root");
    assert!(pins[0].starts_with("/sys/fs/bpf"), "{}", pins[0].display());

    c.write_services(1, "services: []\n")
        .expect("services file");
    assert_eq!(
        std::fs::read_to_string(c.services_path(1)).expect("read back"),
        "services: []\n"
    );
    c.spawn_agent(1, &c.services_file(1))
        .expect("node1's agent");
    let log = wait_for_log(&c, 1, "mark:");
    let want = format!(
        "args: agent --interface eth0 --bpffs-root {} --maglev-slots 1024 --services-file {}",
        pins[0].display(),
        c.services_path(1).display()
    );
    assert!(log.contains(&want), "want {want:?} in:\n{log}");
    let node_ns = std::fs::metadata(c.topo.node(1).ns().path())
        .expect("node1's netns file")
        .ino();
    assert!(
        log.contains(&format!("netns: {node_ns}\n")),
        "the agent runs in node1's namespace (inode {node_ns}):\n{log}"
    );
    assert!(log.contains("mark: every agent\n"), "{log}");
    assert!(
        c.spawn_agent(1, &c.services_file(1)).is_err(),
        "a second agent on the same node"
    );

    // Per-start source and environment; the start's own variable wins.
    let source = Source::kubernetes("node-b")
        .kubeconfig("/nonexistent/kubeconfig")
        .env("MARK", "node2 only");
    c.spawn_agent(2, &source).expect("node2's agent");
    let log = wait_for_log(&c, 2, "mark:");
    assert!(
        log.contains("--kubernetes --node-name node-b"),
        "kubernetes source arguments:\n{log}"
    );
    assert!(log.contains("mark: node2 only\n"), "{log}");
    assert!(
        !c.log(1).contains("node-b"),
        "each node has its own log:\n{}",
        c.log(1)
    );

    // SIGKILL, reaped: the pid is gone, and the node can start an agent again.
    let pid = c.agent_pid(1).expect("node1's agent runs");
    c.kill_agent(1).expect("kill");
    assert_eq!(c.agent_pid(1), None);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} reaped"
    );
    assert!(c.kill_agent(1).is_err(), "nothing left to kill");

    // An agent that exits is reported at once, with its log, not after the timeout.
    c.spawn_agent(1, &Source::default().args(["--exit"]))
        .expect("restart");
    let err = c
        .wait_agent(1, "never", Duration::from_secs(30), || false)
        .expect_err("the agent exited");
    let text = format!("{err:#}");
    assert!(
        text.contains("exited") && text.contains("--exit"),
        "exit reported with the log: {text}"
    );

    let agents = c.agents();
    let pid2 = c.agent_pid(2).expect("node2's agent runs");
    drop(c);
    assert!(
        !Path::new(&format!("/proc/{pid2}")).exists(),
        "node2's agent killed and reaped on drop"
    );
    agents.kill_all();
    for p in &pins {
        assert!(!p.exists(), "pin root {} removed", p.display());
    }
    assert!(!scratch.exists(), "scratch {} removed", scratch.display());
    assert_eq!(
        list_with_prefix(&prefix).expect("ip netns list"),
        Vec::<String>::new(),
        "namespaces removed"
    );
}

#[test]
fn pin_root_clears_leftovers_and_removes_itself() {
    let first = PinRoot::unique("pins").expect("pin root");
    let path = first.path().to_owned();
    std::fs::create_dir_all(path.join("maps")).expect("mkdir in bpffs");
    // A second guard on the same name (a rerun after a crash) starts empty.
    std::mem::forget(first);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    let again = PinRoot::new(&name).expect("pin root again");
    assert!(!path.exists(), "leftovers removed");
    std::fs::create_dir_all(path.join("maps")).expect("mkdir in bpffs");
    drop(again);
    assert!(!path.exists(), "removed on drop");
    assert!(PinRoot::new("a/b").is_err(), "a name, not a path");
}
