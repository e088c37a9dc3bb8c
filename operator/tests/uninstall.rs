//! Uninstalling gives the node back: after `portiso agent --uninstall` every uplink has its
//! address and the default route again and answers on it, and no bridge, OVS port, veth,
//! nftables chain or fast-path pin is left; a second run finds nothing and succeeds. SIGTERM
//! without a DaemonSet to ask (an ordinary stop) leaves everything in place. Needs root and
//! Open vSwitch.

mod common;

use common::dataplane::web_ranges;
use common::node::host_ifs;
use common::testbed_with;
use portiso::testbed::Testbed;
use std::time::{Duration, Instant};

/// The node's default route goes through the peer behind up1, as a real node's through its
/// gateway; the agent moves it onto br-up1.
fn with_default_route(tb: &Testbed) {
    tb.node_cmd(
        "ip",
        &[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.7",
            "dev",
            "up1",
        ],
    )
    .unwrap();
}

fn addresses(tb: &Testbed, dev: &str) -> Vec<String> {
    let dev = dev.to_string();
    portiso::testbed::netns::run_in(&tb.node, move || portiso::link::ipv4_cidrs(&dev)).unwrap()
}

fn default_route(tb: &Testbed) -> String {
    tb.node_cmd("ip", &["-4", "route", "show", "default"])
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn links(tb: &Testbed) -> Vec<String> {
    tb.node_cmd("ip", &["-o", "link"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches(':').split('@').next().unwrap_or(n))
        .map(str::to_string)
        .collect()
}

fn uninstall(tb: &Testbed) -> (Duration, Result<String, portiso::exec::ExecError>) {
    let config = tb.dir.join("agent.yaml").display().to_string();
    let bin = tb.portiso_bin.display().to_string();
    let t = Instant::now();
    let out = tb.node_cmd(&bin, &["agent", "--config", &config, "--uninstall"]);
    (t.elapsed(), out)
}

/// Everything of portiso is gone and the uplinks are as before the agent.
fn assert_given_back(tb: &Testbed) {
    assert_eq!(addresses(tb, "up1"), ["198.51.100.1/24"]);
    assert_eq!(addresses(tb, "up2"), ["203.0.113.1/24"]);
    assert_eq!(default_route(tb), "default via 198.51.100.7 dev up1");
    let l = links(tb);
    assert!(
        !l.iter().any(|n| n.starts_with("br-")),
        "bridge devices left: {l:?}"
    );
    assert_eq!(host_ifs(tb), Vec::<String>::new(), "veths left");
    assert_eq!(
        tb.node_cmd("ovs-vsctl", &["list-br"]).unwrap().trim(),
        "",
        "bridges left in OVS"
    );
    assert_eq!(
        tb.node_cmd(
            "ovs-vsctl",
            &["--bare", "--columns=name", "list", "Interface"]
        )
        .unwrap()
        .trim(),
        "",
        "interfaces left in OVS"
    );
    assert!(
        tb.node_cmd("nft", &["list", "table", "netdev", "portiso"])
            .is_err(),
        "the isolation table is left"
    );
    let pins: Vec<_> = std::fs::read_dir(tb.bpf_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // A bpffs's own files at its root (the testbed's bpfDir is a mount of its own).
        .filter(|n| !["maps.debug", "progs.debug"].contains(&n.as_str()))
        .collect();
    assert!(pins.is_empty(), "fast-path pins left: {pins:?}");
    // The node answers on its address again, through the NIC itself.
    for (uplink, port) in [(0, 10000), (1, 10050), (0, 8080)] {
        assert_eq!(
            tb.probe(false, uplink, port, &[]).unwrap().landed,
            ["host"],
            "uplink {uplink} port {port}"
        );
    }
}

#[test]
fn uninstall_gives_every_uplink_back_and_leaves_nothing_twice_over() {
    let mut tb = testbed_with("uninst", &web_ranges(), None, with_default_route);
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    tb.attach("web1", "up2").unwrap();
    // The agent's takeover, as it is before the uninstall.
    assert_eq!(addresses(&tb, "up1"), Vec::<String>::new());
    assert_eq!(addresses(&tb, "br-up1"), ["198.51.100.1/24"]);
    assert_eq!(default_route(&tb), "default via 198.51.100.7 dev br-up1");
    assert_eq!(host_ifs(&tb).len(), 3);
    assert_eq!(
        tb.probe(false, 0, 10000, &["web1", "web2"]).unwrap().landed,
        ["web1"]
    );
    let log = tb.agent_log();
    let fast_path = log.contains("eBPF fast path on");

    tb.kill_agent();
    let (took, out) = uninstall(&tb);
    let out = out.unwrap_or_else(|e| panic!("uninstall failed: {e}\n{}", tb.agent_log()));
    eprintln!("uninstall took {took:?} (fast path was on: {fast_path}): {out}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_given_back(&tb);
    // The sandboxes lost their portiso interface with the veths.
    for s in ["web1", "web2"] {
        let ns = tb.sandbox_ns(s);
        let l = portiso::exec::run("ip", &["-n", &ns, "-o", "link"]).unwrap();
        assert!(
            !l.contains("eth0") && !l.contains("eth1"),
            "{s} still has: {l}"
        );
    }

    // Twice over: nothing to do, nothing changes, success.
    let (took, out) = uninstall(&tb);
    out.unwrap_or_else(|e| panic!("second uninstall failed: {e}"));
    eprintln!("second uninstall took {took:?}");
    assert_given_back(&tb);

    // An agent started afterwards takes the node over again as on a fresh node.
    tb.start_agent().unwrap();
    assert_eq!(addresses(&tb, "br-up1"), ["198.51.100.1/24"]);
    assert_eq!(default_route(&tb), "default via 198.51.100.7 dev br-up1");
    tb.attach("web2", "up1").unwrap();
    assert_eq!(
        tb.probe(false, 0, 10100, &["web2"]).unwrap().landed,
        ["web2"]
    );
}

#[test]
fn sigterm_without_a_daemonset_to_ask_only_stops_the_agent() {
    let mut tb = testbed_with("uninterm", &web_ranges(), None, with_default_route);
    let marker = tb.dir.join("stop").join("agent-done");
    let marker_arg = marker.display().to_string();
    tb.kill_agent();
    tb.start_agent_with(&["--stop-marker", &marker_arg], &[])
        .unwrap();
    tb.attach("web1", "up1").unwrap();
    let pid: i32 = std::fs::read_to_string(tb.dir.join("agent.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // `ip netns exec` runs the agent in its own process (exec): the pid is the agent's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    while !marker.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no stop marker; agent log:\n{}",
            tb.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = std::fs::read_to_string(&marker).unwrap();
    assert!(said.starts_with("kept"), "{said}");
    // Exited: no process, or a zombie the testbed has not collected yet.
    let gone = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let t = Instant::now();
    while !gone(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the agent did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Everything still carries traffic, as after any restart.
    assert_eq!(addresses(&tb, "br-up1"), ["198.51.100.1/24"]);
    assert_eq!(default_route(&tb), "default via 198.51.100.7 dev br-up1");
    let landed = tb.probe(false, 0, 10000, &["web1"]).unwrap().landed;
    assert_eq!(
        landed,
        ["web1"],
        "flows:\n{}\nagent log:\n{}",
        tb.dump_flows("br-up1").unwrap_or_default(),
        tb.agent_log()
    );
    tb.kill_agent();
}

/// A node with many sandboxes: the uplinks get their addresses and routes back first and
/// whatever the time, and the whole run (one `del-br` per uplink, one `ip -batch` for the veths)
/// stays well within the budget. A few sandboxes are attached through the agent; the rest are
/// added as the agent leaves them (a veth with the agent's naming, a port on the bridge marked
/// as a sandbox's) in one OVS transaction, so that the test stays quick.
#[test]
fn uninstall_of_a_node_with_many_sandboxes_gives_the_uplinks_back_within_the_budget() {
    const MANY: usize = 180;
    let mut tb = testbed_with("uninmany", &web_ranges(), None, with_default_route);
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    tb.attach("web1", "up2").unwrap();
    tb.kill_agent();

    let mut batch = String::new();
    let mut vsctl: Vec<String> = Vec::new();
    for i in 0..MANY {
        let host = portiso::link::host_if_name(&format!("many-{i}"), "eth0");
        batch += &format!("link add {host} type veth peer name unsb{i}\nlink set {host} up\n");
        let bridge = if i % 2 == 0 { "br-up1" } else { "br-up2" };
        vsctl.extend(
            [
                "--",
                "add-port",
                bridge,
                &host,
                "--",
                "set",
                "Interface",
                &host,
                "external_ids:portiso-role=sandbox",
            ]
            .map(str::to_string),
        );
    }
    let file = tb.dir.join("many.batch");
    std::fs::write(&file, batch).unwrap();
    tb.node_cmd("ip", &["-batch", &file.display().to_string()])
        .unwrap();
    let argv: Vec<&str> = vsctl.iter().map(String::as_str).collect();
    tb.node_cmd("ovs-vsctl", &argv).unwrap();
    assert_eq!(host_ifs(&tb).len(), MANY + 3);
    let ports = tb.node_cmd("ovs-vsctl", &["list-ports", "br-up1"]).unwrap();
    assert!(ports.lines().count() > MANY / 2, "{ports}");

    let (took, out) = uninstall(&tb);
    let out = out.unwrap_or_else(|e| panic!("uninstall failed: {e}"));
    eprintln!(
        "uninstall of {} sandbox ports took {took:?}: {out}",
        MANY + 3
    );
    assert!(
        took < portiso::agent::uninstall::UNINSTALL_BUDGET,
        "{took:?}"
    );
    assert_given_back(&tb);
}

/// The stop before an uninstall (in the agent process: `portiso agent` on SIGTERM): agent work
/// in flight (a start-up, a reconcile on a blocking thread) is waited for, and none starts
/// afterwards. (The flag is process-wide: no other test of this file uses it in-process.)
#[test]
fn an_uninstall_waits_for_agent_work_in_flight_and_no_work_starts_after_it() {
    use portiso::agent::uninstall::{stop_agent_work, unless_stopping};
    let (started, started_rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        unless_stopping(|| {
            started.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            "done"
        })
    });
    started_rx.recv().unwrap();
    let t = Instant::now();
    let guard = stop_agent_work(Duration::from_secs(5));
    assert!(
        guard.is_some(),
        "the work in flight finished within the wait"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(worker.join().unwrap(), Some("done"));
    drop(guard);
    assert_eq!(unless_stopping(|| "late"), None, "no work after the stop");
}
