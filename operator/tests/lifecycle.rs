//! Attach, detach, agent restart, PortRange edits and refusals, with the real agent, CNI plugin
//! and OVS, and real packets. Needs root and Open vSwitch.

mod common;

use common::{portrange, testbed};
use portiso::testbed::Testbed;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn ranges() -> String {
    portrange("web1", "web1", &[("TCP", 10000, 10099)], &[])
        + &portrange("web2", "web2", &[("TCP", 10100, 10199)], &[])
}

fn lands(tb: &Testbed, port: u16) -> Vec<String> {
    tb.probe(false, 0, port, &["web1", "web2"]).unwrap().landed
}

/// cookie -> n_packets of every flow on the bridge.
fn counters(tb: &Testbed) -> BTreeMap<String, u64> {
    tb.dump_flows("br-up1")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let cookie = l.split("cookie=").nth(1)?.split(',').next()?.to_string();
            let n = l
                .split("n_packets=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((cookie, n))
        })
        .collect()
}

fn ports(tb: &Testbed) -> Vec<String> {
    tb.node_cmd("ovs-vsctl", &["list-ports", "br-up1"])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn detaching_one_sandbox_leaves_the_other_untouched_and_del_is_idempotent() {
    let mut tb = testbed("lcdel", &ranges());
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    assert_eq!(lands(&tb, 10100), ["web2"]);
    let before = counters(&tb);
    assert_eq!(ports(&tb).len(), 3, "uplink + two sandboxes");

    let (ok, out) = tb.cni("DEL", "web1", "eth0", "up1", "1.0.0").unwrap();
    assert!(ok && out.is_empty(), "DEL: {out}");
    assert_eq!(ports(&tb).len(), 2, "web1's port is gone");
    let after = counters(&tb);
    // Every flow that still exists kept its counters: nothing of web2's was re-added.
    let kept: Vec<_> = after
        .iter()
        .filter(|(c, n)| before.get(*c).is_some_and(|b| *n >= b))
        .collect();
    assert!(after.len() < before.len(), "web1's flows are gone");
    assert!(
        kept.len() >= after.len() - 1,
        "only the shared ARP-reply flow may change: {before:?} -> {after:?}"
    );
    assert!(!tb
        .node_cmd("ip", &["link"])
        .unwrap()
        .contains(&portiso::link::host_if_name("ctr-web1", "eth0")));
    assert_eq!(
        lands(&tb, 10000),
        ["host"],
        "web1's ports went back to the host"
    );
    assert_eq!(lands(&tb, 10100), ["web2"]);

    let (ok, out) = tb.cni("DEL", "web1", "eth0", "up1", "1.0.0").unwrap();
    assert!(ok && out.is_empty(), "a second DEL succeeds: {out}");
    // DEL of a sandbox whose namespace is gone succeeds too.
    portiso::exec::run("ip", &["netns", "del", &tb.sandbox_ns("web2")]).unwrap();
    let (ok, out) = tb.cni("DEL", "web2", "eth0", "up1", "1.0.0").unwrap();
    assert!(ok, "DEL after the netns is gone: {out}");
    assert_eq!(ports(&tb).len(), 1);
}

#[test]
fn agent_restart_drops_no_traffic_and_changes_no_flow() {
    let mut tb = testbed("lcrst", &ranges());
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    assert_eq!(lands(&tb, 10001), ["web1"]);
    tb.kill_agent();
    // Flows live in OVS: with the agent dead, traffic still lands right.
    assert_eq!(lands(&tb, 10002), ["web1"]);
    assert_eq!(lands(&tb, 10102), ["web2"]);
    let before = counters(&tb);
    let log_len = tb.agent_log().len();
    tb.start_agent().unwrap();
    let after = counters(&tb);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "same flows"
    );
    for (c, n) in &before {
        assert!(after[c] >= *n, "flow {c} was re-added (counter reset)");
    }
    let new_log = &tb.agent_log()[log_len..];
    assert!(new_log.contains("re-adopted attachment"), "{new_log}");
    assert!(
        !new_log.contains("flows updated"),
        "a restart must not touch flows: {new_log}"
    );
    // The re-adopted sandboxes are managed as before.
    let (ok, out) = tb.cni("CHECK", "web1", "eth0", "up1", "1.0.0").unwrap();
    assert!(ok, "CHECK after restart: {out}");
    let (ok, out) = tb.cni("DEL", "web1", "eth0", "up1", "1.0.0").unwrap();
    assert!(ok, "DEL after restart: {out}");
    assert_eq!(lands(&tb, 10003), ["host"]);
}

#[test]
fn portrange_edits_apply_to_attached_sandboxes() {
    let mut tb = testbed("lcedit", &ranges());
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    assert_eq!(lands(&tb, 10500), ["host"]);
    let moved = portrange("web1", "web1", &[("TCP", 10500, 10599)], &[])
        + &portrange("web2", "web2", &[("TCP", 10100, 10199)], &[]);
    tb.write_ranges("ranges.yaml", &moved).unwrap();
    eventually("web1's new range is programmed", || {
        tb.dump_flows("br-up1")
            .unwrap()
            .contains("tp_dst=0x2904/0xfffc")
    });
    assert_eq!(lands(&tb, 10500), ["web1"]);
    assert_eq!(lands(&tb, 10000), ["host"]);
    assert_eq!(lands(&tb, 10100), ["web2"], "web2 is unaffected");

    // A broken edit is refused and keeps the last good ranges.
    tb.write_ranges("ranges.yaml", "apiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {name: web1}\nspec: {selector: {}, ports: [{protocol: TCP, start: oops}]}\n").unwrap();
    eventually("the refusal is logged", || {
        tb.agent_log().contains("PortRange file refused")
    });
    let log = tb.agent_log();
    assert!(
        log.contains("ranges.yaml") && log.contains("spec.ports[0].start"),
        "the error names file and field:\n{log}"
    );
    assert_eq!(
        lands(&tb, 10501),
        ["web1"],
        "traffic still flows on the last good ranges"
    );

    // Deleting the file returns the ports to the host.
    std::fs::remove_file(tb.dir.join("ranges/ranges.yaml")).unwrap();
    eventually("flows removed", || {
        !tb.dump_flows("br-up1")
            .unwrap()
            .contains("tp_dst=0x2904/0xfffc")
    });
    assert_eq!(lands(&tb, 10502), ["host"]);
}

#[test]
fn invalid_overlapping_and_reserved_ranges_are_refused_whole_with_reasons() {
    let ranges = portrange("bad-order", "s1", &[("TCP", 12000, 11000)], &[])
        + &portrange("port-zero", "s2", &[("UDP", 0, 10)], &[])
        + &portrange(
            "dup",
            "s3",
            &[("TCP", 13000, 13010), ("TCP", 13005, 13020)],
            &[],
        )
        + &portrange("a-first", "s4", &[("TCP", 14000, 14099)], &[])
        + &portrange(
            "b-second",
            "s5",
            &[("TCP", 15000, 15009), ("TCP", 14050, 14060)],
            &[],
        )
        + &portrange("reserved", "s6", &[("TCP", 9990, 10010)], &[])
        + &portrange("ephemeral", "s7", &[("UDP", 40000, 40010)], &[]);
    let mut tb = testbed("lcbad", &ranges);
    let expect = [
        ("s1", "spec.ports[0]", "swap"),
        ("s2", "spec.ports[0].start", "1-65535"),
        ("s3", "spec.ports[1]", "overlaps spec.ports[0]"),
        ("s5", "default/a-first", "pick other ports"),
        ("s6", "reserved", "9999"),
        ("s7", "reserved", "40000"),
    ];
    for (sandbox, field, fix) in expect {
        let err = tb.attach(sandbox, "up1").unwrap_err().to_string();
        let first = err.lines().next().unwrap();
        assert!(
            first.contains("no accepted PortRange selects sandbox default/")
                && first.contains(field)
                && first.contains(fix),
            "{sandbox}: {first}"
        );
    }
    // The winner of the overlap is intact, and the loser got nothing: not even its other span.
    tb.attach("s4", "up1").unwrap();
    assert!(tb.probe(false, 0, 14000, &["s4"]).unwrap().landed == ["s4"]);
    let flows = tb.dump_flows("br-up1").unwrap();
    assert!(
        !flows.contains("0x3a98"),
        "no flow for b-second's 15000-15009: refused whole"
    );
    // Nothing half-applied for refused sandboxes: only the uplink and s4 are ports.
    assert_eq!(ports(&tb).len(), 2);
    assert!(!tb
        .node_cmd("ip", &["-o", "link"])
        .unwrap()
        .contains(&portiso::link::host_if_name("ctr-s1", "eth0")));
}

#[test]
fn every_cni_version_attaches_and_gc_removes_what_the_runtime_no_longer_has() {
    let ranges = ["v031", "v040", "v100", "v110"]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            portrange(
                s,
                s,
                &[("TCP", 16000 + i as u16 * 100, 16099 + i as u16 * 100)],
                &[],
            )
        })
        .collect::<String>();
    let mut tb = testbed("lcver", &ranges);
    for (s, v) in [
        ("v031", "0.3.1"),
        ("v040", "0.4.0"),
        ("v100", "1.0.0"),
        ("v110", "1.1.0"),
    ] {
        tb.create_sandbox(s).unwrap();
        let (ok, out) = tb.cni("ADD", s, "eth0", "up1", v).unwrap();
        assert!(ok, "{v}: {out}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["cniVersion"], v);
        assert_eq!(r["ips"][0]["address"], "198.51.100.1/24");
        assert_eq!(
            r["ips"][0]["version"].as_str(),
            if v.starts_with("0.") { Some("4") } else { None },
            "{v}"
        );
        assert_eq!(r["routes"][0]["gw"], "198.51.100.7");
        assert_eq!(
            r["interfaces"][0]["sandbox"],
            format!("/run/netns/{}", tb.sandbox_ns(s))
        );
        if v != "0.3.1" {
            let (ok, out) = tb.cni("CHECK", s, "eth0", "up1", v).unwrap();
            assert!(ok, "CHECK {v}: {out}");
        }
    }
    let (ok, out) = tb.cni("STATUS", "v110", "eth0", "up1", "1.1.0").unwrap();
    assert!(ok, "STATUS: {out}");
    assert_eq!(ports(&tb).len(), 5);
    // GC: the runtime still has only v110.
    let mut conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "portiso-up1", "type": "portiso-cni", "uplink": "up1",
        "agentSocket": tb.socket(),
        "cni.dev/valid-attachments": [{"containerID": "ctr-v110", "ifname": "eth0"}],
    });
    let out = gc(&tb, &mut conf);
    assert!(
        out.status.success(),
        "GC: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        ports(&tb).len(),
        2,
        "GC removed the three stale attachments"
    );
    assert_eq!(
        tb.probe(false, 0, 16300, &["v110"]).unwrap().landed,
        ["v110"]
    );
    assert_eq!(
        tb.probe(false, 0, 16000, &["v031"]).unwrap().landed,
        ["host"]
    );
}

fn gc(tb: &Testbed, conf: &mut serde_json::Value) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(&tb.cni_bin)
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_broken_agent_config_is_refused_naming_the_field_before_touching_anything() {
    let dir = std::env::temp_dir().join("portiso-badconfig");
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "uplinks: [{name: eth9, address: 198.51.100.1}]",
            "uplinks[0].address",
        ),
        (
            "uplinks: [{name: eth9, address: 198.51.100.1/24}]\nreservedHostPorts: [\"x\"]",
            "reservedHostPorts[0]",
        ),
        ("uplinks: [{name: eth9, adress: 198.51.100.1/24}]", "adress"),
    ];
    for (text, field) in cases {
        let path = dir.join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portiso"))
            .args(["agent", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(field),
            "{field}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
