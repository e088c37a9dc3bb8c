//! The eBPF fast path beside OVS, with real packets: the dataplane matrix gives the same
//! deliveries and drops with it on and off; what it takes is delivered exactly once and never
//! reaches OVS; it keeps carrying traffic while the agent is down; and a node that cannot run
//! it falls back to OVS alone with one log line. Needs root, Open vSwitch, BPF and XDP.

mod common;

use common::dataplane::{
    arrivals_at_web1_during, attach_web, check_arp, check_echo, check_egress, check_fragments,
    check_steering, send_udp, web_ranges,
};
use common::testbed_with;
use portiso::fastpath::kernel::pinned_counters;
use portiso::testbed::netns::{count_frames, frame};
use portiso::testbed::Testbed;
use std::net::SocketAddr;
use std::time::Duration;

fn web_testbed(tag: &str, datapath: &str) -> Testbed {
    let mut tb = testbed_with(tag, &web_ranges(), Some(datapath), |_| {});
    attach_web(&mut tb);
    tb
}

/// Frames the fast path has carried, over all interfaces.
fn fast_packets(tb: &Testbed) -> u64 {
    if !tb.bpf_dir().join("portiso_counters").exists() {
        return 0;
    }
    pinned_counters(&tb.bpf_dir())
        .unwrap_or_else(|e| panic!("fast-path counters in {}: {e:#}", tb.bpf_dir().display()))
        .values()
        .map(|c| c.fast_packets)
        .sum()
}

/// How many frames to the sandbox ports (10000-19999) arrive in each namespace while `send`
/// runs.
fn arrivals(tb: &Testbed, send: impl FnOnce()) -> [usize; 4] {
    let window = Duration::from_secs(3);
    let ns = [
        tb.outside.clone(),
        tb.node.clone(),
        tb.sandbox_ns("web1"),
        tb.sandbox_ns("web2"),
    ];
    let counters: Vec<_> = ns
        .iter()
        .map(|n| count_frames(n, window, frame::to_sandbox_ports).unwrap())
        .collect();
    send();
    let got: Vec<usize> = counters
        .into_iter()
        .map(|c| c.join().unwrap().unwrap())
        .collect();
    [got[0], got[1], got[2], got[3]]
}

#[test]
fn the_packet_matrix_is_the_same_with_the_fast_path_on_and_off() {
    for (tag, datapath, fast) in [
        ("pfon", "{fastPath: on}", true),
        ("pfoff", "{fastPath: off}", false),
    ] {
        let tb = web_testbed(tag, datapath);
        // ARP first: it needs sandboxes that have not resolved the peer yet.
        check_arp(&tb);
        check_echo(&tb);
        check_steering(&tb);
        let carried = fast_packets(&tb);
        assert_eq!(
            carried > 0,
            fast,
            "{datapath}: the fast path carried {carried} frames; agent log:\n{}",
            tb.agent_log()
        );
        check_fragments(&tb);
        check_egress(&tb);
        let log = tb.agent_log();
        assert!(
            log.contains(if fast {
                "eBPF fast path on"
            } else {
                "eBPF fast path off"
            }),
            "{log}"
        );
    }
}

#[test]
fn what_the_fast_path_takes_arrives_exactly_once_and_never_reaches_ovs() {
    let tb = web_testbed("pfonce", "{fastPath: on}");
    let n = 300;
    let before = fast_packets(&tb);
    // Inbound, peer -> web1's port.
    let got = arrivals(&tb, || {
        send_udp(
            &tb.outside,
            SocketAddr::from(([198, 51, 100, 1], 10010)),
            4000,
            n,
        )
    });
    assert_eq!(
        got,
        [0, 0, n, 0],
        "[peer, node, web1, web2]: web1 gets each datagram once; the node's packet sockets \
         (OVS's among them) see none"
    );
    // Outbound, web1 (from its own port) -> the peer.
    let web1 = tb.sandbox_ns("web1");
    let got = arrivals(&tb, || {
        send_udp(
            &web1,
            SocketAddr::from(([198, 51, 100, 7], 10020)),
            10030,
            n,
        )
    });
    assert_eq!(got, [n, 0, 0, 0], "[peer, node, web1, web2]");
    assert!(
        fast_packets(&tb) >= before + 2 * n as u64,
        "the fast path carried them: {:#?}",
        pinned_counters(&tb.bpf_dir()),
    );
    // The OVS flows that steer the same ports saw nothing of it.
    let flows = tb.dump_flows("br-up1").unwrap();
    for line in flows.lines().filter(|l| l.contains("tp_dst=0x2710/0xfff0")) {
        assert!(
            line.contains("n_packets=0"),
            "OVS saw fast-path traffic: {line}"
        );
    }
}

#[test]
fn the_fast_path_keeps_carrying_traffic_while_the_agent_is_down() {
    let mut tb = web_testbed("pfkill", "{fastPath: on}");
    let to_web1 = SocketAddr::from(([198, 51, 100, 1], 10010));
    let n = 200;
    tb.kill_agent();
    let before = fast_packets(&tb);
    let got = arrivals(&tb, || send_udp(&tb.outside, to_web1, 4000, n));
    assert_eq!(got, [0, 0, n, 0], "agent down: [peer, node, web1, web2]");
    assert!(fast_packets(&tb) >= before + n as u64);

    // A restarted agent swaps its programs into the pinned links; nothing is lost meanwhile.
    let got = arrivals_at_web1_during(&mut tb, 2000, |tb| tb.start_agent().unwrap());
    assert_eq!(
        got,
        2000,
        "datagrams across the restart; fast-path counters {:#?}",
        pinned_counters(&tb.bpf_dir()),
    );
    check_steering(&tb);
}

#[test]
fn a_node_that_cannot_run_the_fast_path_falls_back_to_ovs_with_one_log_line() {
    // A bpffs cannot be made under a regular file.
    let tag = "pfnone";
    let blocker = std::env::temp_dir().join(format!("portiso-testbed-{tag}/not-a-dir"));
    let datapath = format!(
        "{{fastPath: on, userspacePorts: system, bpfDir: {}/bpf}}",
        blocker.display()
    );
    let mut tb = testbed_with(tag, &web_ranges(), Some(&datapath), |_| {
        std::fs::write(&blocker, "").unwrap();
    });
    attach_web(&mut tb);
    check_steering(&tb);
    let log = tb.agent_log();
    assert_eq!(
        log.matches("eBPF fast path off").count(),
        1,
        "one clear line: {log}"
    );
    assert!(log.contains("Not a directory"), "it says why: {log}");
    assert!(
        !tb.node_cmd("ip", &["link"]).unwrap().contains("xdp"),
        "no XDP program anywhere"
    );
}

#[test]
fn turning_the_fast_path_off_takes_its_programs_off_every_device() {
    let mut tb = web_testbed("pfswitch", "{fastPath: on}");
    let xdp_devices = |tb: &Testbed| {
        tb.node_cmd("ip", &["link"])
            .unwrap()
            .matches("xdpgeneric")
            .count()
    };
    assert_eq!(xdp_devices(&tb), 4, "two uplinks and two sandbox ports");
    tb.kill_agent();
    tb.datapath = Some("{fastPath: off, userspacePorts: system}".into());
    tb.start_agent().unwrap();
    assert_eq!(xdp_devices(&tb), 0);
    let before = fast_packets(&tb);
    check_steering(&tb);
    assert_eq!(fast_packets(&tb), before, "OVS alone carried it");
}
