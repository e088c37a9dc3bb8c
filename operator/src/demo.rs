//! `portiso demo`: a throwaway node in network namespaces, two sandboxes attached through the
//! real agent and CNI plugin, real traffic from a remote peer, and a table of where it landed.
//! Touches no existing interface or address; everything it builds is removed at the end.

use crate::testbed::netns::{count_frames, frame, udp_send, Listener};
use crate::testbed::Testbed;
use std::net::SocketAddr;
use std::time::Duration;

const RANGES: &str = r#"---
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata: {name: web1}
spec:
  selector: {matchLabels: {portiso.io/sandbox: web1}}
  ports:
    - {protocol: TCP, start: 10000, end: 10099}
    - {protocol: UDP, start: 10000, end: 10099}
---
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata: {name: web2}
spec:
  selector: {matchLabels: {portiso.io/sandbox: web2}}
  ports:
    - {protocol: TCP, start: 10100, end: 10199}
    - {protocol: UDP, start: 10100, end: 10199}
---
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata: {name: web3}
spec:
  selector: {matchLabels: {portiso.io/sandbox: web3}}
  ports:
    - {protocol: TCP, start: 10050, end: 10150}
"#;

struct Row {
    what: String,
    expected: String,
    got: String,
}

pub fn run() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    eprintln!("building a throwaway node in network namespaces (portiso-demo-*) ...");
    let mut tb = Testbed::new("portiso-demo", &exe)?;
    tb.write_ranges("demo.yaml", RANGES)?;
    tb.start_agent()?;
    let result = show(&mut tb);
    drop(tb);
    eprintln!("cleaned up: namespaces, OVS instance and files removed");
    result
}

fn show(tb: &mut Testbed) -> anyhow::Result<()> {
    let shared = tb.uplinks[0].shared;
    println!(
        "node: host and sandboxes share {shared} and one MAC on bridge {}",
        tb.uplinks[0].bridge
    );
    for s in ["web1", "web2"] {
        let r = tb.attach(s, "up1")?;
        println!(
            "attached {s}: {} {} via portiso-cni",
            r["interfaces"][0]["mac"], r["ips"][0]["address"]
        );
    }
    let mut rows = Vec::new();
    let sandboxes = ["web1", "web2"];
    for (udp, port, expected) in [
        (false, 10000, "web1"),
        (false, 10100, "web2"),
        (false, 22, "host"),
        (true, 10001, "web1"),
        (true, 10150, "web2"),
        (true, 5353, "host"),
    ] {
        let p = tb.probe(udp, 0, port, &sandboxes)?;
        rows.push(Row {
            what: format!(
                "peer -> {shared}:{port}/{}",
                if udp { "udp" } else { "tcp" }
            ),
            expected: expected.into(),
            got: if p.landed.is_empty() {
                "nobody".into()
            } else {
                p.landed.join("+")
            },
        });
    }

    // ICMP: the host answers the peer's pings; each sandbox gets only its own echo replies.
    let ok = tb
        .out_cmd(
            "busybox",
            &["ping", "-c", "1", "-W", "2", &shared.to_string()],
        )
        .is_ok();
    rows.push(Row {
        what: format!("peer pings {shared}"),
        expected: "answered".into(),
        got: answered(ok),
    });
    let replies_web2 = count_frames(
        &tb.sandbox_ns("web2"),
        Duration::from_secs(3),
        frame::echo_reply,
    )?;
    let web1 = tb.sandbox_ns("web1");
    let peer = tb.uplinks[0].peer.to_string();
    let ok = crate::exec::run(
        "ip",
        &[
            "netns", "exec", &web1, "busybox", "ping", "-c", "2", "-W", "2", &peer,
        ],
    )
    .is_ok();
    rows.push(Row {
        what: format!("web1 pings {peer}"),
        expected: "answered".into(),
        got: answered(ok),
    });
    let leaked = replies_web2
        .join()
        .map_err(|_| anyhow::anyhow!("counter panicked"))??;
    rows.push(Row {
        what: "  ... replies seen by web2".into(),
        expected: "0".into(),
        got: leaked.to_string(),
    });

    // Egress: web1 may not send from web2's ports.
    let to = SocketAddr::from((tb.uplinks[0].peer, 8081));
    let l = Listener::start(&tb.outside, true, 8081, Duration::from_secs(2))?;
    let _ = udp_send(&web1, to, Some(10150), "spoof");
    let got = l.received()?;
    rows.push(Row {
        what: "web1 sends from web2's port 10150".into(),
        expected: "dropped".into(),
        got: if got.is_empty() {
            "dropped".into()
        } else {
            "delivered".into()
        },
    });

    // Refusals: an overlapping PortRange, and a sandbox no accepted range selects.
    let refused = match tb.attach("web3", "up1") {
        Ok(_) => "attached".to_string(),
        Err(e) => format!("refused: {}", first_line(&e.to_string())),
    };
    rows.push(Row {
        what: "attach web3 (its PortRange overlaps web1, web2)".into(),
        expected: "refused".into(),
        got: refused,
    });

    print_table(&rows);
    let failed = rows
        .iter()
        .filter(|r| !r.got.starts_with(&r.expected))
        .count();
    anyhow::ensure!(failed == 0, "{failed} row(s) did not land where expected");
    println!("\nall {} checks landed where expected", rows.len());
    Ok(())
}

fn answered(ok: bool) -> String {
    if ok {
        "answered".into()
    } else {
        "no answer".into()
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn print_table(rows: &[Row]) {
    let w = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let e = rows.iter().map(|r| r.expected.len()).max().unwrap_or(0);
    println!("\n{:w$}  {:e$}  landed / result", "traffic", "expected");
    println!("{}", "-".repeat(w + e + 20));
    for r in rows {
        let mark = if r.got.starts_with(&r.expected) {
            "ok "
        } else {
            "BAD"
        };
        println!("{:w$}  {:e$}  {mark} {}", r.what, r.expected, r.got);
    }
}
