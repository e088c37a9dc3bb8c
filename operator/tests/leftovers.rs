//! Leftovers of crashes and of sandboxes that vanished behind the agent's back, made for real
//! (veths, OVS ports, flows, namespaces), found and removed by the agent at start and while it
//! runs, with live sandboxes receiving traffic all along. Needs root and Open vSwitch.

mod common;

use common::dataplane::{arrivals_at_web1_during, check_steering, web_ranges};
use common::node::{flows_of_port, host_ifs, ofport, sandbox_ports};
use common::{portrange, testbed};
use portiso::exec::run;
use portiso::link::host_if_name;
use portiso::testbed::Testbed;
use std::time::{Duration, Instant};

/// web1 and web2 as in the dataplane checks, web3 and web4 beside them.
fn ranges() -> String {
    web_ranges()
        + &portrange("web3", "web3", &[("TCP", 10200, 10249)], &[])
        + &portrange("web4", "web4", &[("TCP", 10250, 10299)], &[])
}

/// The interfaces with a host-stack isolation chain (userspace datapath only).
fn chains(tb: &Testbed) -> Vec<String> {
    tb.node_cmd("nft", &["list", "table", "netdev", "portiso"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain in-"))
        .filter_map(|r| r.split_whitespace().next())
        .filter(|n| portiso::link::is_host_if_name(n))
        .map(str::to_string)
        .collect()
}

fn host_if(sandbox: &str) -> String {
    host_if_name(&format!("ctr-{sandbox}"), "eth0")
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Waits (bounded) until `f` holds; returns how long it took.
fn eventually(tb: &Testbed, what: &str, bound: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < bound,
            "timed out after {bound:?} waiting for: {what}\nports {:?}\ninterfaces {:?}\nagent log:\n{}",
            sandbox_ports(tb),
            host_ifs(tb),
            tb.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

/// Adds a sandbox port the way the agent records one, for interface `name` (which need not
/// exist), claiming network namespace `netns`.
fn add_recorded_port(tb: &Testbed, name: &str, sandbox: &str, netns: &str) {
    let ids = [
        "external_ids:portiso-role=sandbox".to_string(),
        "external_ids:portiso-uplink=up1".to_string(),
        format!("external_ids:portiso-netns=\"{netns}\""),
        format!("external_ids:portiso-sandbox=\"default/{sandbox}\""),
        format!("external_ids:portiso-container-id=ctr-{sandbox}"),
        "external_ids:portiso-ifname=eth0".to_string(),
    ];
    let mut args = vec!["add-port", "br-up1", name, "--", "set", "Interface", name];
    args.extend(ids.iter().map(String::as_str));
    tb.node_cmd("ovs-vsctl", &args).unwrap();
}

/// A veth with the agent's naming whose other end is `peer` in namespace `peer_ns` (or in
/// the node's), as an agent killed between creating it and adding its port leaves it.
fn add_stray_veth(tb: &Testbed, name: &str, peer: &str, peer_ns: Option<&str>) {
    let mut args = vec!["link", "add", name, "type", "veth", "peer", "name", peer];
    if let Some(ns) = peer_ns {
        args.extend(["netns", ns]);
    }
    tb.node_cmd("ip", &args).unwrap();
}

#[test]
fn leftovers_of_a_crash_are_removed_at_start_while_live_sandboxes_keep_their_traffic() {
    let mut tb = testbed("lostart", &ranges());
    for s in ["web1", "web2", "web3", "web4"] {
        tb.attach(s, "up1").unwrap();
    }
    let live = sorted(vec![host_if("web1"), host_if("web2")]);
    let (web3_port, web4_port) = (ofport(&tb, &host_if("web3")), ofport(&tb, &host_if("web4")));
    assert!(!flows_of_port(&tb, web3_port).is_empty());
    let netdev = !chains(&tb).is_empty();
    tb.kill_agent();

    // (1) web3's namespace is deleted behind the agent's back: its veth goes with it, its
    //     port and flows stay.
    run("ip", &["netns", "del", &tb.sandbox_ns("web3")]).unwrap();
    // (2) web4's namespace path is removed while a process still holds the namespace: its
    //     veth stays up, but no runtime will ever send DEL for it.
    let mut holder = std::process::Command::new("ip")
        .args(["netns", "exec", &tb.sandbox_ns("web4"), "sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    run("ip", &["netns", "del", &tb.sandbox_ns("web4")]).unwrap();
    assert!(
        host_ifs(&tb).contains(&host_if("web4")),
        "web4's veth lives on"
    );
    // (3) An agent killed between creating a veth and adding its port: the veth, its other
    //     end in the sandbox; and a stray veth with both ends in the node.
    tb.create_sandbox("crash").unwrap();
    let crash = host_if("crash");
    add_stray_veth(&tb, &crash, "ptcrash", Some(&tb.sandbox_ns("crash")));
    let stray = host_if_name("stray", "eth0");
    add_stray_veth(&tb, &stray, "ptstray", None);
    // (4) A port OVSDB records for a sandbox whose interface never existed (OVS: ofport -1).
    let ghost = host_if("ghost");
    add_recorded_port(&tb, &ghost, "ghost", "/run/netns/lostart-ghost");
    // (5) A flow for a port that does not exist.
    tb.node_cmd(
        "ovs-ofctl",
        &[
            "add-flow",
            "br-up1",
            "cookie=0x5eed,table=0,priority=1,in_port=77,actions=drop",
        ],
    )
    .unwrap();
    // (6) The isolation chain of an interface that is gone.
    let chainless = host_if_name("gone", "eth0");
    if netdev {
        let spec = format!(
            "{{ type filter hook ingress device \"{chainless}\" priority -500 ; policy drop ; }}"
        );
        let chain = format!("in-{chainless}");
        tb.node_cmd("nft", &["add", "chain", "netdev", "portiso", &chain, &spec])
            .unwrap();
    }
    assert_eq!(
        ofport(&tb, &ghost),
        -1,
        "OVS could not open the ghost's port"
    );
    assert_eq!(sandbox_ports(&tb).len(), 5, "{:?}", sandbox_ports(&tb));

    // The agent comes back while web1 receives a steady stream.
    let log_len = tb.agent_log().len();
    let mut started = Duration::ZERO;
    let n = 5000;
    let got = arrivals_at_web1_during(&mut tb, n, |tb| {
        let t = Instant::now();
        tb.start_agent().unwrap();
        started = t.elapsed();
    });
    let all_gone = |tb: &Testbed| {
        sandbox_ports(tb) == live
            && host_ifs(tb) == live
            && flows_of_port(tb, web3_port).is_empty()
            && flows_of_port(tb, web4_port).is_empty()
            && flows_of_port(tb, 77).is_empty()
            && chains(tb).iter().all(|c| live.contains(c))
    };
    let after = eventually(
        &tb,
        "every leftover is gone",
        Duration::from_secs(10),
        || all_gone(&tb),
    );
    eprintln!(
        "agent started in {started:?}; leftovers gone {after:?} after that; web1 got {got} of {n} datagrams meanwhile"
    );
    assert_eq!(got, n, "web1 lost datagrams while the agent swept");
    let _ = holder.kill();
    let _ = holder.wait();
    let log = tb.agent_log()[log_len..].to_string();
    for s in ["default/web3", "default/web4", "default/ghost"] {
        assert!(
            log.lines()
                .any(|l| l.contains("leftover removed") && l.contains(&format!("sandbox={s}"))),
            "{s}'s removal is logged:\n{log}"
        );
    }
    for v in [&crash, &stray] {
        assert!(
            log.lines()
                .any(|l| l.contains("stray veth") && l.contains(v.as_str())),
            "{v}'s removal is logged:\n{log}"
        );
    }
    assert!(
        !log.lines().any(|l| l.contains("leftover")
            && (l.contains(&host_if("web1")) || l.contains(&host_if("web2")))),
        "nothing of web1 or web2 was touched:\n{log}"
    );
    check_steering(&tb);
    // web3 and web4's ports went back to the host.
    assert_eq!(tb.probe(false, 0, 10210, &[]).unwrap().landed, ["host"]);
    assert_eq!(tb.probe(false, 0, 10260, &[]).unwrap().landed, ["host"]);
    // A second start finds nothing left to remove.
    tb.kill_agent();
    let log_len = tb.agent_log().len();
    tb.start_agent().unwrap();
    assert!(!tb.agent_log()[log_len..].contains("leftover"));
}

#[test]
fn a_sandbox_that_vanishes_while_the_agent_runs_is_detached_and_strays_go_periodically() {
    let mut tb = testbed("lorun", &ranges());
    for s in ["web1", "web2", "web3"] {
        tb.attach(s, "up1").unwrap();
    }
    let live = sorted(vec![host_if("web1"), host_if("web2")]);
    let web3_port = ofport(&tb, &host_if("web3"));

    // web3's namespace is deleted behind the agent's back while web1 receives traffic.
    let mut detached = Duration::ZERO;
    let n = 3000;
    let got = arrivals_at_web1_during(&mut tb, n, |tb| {
        run("ip", &["netns", "del", &tb.sandbox_ns("web3")]).unwrap();
        detached = eventually(tb, "web3 is detached", Duration::from_secs(10), || {
            !sandbox_ports(tb).contains(&host_if("web3")) && flows_of_port(tb, web3_port).is_empty()
        });
    });
    eprintln!(
        "web3's namespace deleted: port and flows gone after {detached:?}; web1 got {got} of {n}"
    );
    assert_eq!(got, n);
    assert!(detached < Duration::from_secs(3), "{detached:?}");
    assert!(tb
        .agent_log()
        .lines()
        .any(|l| l.contains("leftover removed") && l.contains("sandbox=default/web3")));
    check_steering(&tb);
    assert_eq!(tb.probe(false, 0, 10210, &[]).unwrap().landed, ["host"]);

    // web3 comes back under the same name (same host-side interface): nothing left over is
    // in its way.
    run("ip", &["netns", "add", &tb.sandbox_ns("web3")]).unwrap();
    tb.attach("web3", "up1").unwrap();
    assert_eq!(
        tb.probe(false, 0, 10210, &["web3"]).unwrap().landed,
        ["web3"]
    );
    let (ok, out) = tb.cni("DEL", "web3", "eth0", "up1", "1.0.0").unwrap();
    assert!(ok, "{out}");

    // A stray veth appears behind the running agent's back (no attachment's interface goes
    // away, so nothing prompts a sweep): the periodic one, every full resync (30 s), finds it.
    let stray = host_if_name("stray", "eth0");
    add_stray_veth(&tb, &stray, "ptstray", None);
    let stray_since = Instant::now();
    let gone = eventually(
        &tb,
        "the stray veth is gone",
        Duration::from_secs(45),
        || host_ifs(&tb) == live,
    );
    eprintln!(
        "stray veth removed {:?} after it appeared ({gone:?} of waiting here)",
        stray_since.elapsed()
    );
    assert_eq!(sandbox_ports(&tb), live);
    check_steering(&tb);
}
