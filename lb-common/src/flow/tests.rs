extern crate std;
use std::format;

use super::{tcp_flags as f, tcp_state as s, *};
use crate::proto;

const T: FlowTimeouts = FlowTimeouts::new(60, 21_600, 10, 30, 5, 2);

/// Every combination of the flags that matter: FIN, SYN, RST, PSH and ACK
/// are the five low bits.
fn all_flags() -> impl Iterator<Item = u8> {
    assert_eq!(f::FIN | f::SYN | f::RST | 0x08 | f::ACK, 0x1f);
    0u8..32
}

fn all_states() -> impl Iterator<Item = u8> {
    0u8..32
}

const SIDES: [Side; 2] = [Side::Client, Side::Backend];

#[test]
fn transitions_keep_their_invariants_for_every_state_flag_and_side() {
    for st in all_states() {
        for fl in all_flags() {
            for side in SIDES {
                let n = next_state(st, fl, side);
                let what = format!("state {st:#07b} flags {fl:#010b} {side:?} -> {n:#07b}");
                if fl & f::RST != 0 {
                    assert!(closing(n), "an RST closes: {what}");
                }
                // FIN bits and ESTABLISHED are never taken back.
                assert_eq!(
                    n & st & (s::BOTH_FIN | s::ESTABLISHED),
                    st & (s::BOTH_FIN | s::ESTABLISHED),
                    "{what}"
                );
                // SYN_SENT is never set nor cleared by a transition.
                assert_eq!(n & s::SYN_SENT, st & s::SYN_SENT, "{what}");
                let rst_cleared = st & s::RST != 0 && n & s::RST == 0;
                assert_eq!(
                    rst_cleared,
                    side == Side::Backend
                        && fl & (f::SYN | f::RST | f::FIN) == 0
                        && st & s::RST != 0,
                    "only the backend's plain packets clear an RST: {what}"
                );
                if fl & f::SYN != 0 && fl & f::RST == 0 && fl & f::FIN == 0 {
                    assert_eq!(n, st, "a SYN changes nothing: {what}");
                }
                if side == Side::Client && fl & (f::SYN | f::RST) == 0 {
                    assert_ne!(n & s::ESTABLISHED, 0, "{what}");
                }
                if side == Side::Backend {
                    assert_eq!(n & s::ESTABLISHED, st & s::ESTABLISHED, "{what}");
                }
                if fl & f::FIN != 0 && fl & f::RST == 0 {
                    let bit = if side == Side::Client {
                        s::CLIENT_FIN
                    } else {
                        s::BACKEND_FIN
                    };
                    assert_ne!(n & bit, 0, "{what}");
                }
            }
        }
    }
}

#[test]
fn a_whole_connection_goes_through_its_states() {
    let mut st = initial_state(proto::TCP, f::SYN);
    assert_eq!(st, s::SYN_SENT);
    assert_eq!(timeout_s(proto::TCP, st, &T), 60);
    st = next_state(st, f::SYN | f::ACK, Side::Backend);
    assert_eq!(st, s::SYN_SENT, "the SYN-ACK does not finish the handshake");
    st = next_state(st, f::ACK, Side::Client);
    assert_eq!(timeout_s(proto::TCP, st, &T), 21_600);
    st = next_state(st, f::FIN | f::ACK, Side::Backend);
    assert!(!closing(st), "half-closed keeps the established timeout");
    assert_eq!(timeout_s(proto::TCP, st, &T), 21_600);
    st = next_state(st, f::FIN | f::ACK, Side::Client);
    assert!(closing(st));
    assert_eq!(timeout_s(proto::TCP, st, &T), 10);
    st = next_state(st, f::ACK, Side::Client);
    assert!(closing(st), "the last ACK does not reopen a closed flow");
}

#[test]
fn a_forged_rst_is_undone_by_the_backend_and_a_real_one_is_not_by_the_client() {
    let est = next_state(initial_state(proto::TCP, f::SYN), f::ACK, Side::Client);
    let forged = next_state(est, f::RST, Side::Client);
    assert!(closing(forged));
    let after = next_state(forged, f::ACK, Side::Backend);
    assert!(!closing(after), "the backend went on talking");
    assert_eq!(after, est);
    let real = next_state(est, f::RST | f::ACK, Side::Backend);
    let late = next_state(real, f::ACK | 0x08, Side::Client);
    assert!(closing(late), "client data in flight does not reopen it");
}

#[test]
fn a_flow_first_seen_mid_stream_is_established_by_the_clients_next_packet() {
    // One packet proves nothing (its source may be forged): the entry
    // lives the half-open timeout until the client's next packet.
    let first = initial_state(proto::TCP, f::ACK);
    assert_eq!(first, 0);
    let t = FlowTimeouts::DEFAULT;
    assert_eq!(timeout_s(proto::TCP, first, &t), t.tcp_syn_s);
    let next = next_state(first, f::ACK, Side::Client);
    assert_eq!(next, s::ESTABLISHED);
    assert!(proves(first, next));
    assert_eq!(initial_state(proto::TCP, f::ACK | f::FIN), s::CLIENT_FIN);
    assert!(closing(initial_state(proto::TCP, f::RST)));
    assert_eq!(initial_state(proto::UDP, 0xff), 0);
}

#[test]
fn only_the_clients_first_non_syn_packet_proves_a_flow() {
    let syn = initial_state(proto::TCP, f::SYN);
    let retransmitted = next_state(syn, f::SYN, Side::Client);
    assert!(!proves(syn, retransmitted), "a SYN again proves nothing");
    let backend = next_state(syn, f::SYN | f::ACK, Side::Backend);
    assert!(
        !proves(syn, backend),
        "the SYN-ACK goes to whoever owns the address"
    );
    let ack = next_state(syn, f::ACK, Side::Client);
    assert!(proves(syn, ack), "the handshake's ACK");
    assert!(!proves(ack, next_state(ack, f::ACK, Side::Client)), "once");
    // Exhaustively: no packet of either side proves an established flow
    // again, and a backend packet never proves one.
    for state in 0..=u8::MAX {
        for flags in 0..=u8::MAX {
            let by_backend = next_state(state, flags, Side::Backend);
            assert!(!proves(state, by_backend), "{state:#x} {flags:#x}");
            if state & s::ESTABLISHED != 0 {
                assert!(!proves(state, next_state(state, flags, Side::Client)));
            }
        }
    }
}

#[test]
fn expiry_is_after_the_timeout_of_the_state_and_never_for_future_stamps() {
    let sec = NS_PER_SEC;
    let t0 = 1_000 * sec;
    for (proto, state, limit) in [
        (proto::UDP, 0, 30u32),
        (proto::TCP, s::SYN_SENT, 60),
        (proto::TCP, s::ESTABLISHED, 21_600),
        (proto::TCP, s::ESTABLISHED | s::CLIENT_FIN, 21_600),
        (proto::TCP, s::ESTABLISHED | s::BOTH_FIN, 10),
        (proto::TCP, s::SYN_SENT | s::RST, 10),
    ] {
        let l = u64::from(limit) * sec;
        assert!(
            !expired(proto, state, t0, t0 + l, &T),
            "{proto} {state:#b} at the limit"
        );
        assert!(
            expired(proto, state, t0, t0 + l + 1, &T),
            "{proto} {state:#b} past the limit"
        );
        assert!(
            !expired(proto, state, t0 + sec, t0, &T),
            "stamped after now"
        );
    }
}

/// A reverse entry is over when its flow is, but one closed by both FINs
/// (the backend may be in `TIME_WAIT`) only past `TIME_WAIT_S` too; one an
/// RST closed, or closed by FINs and then an RST, at its closing timeout.
#[test]
fn a_reverse_entry_closed_by_both_fins_outlasts_the_backends_time_wait() {
    let sec = NS_PER_SEC;
    let t0 = 1_000 * sec;
    let tw = u64::from(TIME_WAIT_S) * sec;
    let closing = u64::from(T.tcp_closing_s) * sec;
    let fins = s::ESTABLISHED | s::BOTH_FIN;
    for (proto, state, over_after) in [
        (proto::TCP, fins, tw),
        (proto::TCP, fins | s::RST, closing),
        (proto::TCP, s::ESTABLISHED | s::RST, closing),
        (proto::TCP, s::SYN_SENT | s::RST, closing),
        (proto::TCP, s::ESTABLISHED, 21_600 * sec),
        (proto::UDP, 0, u64::from(T.udp_s) * sec),
    ] {
        assert!(
            !reverse_over(proto, state, t0, t0 + over_after, &T),
            "{proto} {state:#b} at {over_after}"
        );
        assert!(
            reverse_over(proto, state, t0, t0 + over_after + 1, &T),
            "{proto} {state:#b} past {over_after}"
        );
    }
    // A closing timeout longer than TIME_WAIT rules alone.
    let long = FlowTimeouts {
        tcp_closing_s: 90,
        ..T
    };
    assert!(!reverse_over(proto::TCP, fins, t0, t0 + 90 * sec, &long));
    assert!(reverse_over(proto::TCP, fins, t0, t0 + 90 * sec + 1, &long));
}

/// Under pressure a port goes only from a flow that is done with it, or
/// whose next packet can take another: idle UDP after `udp_reclaim_s`, TCP
/// closed by both FINs after `tcp_reclaim_s`; never a live TCP flow nor one
/// an RST alone closed (forgeable), whatever its age short of expiry.
#[test]
fn under_pressure_only_idle_udp_and_tcp_closed_by_both_fins_give_their_port() {
    let sec = NS_PER_SEC;
    let t0 = 1_000 * sec;
    for st in all_states() {
        for (proto, limit) in [(proto::UDP, Some(5u32)), (proto::TCP, None)] {
            let limit = if proto == proto::TCP {
                (st & s::BOTH_FIN == s::BOTH_FIN).then_some(2u32)
            } else {
                limit
            };
            for age in [0, 1, 2, 3, 5, 6, 9] {
                let now = t0 + age * sec + 1;
                let want = limit.is_some_and(|l| age >= u64::from(l));
                assert_eq!(
                    reclaimable(proto, st, t0, now, &T),
                    want,
                    "{proto} {st:#b} {age} s after"
                );
            }
            assert!(
                !reclaimable(proto, st, t0 + sec, t0, &T),
                "stamped after now"
            );
        }
    }
    assert!(!reclaimable(proto::ICMP, 0, 0, 1_000 * sec, &T));
}

#[test]
fn flow_keys_hold_ipv4_in_the_first_four_bytes() {
    let k = FlowKey::v4([10, 0, 0, 1], [192, 0, 2, 1], 1234, 80, proto::TCP);
    assert_eq!(k.src[..4], [10, 0, 0, 1]);
    assert!(k.src[4..].iter().all(|&b| b == 0));
    assert_eq!(v4_of(&k.dst), [192, 0, 2, 1]);
    assert_eq!(k.family, family::V4);
    let r = RevNatValue::reverse_of(&k, 7, 0, 0, 5);
    assert!(r.belongs_to(&k));
    assert_eq!(r.client_key(proto::TCP, family::V4), k);
    let other = FlowKey::v4([10, 0, 0, 1], [192, 0, 2, 1], 1235, 80, proto::TCP);
    assert!(!r.belongs_to(&other));
}

#[test]
fn a_direct_flow_closes_with_the_clients_fin_on_the_node_that_sends_it_on() {
    let est = next_state(s::SYN_SENT, f::ACK, Side::Client);
    assert_eq!(direct_state(est), est, "established stays");
    let fin = next_state(est, f::FIN | f::ACK, Side::Client);
    assert!(!closing(fin), "a full-NAT flow waits for the backend's FIN");
    assert!(
        closing(direct_state(fin)),
        "the backend's FIN never passes here"
    );
    let t = FlowTimeouts::DEFAULT;
    assert_eq!(
        timeout_s(proto::TCP, direct_state(fin), &t),
        t.tcp_closing_s
    );
}
