//! The node dataplane with real packets: real OVS (userspace datapath), real namespaces and
//! veths, the real agent and CNI plugin. Needs root and Open vSwitch installed.

mod common;

use common::{portrange, testbed};
use portiso::testbed::netns::{tcp_send, Listener};
use std::time::Duration;

const LISTEN: Duration = Duration::from_secs(3);

/// Where a connection to `port` lands: one listener in the host and in each sandbox.
fn tcp_lands(tb: &portiso::testbed::Testbed, port: u16, sandboxes: &[&str]) -> Vec<String> {
    let mut who = vec![("host".to_string(), Listener::start(&tb.node, false, port, LISTEN).unwrap())];
    for s in sandboxes {
        who.push((s.to_string(), Listener::start(&tb.sandbox_ns(s), false, port, LISTEN).unwrap()));
    }
    let echoed = tcp_send(&tb.outside, tb.uplinks[0].at(port), None, &format!("to {port}"));
    let mut landed = Vec::new();
    for (name, l) in who {
        let got = l.received().unwrap();
        if got.iter().any(|m| m == &format!("to {port}")) {
            landed.push(name);
        }
    }
    let msg = format!("to {port}");
    let expected_echo = if landed.is_empty() { None } else { Some(msg.as_str()) };
    assert_eq!(echoed.as_ref().ok().map(String::as_str), expected_echo, "the sender sees the answer of whoever got it: {echoed:?}\n{}", tb.dump_flows("br-up1").unwrap());
    landed
}

#[test]
fn tcp_goes_to_the_sandbox_that_owns_the_port_and_the_rest_to_the_host() {
    let ranges = portrange("web1", "web1", &[("TCP", 10000, 10099)], &[])
        + &portrange("web2", "web2", &[("TCP", 10100, 10199)], &[]);
    let mut tb = testbed("pdtcp", &ranges);
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    assert_eq!(tcp_lands(&tb, 10000, &["web1", "web2"]), vec!["web1"]);
    assert_eq!(tcp_lands(&tb, 10099, &["web1", "web2"]), vec!["web1"]);
    assert_eq!(tcp_lands(&tb, 10100, &["web1", "web2"]), vec!["web2"]);
    assert_eq!(tcp_lands(&tb, 10200, &["web1", "web2"]), vec!["host"]);
    assert_eq!(tcp_lands(&tb, 22, &["web1", "web2"]), vec!["host"]);
}

#[test]
#[ignore]
fn debug_keep() {
    let ranges = portrange("web1", "web1", &[("TCP", 10000, 10099), ("UDP", 10000, 10099)], &[]);
    let mut tb = testbed("pddbg", &ranges);
    tb.attach("web1", "up1").unwrap();
    std::thread::sleep(Duration::from_secs(100));
}
