//! The dataplane checks with real packets, shared by the tests that run them on differently
//! built nodes (`dataplane.rs` on the default one, `port_types.rs` once per OVS port type).
//! Each takes a testbed with sandboxes web1 and web2 on up1 (see [`two_sandboxes`]).

use super::{portrange, testbed};
use portiso::testbed::netns::{count_frames, frame, run_in, tcp_send, udp_send, Listener};
use portiso::testbed::Testbed;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

pub const LISTEN: Duration = Duration::from_secs(2);

/// Who receives a connection (TCP) or datagram (UDP) from the peer to `port` on uplink 0;
/// the answer must make it back to the peer too (egress of whoever got it).
pub fn lands(tb: &Testbed, udp: bool, port: u16, sandboxes: &[&str]) -> Vec<String> {
    let p = tb.probe(udp, 0, port, sandboxes).unwrap();
    assert_eq!(
        p.answered,
        !p.landed.is_empty(),
        "answer to the peer for port {port}: {p:?}; flows:\n{}",
        tb.dump_flows("br-up1").unwrap()
    );
    p.landed
}

/// web1 owns TCP and UDP 10000-10099, web2 10100-10199.
pub fn web_ranges() -> String {
    portrange(
        "web1",
        "web1",
        &[("TCP", 10000, 10099), ("UDP", 10000, 10099)],
        &[],
    ) + &portrange(
        "web2",
        "web2",
        &[("TCP", 10100, 10199), ("UDP", 10100, 10199)],
        &[],
    )
}

/// A testbed (datapath from the environment) with web1 and web2 attached to up1.
pub fn two_sandboxes(tag: &str) -> Testbed {
    let mut tb = testbed(tag, &web_ranges());
    attach_web(&mut tb);
    tb
}

/// Attaches web1 and web2 to up1 (in that order: web1 gets OpenFlow port 2).
pub fn attach_web(tb: &mut Testbed) {
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
}

/// TCP and UDP go to the sandbox that owns the port, the rest to the host.
pub fn check_steering(tb: &Testbed) {
    for udp in [false, true] {
        assert_eq!(
            lands(tb, udp, 10000, &["web1", "web2"]),
            ["web1"],
            "udp={udp}"
        );
        assert_eq!(
            lands(tb, udp, 10099, &["web1", "web2"]),
            ["web1"],
            "udp={udp}"
        );
        assert_eq!(
            lands(tb, udp, 10100, &["web1", "web2"]),
            ["web2"],
            "udp={udp}"
        );
        assert_eq!(
            lands(tb, udp, 10200, &["web1", "web2"]),
            ["host"],
            "udp={udp}"
        );
        assert_eq!(lands(tb, udp, 22, &["web1", "web2"]), ["host"], "udp={udp}");
    }
}

/// ARP requests for the shared address are answered by the host only; ARP replies reach
/// everyone.
pub fn check_arp(tb: &Testbed) {
    let window = Duration::from_secs(3);
    let req_in: Vec<_> = ["web1", "web2"]
        .iter()
        .map(|s| count_frames(&tb.sandbox_ns(s), window, frame::arp_request).unwrap())
        .collect();
    let replies_at_peer = count_frames(&tb.outside, window, frame::arp_reply).unwrap();
    let replies_in_web2 = count_frames(&tb.sandbox_ns("web2"), window, frame::arp_reply).unwrap();
    // The peer asks for the shared address, twice.
    tb.out_cmd(
        "busybox",
        &["arping", "-c", "2", "-w", "2", "-I", "eth1", "198.51.100.1"],
    )
    .unwrap();
    // web1 asks for the peer (a connection makes its kernel resolve it, also when earlier
    // checks on this node had it resolved already).
    portiso::exec::run(
        "ip",
        &["-n", &tb.sandbox_ns("web1"), "neigh", "flush", "all"],
    )
    .unwrap();
    let _ = tcp_send(
        &tb.sandbox_ns("web1"),
        SocketAddr::from(([198, 51, 100, 7], 9)),
        None,
        "x",
    );
    for c in req_in {
        assert_eq!(
            c.join().unwrap().unwrap(),
            0,
            "no sandbox sees ARP requests for the shared address"
        );
    }
    assert_eq!(
        replies_at_peer.join().unwrap().unwrap(),
        2,
        "one answer per request: the host's"
    );
    assert!(
        replies_in_web2.join().unwrap().unwrap() >= 1,
        "the peer's ARP reply to web1 reaches web2 too"
    );
    let neigh = tb
        .node_cmd("ip", &["neigh", "show", "198.51.100.7"])
        .unwrap();
    assert!(!neigh.trim().is_empty(), "the host learned the peer");
}

/// Echo requests are answered by the host; echo replies go only to the sandbox that pinged.
pub fn check_echo(tb: &Testbed) {
    let window = Duration::from_secs(4);
    // The peer pings the shared address: the host answers, no sandbox sees the request.
    let seen: Vec<_> = ["web1", "web2"]
        .iter()
        .map(|s| count_frames(&tb.sandbox_ns(s), window, frame::echo_request).unwrap())
        .collect();
    tb.out_cmd("busybox", &["ping", "-c", "2", "-W", "2", "198.51.100.1"])
        .unwrap();
    for c in seen {
        assert_eq!(c.join().unwrap().unwrap(), 0);
    }
    // Both sandboxes ping the same peer at once: each gets exactly its own replies.
    let replies: Vec<_> = ["web1", "web2"]
        .iter()
        .map(|s| count_frames(&tb.sandbox_ns(s), window, frame::echo_reply).unwrap())
        .collect();
    let pings: Vec<_> = [("web1", "3"), ("web2", "5")]
        .iter()
        .map(|(s, n)| {
            let ns = tb.sandbox_ns(s);
            let n = n.to_string();
            std::thread::spawn(move || {
                portiso::exec::run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns,
                        "busybox",
                        "ping",
                        "-c",
                        &n,
                        "-i",
                        "0.3",
                        "-W",
                        "2",
                        "198.51.100.7",
                    ],
                )
            })
        })
        .collect();
    for p in pings {
        p.join()
            .unwrap()
            .expect("every echo request of each sandbox is answered");
    }
    let got: Vec<usize> = replies
        .into_iter()
        .map(|c| c.join().unwrap().unwrap())
        .collect();
    assert_eq!(
        got,
        vec![3, 5],
        "each sandbox receives only the replies to its own requests"
    );
    // The host's own pings still work beside them.
    tb.node_cmd("busybox", &["ping", "-c", "1", "-W", "2", "198.51.100.7"])
        .unwrap();
}

/// Egress: only the sandbox's own ports with the shared address and MAC; spoofed frames are
/// dropped and counted. Changes web1's address and MAC: run it last.
pub fn check_egress(tb: &Testbed) {
    let peer = |port| SocketAddr::from(([198, 51, 100, 7], port));
    let web1 = tb.sandbox_ns("web1");
    // The sandbox's ephemeral ports lie in its range, so a plain client just works.
    let range = run_in(&web1, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["10000", "10099"]
    );
    let l = Listener::start(&tb.outside, false, 8080, LISTEN).unwrap();
    assert_eq!(tcp_send(&web1, peer(8080), None, "plain").unwrap(), "plain");
    assert_eq!(l.received().unwrap(), ["plain"]);

    // From a port of its own: through. From a neighbour's or the host's port: dropped.
    for (from, through) in [(10050, true), (10150, false), (5000, false)] {
        let l = Listener::start(&tb.outside, true, 8081, LISTEN).unwrap();
        let _ = udp_send(&web1, peer(8081), Some(from), &format!("from {from}"));
        let got = l.received().unwrap();
        assert_eq!(
            got.contains(&format!("from {from}")),
            through,
            "UDP from source port {from}"
        );
    }
    let l = Listener::start(&tb.outside, false, 8082, LISTEN).unwrap();
    assert!(
        tcp_send(&web1, peer(8082), Some(10150), "steal").is_err(),
        "TCP from web2's port never connects"
    );
    assert!(l.received().unwrap().is_empty());

    // A forged source address: dropped.
    portiso::exec::run(
        "ip",
        &[
            "netns",
            "exec",
            &web1,
            "ip",
            "addr",
            "add",
            "198.51.100.99/24",
            "dev",
            "eth0",
        ],
    )
    .unwrap();
    let l = Listener::start(&tb.outside, true, 8083, LISTEN).unwrap();
    let _ = run_in(&web1, move || {
        let s = std::net::UdpSocket::bind("198.51.100.99:10060").unwrap();
        s.send_to(b"forged ip", peer(8083)).unwrap();
    });
    assert!(
        l.received().unwrap().is_empty(),
        "a forged source IP never leaves"
    );
    // A forged MAC: dropped, even from its own port.
    portiso::exec::run(
        "ip",
        &[
            "netns",
            "exec",
            &web1,
            "ip",
            "link",
            "set",
            "eth0",
            "address",
            "02:00:00:00:00:99",
        ],
    )
    .unwrap();
    let l = Listener::start(&tb.outside, true, 8084, LISTEN).unwrap();
    let _ = udp_send(&web1, peer(8084), Some(10061), "forged mac");
    assert!(
        l.received().unwrap().is_empty(),
        "a forged source MAC never leaves"
    );
    let flows = tb.dump_flows("br-up1").unwrap();
    let drops = flows
        .lines()
        .find(|l| l.contains("priority=10,in_port=2 ") && l.contains("actions=drop"))
        .and_then(|l| {
            l.split("n_packets=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        drops >= 4,
        "web1's drops are counted on its own drop flow: {drops}\n{flows}"
    );
}

/// Sends `n` UDP datagrams from `ns` (from `from_port`) to `to`, paced so that no queue
/// overflows, and returns once they are sent.
pub fn send_udp(ns: &str, to: SocketAddr, from_port: u16, n: usize) {
    run_in(ns, move || {
        let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], from_port))).unwrap();
        for i in 0..n {
            s.send_to(format!("datagram {i}").as_bytes(), to).unwrap();
            std::thread::sleep(Duration::from_micros(500));
        }
    })
    .unwrap();
}

/// Sends `n` datagrams from the peer to web1's port 10010 while `disrupt` runs, and returns how
/// many arrived at web1: a disruption that loses nothing returns `n`.
pub fn arrivals_at_web1_during(
    tb: &mut Testbed,
    n: usize,
    disrupt: impl FnOnce(&mut Testbed),
) -> usize {
    let web1 = count_frames(
        &tb.sandbox_ns("web1"),
        Duration::from_secs(8),
        frame::to_sandbox_ports,
    )
    .unwrap();
    let sender = {
        let out = tb.outside.clone();
        let to = SocketAddr::from(([198, 51, 100, 1], 10010));
        std::thread::spawn(move || send_udp(&out, to, 4001, n))
    };
    disrupt(tb);
    sender.join().unwrap();
    web1.join().unwrap().unwrap()
}

/// Binds UDP `port` in `ns` (the socket stays in that namespace) with a receive timeout.
fn udp_socket_in(ns: &str, port: u16) -> UdpSocket {
    run_in(ns, move || {
        let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    })
    .unwrap()
}

/// The payloads of the datagrams that reach `s` within `LISTEN`.
fn datagrams(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0; 65536];
    let deadline = std::time::Instant::now() + LISTEN;
    while std::time::Instant::now() < deadline {
        if let Ok(n) = s.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

/// Sends one datagram of `payload` from `ns` (from `from_port`) to `to`: larger than the
/// MTU, it leaves the sender's kernel as IP fragments.
fn send_big(ns: &str, to: SocketAddr, from_port: u16, payload: Vec<u8>) {
    run_in(ns, move || {
        let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], from_port))).unwrap();
        s.send_to(&payload, to).unwrap();
    })
    .unwrap();
}

/// A UDP datagram larger than the MTU crosses the bridge as fragments. Inbound it reaches
/// the sandbox that owns its port whole, and nobody else any piece of it; outbound it leaves
/// whole from a sandbox's own port, and not a fragment of it from a neighbour's.
pub fn check_fragments(tb: &Testbed) {
    let big = |tag: u8| -> Vec<u8> { (0..4000u32).map(|i| tag ^ (i % 251) as u8).collect() };
    let receivers: Vec<(&str, UdpSocket)> = [
        ("web1", tb.sandbox_ns("web1")),
        ("web2", tb.sandbox_ns("web2")),
        ("host", tb.node.clone()),
    ]
    .into_iter()
    .map(|(who, ns)| (who, udp_socket_in(&ns, 10020)))
    .collect();
    let shared = SocketAddr::from(([198, 51, 100, 1], 10020));
    send_big(&tb.outside, shared, 4020, big(1));
    for (who, s) in &receivers {
        let got = datagrams(s);
        let want = if *who == "web1" { vec![big(1)] } else { vec![] };
        assert!(
            got == want,
            "a fragmented datagram to web1's port 10020: {who} got {:?} datagrams of {:?} bytes; flows:\n{}\nagent log:\n{}",
            got.len(),
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            tb.dump_flows("br-up1").unwrap(),
            tb.agent_log()
        );
    }

    let peer = udp_socket_in(&tb.outside, 8090);
    let to_peer = SocketAddr::from(([198, 51, 100, 7], 8090));
    send_big(&tb.sandbox_ns("web1"), to_peer, 10021, big(2));
    assert_eq!(
        datagrams(&peer),
        vec![big(2)],
        "web1 from its own port 10021"
    );
    send_big(&tb.sandbox_ns("web2"), to_peer, 10022, big(3));
    assert!(
        datagrams(&peer).is_empty(),
        "web2 from web1's port 10022: no fragment may leave"
    );
}
