//! `portiso status` against a real agent on a throwaway node: real sandboxes, real packets
//! (some of them spoofed), the real binary asking over the agent's socket; the answer must
//! name the sandboxes and their ports and count what OVS dropped and what the fast path
//! carried. Needs root and Open vSwitch.

mod common;

use common::dataplane::{attach_web, check_steering, web_ranges};
use common::{portrange, testbed_with};
use portiso::testbed::netns::udp_send;
use portiso::testbed::Testbed;
use serde_json::Value;
use std::net::SocketAddr;

/// Runs `portiso status ARGS` in the node namespace against the testbed's agent.
fn status(tb: &Testbed, args: &[&str]) -> String {
    let socket = tb.socket().display().to_string();
    let mut argv = vec!["status", "--socket", socket.as_str()];
    argv.extend_from_slice(args);
    tb.node_cmd(env!("CARGO_BIN_EXE_portiso"), &argv)
        .unwrap_or_else(|e| panic!("portiso status: {e}\nagent log:\n{}", tb.agent_log()))
}

fn status_json(tb: &Testbed) -> Value {
    let out = status(tb, &["--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn sandbox<'a>(node: &'a Value, name: &str) -> &'a Value {
    node["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sandbox {name} in {node:#}"))
}

fn ports(sb: &Value) -> Vec<String> {
    sb["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap().iter())
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// web1 sends UDP from ports it does not own (web2's, the host's): OVS drops them on web1's
/// own drop flow.
fn spoof_from_web1(tb: &Testbed) {
    let peer = SocketAddr::from(([198, 51, 100, 7], 8081));
    for from in [10150, 5000] {
        let _ = udp_send(&tb.sandbox_ns("web1"), peer, Some(from), "spoofed");
    }
}

/// What both testbeds show alike: the sandboxes with their ports, the uplinks, web1's drops.
fn check_common(node: &Value) {
    assert!(!node["datapath"].as_str().unwrap().is_empty(), "{node:#}");
    assert!(!node["portType"].as_str().unwrap().is_empty(), "{node:#}");
    assert!(!node["portTypeReason"].as_str().unwrap().is_empty());
    let up1 = &node["uplinks"][0];
    assert_eq!(up1["name"], "up1", "{node:#}");
    assert_eq!(up1["bridge"], "br-up1");
    assert_eq!(up1["address"], "198.51.100.1/24");
    assert!(up1["ofport"].as_u64().unwrap() > 0);
    assert!(!up1["mac"].as_str().unwrap().is_empty());
    assert!(up1["flows"].as_u64().unwrap() > 10, "{up1:#}");
    assert_eq!(node["uplinks"][1]["name"], "up2");

    let web1 = sandbox(node, "web1");
    let web2 = sandbox(node, "web2");
    assert_eq!(web1["namespace"], "default");
    assert_eq!(web1["uplink"], "up1");
    assert!(
        web1["hostIf"].as_str().unwrap().starts_with("pi"),
        "{web1:#}"
    );
    assert!(web1["ofport"].as_u64().unwrap() > 0);
    assert_eq!(ports(web1), ["TCP 10000-10099", "UDP 10000-10099"]);
    assert_eq!(ports(web2), ["TCP 10100-10199", "UDP 10100-10199"]);
    assert_eq!(web1["ranges"][0]["range"], "default/web1");
    assert_eq!(web1["localPortRange"], "10000-10099");
    let dropped = web1["dropped"].as_u64().unwrap();
    assert!(dropped >= 2, "web1's spoofed packets are counted: {web1:#}");
    assert_eq!(web1["drops"][0]["reason"], "egress not allowed");
    assert_eq!(web1["drops"][0]["packets"].as_u64(), Some(dropped));
    assert_eq!(web2["dropped"].as_u64(), Some(0), "{web2:#}");
    assert!(node.get("warnings").is_none(), "{node:#}");
}

#[test]
fn status_shows_sandboxes_ports_drops_and_the_fast_path() {
    // The default datapath settings, whatever the environment asks of other tests.
    let mut tb = testbed_with("ststat", &web_ranges(), Some("{}"), |_| {});
    attach_web(&mut tb);
    check_steering(&tb);
    spoof_from_web1(&tb);

    let node = status_json(&tb);
    check_common(&node);
    let fast = node["fastPath"].as_str().unwrap();
    if node["datapath"] == "netdev" {
        // The fast path runs by default beside the userspace datapath.
        assert!(fast.starts_with("on"), "{node:#}");
    }
    if fast.starts_with("on") {
        assert_eq!(node["fastPathMode"], "generic", "{node:#}");
        let up1 = &node["uplinks"][0]["fastPath"];
        assert!(
            up1["fastPackets"].as_u64().unwrap() > 0,
            "the peer's packets to the sandboxes took the fast path: {node:#}"
        );
        assert!(up1["fastBytes"].as_u64().unwrap() > 0);
        // web1's answers went out through the fast path, its spoofed packets did not.
        let web1 = &sandbox(&node, "web1")["fastPath"];
        assert!(web1["fastPackets"].as_u64().unwrap() > 0, "{web1:#}");
        assert!(web1["slowPortNotOwned"].as_u64().unwrap() >= 2, "{web1:#}");
    }

    let text = status(&tb, &[]);
    eprintln!("portiso status:\n{text}");
    for want in [
        "default/web1",
        "default/web2",
        "TCP 10000-10099, UDP 10000-10099",
        "TCP 10100-10199, UDP 10100-10199",
        "egress not allowed",
        "br-up1",
        "198.51.100.1/24",
        fast,
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
}

#[test]
fn status_without_the_fast_path_says_why_and_lists_refused_ranges() {
    // zlate overlaps web1, which wins by name.
    let ranges = web_ranges() + &portrange("zlate", "zlate", &[("TCP", 10050, 10060)], &[]);
    let mut tb = testbed_with("ststoff", &ranges, Some("{fastPath: off}"), |_| {});
    attach_web(&mut tb);
    spoof_from_web1(&tb);

    let node = status_json(&tb);
    check_common(&node);
    let fast = node["fastPath"].as_str().unwrap();
    assert!(fast.starts_with("off: "), "{node:#}");
    assert!(fast.contains("fastPath: off"), "{node:#}");
    assert!(node.get("fastPathMode").is_none(), "{node:#}");
    assert!(node["uplinks"][0].get("fastPath").is_none(), "{node:#}");
    assert!(sandbox(&node, "web1").get("fastPath").is_none());
    let refused = node["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{node:#}");
    assert_eq!(refused[0]["range"], "default/zlate");
    assert!(!refused[0]["reason"].as_str().unwrap().is_empty());

    let text = status(&tb, &[]);
    for want in ["default/web1", "TCP 10100-10199", "default/zlate", fast] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    assert!(!text.contains("FAST PKTS"), "{text}");

    // With the agent gone, the error names the socket.
    tb.kill_agent();
    let err = tb
        .node_cmd(
            env!("CARGO_BIN_EXE_portiso"),
            &["status", "--socket", &tb.socket().display().to_string()],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&tb.socket().display().to_string()) && err.contains("portiso agent"),
        "{err}"
    );
}
