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
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(unreachable)?;
    serde_json::from_str(&answer).map_err(|e| CallError::BadAnswer {
        socket: name,
        detail: format!("{e}: {:?}", answer.trim_end()),
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
    }
}
