//! Isolation as an attacker would try it: hand-made frames from inside sandbox web1 (and from
//! the outside peer) that try to leave with a forged identity, pose as the shared address,
//! reach a neighbour, or slip past the port match with IP options, fragments, IPv6 or VLAN
//! tags. Each case counts the attacker's frames where they must never arrive; two controls
//! prove that the counters see what does arrive. The matrix runs with the fast path on and
//! off: the same frames must meet the same fate.

mod common;

use common::dataplane::attach_web;
use common::dataplane::web_ranges;
use common::testbed_with;
use portiso::testbed::craft::{
    arp, carries_marker, ethernet, icmp, ipv6_udp, mac, send_frames, udp, Ipv4, Mac, MARKER,
};
use portiso::testbed::netns::count_frames;
use portiso::testbed::Testbed;
use std::net::Ipv4Addr;
use std::time::Duration;

const SHARED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const FORGED_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const FORGED_MAC: &str = "02:00:00:00:00:66";
/// web1 owns TCP/UDP 10000-10099, web2 10100-10199 (`web_ranges`).
const WEB1_PORT: u16 = 10010;
const WEB2_PORT: u16 = 10150;
const HOST_PORT: u16 = 5000;

const IPV4: u16 = 0x0800;
const ARP: u16 = 0x0806;
const IPV6: u16 = 0x86dd;
const BROADCAST: Mac = [0xff; 6];

/// Where frames are sent from.
#[derive(Clone, Copy, PartialEq, Debug)]
enum From {
    /// web1's eth0: an attacker inside a sandbox.
    Web1,
    /// The peer's NIC outside the node.
    Outside,
}

/// Where an observer counts the attacker's frames.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Seen {
    Peer,
    Web1,
    Web2,
}

struct Case {
    name: &'static str,
    from: From,
    frames: Vec<Vec<u8>>,
    /// Where none of the frames may arrive (for the controls: where they must).
    watch: Vec<Seen>,
    control: bool,
}

struct Macs {
    shared: Mac,
    peer: Mac,
}

fn macs(tb: &Testbed) -> Macs {
    let read = |out: String| mac(out.trim());
    Macs {
        shared: read(tb.node_cmd("cat", &["/sys/class/net/up1/address"]).unwrap()),
        peer: read(tb.out_cmd("cat", &["/sys/class/net/eth1/address"]).unwrap()),
    }
}

/// UDP with the marker as data, in one IPv4 packet.
fn udp_packet(ip: &Ipv4, sport: u16, dport: u16) -> Vec<u8> {
    ip.packet(&udp(ip.src, ip.dst, sport, dport, MARKER))
}

fn frame(eth: Vec<u8>, payload: Vec<u8>) -> Vec<u8> {
    [eth, payload].concat()
}

/// A UDP datagram to `dport` cut into pieces: `pieces` are (offset in 8-byte units, more
/// fragments, bytes), taken from the datagram whose header says `sport` → `dport`.
fn fragments(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    eth: &[u8],
    pieces: &[(u16, bool, Vec<u8>)],
) -> Vec<Vec<u8>> {
    pieces
        .iter()
        .map(|(offset, more, bytes)| {
            let mut ip = Ipv4::new(src, dst, 17);
            ip.id = id;
            ip.fragment = Some((*offset, *more));
            frame(eth.to_vec(), ip.packet(bytes))
        })
        .collect()
}

/// The cases, each with frames as the attacker writes them.
fn cases(m: &Macs) -> Vec<Case> {
    let out_eth = |src: Mac| ethernet(m.peer, src, None, IPV4);
    let from_shared = Ipv4::new(SHARED, PEER, 17);
    let legit = |sport| frame(out_eth(m.shared), udp_packet(&from_shared, sport, 8080));
    let in_eth = ethernet(m.shared, m.peer, None, IPV4);
    let to_shared = Ipv4::new(PEER, SHARED, 17);
    // A datagram from web1's port whose first piece is rewritten by an overlapping second
    // piece claiming web2's port: the classic way to dodge a port filter.
    let head = |sport: u16, dport: u16, src, dst| {
        // 8 + 1520 bytes in all: 1400 in the first piece, 128 in the last (at 175 * 8).
        let mut h = udp(src, dst, sport, dport, &[0u8; 1520]);
        h.truncate(1400);
        h
    };
    let tail = {
        let mut t = vec![0u8; 128];
        t[..MARKER.len()].copy_from_slice(MARKER);
        t
    };
    let mut with_options = Ipv4::new(SHARED, PEER, 17);
    with_options.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let mut cases = vec![
        Case {
            name: "control: UDP from web1's own port with the shared addresses leaves",
            from: From::Web1,
            frames: vec![legit(WEB1_PORT)],
            watch: vec![Seen::Peer],
            control: true,
        },
        Case {
            name: "control: UDP from the peer to web1's port reaches web1",
            from: From::Outside,
            frames: vec![frame(
                in_eth.clone(),
                udp_packet(&to_shared, 4000, WEB1_PORT),
            )],
            watch: vec![Seen::Web1],
            control: true,
        },
        Case {
            name: "forged source MAC",
            from: From::Web1,
            frames: vec![frame(
                out_eth(mac(FORGED_MAC)),
                udp_packet(&from_shared, WEB1_PORT, 8080),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "forged source IP",
            from: From::Web1,
            frames: vec![frame(
                out_eth(m.shared),
                udp_packet(&Ipv4::new(FORGED_IP, PEER, 17), WEB1_PORT, 8080),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "source port of the host",
            from: From::Web1,
            frames: vec![legit(HOST_PORT)],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "source port of neighbour web2",
            from: From::Web1,
            frames: vec![legit(WEB2_PORT)],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "IP options before a UDP header with web2's port",
            from: From::Web1,
            frames: vec![frame(
                out_eth(m.shared),
                udp_packet(&with_options, WEB2_PORT, 8080),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "ARP reply claiming the shared address",
            from: From::Web1,
            frames: vec![frame(
                ethernet(m.peer, m.shared, None, ARP),
                arp(2, m.shared, SHARED, m.peer, PEER),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "gratuitous ARP giving the shared address another MAC",
            from: From::Web1,
            frames: vec![frame(
                ethernet(BROADCAST, mac(FORGED_MAC), None, ARP),
                arp(1, mac(FORGED_MAC), SHARED, [0; 6], SHARED),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "ARP request posing as another address",
            from: From::Web1,
            frames: vec![frame(
                ethernet(BROADCAST, m.shared, None, ARP),
                arp(1, m.shared, FORGED_IP, [0; 6], PEER),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "IPv6",
            from: From::Web1,
            frames: vec![frame(
                ethernet(m.peer, m.shared, None, IPV6),
                ipv6_udp(WEB1_PORT, 8080),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "another ethertype (0x88b5)",
            from: From::Web1,
            frames: vec![frame(
                ethernet(m.peer, m.shared, None, 0x88b5),
                MARKER.to_vec(),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "VLAN-tagged UDP from web1's own port",
            from: From::Web1,
            frames: vec![frame(
                ethernet(m.peer, m.shared, Some(7), IPV4),
                udp_packet(&from_shared, WEB1_PORT, 8080),
            )],
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "ICMP error to the shared address quoting web2's traffic",
            from: From::Web1,
            frames: vec![frame(
                ethernet(m.shared, m.shared, None, IPV4),
                Ipv4::new(SHARED, SHARED, 1).packet(&icmp(
                    3,
                    3,
                    &udp_packet(&Ipv4::new(SHARED, PEER, 17), WEB2_PORT, 8080),
                )),
            )],
            watch: vec![Seen::Web2],
            control: false,
        },
        Case {
            name: "fragments of a datagram from web2's port",
            from: From::Web1,
            frames: fragments(
                SHARED,
                PEER,
                0x7101,
                &out_eth(m.shared),
                &[
                    (0, true, head(WEB2_PORT, 8080, SHARED, PEER)),
                    (175, false, tail.clone()),
                ],
            ),
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "overlapping fragments rewriting web1's port into web2's",
            from: From::Web1,
            frames: fragments(
                SHARED,
                PEER,
                0x7102,
                &out_eth(m.shared),
                &[
                    (0, true, head(WEB1_PORT, 8080, SHARED, PEER)),
                    (0, true, head(WEB2_PORT, 8080, SHARED, PEER)),
                    (175, false, tail.clone()),
                ],
            ),
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "a later fragment without its first",
            from: From::Web1,
            frames: fragments(
                SHARED,
                PEER,
                0x7103,
                &out_eth(m.shared),
                &[(175, false, tail.clone())],
            ),
            watch: vec![Seen::Peer, Seen::Web2],
            control: false,
        },
        Case {
            name: "inbound: overlapping fragments rewriting web1's port into web2's",
            from: From::Outside,
            frames: fragments(
                PEER,
                SHARED,
                0x7104,
                &in_eth,
                &[
                    (0, true, head(4000, WEB1_PORT, PEER, SHARED)),
                    (0, true, head(4000, WEB2_PORT, PEER, SHARED)),
                    (175, false, tail.clone()),
                ],
            ),
            watch: vec![Seen::Web1, Seen::Web2],
            control: false,
        },
        Case {
            name: "inbound: a later fragment without its first",
            from: From::Outside,
            frames: fragments(PEER, SHARED, 0x7105, &in_eth, &[(175, false, tail.clone())]),
            watch: vec![Seen::Web1, Seen::Web2],
            control: false,
        },
    ];
    // A fragment's payload must carry the marker for the observers to count it.
    for c in &mut cases {
        for f in &mut c.frames {
            if !carries_marker(f) {
                f.extend_from_slice(MARKER);
            }
        }
    }
    cases
}

/// Sends one case's frames and returns how many of them each watched place saw.
fn run_case(tb: &Testbed, case: &Case) -> Vec<(Seen, usize)> {
    let window = Duration::from_millis(1500);
    let counters: Vec<_> = case
        .watch
        .iter()
        .map(|&seen| {
            let ns = match seen {
                Seen::Peer => tb.outside.clone(),
                Seen::Web1 => tb.sandbox_ns("web1"),
                Seen::Web2 => tb.sandbox_ns("web2"),
            };
            (seen, count_frames(&ns, window, carries_marker).unwrap())
        })
        .collect();
    let (ns, ifname) = match case.from {
        From::Web1 => (tb.sandbox_ns("web1"), "eth0"),
        From::Outside => (tb.outside.clone(), "eth1"),
    };
    send_frames(&ns, ifname, case.frames.clone()).unwrap();
    counters
        .into_iter()
        .map(|(seen, h)| (seen, h.join().unwrap().unwrap()))
        .collect()
}

fn attack_matrix(tag: &str, datapath: &str) {
    let mut tb = testbed_with(tag, &web_ranges(), Some(datapath), |_| {});
    attach_web(&mut tb);
    let m = macs(&tb);
    let (mut tried, mut passed) = (0, Vec::new());
    for case in cases(&m) {
        let seen = run_case(&tb, &case);
        let arrived: usize = seen.iter().map(|(_, n)| n).sum();
        eprintln!("{datapath} | {} | {seen:?}", case.name);
        if case.control {
            assert!(
                seen.iter().all(|(_, n)| *n > 0),
                "{}: the observers saw {seen:?}: the harness is blind",
                case.name
            );
        } else {
            tried += 1;
            if arrived > 0 {
                passed.push(format!("{}: {seen:?}", case.name));
            }
        }
    }
    eprintln!("{datapath}: {tried} attacks tried, {} passed", passed.len());
    assert!(
        passed.is_empty(),
        "attacks that got through ({datapath}):\n{}\nflows:\n{}",
        passed.join("\n"),
        tb.dump_flows("br-up1").unwrap()
    );
}

#[test]
fn no_attack_from_a_sandbox_or_the_outside_gets_through_with_ovs_alone() {
    attack_matrix("isoovs", "{fastPath: off}");
}

#[test]
fn no_attack_gets_through_with_the_fast_path_either() {
    attack_matrix("isofast", "{fastPath: on}");
}
