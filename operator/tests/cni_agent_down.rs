//! The CNI plugin while the agent is down or restarting, and ADD/DEL repeated and racing, with
//! the real plugin, agent and OVS: ADD waits (bounded) for the agent and then fails with code
//! 11; DEL succeeds without the agent and the agent removes the rest when it is back; no race
//! leaves a port, flow, veth or chain behind. Needs root and Open vSwitch.

mod common;

use common::node::{flows_of_port, host_ifs as host_veths, ofport, sandbox_ports};
use common::{portrange, testbed};
use portiso::link::host_if_name;
use portiso::testbed::Testbed;
use portiso_agent_api::{Request, Response};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn ranges() -> String {
    portrange("web1", "web1", &[("TCP", 10000, 10099)], &[])
        + &portrange("web2", "web2", &[("TCP", 10100, 10199)], &[])
}

fn lands(tb: &Testbed, port: u16) -> Vec<String> {
    tb.probe(false, 0, port, &["web1", "web2"]).unwrap().landed
}

/// Runs the plugin with `extra` network config keys; returns (success, stdout, how long).
fn cni(tb: &Testbed, command: &str, sandbox: &str, extra: Value) -> (bool, Value, Duration) {
    let t = Instant::now();
    let out = tb
        .cni_spawn(command, sandbox, "eth0", "up1", "1.0.0", &extra)
        .unwrap()
        .wait_with_output()
        .unwrap();
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
    };
    (out.status.success(), v, took)
}

/// The host-side interfaces of the sandboxes the agent holds.
fn agent_holds(tb: &Testbed) -> Vec<String> {
    match portiso_agent_api::call(&tb.socket(), &Request::Describe, Duration::from_secs(10)) {
        Ok(Response::Node(n)) => n.sandboxes.into_iter().map(|s| s.host_if).collect(),
        other => panic!("describe: {other:?}"),
    }
}

/// Whether the sandbox still has its interface (the sandbox end of the veth).
fn sandbox_has_eth0(tb: &Testbed, sandbox: &str) -> bool {
    portiso::exec::run(
        "ip",
        &["-n", &tb.sandbox_ns(sandbox), "link", "show", "dev", "eth0"],
    )
    .is_ok()
}

/// Every trace of one attachment: (agent holds it, OVS port, veth, flows, sandbox side).
fn traces(tb: &Testbed, sandbox: &str) -> [bool; 5] {
    let host_if = host_if_name(&format!("ctr-{sandbox}"), "eth0");
    let port = sandbox_ports(tb).contains(&host_if);
    let flows = port && !flows_of_port(tb, ofport(tb, &host_if)).is_empty();
    [
        agent_holds(tb).contains(&host_if),
        port,
        host_veths(tb).contains(&host_if),
        flows,
        sandbox_has_eth0(tb, sandbox),
    ]
}

/// Waits (bounded) until `f` holds; returns how long it took.
fn eventually(what: &str, bound: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < bound,
            "timed out after {bound:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

#[test]
fn add_with_the_agent_down_fails_with_code_11_after_agent_wait_seconds() {
    let mut tb = testbed("crdown", &ranges());
    tb.create_sandbox("web1").unwrap();
    tb.kill_agent();
    // A killed agent leaves its socket file: connections are refused.
    assert!(tb.socket().exists());
    for (wait, extra) in [(3, json!({"agentWaitSeconds": 3})), (10, json!({}))] {
        let (ok, err, took) = cni(&tb, "ADD", "web1", extra);
        eprintln!(
            "ADD with the agent down, agentWaitSeconds {wait}: code {} after {took:?}",
            err["code"]
        );
        assert!(!ok);
        assert_eq!(err["code"], 11, "{err}");
        let msg = err["msg"].as_str().unwrap_or_default();
        for w in [
            tb.socket().display().to_string(),
            format!("waited {wait} s"),
            "agentWaitSeconds".to_string(),
            "portiso agent".to_string(),
        ] {
            assert!(msg.contains(&w), "{msg:?} lacks {w:?}");
        }
        assert!(
            took >= Duration::from_secs(wait) && took < Duration::from_secs(wait + 2),
            "{took:?}"
        );
    }
    // No socket file at all (an agent that never ran): the same.
    std::fs::remove_file(tb.socket()).unwrap();
    let (ok, err, took) = cni(&tb, "ADD", "web1", json!({"agentWaitSeconds": 1}));
    assert!(!ok && err["code"] == 11, "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The plugin created nothing on its own.
    assert!(sandbox_ports(&tb).is_empty());
    assert!(host_veths(&tb).is_empty());
    assert!(!sandbox_has_eth0(&tb, "web1"));
}

#[test]
fn add_waits_for_an_agent_that_comes_back_within_agent_wait_seconds() {
    let mut tb = testbed("crwait", &ranges());
    tb.attach("web2", "up1").unwrap();
    tb.create_sandbox("web1").unwrap();
    tb.kill_agent();
    let t = Instant::now();
    let add = tb
        .cni_spawn("ADD", "web1", "eth0", "up1", "1.0.0", &json!({}))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    tb.start_agent().unwrap();
    let up = t.elapsed();
    let out = add.wait_with_output().unwrap();
    let took = t.elapsed();
    eprintln!(
        "ADD sent with the agent down: agent answering after {up:?}, ADD done after {took:?}"
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        tb.agent_log()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(traces(&tb, "web1"), [true; 5]);
    assert_eq!(lands(&tb, 10000), ["web1"]);
    assert_eq!(lands(&tb, 10100), ["web2"]);
}

#[test]
fn del_with_the_agent_down_succeeds_and_the_agent_removes_the_rest_when_back() {
    let mut tb = testbed("crdel", &ranges());
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    let web1 = host_if_name("ctr-web1", "eth0");
    let web1_ofport = ofport(&tb, &web1);
    assert!(!flows_of_port(&tb, web1_ofport).is_empty());
    tb.kill_agent();

    let (ok, out, took) = cni(&tb, "DEL", "web1", json!({}));
    eprintln!("DEL with the agent down: {took:?}");
    assert!(ok && out.is_null(), "DEL: {out}");
    assert!(took < Duration::from_secs(2), "DEL does not wait: {took:?}");
    // The plugin removed the veth (and with it the sandbox's end) itself...
    assert!(!host_veths(&tb).contains(&web1));
    assert!(!sandbox_has_eth0(&tb, "web1"));
    // ...the port and flows wait for the agent. A second DEL is fine too.
    assert!(sandbox_ports(&tb).contains(&web1));
    let (ok, out, _) = cni(&tb, "DEL", "web1", json!({}));
    assert!(ok, "a second DEL: {out}");

    let log_len = tb.agent_log().len();
    let t = Instant::now();
    tb.start_agent().unwrap();
    let gone = t.elapsed()
        + eventually(
            "web1's port and flows are gone",
            Duration::from_secs(10),
            || !sandbox_ports(&tb).contains(&web1) && flows_of_port(&tb, web1_ofport).is_empty(),
        );
    eprintln!("agent back: web1's port and flows gone {gone:?} after it was started");
    assert_eq!(
        sandbox_ports(&tb),
        [host_if_name("ctr-web2", "eth0")],
        "only web2's port is left"
    );
    assert_eq!(host_veths(&tb), [host_if_name("ctr-web2", "eth0")]);
    assert!(!agent_holds(&tb).contains(&web1));
    let log = &tb.agent_log()[log_len..];
    assert!(
        log.contains("leftover removed") && log.contains(&web1),
        "the removal is logged: {log}"
    );
    assert_eq!(
        lands(&tb, 10000),
        ["host"],
        "web1's ports went back to the host"
    );
    assert_eq!(lands(&tb, 10100), ["web2"]);
    let (ok, out, _) = cni(&tb, "DEL", "web1", json!({}));
    assert!(ok, "DEL with the agent back: {out}");
    // The same sandbox attaches again under the same name.
    let (ok, out, _) = cni(&tb, "ADD", "web1", json!({}));
    assert!(ok, "ADD again: {out}");
    assert_eq!(lands(&tb, 10000), ["web1"]);
}

#[test]
fn concurrent_adds_of_one_attachment_make_one_port() {
    let mut tb = testbed("crsame", &ranges());
    tb.create_sandbox("web1").unwrap();
    let web1 = host_if_name("ctr-web1", "eth0");
    // With the agent up, and with the agent down until they all wait for it.
    for agent_down in [false, true] {
        if agent_down {
            tb.kill_agent();
        }
        let adds: Vec<_> = (0..3)
            .map(|_| {
                tb.cni_spawn("ADD", "web1", "eth0", "up1", "1.0.0", &json!({}))
                    .unwrap()
            })
            .collect();
        if agent_down {
            std::thread::sleep(Duration::from_secs(1));
            tb.start_agent().unwrap();
        }
        let results: Vec<Value> = adds
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "agent down {agent_down}: {text}\n{}",
                    tb.agent_log()
                );
                serde_json::from_str(&text).unwrap()
            })
            .collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        let one = std::slice::from_ref(&web1);
        assert_eq!(sandbox_ports(&tb), one, "agent down {agent_down}");
        assert_eq!(host_veths(&tb), one);
        assert_eq!(agent_holds(&tb), one);
        assert_eq!(traces(&tb, "web1"), [true; 5]);
        let (ok, out, _) = cni(&tb, "DEL", "web1", json!({}));
        assert!(ok, "{out}");
        assert_eq!(traces(&tb, "web1"), [false; 5]);
        assert!(sandbox_ports(&tb).is_empty());
    }
}

#[test]
fn concurrent_adds_of_many_sandboxes_each_get_exactly_their_own_ports() {
    // Eight ADDs at once, each of a sandbox with a range of its own: the agent makes their
    // ports concurrently and lets them join in groups, one flow bundle per group (agent/add.rs).
    let names: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    let first_port = |i: usize| 10000 + 100 * i as u16;
    let ranges: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| portrange(n, n, &[("TCP", first_port(i), first_port(i) + 99)], &[]))
        .collect();
    let mut tb = testbed("crmany", &ranges);
    for n in &names {
        tb.create_sandbox(n).unwrap();
    }
    let adds: Vec<_> = names
        .iter()
        .map(|n| {
            tb.cni_spawn("ADD", n, "eth0", "up1", "1.0.0", &json!({}))
                .unwrap()
        })
        .collect();
    for (n, add) in names.iter().zip(adds) {
        let out = add.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ADD of {n}: {text}\n{}",
            tb.agent_log()
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["interfaces"][0]["name"], "eth0", "{text}");
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    for (i, n) in names.iter().enumerate() {
        assert_eq!(traces(&tb, n), [true; 5], "{n}");
        // Each range reaches its own sandbox and no other.
        let landed = tb.probe(false, 0, first_port(i) + 50, &all).unwrap().landed;
        assert_eq!(
            landed,
            std::slice::from_ref(n),
            "port {}",
            first_port(i) + 50
        );
    }
    assert_eq!(sandbox_ports(&tb).len(), names.len());
    let groups = tb.agent_log().matches("sandboxes joined together").count();
    eprintln!(
        "{} ADDs at once; {groups} of them joined with others",
        names.len()
    );
}

#[test]
fn del_racing_add_leaves_the_sandbox_attached_or_gone_never_half() {
    let mut tb = testbed("crrace", &ranges());
    tb.attach("web2", "up1").unwrap();
    let mut outcomes = Vec::new();
    // DEL sent 0-240 ms after ADD (an ADD takes about 100-300 ms here), or ADD 0-5 ms after
    // DEL: both orders reach the agent.
    let rounds = [
        ("ADD", 0u64),
        ("ADD", 30),
        ("ADD", 120),
        ("ADD", 240),
        ("DEL", 0),
        ("DEL", 5),
    ];
    for (round, (first, delay_ms)) in rounds.into_iter().enumerate() {
        tb.create_sandbox("web1").ok();
        let spawn = |verb| {
            tb.cni_spawn(verb, "web1", "eth0", "up1", "1.0.0", &json!({}))
                .unwrap()
        };
        let (add, del) = if first == "ADD" {
            let add = spawn("ADD");
            std::thread::sleep(Duration::from_millis(delay_ms));
            (add, spawn("DEL"))
        } else {
            let del = spawn("DEL");
            std::thread::sleep(Duration::from_millis(delay_ms));
            (spawn("ADD"), del)
        };
        let (add_out, del_out) = (
            add.wait_with_output().unwrap(),
            del.wait_with_output().unwrap(),
        );
        let what = format!("round {round} ({first} first, the other {delay_ms} ms later)");
        assert!(
            del_out.status.success() && del_out.stdout.is_empty(),
            "{what}: DEL {}",
            String::from_utf8_lossy(&del_out.stdout)
        );
        assert!(
            add_out.status.success(),
            "{what}: ADD {}",
            String::from_utf8_lossy(&add_out.stdout)
        );
        let t = traces(&tb, "web1");
        assert!(
            t == [true; 5] || t == [false; 5],
            "{what}: half attached: {t:?}"
        );
        outcomes.push(format!(
            "{first} first +{delay_ms} ms: {}",
            if t[0] { "attached" } else { "gone" }
        ));
        // Clean up for the next round; everything goes.
        let (ok, out, _) = cni(&tb, "DEL", "web1", json!({}));
        assert!(ok, "{out}");
        assert_eq!(traces(&tb, "web1"), [false; 5]);
    }
    eprintln!("DEL racing ADD, after both: {outcomes:?}");

    // The same race with the agent down: ADD waits for it, DEL finds nobody and removes what
    // the plugin can (nothing yet); once the agent is back the ADD attaches, whole.
    tb.kill_agent();
    let add = tb
        .cni_spawn("ADD", "web1", "eth0", "up1", "1.0.0", &json!({}))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, out, _) = cni(&tb, "DEL", "web1", json!({}));
    assert!(ok, "DEL with the agent down: {out}");
    tb.start_agent().unwrap();
    assert!(add.wait_with_output().unwrap().status.success());
    assert_eq!(traces(&tb, "web1"), [true; 5]);
    let (ok, out, _) = cni(&tb, "DEL", "web1", json!({}));
    assert!(ok, "{out}");
    assert_eq!(traces(&tb, "web1"), [false; 5]);
    assert_eq!(sandbox_ports(&tb), [host_if_name("ctr-web2", "eth0")]);
    assert_eq!(host_veths(&tb), [host_if_name("ctr-web2", "eth0")]);
    assert_eq!(lands(&tb, 10100), ["web2"]);
    assert_eq!(lands(&tb, 10000), ["host"]);
}

#[test]
fn an_agent_killed_during_add_leaves_nothing_half_and_the_add_gets_through() {
    let mut tb = testbed("crkill", &ranges());
    tb.attach("web2", "up1").unwrap();
    tb.create_sandbox("web1").unwrap();
    // SIGKILL 0-250 ms into an ADD (about 100-300 ms here): before it is read, between
    // creating the veth and adding the port, or after; the plugin retries while no agent
    // answers (within agentWaitSeconds) and the new agent finishes or redoes the ADD.
    for delay_ms in [0u64, 60, 120, 180, 250] {
        let log_len = tb.agent_log().len();
        let t = Instant::now();
        let add = tb
            .cni_spawn("ADD", "web1", "eth0", "up1", "1.0.0", &json!({}))
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        tb.kill_agent();
        std::thread::sleep(Duration::from_millis(300));
        tb.start_agent().unwrap();
        let out = add.wait_with_output().unwrap();
        let log = tb.agent_log()[log_len..].to_string();
        assert!(
            out.status.success(),
            "killed {delay_ms} ms into ADD: {}\n{log}",
            String::from_utf8_lossy(&out.stdout)
        );
        let web1 = host_if_name("ctr-web1", "eth0");
        let logged = |what: &str| log.lines().any(|l| l.contains(what) && l.contains(&web1));
        let case = if logged("stray veth") {
            "killed between veth and port: the new agent removed the veth, the ADD redid it"
        } else if logged("re-adopted attachment") {
            "killed after the port was added: the new agent re-adopted it"
        } else {
            "killed before the veth was made: the new agent did the ADD"
        };
        eprintln!(
            "agent killed {delay_ms} ms into ADD: ADD succeeded after {:?}; {case}",
            t.elapsed()
        );
        assert_eq!(traces(&tb, "web1"), [true; 5], "{log}");
        assert_eq!(lands(&tb, 10000), ["web1"]);
        let (ok, out, _) = cni(&tb, "DEL", "web1", json!({}));
        assert!(ok, "{out}");
        assert_eq!(traces(&tb, "web1"), [false; 5]);
        assert_eq!(sandbox_ports(&tb), [host_if_name("ctr-web2", "eth0")]);
        assert_eq!(host_veths(&tb), [host_if_name("ctr-web2", "eth0")]);
    }
    assert_eq!(lands(&tb, 10100), ["web2"]);
}
