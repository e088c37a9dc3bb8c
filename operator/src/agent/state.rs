//! The agent's view of its node: attachments, and which ports each one owns. Pure.

use crate::config::UplinkConfig;
use crate::flows::{BridgeState, SandboxPorts};
use crate::model::overlap::owned_spans;
use crate::model::{selector, ObjectKey, PortRange, Protocol};
use portiso_agent_api::AttachmentKey;
use std::collections::BTreeMap;

/// The label that names a sandbox outside Kubernetes.
pub const SANDBOX_LABEL: &str = "portiso.io/sandbox";

/// A sandbox interface attached to an uplink's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub key: AttachmentKey,
    pub uplink: String,
    pub sandbox_name: String,
    pub sandbox_namespace: String,
    /// The pod's UID, if the runtime passed one.
    pub sandbox_uid: Option<String>,
    pub netns: String,
    /// Host-side veth, the OVS port.
    pub host_if: String,
    pub ofport: u32,
    /// The sandbox's labels, as the agent's source last reported them.
    pub labels: BTreeMap<String, String>,
    /// The ip_local_port_range last set in the sandbox.
    pub local_ports: Option<(u16, u16)>,
}

impl Attachment {
    pub fn sandbox(&self) -> String {
        format!("{}/{}", self.sandbox_namespace, self.sandbox_name)
    }
}

/// Whether an accepted PortRange gives ports to this sandbox on this uplink.
pub fn selects(
    range: &PortRange,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    uplink: &str,
) -> bool {
    ObjectKey::of(range).namespace == namespace
        && (range.spec.uplinks.is_empty() || range.spec.uplinks.iter().any(|u| u == uplink))
        && selector::matches(&range.spec.selector, labels)
}

/// Which attachment holds each accepted range on each uplink. A range's ports can go to one
/// sandbox per uplink only; when several match, the one attached first (lowest OVS port number
/// on that bridge) keeps it.
pub fn owners<'a>(
    accepted: &'a [PortRange],
    attachments: &'a [Attachment],
) -> BTreeMap<(String, ObjectKey), &'a Attachment> {
    let mut sorted: Vec<&Attachment> = attachments.iter().collect();
    sorted.sort_by_key(|a| (a.uplink.clone(), a.ofport));
    let mut out = BTreeMap::new();
    for a in sorted {
        for r in accepted {
            if selects(r, &a.sandbox_namespace, &a.labels, &a.uplink) {
                out.entry((a.uplink.clone(), ObjectKey::of(r))).or_insert(a);
            }
        }
    }
    out
}

/// The ports of every range an attachment holds.
pub fn ports_of(
    accepted: &[PortRange],
    owners: &BTreeMap<(String, ObjectKey), &Attachment>,
    a: &Attachment,
) -> Vec<(Protocol, u16, u16)> {
    let mut ports = Vec::new();
    for r in accepted {
        let holder = owners.get(&(a.uplink.clone(), ObjectKey::of(r)));
        if holder.is_some_and(|h| h.key == a.key) {
            ports.extend(owned_spans(r).into_iter().map(|(_, p, s, e)| (p, s, e)));
        }
    }
    ports.sort();
    ports
}

/// The largest span (TCP preferred, since clients mostly connect) to use as the sandbox's
/// ip_local_port_range.
pub fn local_port_range(ports: &[(Protocol, u16, u16)]) -> Option<(u16, u16)> {
    let widest = |p: Protocol| {
        ports
            .iter()
            .filter(|(q, s, e)| *q == p && e > s)
            .max_by_key(|(_, s, e)| e - s)
            .map(|&(_, s, e)| (s, e))
    };
    widest(Protocol::Tcp).or_else(|| widest(Protocol::Udp))
}

/// The compiler's input for one bridge.
pub fn bridge_state(
    uplink: &UplinkConfig,
    uplink_ofport: u32,
    mac: &str,
    accepted: &[PortRange],
    attachments: &[Attachment],
) -> BridgeState {
    let owners = owners(accepted, attachments);
    let mut sandboxes: Vec<SandboxPorts> = attachments
        .iter()
        .filter(|a| a.uplink == uplink.name)
        .map(|a| SandboxPorts {
            sandbox: a.sandbox(),
            ofport: a.ofport,
            ports: ports_of(accepted, &owners, a),
        })
        .collect();
    sandboxes.sort_by_key(|s| s.ofport);
    BridgeState {
        uplink_ofport,
        shared_ip: uplink.address,
        shared_mac: mac.to_string(),
        sandboxes,
    }
}
