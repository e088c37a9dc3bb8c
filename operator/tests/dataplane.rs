//! The node dataplane with real packets: real OVS (userspace datapath), real namespaces and
//! veths, the real agent and CNI plugin. Each test builds its own throwaway node (see
//! `portiso::testbed`) and removes it, also when it fails. Needs root and Open vSwitch.

mod common;

use common::dataplane::{
    check_arp, check_echo, check_egress, check_fragments, check_steering, lands, two_sandboxes,
    LISTEN,
};
use common::{portrange, testbed};
use portiso::testbed::netns::{count_frames, frame, tcp_send, Listener};
use std::time::Duration;

#[test]
fn tcp_and_udp_go_to_the_sandbox_that_owns_the_port_and_the_rest_to_the_host() {
    let tb = two_sandboxes("pdport");
    check_steering(&tb);
    let log = tb.agent_log();
    assert!(log.contains("datapath=netdev"), "datapath choice is logged");
    assert!(log.contains("OVS port type chosen"), "port type is logged");
    // Run with PORTISO_TESTBED_DATAPATH='{…, userspacePorts: X, …}': really on X ports.
    if let Some(ports) = tb
        .datapath
        .as_deref()
        .and_then(|d| d.split("userspacePorts:").nth(1))
        .and_then(|r| r.split([',', '}']).next())
        .map(str::trim)
        .filter(|p| *p != "auto")
    {
        assert!(
            log.contains(&format!("port_type=\"{ports}\"")),
            "ports of type {ports}:\n{log}"
        );
    }
}

#[test]
fn arp_requests_are_answered_by_the_host_only_and_replies_reach_everyone() {
    check_arp(&two_sandboxes("pdarp"));
}

#[test]
fn echo_requests_are_answered_by_the_host_and_replies_go_only_to_the_pinging_sandbox() {
    check_echo(&two_sandboxes("pdicmp"));
}

#[test]
fn egress_allows_only_own_ports_with_the_shared_addresses() {
    check_egress(&two_sandboxes("pdegr"));
}

#[test]
fn fragmented_udp_reaches_its_owner_whole_and_leaves_only_from_own_ports() {
    check_fragments(&two_sandboxes("pdfrag"));
}

#[test]
fn a_promiscuous_sandbox_never_sees_a_neighbours_traffic() {
    let tb = two_sandboxes("pdprom");
    let web2 = tb.sandbox_ns("web2");
    portiso::exec::run(
        "ip",
        &[
            "netns", "exec", &web2, "ip", "link", "set", "eth0", "promisc", "on",
        ],
    )
    .unwrap();
    let spy = count_frames(&web2, Duration::from_secs(3), frame::to_sandbox_ports).unwrap();
    assert_eq!(lands(&tb, false, 10010, &["web1"]), ["web1"]);
    assert_eq!(lands(&tb, true, 10011, &["web1"]), ["web1"]);
    assert_eq!(
        spy.join().unwrap().unwrap(),
        0,
        "web2 saw none of web1's packets"
    );
}

#[test]
fn multi_homed_sandbox_gets_one_interface_per_uplink() {
    let ranges = portrange("edge-a", "edge", &[("TCP", 11000, 11099)], &["up1"])
        + &portrange("edge-b", "edge", &[("TCP", 12000, 12099)], &["up2"]);
    let mut tb = testbed("pdmulti", &ranges);
    let r1 = tb.attach("edge", "up1").unwrap();
    let r2 = tb.attach("edge", "up2").unwrap();
    assert_eq!(r1["ips"][0]["address"], "198.51.100.1/24");
    assert_eq!(r2["ips"][0]["address"], "203.0.113.1/24");
    assert_eq!(r2["interfaces"][0]["name"], "eth1");
    let edge = tb.sandbox_ns("edge");
    for (uplink, port) in [(&tb.uplinks[0], 11000), (&tb.uplinks[1], 12000)] {
        let l = Listener::start(&edge, false, port, LISTEN).unwrap();
        let h = Listener::start(&tb.node, false, port, LISTEN).unwrap();
        assert_eq!(
            tcp_send(&tb.outside, uplink.at(port), None, "hi").unwrap(),
            "hi"
        );
        assert_eq!(l.received().unwrap(), ["hi"], "via {}", uplink.name);
        assert!(h.received().unwrap().is_empty());
    }
    // A range bound to up1 gives nothing on up2: port 11000 on up2 is the host's.
    let h = Listener::start(&tb.node, false, 11001, LISTEN).unwrap();
    assert_eq!(
        tcp_send(&tb.outside, tb.uplinks[1].at(11001), None, "host").unwrap(),
        "host"
    );
    assert_eq!(h.received().unwrap(), ["host"]);
}
