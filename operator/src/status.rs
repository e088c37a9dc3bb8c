//! `portiso status`: asks the running agent what it is doing and prints it as a few aligned
//! tables, or as JSON. The rendering is pure; only `run` talks to the agent.

use portiso_agent_api::{call, FastPathCounters, NodeStatus, Request, Response};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the agent may take to answer (it reads OVS's and the fast path's counters).
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's socket [default: `socket` of --config if that file exists, else
    /// /run/portiso/agent.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The agent's YAML config, read only for its `socket`.
    #[arg(long, default_value = "/etc/portiso/agent.yaml")]
    pub config: PathBuf,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The socket to ask: the one given, else the config's, else the default.
pub fn socket_of(args: &StatusArgs) -> PathBuf {
    if let Some(s) = &args.socket {
        return s.clone();
    }
    if args.config.exists() {
        if let Ok(c) = crate::config::AgentConfig::load(&args.config) {
            return c.socket;
        }
    }
    PathBuf::from(portiso_agent_api::DEFAULT_SOCKET)
}

/// Asks the agent at `socket` to describe its node.
pub fn ask(socket: &Path) -> anyhow::Result<NodeStatus> {
    match call(socket, &Request::Describe, TIMEOUT)? {
        Response::Node(n) => Ok(n),
        Response::Error(e) => anyhow::bail!(
            "the portiso agent at {} answered with an error: {e}",
            socket.display()
        ),
        other => anyhow::bail!(
            "the portiso agent at {} gave an unexpected answer ({other:?}): is it an older portiso version than this one?",
            socket.display()
        ),
    }
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let node = ask(&socket_of(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&node)?);
    } else {
        print!("{}", render(&node));
    }
    Ok(())
}

/// Lays out rows under headers, each column as wide as its widest cell, two spaces apart;
/// no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain([headers[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            write!(line, "{cell:<w$}  ").expect("writing to a String");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The slow-path reasons that counted anything, e.g. "port not owned 3", or "0".
fn slow_text(c: &FastPathCounters) -> String {
    let reasons: Vec<String> = c
        .slow()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(why, n)| format!("{why} {n}"))
        .collect();
    if reasons.is_empty() {
        "0".into()
    } else {
        reasons.join(", ")
    }
}

/// The fast-path columns of a row: packets, bytes and slow-path reasons, or dashes.
fn fast_cells(c: Option<&FastPathCounters>) -> [String; 3] {
    match c {
        Some(c) => [
            c.fast_packets.to_string(),
            c.fast_bytes.to_string(),
            slow_text(c),
        ],
        None => ["-".into(), "-".into(), "-".into()],
    }
}

const FAST_HEADERS: [&str; 3] = ["FAST PKTS", "FAST BYTES", "SLOW PATH"];

/// The whole status, readably: the datapath, then one table each for the uplinks, the
/// sandboxes and the refused PortRanges.
pub fn render(n: &NodeStatus) -> String {
    let mut out = String::new();
    let mut summary = vec![
        vec!["Datapath".to_string(), n.datapath.clone()],
        vec![
            "Port type".to_string(),
            format!("{} ({})", n.port_type, n.port_type_reason),
        ],
        vec!["Fast path".to_string(), n.fast_path.clone()],
    ];
    if let Some(mode) = &n.fast_path_mode {
        summary.push(vec!["XDP mode".to_string(), mode.clone()]);
    }
    // The summary has no header line.
    let summary = table(&["", ""], &summary);
    out.push_str(summary.split_once('\n').map_or("", |(_, rest)| rest));

    out.push('\n');
    let with_fast = n.uplinks.iter().any(|u| u.fast_path.is_some())
        || n.sandboxes.iter().any(|s| s.fast_path.is_some());
    let mut headers = vec!["UPLINK", "BRIDGE", "ADDRESS", "MAC", "OFPORT", "FLOWS"];
    if with_fast {
        headers.extend(FAST_HEADERS);
    }
    let rows: Vec<Vec<String>> = n
        .uplinks
        .iter()
        .map(|u| {
            let mut row = vec![
                u.name.clone(),
                u.bridge.clone(),
                u.address.clone(),
                u.mac.clone(),
                u.ofport.to_string(),
                u.flows.to_string(),
            ];
            if with_fast {
                row.extend(fast_cells(u.fast_path.as_ref()));
            }
            row
        })
        .collect();
    out.push_str(&table(&headers, &rows));

    out.push('\n');
    if n.sandboxes.is_empty() {
        out.push_str("No sandboxes attached.\n");
    } else {
        let mut headers = vec![
            "SANDBOX",
            "UPLINK",
            "HOST IF",
            "OFPORT",
            "PORTRANGE",
            "PORTS",
            "LOCAL PORTS",
            "DROPPED",
        ];
        if with_fast {
            headers.extend(FAST_HEADERS);
        }
        let mut rows = Vec::new();
        for s in &n.sandboxes {
            let dropped = match s.dropped {
                None => "?".to_string(),
                Some(0) => "0".to_string(),
                Some(total) => {
                    let why: Vec<String> = s
                        .drops
                        .iter()
                        .filter(|d| d.packets > 0)
                        .map(|d| format!("{} {}", d.reason, d.packets))
                        .collect();
                    format!("{total} ({})", why.join(", "))
                }
            };
            let first = s.ranges.first();
            let mut row = vec![
                format!("{}/{}", s.namespace, s.name),
                s.uplink.clone(),
                s.host_if.clone(),
                s.ofport.to_string(),
                first.map_or("-".into(), |r| r.range.clone()),
                first.map_or("-".into(), |r| r.ports.join(", ")),
                s.local_port_range.clone().unwrap_or_else(|| "-".into()),
                dropped,
            ];
            if with_fast {
                row.extend(fast_cells(s.fast_path.as_ref()));
            }
            rows.push(row);
            // Further ranges on rows of their own, under the first.
            for r in s.ranges.iter().skip(1) {
                let mut row = vec![String::new(); 4];
                row.extend([r.range.clone(), r.ports.join(", ")]);
                rows.push(row);
            }
        }
        out.push_str(&table(&headers, &rows));
    }

    out.push('\n');
    if n.refused.is_empty() {
        out.push_str("No PortRange refused.\n");
    } else {
        let rows: Vec<Vec<String>> = n
            .refused
            .iter()
            .map(|r| vec![r.range.clone(), r.reason.clone()])
            .collect();
        out.push_str(&table(&["REFUSED PORTRANGE", "REASON"], &rows));
    }
    for w in &n.warnings {
        writeln!(out, "\nwarning: {w}").expect("writing to a String");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portiso_agent_api::{
        AttachmentKey, DropCount, HeldRange, RefusedRange, SandboxStatus, UplinkStatus,
    };

    fn node(fast: bool) -> NodeStatus {
        let counters = |p| {
            fast.then_some(FastPathCounters {
                fast_packets: p,
                fast_bytes: p * 100,
                slow_port_not_owned: 2,
                ..Default::default()
            })
        };
        NodeStatus {
            datapath: "netdev".into(),
            port_type: "system".into(),
            port_type_reason: "the fast path runs".into(),
            fast_path: if fast {
                "on (generic XDP on the uplinks and sandbox ports)".into()
            } else {
                "off: off in the config (datapath.fastPath: off)".into()
            },
            fast_path_mode: fast.then(|| "generic".into()),
            uplinks: vec![UplinkStatus {
                name: "up1".into(),
                bridge: "br-up1".into(),
                address: "198.51.100.1/24".into(),
                mac: "02:00:00:00:00:01".into(),
                ofport: 1,
                flows: 42,
                fast_path: counters(10),
            }],
            sandboxes: vec![
                SandboxStatus {
                    namespace: "default".into(),
                    name: "web1".into(),
                    key: AttachmentKey {
                        container_id: "ctr-web1".into(),
                        ifname: "eth0".into(),
                    },
                    uplink: "up1".into(),
                    host_if: "pi-0123456789".into(),
                    ofport: 2,
                    ranges: vec![
                        HeldRange {
                            range: "default/web1".into(),
                            ports: vec!["TCP 10000-10099".into(), "UDP 10000-10099".into()],
                        },
                        HeldRange {
                            range: "default/sip".into(),
                            ports: vec!["UDP 5060".into()],
                        },
                    ],
                    local_port_range: Some("10000-10099".into()),
                    dropped: Some(4),
                    drops: vec![DropCount {
                        reason: "egress not allowed".into(),
                        packets: 4,
                    }],
                    fast_path: counters(3),
                },
                SandboxStatus {
                    namespace: "default".into(),
                    name: "web2".into(),
                    uplink: "up1".into(),
                    host_if: "pi-abc".into(),
                    ofport: 3,
                    ranges: vec![HeldRange {
                        range: "default/web2".into(),
                        ports: vec!["TCP 10100-10199".into()],
                    }],
                    dropped: Some(0),
                    fast_path: counters(0),
                    ..Default::default()
                },
            ],
            refused: vec![RefusedRange {
                range: "default/late".into(),
                reason: "overlaps default/web1".into(),
            }],
            warnings: vec![],
        }
    }

    /// The cell under `header` (in the nearest header line above) in the line that starts
    /// with `first`.
    fn cell(text: &str, header: &str, first: &str) -> String {
        let mut head = None;
        for line in text.lines() {
            if line.contains(header) {
                head = Some(line);
            }
            if line.starts_with(first) {
                let at = head.expect("header line").find(header).unwrap();
                return line
                    .get(at..)
                    .unwrap_or("")
                    .split("  ")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
            }
        }
        panic!("no row {first:?} in\n{text}");
    }

    #[test]
    fn tables_are_aligned_and_have_no_trailing_spaces() {
        let t = table(
            &["A", "BB", "C"],
            &[
                vec!["xxx".into(), "y".into(), "".into()],
                vec!["z".into(), "wwww".into(), "v".into()],
            ],
        );
        assert_eq!(t, "A    BB    C\nxxx  y\nz    wwww  v\n");
    }

    #[test]
    fn the_plain_text_shows_every_part() {
        let text = render(&node(true));
        assert!(text.contains("Datapath   netdev\n"), "{text}");
        assert!(text.contains("Port type  system (the fast path runs)"));
        assert!(text.contains("Fast path  on (generic XDP"));
        assert!(text.contains("XDP mode   generic"));
        assert_eq!(cell(&text, "FLOWS", "up1 "), "42");
        assert_eq!(cell(&text, "FAST PKTS", "up1 "), "10");
        assert_eq!(cell(&text, "SLOW PATH", "up1 "), "port not owned 2");
        assert_eq!(cell(&text, "HOST IF", "default/web1"), "pi-0123456789");
        assert_eq!(
            cell(&text, "PORTS", "default/web1"),
            "TCP 10000-10099, UDP 10000-10099"
        );
        assert_eq!(cell(&text, "LOCAL PORTS", "default/web1"), "10000-10099");
        assert_eq!(
            cell(&text, "DROPPED", "default/web1"),
            "4 (egress not allowed 4)"
        );
        assert_eq!(cell(&text, "DROPPED", "default/web2"), "0");
        assert_eq!(cell(&text, "FAST PKTS", "default/web1"), "3");
        assert_eq!(cell(&text, "LOCAL PORTS", "default/web2"), "-");
        // A second range sits on a row of its own under the first.
        let second = text
            .lines()
            .find(|l| l.contains("default/sip"))
            .expect("second range");
        assert!(second.trim_start().starts_with("default/sip"));
        assert!(second.ends_with("UDP 5060"), "{second:?}");
        assert!(text.contains("default/late"));
        assert!(text.contains("overlaps default/web1"));
        for l in text.lines() {
            assert_eq!(l, l.trim_end(), "trailing spaces");
        }
    }

    #[test]
    fn without_the_fast_path_its_columns_are_left_out() {
        let mut n = node(false);
        n.refused.clear();
        n.warnings
            .push("bridge br-up1: cannot read OVS's flow counters".into());
        let text = render(&n);
        assert!(text.contains("Fast path  off: off in the config"), "{text}");
        assert!(!text.contains("XDP mode"));
        assert!(!text.contains("FAST PKTS"));
        assert!(text.contains("No PortRange refused."));
        assert!(text.contains("warning: bridge br-up1: cannot read"));
        n.sandboxes.clear();
        assert!(render(&n).contains("No sandboxes attached."));
    }

    #[test]
    fn unknown_dropped_counts_show_as_unknown() {
        let mut n = node(false);
        n.sandboxes[1].dropped = None;
        assert_eq!(cell(&render(&n), "DROPPED", "default/web2"), "?");
    }

    #[test]
    fn a_missing_agent_is_named_by_its_socket() {
        let e = ask(Path::new("/nonexistent/portiso-agent.sock")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("/nonexistent/portiso-agent.sock"), "{msg}");
        assert!(msg.contains("portiso agent"), "{msg}");
    }

    #[test]
    fn the_socket_comes_from_the_flag_then_the_config_then_the_default() {
        let args = |socket: Option<&str>, config: &str| StatusArgs {
            socket: socket.map(PathBuf::from),
            config: PathBuf::from(config),
            json: false,
        };
        assert_eq!(
            socket_of(&args(Some("/tmp/a.sock"), "/nonexistent")),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(
            socket_of(&args(None, "/nonexistent/agent.yaml")),
            PathBuf::from(portiso_agent_api::DEFAULT_SOCKET)
        );
        let dir = std::env::temp_dir().join(format!("portiso-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("agent.yaml");
        std::fs::write(
            &config,
            "uplinks: [{name: eth1, address: 198.51.100.1/24}]\nsocket: /tmp/other.sock\n",
        )
        .unwrap();
        let got = socket_of(&args(None, config.to_str().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got, PathBuf::from("/tmp/other.sock"));
    }
}
