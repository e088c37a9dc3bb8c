//! A flood from one sandbox, with `sandboxEgressLimit`: the flooding sandbox's own meter drops
//! what exceeds its rate, and its neighbour's paced stream arrives whole. With the fast path
//! on (the default), metered sandboxes send through OVS, where the meters are.
//!
//! A flood of fragmented datagrams, which the agent passes on one packet at a time, without
//! any limit configured: the flooder's slow-path meter holds it, and its neighbour's
//! fragmented datagrams still arrive whole. That alone would pass on the OVS meters only, so a
//! second test opens the flooder's meter wide and checks, from the agent's metrics, that the
//! agent's own budget per in-port held the flooder and took every fragment of its neighbour.

mod common;

use common::dataplane::{attach_web, web_ranges};
use common::node::{meter_stats, metrics_reply, sandbox_ofport, start_agent_with_metrics};
use common::testbed_with;
use portiso::testbed::netns::run_in;
use portiso::testbed::Testbed;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const RATE: u32 = 1000;
const BURST: u32 = 100;
const PEER: [u8; 4] = [198, 51, 100, 7];

/// Counts datagrams arriving at the peer's `port` until `window` has passed.
fn peer_counter(tb: &Testbed, port: u16, window: Duration) -> std::thread::JoinHandle<usize> {
    peer_counter_of(tb, port, window, 0)
}

/// Counts datagrams of at least `min_len` bytes arriving at the peer's `port` until `window`
/// has passed.
fn peer_counter_of(
    tb: &Testbed,
    port: u16,
    window: Duration,
    min_len: usize,
) -> std::thread::JoinHandle<usize> {
    let s = run_in(&tb.outside, move || {
        let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s
    })
    .unwrap();
    std::thread::spawn(move || {
        let (mut n, mut buf, end) = (0, vec![0u8; 65536], Instant::now() + window);
        while Instant::now() < end {
            if s.recv(&mut buf).is_ok_and(|len| len >= min_len) {
                n += 1;
            }
        }
        n
    })
}

/// Starts sending `payload` from `from_port` in sandbox `ns` to the peer's `to_port` as fast as
/// it can for `secs`; the thread returns how many datagrams it sent.
fn flood(
    ns: String,
    from_port: u16,
    to_port: u16,
    payload: Vec<u8>,
    secs: u64,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        run_in(&ns, move || {
            let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], from_port))).unwrap();
            let (end, mut sent) = (Instant::now() + Duration::from_secs(secs), 0usize);
            while Instant::now() < end {
                if s.send_to(&payload, SocketAddr::from((PEER, to_port)))
                    .is_ok()
                {
                    sent += 1;
                }
            }
            sent
        })
        .unwrap()
    })
}

/// web1's side of the fragment tests: 30 datagrams of `size` bytes (fragmented) from its port
/// 10050 to the peer's 8096, 10 a second, well within its own slow path; how many it sent.
fn web1_paced(tb: &Testbed, size: usize) -> usize {
    paced(
        &tb.sandbox_ns("web1"),
        10050,
        8096,
        vec![1; size],
        30,
        Duration::from_millis(100),
    )
}

/// Sends `n` datagrams of `payload` from `from_port` in sandbox `ns` to the peer's `to_port`,
/// one every `every`; returns `n`.
fn paced(
    ns: &str,
    from_port: u16,
    to_port: u16,
    payload: Vec<u8>,
    n: u32,
    every: Duration,
) -> usize {
    run_in(ns, move || {
        let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], from_port))).unwrap();
        let start = Instant::now();
        for i in 0..n {
            s.send_to(&payload, SocketAddr::from((PEER, to_port)))
                .unwrap();
            if let Some(wait) = (start + every * (i + 1)).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        n as usize
    })
    .unwrap()
}

#[test]
fn a_flooding_sandbox_is_held_to_its_rate_and_its_neighbour_is_not_starved() {
    let mut tb = testbed_with("mtrflood", &web_ranges(), None, |_| {});
    tb.kill_agent();
    tb.extra_config = format!("sandboxEgressLimit: {{packetsPerSecond: {RATE}, burst: {BURST}}}\n");
    tb.start_agent().unwrap();
    attach_web(&mut tb);

    let window = Duration::from_secs(4);
    let flood_seen = peer_counter(&tb, 8095, window);
    let paced_seen = peer_counter(&tb, 8096, window);
    // web2 floods from its own port as fast as it can for 2 s; web1 sends 400 paced at 200/s.
    let flood = flood(tb.sandbox_ns("web2"), 10150, 8095, b"flood".to_vec(), 2);
    let paced = paced(
        &tb.sandbox_ns("web1"),
        10050,
        8096,
        b"paced".to_vec(),
        400,
        Duration::from_millis(5),
    );
    let flooded = flood.join().unwrap();
    let (flood_got, paced_got) = (flood_seen.join().unwrap(), paced_seen.join().unwrap());
    // A sandbox's egress meter is numbered as its OpenFlow port.
    let drops = meter_stats(&tb, sandbox_ofport(&tb, "web2") as u32).1;
    eprintln!(
        "web2 flooded {flooded} datagrams in 2 s: {flood_got} left (meter dropped {drops}); web1's paced {paced}: {paced_got} arrived"
    );
    assert_eq!(paced_got, paced, "web1's paced stream is not starved");
    assert!(
        flooded > 4 * (RATE as usize) * 2,
        "the flood was a flood: {flooded}"
    );
    // 2 s at the rate plus the burst, with room for timing at the edges.
    let bound = (2 * RATE + BURST) as usize * 13 / 10;
    assert!(
        flood_got > 0 && flood_got <= bound,
        "web2 held to its rate: {flood_got} arrived, at most {bound} allowed"
    );
    assert!(drops > 0, "the meter counted its drops");
}

#[test]
fn a_sandbox_flooding_fragments_cannot_starve_its_neighbours_fragments() {
    use portiso::flows::meters::{slow_path_meter, SANDBOX_SLOW_PATH};
    let mut tb = testbed_with("mtrfrag", &web_ranges(), None, |_| {});
    attach_web(&mut tb);
    const BIG: usize = 4000;
    let window = Duration::from_secs(6);
    let flood_seen = peer_counter_of(&tb, 8095, window, BIG);
    let paced_seen = peer_counter_of(&tb, 8096, window, BIG);
    // web2 sends 4000-byte datagrams (three fragments each) from its own port as fast as it
    // can for 3 s; web1 sends 30 of them at 10 a second, well within its own slow path.
    let flood = flood(tb.sandbox_ns("web2"), 10150, 8095, vec![7; BIG], 3);
    let paced = web1_paced(&tb, BIG);
    let flooded = flood.join().unwrap();
    let (flood_got, paced_got) = (flood_seen.join().unwrap(), paced_seen.join().unwrap());
    let web2_meter = slow_path_meter(sandbox_ofport(&tb, "web2") as u32);
    let drops = meter_stats(&tb, web2_meter).1;
    eprintln!(
        "web2 flooded {flooded} fragmented datagrams in 3 s: {flood_got} arrived whole (its slow-path meter dropped {drops} fragments); web1's paced {paced}: {paced_got} arrived whole"
    );
    assert_eq!(
        paced_got,
        paced,
        "web1's fragmented datagrams are not starved; agent log:\n{}",
        tb.agent_log()
    );
    assert!(flooded > 1000, "the flood was a flood: {flooded}");
    // Three fragments a datagram, at the meter's rate plus its burst, with room at the edges.
    let rate = SANDBOX_SLOW_PATH;
    let bound = (3 * rate.packets_per_second + rate.burst) as usize / 3 * 13 / 10;
    assert!(
        flood_got <= bound,
        "web2 held to its slow path: {flood_got} arrived, at most {bound} allowed"
    );
    assert!(drops > 0, "web2's slow-path meter counted its drops");
}

/// One series' value from the agent's metrics page at `addr` (0 when absent).
fn metric(tb: &Testbed, addr: SocketAddr, series: &str) -> f64 {
    metrics_reply(tb, addr)
        .lines()
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The agent's count of `result` for fragments from `in_port` on br-up1.
fn slow_path(tb: &Testbed, addr: SocketAddr, in_port: i64, result: &str) -> f64 {
    metric(
        tb,
        addr,
        &format!("portiso_agent_slow_path_packets_total{{bridge=\"br-up1\",in_port=\"{in_port}\",kind=\"fragment\",result=\"{result}\"}}"),
    )
}

/// Opens the flooder's slow-path meter wide, so that only the agent's budget per in-port stands
/// between its fragments and its neighbour's. The flood is paced (600 fragments a second, well
/// within what OVS's conntrack reassembles: a flood at full speed past the meter would fill its
/// reassembly, for everyone, before the agent saw anything), three times the agent's budget for
/// one sandbox. With one budget for all in-ports (the agent's fair share disabled), web1's
/// fragments would share it with web2's and most of its datagrams arrive incomplete.
#[test]
fn past_a_wide_open_meter_the_agent_alone_holds_a_sandbox_flooding_fragments() {
    use portiso::flows::meters::{slow_path_meter, SANDBOX_SLOW_PATH};
    let mut tb = testbed_with("mtrfair", &web_ranges(), None, |_| {});
    tb.kill_agent();
    let addr = start_agent_with_metrics(&mut tb);
    attach_web(&mut tb);
    let (web1, web2) = (sandbox_ofport(&tb, "web1"), sandbox_ofport(&tb, "web2"));
    let web2_meter = slow_path_meter(web2 as u32);
    tb.node_cmd(
        "ovs-ofctl",
        &[
            "-O",
            "OpenFlow14",
            "mod-meter",
            "br-up1",
            &format!("meter={web2_meter},pktps,burst,stats,bands=type=drop,rate=1000000,burst_size=1000000"),
        ],
    )
    .unwrap();

    const BIG: usize = 4000;
    let window = Duration::from_secs(6);
    let flood_seen = peer_counter_of(&tb, 8095, window, BIG);
    let paced_seen = peer_counter_of(&tb, 8096, window, BIG);
    // web2: 200 datagrams (600 fragments) a second for 3 s; web1: 30 at 10 a second.
    let flood = {
        let ns = tb.sandbox_ns("web2");
        std::thread::spawn(move || {
            paced(
                &ns,
                10150,
                8095,
                vec![7; BIG],
                600,
                Duration::from_millis(5),
            )
        })
    };
    let paced = web1_paced(&tb, BIG);
    let flooded = flood.join().unwrap();
    let (flood_got, paced_got) = (flood_seen.join().unwrap(), paced_seen.join().unwrap());
    let meter_dropped = meter_stats(&tb, web2_meter).1;
    let count = |in_port, result| slow_path(&tb, addr, in_port, result);
    let (web1_taken, web1_dropped) = (
        count(web1, "taken"),
        count(web1, "over_budget") + count(web1, "queue_full"),
    );
    let (web2_taken, web2_over) = (count(web2, "taken"), count(web2, "over_budget"));
    eprintln!(
        "web2 sent {flooded} fragmented datagrams in 3 s past its open meter (which dropped {meter_dropped}): {flood_got} arrived whole; the agent took {web2_taken} of its fragments and dropped {web2_over} over its budget. web1's paced {paced}: {paced_got} arrived whole, the agent took {web1_taken} of its fragments and dropped {web1_dropped}"
    );
    assert_eq!(meter_dropped, 0, "web2's meter was open");
    // The agent read OVS's meter features (the userspace datapath has meters) without trouble.
    let log = tb.agent_log();
    assert!(
        !log.contains("could not ask OVS whether the datapath has meters")
            && !log.contains("has no OpenFlow meters"),
        "{log}"
    );
    assert_eq!(
        paced_got,
        paced,
        "web1's fragmented datagrams are not starved by the agent; agent log:\n{}",
        tb.agent_log()
    );
    assert_eq!(web1_dropped, 0.0, "the agent dropped none of web1's");
    assert_eq!(web1_taken, 3.0 * paced as f64, "three fragments a datagram");
    // The agent held web2 to its budget per in-port: (rate + burst) in each one-second window
    // the 3 s flood touches, with room for a late start.
    let per_second = f64::from(SANDBOX_SLOW_PATH.packets_per_second + SANDBOX_SLOW_PATH.burst);
    assert!(web2_over > 0.0, "the agent dropped some of web2's");
    assert!(
        web2_taken <= 5.0 * per_second,
        "web2 held to the agent's budget: {web2_taken} taken"
    );
}
