//! The node's own parts failing under it, with real packets: ovs-vswitchd and ovsdb-server
//! restarted while sandboxes are attached. Needs root and Open vSwitch.

mod common;

use common::dataplane::{arrivals_at_web1_during, attach_web, check_steering, web_ranges};
use common::{canonical_flows, testbed_with};
use portiso::testbed::Testbed;
use std::time::{Duration, Instant};

const OVS_ALONE: &str = "{fastPath: off, userspacePorts: system}";

fn bridge_has_the_shared_address(tb: &Testbed) -> bool {
    tb.node_cmd("ip", &["-4", "-o", "addr", "show", "dev", "br-up1"])
        .is_ok_and(|a| a.contains("198.51.100.1/24"))
}

/// Waits (bounded) until the flows equal `want` and the bridge has its address again;
/// returns how long that took.
fn wait_restored(tb: &Testbed, want: &[String], since: Instant) -> Duration {
    for _ in 0..200 {
        if canonical_flows(tb) == want && bridge_has_the_shared_address(tb) {
            return since.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "not restored after {:?}: flows now\n{}\nagent log:\n{}",
        since.elapsed(),
        canonical_flows(tb).join("\n"),
        tb.agent_log()
    );
}

#[test]
fn a_restarted_ovs_vswitchd_gets_its_flows_and_address_back() {
    let mut tb = testbed_with("rlvsw", &web_ranges(), Some(OVS_ALONE), |_| {});
    attach_web(&mut tb);
    let before = canonical_flows(&tb);
    assert!(before.len() > 20, "{before:?}");
    tb.restart_ovs_daemon("ovs-vswitchd").unwrap();
    // ovs-vswitchd --detach returns once it runs: from here the bridge has no flows.
    let outage = wait_restored(&tb, &before, Instant::now());
    eprintln!("ovs-vswitchd restarted: its flows were back {outage:?} after it came up");
    assert!(outage < Duration::from_secs(10), "{outage:?}");
    check_steering(&tb);

    // An internal port re-created by OVS comes without the shared address: put back too.
    tb.node_cmd("ip", &["addr", "flush", "dev", "br-up1"])
        .unwrap();
    let gone = Instant::now();
    let outage = wait_restored(&tb, &before, gone);
    eprintln!("the bridge's address was back {outage:?} after it was removed");
    assert!(tb.agent_log().contains("lost the shared address"));
    check_steering(&tb);

    // The agent diffs against what it installed, and notices by the flow count when OVS
    // holds something else: a flow deleted by hand comes back.
    tb.node_cmd("ovs-ofctl", &["del-flows", "br-up1", "table=10,arp"])
        .unwrap();
    assert_ne!(canonical_flows(&tb), before, "the test removed no flow");
    let outage = wait_restored(&tb, &before, Instant::now());
    eprintln!("flows deleted by hand were back after {outage:?}");
    assert!(tb
        .agent_log()
        .contains("differ from what the agent installed"));
}

#[test]
fn a_restarted_ovsdb_server_changes_nothing_and_attaching_works_after() {
    let mut tb = testbed_with("rldb", &web_ranges(), Some(OVS_ALONE), |_| {});
    tb.attach("web1", "up1").unwrap();
    let before = canonical_flows(&tb);
    tb.restart_ovs_daemon("ovsdb-server").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(canonical_flows(&tb), before, "flows live in ovs-vswitchd");
    tb.attach("web2", "up1").unwrap();
    check_steering(&tb);
}

#[test]
fn with_the_fast_path_traffic_by_port_keeps_flowing_while_ovs_vswitchd_restarts() {
    let mut tb = testbed_with("rlfast", &web_ranges(), Some("{fastPath: on}"), |_| {});
    attach_web(&mut tb);
    let before = canonical_flows(&tb);
    // ARP for the shared address is answered through OVS, so a peer whose neighbour entry
    // happened to need re-validation while ovs-vswitchd was down would hold its datagrams back
    // (and drop past its queue): pin the entry, so that what is measured is traffic by port.
    let mac = tb.node_cmd("cat", &["/sys/class/net/up1/address"]).unwrap();
    tb.out_cmd(
        "ip",
        &[
            "neigh",
            "replace",
            "198.51.100.1",
            "lladdr",
            mac.trim(),
            "dev",
            "eth1",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    let n = 2000;
    let t0 = Instant::now();
    let got = arrivals_at_web1_during(&mut tb, n, |tb| {
        tb.restart_ovs_daemon("ovs-vswitchd").unwrap()
    });
    assert_eq!(got, n, "datagrams while OVS restarted");
    wait_restored(&tb, &before, t0);
    check_steering(&tb);
}
