//! The agent socket protocol: what `portiso-cni` asks the node agent and what it answers.
//!
//! One request per connection, one JSON document per line each way. The CNI plugin stays thin:
//! it translates CNI verbs into these requests and the answers back into CNI results; every
//! decision about ports, flows and links is the agent's.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The default place of the agent's socket.
pub const DEFAULT_SOCKET: &str = "/run/portiso/agent.sock";

/// The prefix of every host-side interface the agent creates (see [`host_if_name`]).
pub const HOST_IF_PREFIX: &str = "pi";

/// What kind of JSON value `value` is, as an error message says it ("is a number"): the
/// agent and the CNI plugin name a wrong value the same way.
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The host-side veth name of an attachment: "pi" + 12 hex digits of the 64-bit FNV-1a hash of
/// `container_id/ifname`, at most 15 bytes. Deterministic, so that the agent and the CNI plugin
/// (which removes the veth itself on DEL when the agent is down) name the same interface.
pub fn host_if_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{HOST_IF_PREFIX}{:012x}", h & 0xffff_ffff_ffff)
}

/// Whether `name` has the shape of a [`host_if_name`]: interfaces the agent may own.
pub fn is_host_if_name(name: &str) -> bool {
    name.strip_prefix(HOST_IF_PREFIX).is_some_and(|hex| {
        hex.len() == 12 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Which sandbox interface a request is about: CNI identifies an attachment by
/// container id and interface name.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// Attach a sandbox's network namespace to an uplink's bridge (CNI ADD), or verify that it
/// still is (CNI CHECK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachRequest {
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// Path of the sandbox's network namespace, e.g. /run/netns/cni-1234.
    pub netns: String,
    /// The uplink (by its configured name) whose shared address the sandbox gets.
    pub uplink: String,
    /// The sandbox's name and namespace, which PortRange selectors match against.
    pub sandbox_name: String,
    pub sandbox_namespace: String,
    /// The pod's UID where the runtime passes one (K8S_POD_UID): a pod re-created under the
    /// same name is another sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_uid: Option<String>,
}

/// Detach a sandbox interface (CNI DEL). `netns` may be empty or gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetachRequest {
    #[serde(flatten)]
    pub key: AttachmentKey,
    pub netns: Option<String>,
    pub uplink: String,
}

/// Everything the plugin may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    Add(AttachRequest),
    Check(AttachRequest),
    Del(DetachRequest),
    /// Is the agent ready to attach sandboxes to this uplink? (CNI STATUS)
    Status {
        uplink: String,
    },
    /// Remove every attachment on this uplink that is not in `valid` (CNI GC).
    Gc {
        uplink: String,
        valid: Vec<AttachmentKey>,
    },
    /// What the agent is doing: datapath, uplinks, sandboxes, counters (`portiso status`).
    Describe,
    /// Who would receive this packet, and why (`portiso trace`).
    Trace(TraceRequest),
}

/// The sandbox side of an attachment, as CNI reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attached {
    /// Interface name inside the sandbox.
    pub ifname: String,
    /// The shared MAC address.
    pub mac: String,
    /// The sandbox's netns path.
    pub sandbox: String,
    /// The shared address with its prefix, e.g. 198.51.100.1/24.
    pub address: String,
    pub gateway: Option<String>,
    /// The ports the sandbox owns on this uplink, e.g. ["tcp 10000-10099", "udp 20000-20015"].
    pub ports: Vec<String>,
}

/// CNI error codes the agent may answer with (CNI spec, "Error").
pub mod code {
    /// Invalid network configuration, e.g. an uplink the agent does not serve.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later: the agent is not ready, or was unreachable.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin cannot attach this sandbox (e.g. no PortRange selects it).
    pub const INTERNAL: u32 = 999;
}

/// An error the agent reports; the plugin passes it on as a CNI error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}")]
pub struct AgentError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl AgentError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    Attached(Attached),
    Done,
    Error(AgentError),
    /// The answer to `Describe`.
    Node(NodeStatus),
    /// The answer to `Trace`.
    Trace(TraceReport),
}

/// What the node's agent is doing, as `portiso status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The OVS datapath: `system` (kernel) or `netdev` (userspace).
    pub datapath: String,
    /// The OVS type of the uplink and sandbox ports (e.g. `system`, `afxdp-nonpmd`) and why.
    pub port_type: String,
    pub port_type_reason: String,
    /// The eBPF fast path: "on (…)" or "off: why".
    pub fast_path: String,
    /// How the fast path's XDP programs run (`generic` or `native`), when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path_mode: Option<String>,
    pub uplinks: Vec<UplinkStatus>,
    pub sandboxes: Vec<SandboxStatus>,
    pub refused: Vec<RefusedRange>,
    /// What the agent could not find out for this answer (e.g. OVS's flow counters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One uplink and its bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkStatus {
    pub name: String,
    pub bridge: String,
    /// The shared address with its prefix, e.g. 198.51.100.1/24.
    pub address: String,
    /// The shared MAC.
    pub mac: String,
    /// The uplink NIC's OVS port number.
    pub ofport: u32,
    /// How many flows the agent keeps on the bridge.
    pub flows: u64,
    /// The fast path's counters for frames arriving on the uplink NIC, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathCounters>,
}

/// One attached sandbox interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    pub namespace: String,
    pub name: String,
    #[serde(flatten)]
    pub key: AttachmentKey,
    pub uplink: String,
    /// The host side of its veth, the OVS port.
    pub host_if: String,
    pub ofport: u32,
    /// The PortRanges whose ports it holds on its uplink.
    pub ranges: Vec<HeldRange>,
    /// The ip_local_port_range the agent set in the sandbox, e.g. "10000-10099".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port_range: Option<String>,
    /// Packets OVS dropped from this sandbox, in all (None: OVS's counters were unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// The same packets by reason, where the flows tell it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<DropCount>,
    /// The fast path's counters for frames the sandbox sent, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathCounters>,
}

/// A PortRange a sandbox holds, and its ports, e.g. "TCP 10000-10099".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldRange {
    /// `namespace/name`.
    pub range: String,
    pub ports: Vec<String>,
}

/// Packets dropped for one reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCount {
    pub reason: String,
    pub packets: u64,
}

/// A PortRange the agent refused, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedRange {
    /// `namespace/name`.
    pub range: String,
    pub reason: String,
}

/// The fast path's counters of one interface (frames arriving there), summed over the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FastPathCounters {
    /// Frames (and their bytes) the fast path carried itself.
    pub fast_packets: u64,
    pub fast_bytes: u64,
    /// Frames left to OVS, by reason.
    pub slow_not_ipv4_tcp_udp: u64,
    pub slow_fragment_or_options: u64,
    pub slow_not_shared_address: u64,
    pub slow_port_not_owned: u64,
    pub slow_redirect_failed: u64,
}

impl FastPathCounters {
    /// Every slow-path reason with its count, in a fixed order.
    pub fn slow(&self) -> [(&'static str, u64); 5] {
        [
            ("not IPv4 TCP/UDP", self.slow_not_ipv4_tcp_udp),
            ("fragment or IP options", self.slow_fragment_or_options),
            ("not the shared address", self.slow_not_shared_address),
            ("port not owned", self.slow_port_not_owned),
            ("redirect failed", self.slow_redirect_failed),
        ]
    }
}

/// Where a traced packet enters the uplink's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TraceFrom {
    /// From the network, through the uplink NIC.
    Uplink,
    /// From the host's own stack, through the bridge's internal port.
    Host,
    /// From an attached sandbox, `namespace/name`.
    Sandbox(String),
}

/// The protocols `portiso trace` builds packets of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TraceProtocol {
    Tcp,
    Udp,
    Icmp,
    Arp,
}

/// A packet to trace through an uplink's bridge. What is left out the agent fills in: the
/// shared address and MAC on the node's side, the uplink's gateway (or 0.0.0.0) and a made-up
/// MAC on the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceRequest {
    pub from: TraceFrom,
    /// The uplink (by its configured name); left out: the sandbox's, the one whose shared
    /// address the packet carries, or the only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    pub protocol: TraceProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<std::net::Ipv4Addr>,
    /// TCP/UDP ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// ICMP type and code (default: an echo request, 8/0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// ARP operation: 1 request (default), 2 reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_op: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_mac: Option<String>,
}

/// Who receives a traced packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReceiverKind {
    /// The host's own stack (the bridge's internal port).
    Host,
    /// A sandbox.
    Sandbox,
    /// The network, out through the uplink NIC.
    Uplink,
    /// The portiso agent (an OpenFlow controller action), which passes it on itself.
    Agent,
    /// An OpenFlow port portiso does not know.
    Other,
}

/// One receiver of a traced packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceReceiver {
    pub kind: ReceiverKind,
    /// The sandbox (`namespace/name`), the uplink's name, or "host" / "agent".
    pub name: String,
    /// Its OpenFlow port, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofport: Option<u32>,
    /// A sandbox's host-side interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_if: Option<String>,
}

/// One flow a traced packet met, in the order OVS applied them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceFlow {
    pub table: u8,
    /// None where no flow matched (OVS's table miss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    /// Its match and actions as the agent wrote them (as OVS printed them if not the agent's).
    pub matches: String,
    pub actions: String,
    /// e.g. "0x70ebaaff05522dfa".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// What the flow is for, in words.
    pub meaning: String,
}

/// The answer to `Trace`: who receives the packet, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceReport {
    pub uplink: String,
    pub bridge: String,
    /// The packet as given to `ovs-appctl ofproto/trace BRIDGE FLOW`, to re-run by hand.
    pub flow: String,
    /// Who receives it, as OVS decided; empty when it is dropped.
    pub receivers: Vec<TraceReceiver>,
    pub dropped: bool,
    /// The verdict in one sentence, e.g. "UDP to 198.51.100.1:10005 from the uplink goes to
    /// sandbox default/web1 (…)".
    pub verdict: String,
    /// Why, a sentence each: the PortRange that gives the port, the deciding flow.
    pub reasons: Vec<String>,
    /// The PortRange (`namespace/name`) whose ports decided, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<String>,
    /// The flows it met, in order (after a recirculation, those of the resumed pipeline too).
    pub flows: Vec<TraceFlow>,
    /// OVS's last "Datapath actions:" line, e.g. "3" or "drop".
    pub datapath_actions: String,
    /// The eBPF fast path's decision for this packet, in words ("off: …" when it does not
    /// run).
    pub fast_path: String,
    /// The whole `ofproto/trace` output.
    pub ovs_trace: String,
}

/// Why a call to the agent failed before it could answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "the portiso agent is unreachable at {socket}: {source} (is `portiso agent` running?)"
    )]
    Unreachable {
        socket: String,
        source: std::io::Error,
    },
    #[error("the portiso agent at {socket} sent an unreadable answer: {detail}")]
    BadAnswer { socket: String, detail: String },
}

impl CallError {
    /// Whether the request never reached an agent: no socket file, or nobody listening on it
    /// (an agent that is down or still starting). Only then is it safe to send the request
    /// again or to act without the agent, since no agent can be working on it.
    pub fn never_connected(&self) -> bool {
        matches!(self, CallError::Unreachable { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }

    /// Whether the agent took the request and went away without answering (it stopped or
    /// restarted meanwhile): the request may or may not have been carried out, so only an
    /// idempotent one (ADD) may be sent again.
    pub fn agent_went_away(&self) -> bool {
        matches!(self, CallError::Unreachable { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe))
    }
}

/// Sends one request to the agent and waits at most `timeout` for its answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, CallError> {
    let name = socket.display().to_string();
    let unreachable = |source| CallError::Unreachable {
        socket: name.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(request).map_err(|e| CallError::BadAnswer {
        socket: name.clone(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    // Bytes, not a String: an answer that is not UTF-8 is an unreadable answer, not an
    // unreachable agent (which runtimes would retry forever).
    let mut answer = Vec::new();
    BufReader::new(stream)
        .read_until(b'\n', &mut answer)
        .map_err(unreachable)?;
    if answer.is_empty() {
        // The agent took the request and went away without answering: it stopped or
        // restarted meanwhile, which is no version mismatch.
        return Err(unreachable(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection without answering (it stopped or restarted)",
        )));
    }
    serde_json::from_slice(&answer).map_err(|e| CallError::BadAnswer {
        socket: name,
        detail: format!("{e}: {:?}", String::from_utf8_lossy(&answer).trim_end()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let req = Request::Add(AttachRequest {
            key: AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            netns: "/run/netns/x".into(),
            uplink: "eth1".into(),
            sandbox_name: "web1".into(),
            sandbox_namespace: "default".into(),
            sandbox_uid: None,
        });
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.contains(r#""op":"add""#), "{text}");
        assert!(text.contains(r#""containerId":"c1""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
    }

    #[test]
    fn describe_and_its_answer_round_trip() {
        let text = serde_json::to_string(&Request::Describe).unwrap();
        assert_eq!(text, r#"{"op":"describe"}"#);
        assert_eq!(
            serde_json::from_str::<Request>(&text).unwrap(),
            Request::Describe
        );
        let node = Response::Node(NodeStatus {
            datapath: "netdev".into(),
            fast_path_mode: Some("generic".into()),
            sandboxes: vec![SandboxStatus {
                name: "web1".into(),
                key: AttachmentKey {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                },
                host_if: "pi-1".into(),
                dropped: Some(3),
                fast_path: Some(FastPathCounters {
                    fast_packets: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        let text = serde_json::to_string(&node).unwrap();
        for want in [
            r#""result":"node""#,
            r#""fastPathMode":"generic""#,
            r#""hostIf":"pi-1""#,
            r#""containerId":"c1""#,
            r#""fastPackets":2"#,
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), node);
    }

    #[test]
    fn trace_and_its_answer_round_trip() {
        let req = Request::Trace(TraceRequest {
            from: TraceFrom::Sandbox("default/web1".into()),
            uplink: None,
            protocol: TraceProtocol::Udp,
            src_ip: None,
            dst_ip: Some(std::net::Ipv4Addr::new(198, 51, 100, 7)),
            src_port: Some(10150),
            dst_port: None,
            icmp_type: None,
            icmp_code: None,
            arp_op: None,
            src_mac: None,
            dst_mac: None,
        });
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(
            text,
            r#"{"op":"trace","from":{"sandbox":"default/web1"},"protocol":"udp","dstIp":"198.51.100.7","srcPort":10150}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
        let answer = Response::Trace(TraceReport {
            uplink: "up1".into(),
            bridge: "br-up1".into(),
            flow: "in_port=2,udp".into(),
            receivers: vec![TraceReceiver {
                kind: ReceiverKind::Sandbox,
                name: "default/web1".into(),
                ofport: Some(2),
                host_if: Some("pi-1".into()),
            }],
            dropped: false,
            verdict: "goes to sandbox default/web1".into(),
            reasons: vec![],
            port_range: Some("default/web1".into()),
            flows: vec![],
            datapath_actions: "3".into(),
            fast_path: "off: test".into(),
            ovs_trace: String::new(),
        });
        let text = serde_json::to_string(&answer).unwrap();
        for want in [
            r#""result":"trace""#,
            r#""kind":"sandbox""#,
            r#""hostIf":"pi-1""#,
            r#""portRange":"default/web1""#,
            r#""datapathActions":"3""#,
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), answer);
    }

    #[test]
    fn unreachable_socket_is_reported_with_its_path() {
        let err = call(
            Path::new("/nonexistent/portiso.sock"),
            &Request::Status {
                uplink: "eth1".into(),
            },
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/portiso.sock"));
        assert!(matches!(err, CallError::Unreachable { .. }));
        assert!(err.never_connected());
    }

    #[test]
    fn an_agent_that_goes_away_mid_request_is_unreachable_but_was_connected() {
        let dir = std::env::temp_dir().join(format!("portiso-api-eof-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            let _ = BufReader::new(&s).read_line(&mut line);
            // Dropped without an answer, as a killed agent's socket is.
        });
        let err = call(&socket, &Request::Describe, Duration::from_secs(5)).unwrap_err();
        t.join().unwrap();
        assert!(matches!(err, CallError::Unreachable { .. }), "{err}");
        assert!(!err.never_connected(), "{err}");
        assert!(err.agent_went_away(), "{err}");
        assert!(err.to_string().contains("without answering"), "{err}");
        // The listener is gone but its socket file stays: refused, never connected.
        let err = call(&socket, &Request::Describe, Duration::from_secs(5)).unwrap_err();
        assert!(err.never_connected(), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_if_names_are_fnv1a_and_recognised() {
        // That it equals the fnv crate's hash, as the agent always named its veths, is checked
        // in the operator's link.rs (which depends on that crate).
        let a = host_if_name("c1", "eth0");
        assert_eq!(a.len(), 14);
        assert!(is_host_if_name(&a), "{a}");
        assert_ne!(a, host_if_name("c1", "eth1"));
        for bad in [
            "pi",
            "pi0123456789a",
            "pi0123456789abc",
            "pi0123456789aB",
            "px0123456789ab",
            "eth0",
        ] {
            assert!(!is_host_if_name(bad), "{bad}");
        }
        assert!(is_host_if_name("pi0123456789ab"));
    }
}
