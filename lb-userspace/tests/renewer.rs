//! The Lease renewer against the test API server: it renews on its own thread while
//! the agent's loop gives signs of life, withholds renewals once the loop has been
//! quiet past the stall limit (the Lease lapses and peers take over, as from a crashed
//! agent), and renews again when the loop turns again. Judged by the writes the server
//! saw and the renewer's own turns, not by a clock.

use std::time::{Duration, Instant};

use lb_userspace::agent::{
    kube::lease_name,
    renewer::{LeaseWriter, Renewer},
};
use onehop_apiserver::ApiServer;

const LEASES: &str = "leases.coordination.k8s.io";

fn renewals(server: &ApiServer, lease: &str) -> usize {
    server
        .writes()
        .iter()
        .filter(|w| w.resource == LEASES && w.name.as_deref() == Some(lease) && w.code < 300)
        .count()
}

/// Waits (a minute at most: a stuck renewer, not a slow one, fails) until `done`,
/// calling `each` on every check.
#[track_caller]
fn wait_until(what: &str, mut done: impl FnMut() -> bool, each: impl Fn()) {
    let deadline = Instant::now() + Duration::from_mins(1);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        each();
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn renews_while_the_loop_turns_withholds_once_it_stalls_and_resumes_with_it() {
    let server = ApiServer::start_local().expect("test API server");
    let writer = LeaseWriter {
        namespace: "default".into(),
        node_name: "n1".into(),
        interface: "eth0".into(),
        lease_duration: Duration::from_millis(1200),
        renew_interval: Duration::from_millis(50),
        stall_limit: Duration::from_millis(300),
    };
    let renewer =
        Renewer::spawn(server.kube_config().expect("config"), writer, true).expect("renewer");
    let lease = lease_name("n1");
    wait_until(
        "five renewals while the loop turns",
        || renewals(&server, &lease) >= 5,
        || renewer.alive(),
    );
    assert!(renewer.last().at.is_some() && renewer.last().stamp.is_some());

    // The loop stops giving signs of life.
    wait_until("the renewer notices the stall", || renewer.stalled(), || {});
    let at_stall = renewals(&server, &lease);
    let turns = renewer.turns();
    wait_until(
        "five more turns of the renewer",
        || renewer.turns() >= turns + 5,
        || {},
    );
    assert!(renewer.stalled());
    assert_eq!(
        renewals(&server, &lease),
        at_stall,
        "renewed for a loop that stalled"
    );

    // It turns again.
    wait_until(
        "renewals again once the loop turns",
        || renewals(&server, &lease) > at_stall,
        || renewer.alive(),
    );
}
