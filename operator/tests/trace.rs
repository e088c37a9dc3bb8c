//! `portiso trace` against a real agent and a real OVS on a throwaway node: the real binary
//! asks the agent over its socket, the agent runs `ovs-appctl ofproto/trace`, and the answer
//! must name who receives each packet, the PortRange that decided, the flow and the fast
//! path's part; a real packet must land where the trace says. Needs root and Open vSwitch.

mod common;

use common::dataplane::{attach_web, lands, web_ranges};
use common::testbed_with;
use portiso::testbed::Testbed;
use serde_json::Value;

/// Runs `portiso trace ARGS` in the node namespace against the testbed's agent.
fn trace_cmd(tb: &Testbed, args: &[&str]) -> Result<String, portiso::exec::ExecError> {
    let socket = tb.socket().display().to_string();
    let mut argv = vec!["trace", "--socket", socket.as_str()];
    argv.extend_from_slice(args);
    tb.node_cmd(env!("CARGO_BIN_EXE_portiso"), &argv)
}

fn trace_text(tb: &Testbed, args: &[&str]) -> String {
    trace_cmd(tb, args).unwrap_or_else(|e| {
        panic!(
            "portiso trace {args:?}: {e}\nagent log:\n{}",
            tb.agent_log()
        )
    })
}

fn trace_json(tb: &Testbed, args: &[&str]) -> Value {
    let mut argv = vec!["--json"];
    argv.extend_from_slice(args);
    let out = trace_text(tb, &argv);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The error `portiso trace ARGS` fails with.
fn trace_error(tb: &Testbed, args: &[&str]) -> String {
    match trace_cmd(tb, args) {
        Ok(out) => panic!("portiso trace {args:?} succeeded: {out}"),
        Err(e) => e.to_string(),
    }
}

/// The receivers of a report as (kind, name).
fn receivers(t: &Value) -> Vec<(String, String)> {
    t["receivers"]
        .as_array()
        .unwrap_or_else(|| panic!("no receivers in {t:#}"))
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The flow that decided: the last one the packet met.
fn deciding(t: &Value) -> &Value {
    t["flows"].as_array().unwrap().last().expect("a flow")
}

fn reasons(t: &Value) -> String {
    t["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The deciding flow is one the bridge really holds, under the cookie the report names.
fn check_cookie_installed(tb: &Testbed, t: &Value) {
    let cookie = deciding(t)["cookie"]
        .as_str()
        .expect("the agent's flow has a cookie");
    let flows = tb.dump_flows("br-up1").unwrap();
    assert!(
        flows.contains(&format!("cookie={cookie},")),
        "{cookie} not installed:\n{flows}"
    );
}

fn to_sandbox(tb: &Testbed, proto: &str, dst: &str, sandbox: &str, range: &str) -> Value {
    let t = trace_json(tb, &[proto, "--src", "198.51.100.7:5000", "--dst", dst]);
    assert_eq!(receivers(&t), [("sandbox".into(), sandbox.into())], "{t:#}");
    assert_eq!(t["dropped"], false);
    assert_eq!(t["portRange"], range, "{t:#}");
    assert_eq!(t["uplink"], "up1");
    assert!(t["verdict"].as_str().unwrap().contains(sandbox), "{t:#}");
    assert!(
        reasons(&t).contains(&format!("PortRange {range} gives")),
        "{t:#}"
    );
    let flow = deciding(&t);
    assert_eq!(
        (flow["table"].as_u64(), flow["priority"].as_u64()),
        (Some(10), Some(200)),
        "{t:#}"
    );
    assert!(
        flow["matches"].as_str().unwrap().contains("tp_dst="),
        "{flow:#}"
    );
    assert_ne!(t["datapathActions"], "drop");
    check_cookie_installed(tb, &t);
    t
}

#[test]
fn trace_names_who_receives_each_packet_and_why() {
    let mut tb = testbed_with("trsteer", &web_ranges(), Some("{}"), |_| {});
    attach_web(&mut tb);

    // TCP and UDP by destination port, to the sandbox whose PortRange gives it.
    let t = to_sandbox(
        &tb,
        "udp",
        "198.51.100.1:10005",
        "default/web1",
        "default/web1",
    );
    assert!(
        reasons(&t).contains("gives UDP 10000-10099 to sandbox default/web1"),
        "{t:#}"
    );
    let web1 = &t["receivers"][0];
    assert!(web1["hostIf"].as_str().unwrap().starts_with("pi"), "{t:#}");
    assert_eq!(web1["ofport"], 2, "web1 was attached first");
    to_sandbox(
        &tb,
        "tcp",
        "198.51.100.1:10150",
        "default/web2",
        "default/web2",
    );
    // The fast path, which runs beside the userspace datapath by default, takes the same way.
    let fast = t["fastPath"].as_str().unwrap();
    if fast.starts_with("off") {
        assert!(fast.contains("OVS carries every packet"), "{t:#}");
    } else {
        assert!(fast.contains("redirects it straight to pi"), "{fast}");
        assert!(
            fast.contains("default/web1") && !fast.contains("disagree"),
            "{fast}"
        );
    }
    // ...and a real datagram lands there.
    assert_eq!(lands(&tb, true, 10005, &["web1", "web2"]), ["web1"]);

    // A port in no range: the host's.
    let t = trace_json(&tb, &["tcp", "--dst", "198.51.100.1:10200"]);
    assert_eq!(receivers(&t), [("host".into(), "host".into())], "{t:#}");
    assert!(t.get("portRange").is_none(), "{t:#}");
    assert!(
        reasons(&t).contains("no PortRange gives TCP 10200"),
        "{t:#}"
    );
    assert_eq!(deciding(&t)["priority"], 0, "the inbound catch-all: {t:#}");
    if !t["fastPath"].as_str().unwrap().starts_with("off") {
        assert!(
            t["fastPath"].as_str().unwrap().contains("passes it to OVS"),
            "{t:#}"
        );
    }
    assert_eq!(lands(&tb, false, 10200, &["web1", "web2"]), ["host"]);

    // An ARP request for the shared address: the host answers it.
    let t = trace_json(
        &tb,
        &["arp", "--src", "198.51.100.7", "--dst", "198.51.100.1"],
    );
    assert_eq!(receivers(&t), [("host".into(), "host".into())], "{t:#}");
    assert!(t["flow"].as_str().unwrap().contains("arp_op=1"), "{t:#}");
    assert_eq!(deciding(&t)["priority"], 290, "{t:#}");
    check_cookie_installed(&tb, &t);

    // A sandbox sending from a port it does not own: dropped by the egress check, which names
    // whose port it is.
    let t = trace_json(
        &tb,
        &[
            "udp",
            "--from",
            "default/web1",
            "--src",
            "10150",
            "--dst",
            "198.51.100.7:53",
        ],
    );
    assert_eq!(t["dropped"], true, "{t:#}");
    assert!(receivers(&t).is_empty());
    assert_eq!(t["datapathActions"], "drop", "{t:#}");
    let why = reasons(&t);
    assert!(
        why.contains(
            "egress check: source port UDP 10150 is not in a PortRange sandbox default/web1 holds"
        ),
        "{why}"
    );
    assert!(
        why.contains("sandbox default/web2's (PortRange default/web2)"),
        "{why}"
    );
    let flow = deciding(&t);
    assert_eq!(
        (flow["table"].as_u64(), flow["priority"].as_u64()),
        (Some(20), Some(10)),
        "web1's own drop flow: {t:#}"
    );
    assert!(t["verdict"].as_str().unwrap().contains("is dropped"));
    check_cookie_installed(&tb, &t);
    // A host port (in no range at all), and a forged source address: dropped too.
    let t = trace_json(&tb, &["tcp", "--from", "default/web1", "--src", "7"]);
    assert_eq!(t["dropped"], true, "{t:#}");
    assert!(
        reasons(&t).contains("source port TCP 7 is not in a PortRange"),
        "{t:#}"
    );
    let t = trace_json(
        &tb,
        &[
            "udp",
            "--from",
            "default/web1",
            "--src",
            "198.51.100.99:10050",
        ],
    );
    assert_eq!(t["dropped"], true, "{t:#}");
    assert!(
        reasons(&t).contains("198.51.100.99 is not the shared address"),
        "{t:#}"
    );
    // From its own port: out the uplink, by its PortRange.
    let t = trace_json(&tb, &["udp", "--from", "default/web1", "--src", "10050"]);
    assert_eq!(receivers(&t), [("uplink".into(), "up1".into())], "{t:#}");
    assert_eq!(t["portRange"], "default/web1");
    assert_eq!(deciding(&t)["priority"], 200, "{t:#}");

    // The text says the same, for people.
    let text = trace_text(&tb, &["udp", "--from", "default/web1", "--src", "10150"]);
    eprintln!("portiso trace:\n{text}");
    for want in [
        "from sandbox default/web1 is dropped",
        "Why:",
        "egress check",
        "Fast path:",
        "Flows it met on br-up1:",
        "ovs-appctl ofproto/trace br-up1 'in_port=2,udp,",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let text = trace_text(&tb, &["udp", "--dst", "198.51.100.1:10005"]);
    eprintln!("portiso trace:\n{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("goes to sandbox default/web1 (pi"),
        "{text}"
    );
}

#[test]
fn trace_errors_say_what_to_change_and_the_fast_path_may_be_off() {
    let mut tb = testbed_with("trerr", &web_ranges(), Some("{fastPath: off}"), |_| {});
    attach_web(&mut tb);

    let t = trace_json(&tb, &["udp", "--dst", "198.51.100.1:10005"]);
    assert!(
        t["fastPath"].as_str().unwrap().starts_with("off: "),
        "{t:#}"
    );
    assert_eq!(receivers(&t), [("sandbox".into(), "default/web1".into())]);
    // The second uplink is found by its shared address.
    let t = trace_json(&tb, &["udp", "--dst", "203.0.113.1:10005"]);
    assert_eq!(t["uplink"], "up2", "{t:#}");
    assert_eq!(
        receivers(&t),
        [("host".into(), "host".into())],
        "no sandbox on up2: {t:#}"
    );

    // ICMP errors go to the agent, which relays them; echo replies through conntrack, whose
    // real state the trace cannot see (and says so).
    let t = trace_json(
        &tb,
        &[
            "icmp",
            "--type",
            "3",
            "--code",
            "3",
            "--dst",
            "198.51.100.1",
        ],
    );
    assert_eq!(receivers(&t), [("agent".into(), "agent".into())], "{t:#}");
    assert!(
        deciding(&t)["meaning"]
            .as_str()
            .unwrap()
            .contains("passes it on"),
        "{t:#}"
    );
    let t = trace_json(&tb, &["icmp", "--type", "0", "--dst", "198.51.100.1"]);
    assert_eq!(receivers(&t), [("host".into(), "host".into())], "{t:#}");
    assert_eq!(deciding(&t)["table"], 11, "after conntrack: {t:#}");
    assert!(reasons(&t).contains("conntrack"), "{t:#}");
    // The host's own packets go straight out.
    let t = trace_json(&tb, &["tcp", "--from", "host", "--src", "198.51.100.1"]);
    assert_eq!(receivers(&t), [("uplink".into(), "up1".into())], "{t:#}");

    let e = trace_error(&tb, &["udp", "--from", "default/web9", "--src", "10005"]);
    assert!(e.contains("no sandbox default/web9 is attached"), "{e}");
    assert!(
        e.contains("default/web1 (uplink up1)") && e.contains("default/web2"),
        "{e}"
    );
    let e = trace_error(&tb, &["udp", "--dst", "10005"]);
    assert!(
        e.contains("--uplink") && e.contains("up1 (198.51.100.1)"),
        "{e}"
    );
    let e = trace_error(&tb, &["udp", "--uplink", "up1"]);
    assert!(e.contains("destination port") && e.contains("--dst"), "{e}");
    let e = trace_error(&tb, &["udp", "--uplink", "eth9", "--dst", "1"]);
    assert!(e.contains("uplink \"eth9\"") && e.contains("up2"), "{e}");
    let e = trace_error(&tb, &["udp", "--dst", "198.51.100.1:99999"]);
    assert!(e.contains("--dst") && e.contains("not a port"), "{e}");
}
