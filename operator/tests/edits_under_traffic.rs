//! Changes to the node's state while traffic flows, with the fast path on and off: a range
//! moved from one sandbox to another, its PortRange deleted, and a sandbox removed. A steady UDP stream is counted at
//! every sandbox: nothing is lost, nothing arrives twice or at the wrong sandbox, and only the
//! flows of what changed are touched.

mod common;

use common::dataplane::web_ranges;
use common::{canonical_flows, portrange, testbed_with};
use portiso::testbed::netns::{count_frames, run_in};
use portiso::testbed::Testbed;
use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A range that moves: 10500-10509 (port blocks 0x2904/0xfffc, 0x2908/0xfffc, 0x290c/0xfffe).
const MOVING: (u16, u16) = (10500, 10509);
const MOVING_BLOCKS: [&str; 3] = ["0x2904/0xfffc", "0x2908/0xfffc", "0x290c/0xfffe"];
/// Datagrams per second per destination port, and for how long.
const RATE: u32 = 500;
const STREAM: Duration = Duration::from_secs(4);

fn ranges(moving_to: &str) -> String {
    web_ranges() + &portrange("moving", moving_to, &[("UDP", MOVING.0, MOVING.1)], &[])
}

fn udp_to(f: &[u8], port: u16) -> bool {
    f.len() > 38
        && f[12..14] == [0x08, 0x00]
        && f[23] == 17
        && u16::from_be_bytes([f[36], f[37]]) == port
}
fn to_10010(f: &[u8]) -> bool {
    udp_to(f, 10010)
}
fn to_10505(f: &[u8]) -> bool {
    udp_to(f, 10505)
}

/// Sends RATE datagrams per second to each of `ports` on the shared address from the peer
/// for STREAM; returns how many went to each.
fn stream(tb: &Testbed, ports: Vec<u16>) -> std::thread::JoinHandle<usize> {
    let out = tb.outside.clone();
    std::thread::spawn(move || {
        run_in(&out, move || {
            let s = UdpSocket::bind("0.0.0.0:4100").unwrap();
            let start = Instant::now();
            let mut sent = 0usize;
            let per_port = (RATE as f64 * STREAM.as_secs_f64()) as usize;
            for i in 0..per_port {
                for &p in &ports {
                    s.send_to(b"steady", SocketAddr::from(([198, 51, 100, 1], p)))
                        .unwrap();
                }
                sent += 1;
                // Paced against the clock, so a slow moment is caught up, not stretched.
                let due = start + Duration::from_secs_f64(i as f64 / RATE as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            sent
        })
        .unwrap()
    })
}

/// Counts frames to `want` arriving in each of web1 and web2 during the stream (and a little
/// after, for the last ones in flight).
fn counters(
    tb: &Testbed,
    want: fn(&[u8]) -> bool,
) -> [std::thread::JoinHandle<std::io::Result<usize>>; 2] {
    let window = STREAM + Duration::from_secs(2);
    ["web1", "web2"].map(|s| count_frames(&tb.sandbox_ns(s), window, want).unwrap())
}

fn joined(c: [std::thread::JoinHandle<std::io::Result<usize>>; 2]) -> [usize; 2] {
    c.map(|h| h.join().unwrap().unwrap())
}

fn moving_a_range_and_removing_a_sandbox(tag: &str, datapath: &str) {
    let mut tb = testbed_with(tag, &ranges("web1"), Some(datapath), |_| {});
    tb.attach("web1", "up1").unwrap();
    tb.attach("web2", "up1").unwrap();
    let before: BTreeSet<String> = canonical_flows(&tb).into_iter().collect();

    // The moving range goes from web1 to web2 a second into the stream.
    let fixed = counters(&tb, to_10010);
    let moving = counters(&tb, to_10505);
    let sender = stream(&tb, vec![10010, 10505]);
    std::thread::sleep(Duration::from_secs(1));
    tb.write_ranges("ranges.yaml", &ranges("web2")).unwrap();
    let sent = sender.join().unwrap();
    let [fixed_web1, fixed_web2] = joined(fixed);
    let [moving_web1, moving_web2] = joined(moving);
    eprintln!(
        "{datapath}: moved range: web1 {moving_web1} + web2 {moving_web2} of {sent}; web1's own port: {fixed_web1} of {sent}"
    );
    assert_eq!(
        (fixed_web1, fixed_web2),
        (sent, 0),
        "web1's own port, untouched by the move"
    );
    assert_eq!(
        moving_web1 + moving_web2,
        sent,
        "every datagram of the moved range arrives once, at web1 or web2"
    );
    assert!(
        moving_web1 > 0 && moving_web2 > 0,
        "the range moved mid-stream: {moving_web1} then {moving_web2}"
    );
    // Only the moved range's flows changed: each removed or added flow is one of its blocks.
    let after: BTreeSet<String> = canonical_flows(&tb).into_iter().collect();
    let changed: Vec<&String> = before.symmetric_difference(&after).collect();
    assert!(!changed.is_empty(), "the move changed no flow");
    for f in &changed {
        assert!(
            MOVING_BLOCKS.iter().any(|b| f.contains(b)),
            "a flow outside the moved range changed: {f}"
        );
    }

    // The moved range's PortRange is deleted while datagrams flow to it and to web1's port:
    // the range's datagrams go to the host from then on, web1's lose nothing.
    let fixed = counters(&tb, to_10010);
    let moving = counters(&tb, to_10505);
    let sender = stream(&tb, vec![10010, 10505]);
    std::thread::sleep(Duration::from_secs(1));
    tb.write_ranges("ranges.yaml", &web_ranges()).unwrap();
    let sent = sender.join().unwrap();
    let [fixed_web1, _] = joined(fixed);
    let [moving_web1, moving_web2] = joined(moving);
    eprintln!(
        "{datapath}: range deleted: web2 got {moving_web2} of {sent} before; web1's own port: {fixed_web1} of {sent}"
    );
    assert_eq!(
        fixed_web1, sent,
        "web1's own port while another range went away"
    );
    assert_eq!(moving_web1, 0, "the deleted range never reaches web1");
    assert!(
        moving_web2 > 0 && moving_web2 < sent,
        "web2 had the range until it was deleted: {moving_web2} of {sent}"
    );
    assert!(
        !canonical_flows(&tb)
            .iter()
            .any(|f| MOVING_BLOCKS.iter().any(|b| f.contains(b))),
        "no flow of the deleted range is left"
    );

    // web2 is removed while web1's stream flows.
    let fixed = counters(&tb, to_10010);
    let sender = stream(&tb, vec![10010]);
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out) = tb.cni("DEL", "web2", "eth0", "up1", "1.0.0").unwrap();
    assert!(ok, "DEL web2: {out}");
    let sent = sender.join().unwrap();
    let [web1, web2] = joined(fixed);
    eprintln!("{datapath}: web2 removed: web1 got {web1} of {sent}");
    assert_eq!(
        (web1, web2),
        (sent, 0),
        "web1's stream while web2 went away"
    );
}

#[test]
fn with_the_fast_path_edits_and_removals_lose_nothing_and_touch_only_what_changed() {
    moving_a_range_and_removing_a_sandbox("eutfast", "{fastPath: on}");
}

#[test]
fn with_ovs_alone_edits_and_removals_lose_nothing_and_touch_only_what_changed() {
    moving_a_range_and_removing_a_sandbox("eutovs", "{fastPath: off}");
}
