//! Golden tests of the flow compiler: each scenario's compiled table must equal its
//! `tests/golden/<name>.flows` file. After an intended change, regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p portiso --test golden_flows` and review the diff.

use portiso::flows::{compile_bridge, BridgeState, Datapath, SandboxPorts};
use portiso::model::Protocol::{Tcp, Udp};
use std::net::Ipv4Addr;
use std::path::PathBuf;

fn check(name: &str, state: &BridgeState) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.flows"));
    let got = compile_bridge(state).render();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        got == want,
        "{name}: compiled flows differ from {}; if intended, rerun with UPDATE_GOLDEN=1\n--- want\n{want}\n--- got\n{got}",
        path.display()
    );
}

fn bridge(sandboxes: Vec<SandboxPorts>) -> BridgeState {
    BridgeState {
        egress_limit: None,
        meters_available: true,
        datapath: Datapath::Netdev,
        uplink_ofport: 1,
        shared_ip: Ipv4Addr::new(198, 51, 100, 1),
        shared_mac: "02:00:00:00:00:01".into(),
        sandboxes,
    }
}

#[test]
fn no_sandboxes_everything_is_the_hosts() {
    check("empty", &bridge(vec![]));
}

#[test]
fn two_sandboxes_with_tcp_and_udp_ranges() {
    check("two-sandboxes", &bridge(two_sandboxes()));
}

fn two_sandboxes() -> Vec<SandboxPorts> {
    vec![
        SandboxPorts {
            sandbox: "default/web1".into(),
            ofport: 2,
            ports: vec![(Tcp, 10000, 10099), (Udp, 10000, 10099)],
        },
        SandboxPorts {
            sandbox: "default/web2".into(),
            ofport: 3,
            ports: vec![(Tcp, 10100, 10199)],
        },
    ]
}

/// The kernel datapath (not available on the test machines, so only golden-tested): its
/// conntrack hands on a reassembled datagram whole, which goes back through the port checks
/// (`resubmit`) and never to the agent. So fragments go to conntrack unmetered (a meter there
/// would cap all fragmented UDP of the node at the slow path's rate), and the slow-path meters
/// sit after conntrack, right before `controller`, on what would go to the agent only: table
/// 12's `nw_frag=yes` flow (the uplink's meter) and one table-21 flow per sandbox (its own,
/// by `in_port`, which conntrack keeps). Everything else is as in `two-sandboxes`, the
/// userspace datapath's, where the meters stay before conntrack to keep a flood out of its
/// reassembly.
#[test]
fn on_the_kernel_datapath_fragments_are_metered_after_conntrack() {
    let mut state = bridge(two_sandboxes());
    state.datapath = Datapath::System;
    check("kernel-datapath", &state);
}

/// A datapath without OpenFlow meters (some kernel datapaths): the same flows as
/// `kernel-datapath` with no `meter:` anywhere, even with `sandboxEgressLimit` set (the agent
/// warns that it cannot be honoured), since OVS refuses every flow that names a missing meter.
/// Outbound fragments go to the agent through one flow for all sandboxes, as on the
/// userspace datapath.
#[test]
fn a_datapath_without_meters_gets_the_same_flows_without_any_meter() {
    let mut state = bridge(two_sandboxes());
    state.datapath = Datapath::System;
    state.meters_available = false;
    state.egress_limit = Some(portiso::flows::MeterRate {
        packets_per_second: 1000,
        burst: 100,
    });
    check("no-meters", &state);
    let text = compile_bridge(&state).render();
    assert!(!text.contains("meter"), "{text}");
    // Flow for flow the metered table, meters left out (and its per-sandbox table-21 flows
    // one).
    state.meters_available = true;
    state.egress_limit = None;
    let metered = compile_bridge(&state).render();
    let unmetered: String = metered
        .lines()
        .filter(|l| !l.contains("nw_frag=yes,in_port="))
        .map(|l| match l.split_once("meter:") {
            Some((head, tail)) => format!("{head}{}\n", tail.split_once(',').unwrap().1),
            None => format!("{l}\n"),
        })
        .collect();
    let strip_cookies = |t: &str| -> Vec<String> {
        let mut v: Vec<String> = t
            .lines()
            .filter(|l| !(l.contains("table=21") && l.contains("nw_frag=yes")))
            .map(|l| l.split_once(',').map_or(l, |x| x.1).to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(strip_cookies(&unmetered), strip_cookies(&text));
}

#[test]
fn single_ports_and_unaligned_spans() {
    check(
        "odd-spans",
        &bridge(vec![SandboxPorts {
            sandbox: "sip/pbx".into(),
            ofport: 7,
            ports: vec![(Udp, 5060, 5060), (Udp, 16385, 16390)],
        }]),
    );
}

#[test]
fn a_sandbox_without_ports_still_gets_arp_icmp_and_its_drop_rule() {
    check(
        "portless",
        &bridge(vec![SandboxPorts {
            sandbox: "default/idle".into(),
            ofport: 4,
            ports: vec![],
        }]),
    );
}

#[test]
fn compiling_is_deterministic_and_order_independent() {
    let a = SandboxPorts {
        sandbox: "a".into(),
        ofport: 2,
        ports: vec![(Tcp, 10000, 10009)],
    };
    let b = SandboxPorts {
        sandbox: "b".into(),
        ofport: 3,
        ports: vec![(Udp, 10010, 10019)],
    };
    let one = compile_bridge(&bridge(vec![a.clone(), b.clone()]));
    let two = compile_bridge(&bridge(vec![b, a]));
    // The ARP-reply flood lists ports in sandbox order; everything else is a set.
    let strip = |t: &portiso::flows::FlowTable| -> Vec<String> {
        t.flows
            .iter()
            .filter(|f| !f.matches.contains("arp_op=2"))
            .map(|f| f.to_string())
            .collect()
    };
    assert_eq!(strip(&one), strip(&two));
}
