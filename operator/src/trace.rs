//! `portiso trace`: asks the running agent where one packet goes and why — the sandbox, the
//! host, the uplink or a drop, the PortRange and the flow that decided, and what the eBPF fast
//! path would do — and prints it as a few sentences and the flows the packet met, or as JSON.
//! The verdict is OVS's own (`ovs-appctl ofproto/trace`, run by the agent); parsing the
//! arguments and rendering are pure, only `run` talks to the agent.

use crate::status::{socket_of, table, StatusArgs};
use portiso_agent_api::{
    call, Request, Response, TraceFrom, TraceProtocol, TraceReport, TraceRequest,
};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// How long the agent may take to answer (it runs ovs-appctl).
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub agent: StatusArgs,
    /// The packet's protocol.
    #[arg(value_enum)]
    pub protocol: ProtocolArg,
    /// Where the packet enters the bridge: `uplink` (from the network), `host` (the node's own
    /// stack) or a sandbox as NAMESPACE/NAME.
    #[arg(
        long,
        default_value = "uplink",
        value_name = "uplink|host|NAMESPACE/NAME"
    )]
    pub from: String,
    /// The uplink, by its configured name [default: the sandbox's, the one whose shared
    /// address the packet carries, or the only one].
    #[arg(long, value_name = "NAME")]
    pub uplink: Option<String>,
    /// Source address and/or port [default: the shared address when the node sends, the
    /// uplink's gateway (or 0.0.0.0) when the network does; port 49152 where it does not
    /// decide].
    #[arg(long, value_name = "[IP:]PORT|IP")]
    pub src: Option<String>,
    /// Destination address and/or port [default: the shared address when the network sends,
    /// the uplink's gateway (or 0.0.0.0) when the node does; port 49152 where it does not
    /// decide].
    #[arg(long, value_name = "[IP:]PORT|IP")]
    pub dst: Option<String>,
    /// ICMP type [default: 8, echo request].
    #[arg(long = "type", value_name = "N")]
    pub icmp_type: Option<u8>,
    /// ICMP code [default: 0].
    #[arg(long = "code", value_name = "N")]
    pub icmp_code: Option<u8>,
    /// ARP operation [default: request].
    #[arg(long, value_enum)]
    pub op: Option<ArpOp>,
    /// Source MAC [default: the shared MAC when the node sends, else 02:00:00:00:00:fe].
    #[arg(long, value_name = "MAC")]
    pub src_mac: Option<String>,
    /// Destination MAC [default: the shared MAC when the network sends, else
    /// 02:00:00:00:00:fe; broadcast for ARP requests].
    #[arg(long, value_name = "MAC")]
    pub dst_mac: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
    Icmp,
    Arp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArpOp {
    Request,
    Reply,
}

/// An address and/or port as given: `IP:PORT`, `PORT` or `IP`; `arg` names the option in
/// errors.
fn parse_endpoint(arg: &str, text: &str) -> anyhow::Result<(Option<Ipv4Addr>, Option<u16>)> {
    let (ip, port) = match text.rsplit_once(':') {
        Some((ip, port)) => (Some(ip), Some(port)),
        None if text.contains('.') => (Some(text), None),
        None => (None, Some(text)),
    };
    let ip = ip
        .map(|ip| {
            ip.parse::<Ipv4Addr>().map_err(|_| {
                anyhow::anyhow!(
                    "{arg} {text}: {ip:?} is not an IPv4 address (write IP:PORT, PORT or IP, e.g. 198.51.100.1:10005)"
                )
            })
        })
        .transpose()?;
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("{arg} {text}: {p:?} is not a port (0-65535)"))
        })
        .transpose()?;
    Ok((ip, port))
}

/// `--from` as the agent takes it.
fn parse_from(text: &str) -> anyhow::Result<TraceFrom> {
    match text {
        "uplink" => Ok(TraceFrom::Uplink),
        "host" => Ok(TraceFrom::Host),
        s => match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(TraceFrom::Sandbox(s.to_string()))
            }
            _ => anyhow::bail!(
                "--from {s}: give uplink, host, or a sandbox as NAMESPACE/NAME (e.g. default/web1)"
            ),
        },
    }
}

/// The request for the agent; errors name the option and the fix.
pub fn request(args: &TraceArgs) -> anyhow::Result<TraceRequest> {
    let protocol = match args.protocol {
        ProtocolArg::Tcp => TraceProtocol::Tcp,
        ProtocolArg::Udp => TraceProtocol::Udp,
        ProtocolArg::Icmp => TraceProtocol::Icmp,
        ProtocolArg::Arp => TraceProtocol::Arp,
    };
    let upper = |p: ProtocolArg| format!("{p:?}").to_uppercase();
    let name = upper(args.protocol);
    let endpoint = |arg: &str, given: &Option<String>| -> anyhow::Result<_> {
        let Some(text) = given else {
            return Ok((None, None));
        };
        let (ip, port) = parse_endpoint(arg, text)?;
        if port.is_some() && matches!(protocol, TraceProtocol::Icmp | TraceProtocol::Arp) {
            anyhow::bail!("{arg} {text}: {name} packets have no ports: give an address only");
        }
        Ok((ip, port))
    };
    let (src_ip, src_port) = endpoint("--src", &args.src)?;
    let (dst_ip, dst_port) = endpoint("--dst", &args.dst)?;
    let only_for = |given: bool, option: &str, wanted: ProtocolArg| {
        if given && args.protocol != wanted {
            anyhow::bail!("{option} is for {} packets only, not {name}", upper(wanted));
        }
        Ok(())
    };
    only_for(args.icmp_type.is_some(), "--type", ProtocolArg::Icmp)?;
    only_for(args.icmp_code.is_some(), "--code", ProtocolArg::Icmp)?;
    only_for(args.op.is_some(), "--op", ProtocolArg::Arp)?;
    Ok(TraceRequest {
        from: parse_from(&args.from)?,
        uplink: args.uplink.clone(),
        protocol,
        src_ip,
        dst_ip,
        src_port,
        dst_port,
        icmp_type: args.icmp_type,
        icmp_code: args.icmp_code,
        arp_op: args.op.map(|op| match op {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
        }),
        src_mac: args.src_mac.clone(),
        dst_mac: args.dst_mac.clone(),
    })
}

/// Asks the agent at `socket` to trace the packet.
pub fn ask(socket: &Path, request: TraceRequest) -> anyhow::Result<TraceReport> {
    match call(socket, &Request::Trace(request), TIMEOUT)? {
        Response::Trace(t) => Ok(t),
        // The agent's errors say what to change (an unknown sandbox, a missing port).
        Response::Error(e) => anyhow::bail!("{e}"),
        other => anyhow::bail!(
            "the portiso agent at {} gave an unexpected answer ({other:?}): is it an older portiso version than this one?",
            socket.display()
        ),
    }
}

pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let request = request(&args)?;
    let report = ask(&socket_of(&args.agent), request)?;
    if args.agent.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// The report for people: the verdict, why, the fast path, the flows met, and how to run
/// OVS's trace by hand.
pub fn render(t: &TraceReport) -> String {
    let mut out = format!("{}\n", t.verdict);
    if !t.reasons.is_empty() {
        out.push_str("\nWhy:\n");
        for r in &t.reasons {
            writeln!(out, "  - {r}").expect("writing to a String");
        }
    }
    writeln!(out, "\nFast path: {}", t.fast_path).expect("writing to a String");
    writeln!(out, "\nFlows it met on {}:", t.bridge).expect("writing to a String");
    let rows: Vec<Vec<String>> = t
        .flows
        .iter()
        .map(|f| {
            vec![
                f.table.to_string(),
                f.priority.map_or("-".into(), |p| p.to_string()),
                if f.matches.is_empty() {
                    "(any)".into()
                } else {
                    f.matches.clone()
                },
                f.actions.clone(),
                f.cookie.clone().unwrap_or_else(|| "-".into()),
                f.meaning.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["TABLE", "PRIORITY", "MATCH", "ACTIONS", "COOKIE", "MEANING"],
        &rows,
    ));
    writeln!(out, "\nOVS datapath actions: {}", t.datapath_actions).expect("writing to a String");
    writeln!(
        out,
        "OVS's own trace: ovs-appctl ofproto/trace {} '{}'",
        t.bridge, t.flow
    )
    .expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use portiso_agent_api::{ReceiverKind, TraceFlow, TraceReceiver};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        trace: TraceArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<TraceRequest> {
        let cli = Cli::try_parse_from(std::iter::once("trace").chain(args.iter().copied()))?;
        request(&cli.trace)
    }

    fn error(args: &[&str]) -> String {
        format!("{:#}", parse(args).unwrap_err())
    }

    #[test]
    fn endpoints_are_addresses_ports_or_both() {
        let r = parse(&[
            "udp",
            "--src",
            "203.0.113.7:5000",
            "--dst",
            "10005",
            "--uplink",
            "up1",
        ])
        .unwrap();
        assert_eq!(r.from, TraceFrom::Uplink);
        assert_eq!(r.protocol, TraceProtocol::Udp);
        assert_eq!(r.src_ip, Some(Ipv4Addr::new(203, 0, 113, 7)));
        assert_eq!((r.src_port, r.dst_port), (Some(5000), Some(10005)));
        assert_eq!(r.dst_ip, None);
        assert_eq!(r.uplink.as_deref(), Some("up1"));
        let r = parse(&["icmp", "--from", "default/web1", "--dst", "198.51.100.7"]).unwrap();
        assert_eq!(r.from, TraceFrom::Sandbox("default/web1".into()));
        assert_eq!(r.dst_ip, Some(Ipv4Addr::new(198, 51, 100, 7)));
        assert_eq!((r.icmp_type, r.dst_port), (None, None));
        let r = parse(&["arp", "--from", "host", "--op", "reply"]).unwrap();
        assert_eq!((r.from, r.arp_op), (TraceFrom::Host, Some(2)));
    }

    #[test]
    fn errors_name_the_option_and_the_fix() {
        let e = error(&["udp", "--dst", "198.51.100.300:10005"]);
        assert!(
            e.contains("--dst") && e.contains("not an IPv4 address"),
            "{e}"
        );
        let e = error(&["tcp", "--src", "70000"]);
        assert!(e.contains("--src 70000") && e.contains("not a port"), "{e}");
        let e = error(&["icmp", "--dst", "10005"]);
        assert!(e.contains("ICMP packets have no ports"), "{e}");
        let e = error(&["udp", "--type", "3", "--dst", "10005"]);
        assert!(
            e.contains("--type is for ICMP packets only, not UDP"),
            "{e}"
        );
        let e = error(&["udp", "--from", "web1", "--dst", "10005"]);
        assert!(
            e.contains("NAMESPACE/NAME") && e.contains("--from web1"),
            "{e}"
        );
        assert!(parse(&["sctp"]).is_err());
    }

    fn report() -> TraceReport {
        TraceReport {
            uplink: "up1".into(),
            bridge: "br-up1".into(),
            flow: "in_port=1,udp,tp_dst=10005".into(),
            receivers: vec![TraceReceiver {
                kind: ReceiverKind::Sandbox,
                name: "default/web1".into(),
                ofport: Some(2),
                host_if: Some("pi-1".into()),
            }],
            dropped: false,
            verdict: "UDP … goes to sandbox default/web1".into(),
            reasons: vec!["PortRange default/web1 gives UDP 10000-10099".into()],
            port_range: Some("default/web1".into()),
            flows: vec![
                TraceFlow {
                    table: 0,
                    priority: Some(100),
                    matches: "in_port=1".into(),
                    actions: "goto_table:10".into(),
                    cookie: Some("0x70b5".into()),
                    meaning: "from the uplink".into(),
                },
                TraceFlow {
                    table: 10,
                    priority: None,
                    matches: String::new(),
                    actions: String::new(),
                    cookie: None,
                    meaning: "no flow matched".into(),
                },
            ],
            datapath_actions: "3".into(),
            fast_path: "off: test; OVS carries every packet".into(),
            ovs_trace: "…".into(),
        }
    }

    #[test]
    fn the_text_has_the_verdict_reasons_fast_path_and_flows() {
        let text = render(&report());
        assert!(
            text.starts_with("UDP … goes to sandbox default/web1\n"),
            "{text}"
        );
        assert!(text.contains("  - PortRange default/web1 gives UDP 10000-10099\n"));
        assert!(text.contains("Fast path: off: test"));
        assert!(text.contains("Flows it met on br-up1:"));
        let row = text
            .lines()
            .find(|l| l.starts_with("0 "))
            .expect("table 0's row");
        assert!(row.contains("in_port=1") && row.contains("0x70b5"), "{row}");
        let miss = text.lines().find(|l| l.starts_with("10 ")).expect("miss");
        assert!(miss.contains("(any)") && miss.contains("no flow matched"));
        assert!(text.contains("ovs-appctl ofproto/trace br-up1 'in_port=1,udp,tp_dst=10005'"));
        for l in text.lines() {
            assert_eq!(l, l.trim_end(), "trailing spaces");
        }
    }

    #[test]
    fn a_missing_agent_is_named_by_its_socket() {
        let e = ask(
            Path::new("/nonexistent/portiso-trace.sock"),
            parse(&["udp", "--dst", "10005"]).unwrap(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/portiso-trace.sock"));
    }
}
