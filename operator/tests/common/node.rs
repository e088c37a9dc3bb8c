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

/// What OpenFlow meter `id` on br-up1 counted, from `ovs-ofctl meter-stats`: (packets that
/// reached it, packets its band dropped).
pub fn meter_stats(tb: &Testbed, id: u32) -> (u64, u64) {
    let stats = tb
        .node_cmd(
            "ovs-ofctl",
            &[
                "-O",
                "OpenFlow14",
                "meter-stats",
                "br-up1",
                &format!("meter={id}"),
            ],
        )
        .unwrap();
    // "meter:65537 flow_count:1 packet_in_count:1234 ... 0: packet_count:1000 ..."
    let number = |after: &str| -> u64 {
        stats
            .split(after)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (number("packet_in_count:"), number("0: packet_count:"))
}

/// Starts the agent with its metrics endpoint on a port free in the node's namespace (where
/// the agent binds it); returns the endpoint's address.
pub fn start_agent_with_metrics(tb: &mut Testbed) -> std::net::SocketAddr {
    let port = portiso::testbed::netns::run_in(&tb.node, || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
    })
    .unwrap()
    .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    tb.start_agent_with(&["--metrics-addr", &addr.to_string()], &[])
        .unwrap();
    addr
}

/// The raw HTTP reply to `GET /metrics` from the agent's endpoint at `addr`, asked over a bare
/// TCP connection in the node's namespace, where the agent listens.
pub fn metrics_reply(tb: &Testbed, addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    portiso::testbed::netns::run_in(&tb.node, move || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("scrape {addr}: {e}\nagent log:\n{}", tb.agent_log()))
}
