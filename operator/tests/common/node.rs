//! What the test node holds, read from OVS and the kernel: for the tests that assert nothing
//! of a sandbox is left behind.

use portiso::testbed::Testbed;

/// The OVS ports on br-up1 other than the uplink, sorted.
pub fn sandbox_ports(tb: &Testbed) -> Vec<String> {
    let mut p: Vec<String> = tb
        .node_cmd("ovs-vsctl", &["list-ports", "br-up1"])
        .unwrap()
        .lines()
        .filter(|p| *p != "up1")
        .map(str::to_string)
        .collect();
    p.sort();
    p
}

/// Every interface of the node namespace with portiso's host-side naming, sorted.
pub fn host_ifs(tb: &Testbed) -> Vec<String> {
    let mut v: Vec<String> = tb
        .node_cmd("ip", &["-o", "link"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches(':').split('@').next().unwrap_or(n))
        .filter(|n| portiso::link::is_host_if_name(n))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The flows on br-up1 that match on or send to OpenFlow port `ofport`.
pub fn flows_of_port(tb: &Testbed, ofport: i64) -> Vec<String> {
    let (inp, out) = (format!("in_port={ofport}"), format!("output:{ofport}"));
    tb.dump_flows("br-up1")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split([',', ' '])
                .any(|t| t == inp || t.trim_start_matches("actions=") == out)
        })
        .map(str::to_string)
        .collect()
}

/// The OpenFlow port number of `iface`, -1 if OVS has none for it.
pub fn ofport(tb: &Testbed, iface: &str) -> i64 {
    tb.node_cmd("ovs-vsctl", &["get", "Interface", iface, "ofport"])
        .ok()
        .and_then(|o| o.trim().parse().ok())
        .unwrap_or(-1)
}

/// The OpenFlow port number of sandbox `name`'s interface on br-up1 (as the agent recorded
/// it in OVSDB), -1 if it has none.
pub fn sandbox_ofport(tb: &Testbed, name: &str) -> i64 {
    let rows = tb
        .node_cmd(
            "ovs-vsctl",
            &[
                "--bare",
                "--columns=ofport,external_ids",
                "find",
                "Interface",
                "external_ids:portiso-role=sandbox",
            ],
        )
        .unwrap();
    rows.split("\n\n")
        .find(|row| {
            row.split([' ', ',', '\n'])
                .filter_map(|kv| kv.strip_prefix("portiso-sandbox="))
                .any(|v| v.trim_matches('"').rsplit('/').next() == Some(name))
        })
        .and_then(|row| row.lines().next()?.trim().parse().ok())
        .unwrap_or(-1)
}
