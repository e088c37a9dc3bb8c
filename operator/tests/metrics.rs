//! The agent's Prometheus endpoint on a throwaway node: real ADDs and DELs through the CNI
//! plugin, a spoofed packet dropped by OVS, and a scrape over plain HTTP from the node's
//! namespace; the numbers must be the ones OVS and the agent's log show. Needs root and Open
//! vSwitch.

mod common;

use common::dataplane::{attach_web, web_ranges};
use common::node::{metrics_reply, start_agent_with_metrics};
use portiso::testbed::netns::udp_send;
use portiso::testbed::Testbed;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

/// One answer of the endpoint.
struct Scrape {
    status: String,
    content_type: String,
    body: String,
}

impl Scrape {
    /// The value of one series, written exactly as the page writes it (`name{a="b"}`).
    fn value(&self, series: &str) -> Option<f64> {
        self.body.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
    }

    fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.body))
    }
}

/// `GET /metrics` over a bare TCP connection in the node's namespace, where the agent listens.
fn scrape(tb: &Testbed, addr: SocketAddr) -> Scrape {
    let reply = metrics_reply(tb, addr);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {reply:?}"));
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    Scrape {
        status: head.lines().next().unwrap_or_default().to_string(),
        content_type: header("content-type"),
        body: body.to_string(),
    }
}

/// Scrapes until `check` returns true (OVS updates its counters and the poll runs on their own
/// time), or fails with the last page.
fn scrape_until(tb: &Testbed, addr: SocketAddr, what: &str, check: impl Fn(&Scrape) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(tb, addr);
        if check(&s) {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: not seen within 10 s; last scrape:\n{}", s.body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `flow_count` of `ovs-ofctl dump-aggregate`: what the bridge really holds.
fn flows_in_ovs(tb: &Testbed, bridge: &str) -> f64 {
    let out = tb
        .node_cmd("ovs-ofctl", &["dump-aggregate", bridge])
        .unwrap();
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("flow_count="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no flow_count in {out:?}"))
}

const EGRESS_DROPS_WEB1: &str = "portiso_agent_dropped_packets_total{uplink=\"up1\",sandbox=\"default/web1\",reason=\"egress_not_allowed\"}";

#[test]
fn the_agent_serves_attach_times_sandboxes_flows_and_drops() {
    let mut tb = Testbed::new("mtagent", Path::new(env!("CARGO_BIN_EXE_portiso"))).unwrap();
    tb.write_ranges("ranges.yaml", &web_ranges()).unwrap();
    let addr = start_agent_with_metrics(&mut tb);

    let s = scrape(&tb, addr);
    assert_eq!(s.status, "HTTP/1.1 200 OK", "{}", s.body);
    assert_eq!(s.content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        s.get("portiso_agent_attach_seconds_count{result=\"ok\"}"),
        0.0
    );
    assert_eq!(s.get("portiso_agent_sandboxes{uplink=\"up1\"}"), 0.0);
    assert_eq!(s.get("portiso_agent_portranges{state=\"accepted\"}"), 2.0);
    assert_eq!(s.get("portiso_agent_portranges{state=\"refused\"}"), 0.0);

    attach_web(&mut tb);
    // An ADD that fails: no PortRange selects this sandbox.
    assert!(tb.attach("nobody", "up1").is_err());

    let s = scrape(&tb, addr);
    assert_eq!(
        s.get("portiso_agent_attach_seconds_count{result=\"ok\"}"),
        2.0,
        "{}",
        s.body
    );
    assert_eq!(
        s.get("portiso_agent_attach_seconds_bucket{result=\"ok\",le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(
        s.get("portiso_agent_attach_seconds_count{result=\"error\"}"),
        1.0
    );
    let took = s.get("portiso_agent_attach_seconds_sum{result=\"ok\"}");
    assert!(took > 0.0 && took < 20.0, "two ADDs took {took} s");
    assert_eq!(s.get("portiso_agent_sandboxes{uplink=\"up1\"}"), 2.0);
    assert_eq!(s.get("portiso_agent_sandboxes{uplink=\"up2\"}"), 0.0);
    assert_eq!(s.get(EGRESS_DROPS_WEB1), 0.0, "nothing spoofed yet");

    // The flows the agent says it installed are the flows OVS holds (the poll may be
    // re-reading OVS at the moment of one scrape: compare again until both agree).
    scrape_until(&tb, addr, "flows == OVS's flow_count", |s| {
        let flows = s.get("portiso_agent_flows{bridge=\"br-up1\"}");
        assert!(flows > 0.0, "{}", s.body);
        flows == flows_in_ovs(&tb, "br-up1")
    });
    assert!(
        scrape(&tb, addr)
            .value("portiso_agent_flows{bridge=\"br-up2\"}")
            .is_some_and(|n| n > 0.0),
        "up2's bridge has its own flows"
    );

    // web1 sends from ports it does not own (web2's, the host's): dropped on web1's drop flow.
    let peer = SocketAddr::from(([198, 51, 100, 7], 8081));
    for from in [10150, 5000] {
        let _ = udp_send(&tb.sandbox_ns("web1"), peer, Some(from), "spoofed");
    }
    scrape_until(&tb, addr, "web1's spoofed packets counted", |s| {
        s.get(EGRESS_DROPS_WEB1) >= 2.0
    });
    let s = scrape(&tb, addr);
    assert_eq!(
        s.get("portiso_agent_dropped_packets_total{uplink=\"up1\",sandbox=\"default/web2\",reason=\"egress_not_allowed\"}"),
        0.0,
        "web2 spoofed nothing"
    );
    if s.body.contains("portiso_agent_fast_path_packets_total") {
        // The fast path left web1's spoofed frames to OVS.
        let slow = s.get("portiso_agent_fast_path_slow_packets_total{uplink=\"up1\",sandbox=\"default/web1\",direction=\"egress\",reason=\"port_not_owned\"}");
        assert!(slow >= 2.0, "{}", s.body);
    }

    // The poll runs every 500 ms, each pass timed.
    scrape_until(&tb, addr, "resync passes timed", |s| {
        s.get("portiso_agent_resync_seconds_count") >= 2.0
    });
    assert_eq!(s.get("portiso_agent_reconcile_errors_total"), 0.0);

    // DEL of web2: counted, and its sandbox is gone from the gauge.
    let (ok, out) = tb.cni("DEL", "web2", "eth0", "up1", "1.0.0").unwrap();
    assert!(ok, "DEL web2: {out}");
    let s = scrape(&tb, addr);
    assert_eq!(s.get("portiso_agent_detach_total"), 1.0, "{}", s.body);
    assert_eq!(s.get("portiso_agent_sandboxes{uplink=\"up1\"}"), 1.0);

    // The log lines about a sandbox name it and the ranges involved.
    let log = tb.agent_log();
    let line = |has: &[&str]| {
        log.lines()
            .find(|l| has.iter().all(|h| l.contains(h)))
            .unwrap_or_else(|| panic!("no log line with {has:?} in:\n{log}"))
            .to_string()
    };
    line(&[
        "sandbox attached",
        "sandbox=default/web1",
        "portrange=default/web1",
    ]);
    line(&[
        "sandbox detached",
        "sandbox=default/web2",
        "portrange=default/web2",
    ]);
    line(&["CNI request failed", "sandbox=default/nobody", "verb=ADD"]);
    line(&["serving metrics", &addr.to_string()]);
}

/// Also: with `PORTISO_LOG_FORMAT=json`, each log line is one JSON object with its fields at
/// the top level.
#[test]
fn a_metrics_address_in_use_stops_the_agent_with_the_address() {
    let mut tb = Testbed::new("mtbusy", Path::new(env!("CARGO_BIN_EXE_portiso"))).unwrap();
    tb.write_ranges("ranges.yaml", &web_ranges()).unwrap();
    // Held by this test, in the node's namespace, while the agent starts.
    let (tx, rx) = std::sync::mpsc::channel();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holder = portiso::testbed::netns::spawn_in(&tb.node, move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let _ = held.recv();
        drop(l);
    });
    let addr = rx.recv().unwrap();
    let err = tb
        .start_agent_with(
            &["--metrics-addr", &addr.to_string()],
            &[("PORTISO_LOG_FORMAT", Path::new("json"))],
        )
        .unwrap_err()
        .to_string();
    release.send(()).unwrap();
    let _ = holder.join();
    assert!(
        err.contains("cannot serve metrics") && err.contains(&addr.to_string()),
        "{err}"
    );
    let log = tb.agent_log();
    let chosen = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "OVS datapath chosen")
        .unwrap_or_else(|| panic!("no JSON line for the datapath in:\n{log}"));
    assert_eq!(chosen["level"], "INFO", "{chosen}");
    assert!(chosen["datapath"].is_string(), "{chosen}");
}
