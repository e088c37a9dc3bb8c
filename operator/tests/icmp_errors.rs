//! ICMP errors with real packets: the peer's kernel answers a datagram to a closed port with
//! "port unreachable", which must reach the kernel of whoever sent the datagram — the sandbox
//! that owns its source port, or the host — and nobody else. Needs root and Open vSwitch.

mod common;

use common::node::meter_stats;
use common::{portrange, testbed};
use portiso::testbed::netns::{count_frames, frame, run_in, spawn_in};
use portiso::testbed::Testbed;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The peer's discard port, where nothing listens: its kernel answers "port unreachable".
fn closed_port_at_peer() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], 9))
}

/// Counting runs this long; every exchange below takes milliseconds.
const WINDOW: Duration = Duration::from_secs(4);

fn two_udp_sandboxes(tag: &str) -> Testbed {
    let ranges = portrange("web1", "web1", &[("UDP", 10000, 10099)], &[])
        + &portrange("web2", "web2", &[("UDP", 10100, 10199)], &[]);
    let mut tb = testbed(tag, &ranges);
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    tb
}

/// A UDP socket in namespace `ns`, bound to `port` and connected to the peer's closed port.
/// A connected UDP socket learns of an ICMP error about its datagrams as ECONNREFUSED.
fn connected_udp(ns: &str, port: u16) -> UdpSocket {
    run_in(ns, move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
        s.connect(closed_port_at_peer())?;
        Ok(s)
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("UDP socket on port {port} in {ns}: {e}"))
}

/// Sends one datagram big enough that the error quoting it is longer than 256 bytes (Linux
/// quotes up to 576), then waits (bounded) for what the socket hears back.
fn send_and_listen(s: &UdpSocket) -> std::io::Result<usize> {
    s.send(&[0x55; 600])?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = [0u8; 2048];
    s.recv(&mut buf)
}

/// The ICMP destination-unreachable frames that reach the host's IP stack during `WINDOW`:
/// those arriving on the bridge's internal port (the uplink NIC in the same namespace carries
/// every error on its way into OVS, so the whole namespace would count them all).
fn unreachables_at_host(tb: &Testbed) -> JoinHandle<std::io::Result<usize>> {
    let ifindex: i32 = tb
        .node_cmd("cat", &["/sys/class/net/br-up1/ifindex"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = spawn_in(&tb.node, move || -> std::io::Result<usize> {
        let sock = bound_packet_socket(ifindex)?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + WINDOW;
        let mut seen = 0;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(seen);
            }
            sock.set_read_timeout(Some(left))?;
            let (len, from) = match sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(seen)
                }
                Err(e) => return Err(e),
            };
            // SAFETY: the kernel filled a sockaddr_ll for a packet socket.
            let from = unsafe { std::ptr::read_unaligned(from.as_ptr() as *const SockaddrLl) };
            // SAFETY: recv_from initialised the first `len` bytes.
            let bytes: Vec<u8> = buf[..len]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            if from.pkttype != PACKET_OUTGOING && frame::icmp_type(&bytes, 3) {
                seen += 1;
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("interface frame counter started");
    std::thread::spawn(move || h.join().expect("counter thread").and_then(|r| r))
}

/// struct sockaddr_ll (linux/if_packet.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrLl {
    family: u16,
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

const PACKET_OUTGOING: u8 = 4;

/// A raw packet socket that receives every protocol on one interface only.
fn bound_packet_socket(ifindex: i32) -> std::io::Result<socket2::Socket> {
    const AF_PACKET: u16 = 17;
    let all = 0x0003u16.to_be();
    let sock = socket2::Socket::new(
        socket2::Domain::PACKET,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(i32::from(all))),
    )?;
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_storage is larger than sockaddr_ll and suitably aligned.
    unsafe {
        *storage.view_as::<SockaddrLl>() = SockaddrLl {
            family: AF_PACKET,
            protocol: all,
            ifindex,
            hatype: 0,
            pkttype: 0,
            halen: 0,
            addr: [0; 8],
        };
    }
    // SAFETY: the storage holds a complete sockaddr_ll of that length.
    let addr = unsafe {
        socket2::SockAddr::new(
            storage,
            std::mem::size_of::<SockaddrLl>() as socket2::socklen_t,
        )
    };
    sock.bind(&addr)?;
    Ok(sock)
}

/// Destination-unreachable frames arriving anywhere in a sandbox's namespace.
fn unreachables_in(ns: &str) -> JoinHandle<std::io::Result<usize>> {
    count_frames(ns, WINDOW, |f| frame::icmp_type(f, 3)).unwrap()
}

#[test]
fn port_unreachable_reaches_only_the_sandbox_that_sent_the_datagram() {
    let tb = two_udp_sandboxes("pderr");
    for (sender, port, other) in [("web1", 10005, "web2"), ("web2", 10150, "web1")] {
        let sender_ns = tb.sandbox_ns(sender);
        let other_ns = tb.sandbox_ns(other);
        let at_sender = unreachables_in(&sender_ns);
        let at_other = unreachables_in(&other_ns);
        let at_host = unreachables_at_host(&tb);
        // Decoys with the very same addresses and ports in the neighbour and the host: if the
        // error were delivered there, their kernels would flag these sockets.
        let decoy_other = connected_udp(&other_ns, port);
        let decoy_host = connected_udp(&tb.node, port);

        let s = connected_udp(&sender_ns, port);
        let heard = send_and_listen(&s);
        assert!(
            matches!(&heard, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
            "{sender}'s socket on port {port} learns that the peer's port is closed, got {heard:?}; flows:\n{}\nagent log:\n{}",
            tb.dump_flows("br-up1").unwrap(),
            tb.agent_log()
        );

        assert!(at_sender.join().unwrap().unwrap() >= 1);
        assert_eq!(
            at_other.join().unwrap().unwrap(),
            0,
            "{other} sees no error about {sender}'s datagram"
        );
        assert_eq!(
            at_host.join().unwrap().unwrap(),
            0,
            "the host sees no error about {sender}'s datagram"
        );
        assert!(
            decoy_other.take_error().unwrap().is_none(),
            "{other}'s decoy"
        );
        assert!(
            decoy_host.take_error().unwrap().is_none(),
            "the host's decoy"
        );
    }
    let flows = tb.dump_flows("br-up1").unwrap();
    assert!(
        flows.lines().any(|l| l.contains("icmp_type=3")
            && l.contains("CONTROLLER")
            && !l.contains("n_packets=0,")),
        "the errors went through the controller flow:\n{flows}"
    );
}

#[test]
fn port_unreachable_about_the_hosts_own_datagram_reaches_the_host() {
    let tb = two_udp_sandboxes("pderh");
    let in_sandboxes = [
        unreachables_in(&tb.sandbox_ns("web1")),
        unreachables_in(&tb.sandbox_ns("web2")),
    ];
    let at_host = unreachables_at_host(&tb);
    // A host port (reserved 0-9999), and one no sandbox owns (the host's too).
    for port in [5000, 10300] {
        let s = connected_udp(&tb.node, port);
        let heard = send_and_listen(&s);
        assert!(
            matches!(&heard, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
            "the host's socket on port {port} learns that the peer's port is closed, got {heard:?}; agent log:\n{}",
            tb.agent_log()
        );
    }
    assert_eq!(at_host.join().unwrap().unwrap(), 2);
    for c in in_sandboxes {
        assert_eq!(
            c.join().unwrap().unwrap(),
            0,
            "no sandbox sees errors about the host's datagrams"
        );
    }
}

/// A remote sender floods the uplink with fragmented datagrams (to web1's port: each is
/// handed to the agent fragment by fragment) far beyond the uplink's slow-path meter, while
/// web2 sends datagrams to a closed port of the peer: each still gets its "port unreachable",
/// which goes up to the agent on the same in-port, through a meter and a budget of its own.
/// When errors shared the fragments' meter, the flood left each about one chance in fifteen.
/// (Port unreachable rather than fragmentation needed, which would take a router with a
/// smaller MTU between peer and node: both are ICMP errors on the same flow and meter.)
#[test]
fn a_fragment_flood_from_the_uplink_does_not_starve_icmp_errors() {
    use portiso::flows::meters::{icmp_error_meter, slow_path_meter};
    let tb = two_udp_sandboxes("pderfl");
    let uplink = common::node::ofport(&tb, "up1") as u32;
    let flood = {
        let outside = tb.outside.clone();
        std::thread::spawn(move || {
            run_in(&outside, move || {
                let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 7000))).unwrap();
                let to = SocketAddr::from(([198, 51, 100, 1], 10005));
                // 2000 datagrams (6000 fragments) a second for 5 s: fifteen times the uplink's
                // fragment meter, well within what the datapath forwards (a flood at full
                // speed would overrun the uplink's receive queue, errors and all, before OVS
                // could tell them apart).
                let start = Instant::now();
                let mut sent = 0u32;
                while start.elapsed() < Duration::from_secs(5) {
                    for _ in 0..2 {
                        if s.send_to(&[9; 3000], to).is_ok() {
                            sent += 1;
                        }
                    }
                    let next = start + Duration::from_micros(u64::from(sent) * 500);
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                sent
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let web2 = tb.sandbox_ns("web2");
    let mut refused = 0;
    for port in [10150, 10151, 10152, 10153, 10154] {
        let s = connected_udp(&web2, port);
        let heard = send_and_listen(&s);
        if matches!(&heard, Err(e) if e.kind() == ErrorKind::ConnectionRefused) {
            refused += 1;
        } else {
            eprintln!("web2's datagram from {port} heard {heard:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = flood.join().unwrap();
    let (fragments_in, fragments_dropped) = meter_stats(&tb, slow_path_meter(uplink));
    let (_, errors_dropped) = meter_stats(&tb, icmp_error_meter(uplink));
    eprintln!(
        "the peer sent {sent} fragmented datagrams; the uplink's fragment meter dropped {fragments_dropped} of {fragments_in} fragments, its ICMP error meter {errors_dropped}; web2 heard {refused} of 5 errors"
    );
    assert!(
        fragments_dropped > 1000,
        "the flood went past the uplink's fragment meter"
    );
    assert_eq!(
        refused,
        5,
        "every error reached web2 through the flood; agent log:\n{}",
        tb.agent_log()
    );
    assert_eq!(errors_dropped, 0);
}
