//! The dataplane with AF_XDP ports (issue 10): for each userspace port type the agent can give
//! the uplink and the sandboxes, a throwaway node with two sandboxes passes the same real-packet
//! checks as `dataplane.rs` (steering by port, the host's ports, ARP, echo, egress spoofing),
//! and the ports in OVSDB really have that type. Needs root and Open vSwitch with AF_XDP.
//!
//! The whole of `dataplane.rs` runs with a port type too:
//! `PORTISO_TESTBED_DATAPATH='{type: netdev, userspacePorts: afxdp-nonpmd, fastPath: off}'`.

mod common;

use common::dataplane::{
    attach_web, check_arp, check_echo, check_egress, check_fragments, check_steering, lands,
    web_ranges,
};
use common::testbed_with;
use portiso::testbed::Testbed;
use std::sync::Mutex;

/// One node at a time: a PMD thread spins on a core of its own, which a 2-core machine cannot
/// give twice (nor while another node's checks count packets against timeouts).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The Interface type of a port in the node's OVS.
fn iface_type(tb: &Testbed, iface: &str) -> String {
    tb.node_cmd("ovs-vsctl", &["get", "Interface", iface, "type"])
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_string()
}

/// The host-side port of a sandbox's first interface, as OVSDB records it.
fn sandbox_port(tb: &Testbed, sandbox: &str) -> String {
    tb.node_cmd(
        "ovs-vsctl",
        &[
            "--bare",
            "--columns=name",
            "find",
            "Interface",
            &format!("external_ids:portiso-sandbox=\"default/{sandbox}\""),
        ],
    )
    .unwrap()
    .trim()
    .to_string()
}

fn runs_with(tag: &str, port_type: &str, prepare: impl FnOnce(&Testbed)) -> Testbed {
    let datapath = format!("{{type: netdev, userspacePorts: {port_type}, fastPath: off}}");
    let mut tb = testbed_with(tag, &web_ranges(), Some(&datapath), prepare);
    attach_web(&mut tb);
    let log = tb.agent_log();
    assert!(
        log.contains(&format!("port_type=\"{port_type}\""))
            || log.contains(&format!("port_type={port_type}")),
        "the port type is logged with its reason:\n{log}"
    );
    // Every port the agent made (both uplinks, both sandboxes) has the type; nothing else.
    let ports = tb
        .node_cmd(
            "ovs-vsctl",
            &[
                "--bare",
                "--columns=name",
                "find",
                "Interface",
                &format!("type={port_type}"),
            ],
        )
        .unwrap();
    let mut ports: Vec<&str> = ports.split_whitespace().collect();
    ports.sort();
    assert_eq!(ports.len(), 4, "up1, up2 and two sandbox ports: {ports:?}");
    assert!(
        ports.contains(&"up1") && ports.contains(&"up2"),
        "{ports:?}"
    );
    for p in ports.iter().filter(|p| p.starts_with("pi")) {
        assert_eq!(iface_type(&tb, p), port_type);
        let ofport = tb
            .node_cmd("ovs-vsctl", &["get", "Interface", p, "ofport"])
            .unwrap();
        assert!(ofport.trim().parse::<i32>().unwrap() > 0, "{p}: {ofport}");
    }
    check_arp(&tb);
    check_echo(&tb);
    check_steering(&tb);
    check_fragments(&tb);
    check_egress(&tb);
    // A restarted agent re-adopts the AF_XDP ports as they are and still steers.
    tb.kill_agent();
    tb.start_agent().unwrap();
    assert_eq!(iface_type(&tb, "up1"), port_type);
    assert!(tb.agent_log().contains("re-adopted attachment"));
    assert_eq!(
        lands(&tb, true, 10150, &["web2"]),
        ["web2"],
        "after the restart"
    );
    // Dropping the testbed stops the agent and the private OVS (and its PMD thread).
    tb
}

#[test]
fn afxdp_nonpmd_ports_carry_the_whole_dataplane() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut tb = runs_with("ptnon", "afxdp-nonpmd", |_| {});
    // The choice changes between runs: the uplinks follow it (same OpenFlow port numbers, so
    // the flows stay right), attached sandboxes keep their AF_XDP ports, and all still works.
    tb.kill_agent();
    tb.datapath = Some("{type: netdev, userspacePorts: system, fastPath: off}".into());
    tb.start_agent().unwrap();
    assert_eq!(iface_type(&tb, "up1"), "system");
    let web2_port = sandbox_port(&tb, "web2");
    assert_eq!(iface_type(&tb, &web2_port), "afxdp-nonpmd");
    assert!(tb.agent_log().contains("keeps its earlier port type"));
    assert_eq!(lands(&tb, false, 10151, &["web2"]), ["web2"]);
    assert_eq!(lands(&tb, true, 10152, &["web2"]), ["web2"]);
    assert_eq!(lands(&tb, false, 10300, &["web2"]), ["host"]);
}

#[test]
fn afxdp_ports_with_one_pmd_thread_carry_the_whole_dataplane() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let _tb = runs_with("ptpmd", "afxdp", |tb| {
        // One poll-mode thread, on CPU 0, however many cores the machine has.
        tb.node_cmd(
            "ovs-vsctl",
            &["set", "Open_vSwitch", ".", "other_config:pmd-cpu-mask=0x1"],
        )
        .unwrap();
    });
}
