//! The agent's view of its node: attachments, and which ports each one owns. Pure.

use crate::config::UplinkConfig;
use crate::flows::{BridgeState, SandboxPorts};
use crate::model::overlap::owned_spans;
use crate::model::{selector, ObjectKey, PortRange, Protocol};
use portiso_agent_api::AttachmentKey;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

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
///
/// Built in time linear in attachments and ranges: ranges are indexed by one `matchLabels`
/// pair of their selector, so an attachment is tested only against ranges that can select it.
/// (A thousand sandboxes with a range each would otherwise cost a million selector tests on
/// every ADD.)
pub struct Owners<'a> {
    accepted: &'a [PortRange],
    index: HashMap<ObjectKey, usize>,
    /// (uplink, index into `accepted`) → the attachment that holds it.
    holders: HashMap<(&'a str, usize), &'a Attachment>,
    /// Attachment → indices into `accepted` of the ranges it holds, ascending.
    held: HashMap<&'a AttachmentKey, Vec<usize>>,
}

impl<'a> Owners<'a> {
    pub fn new(accepted: &'a [PortRange], attachments: &'a [Attachment]) -> Self {
        let keys: Vec<ObjectKey> = accepted.iter().map(ObjectKey::of).collect();
        let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        let mut unindexed = Vec::new();
        for (i, r) in accepted.iter().enumerate() {
            match r.spec.selector.match_labels.iter().flatten().next() {
                Some((k, v)) => by_label
                    .entry((keys[i].namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(i),
                None => unindexed.push(i),
            }
        }
        let mut sorted: Vec<&Attachment> = attachments.iter().collect();
        sorted.sort_by(|x, y| (&x.uplink, x.ofport).cmp(&(&y.uplink, y.ofport)));
        let mut holders = HashMap::new();
        let mut held: HashMap<&AttachmentKey, Vec<usize>> = HashMap::new();
        for a in sorted {
            let mut candidates = unindexed.clone();
            for (k, v) in &a.labels {
                let key = (a.sandbox_namespace.as_str(), k.as_str(), v.as_str());
                candidates.extend(by_label.get(&key).into_iter().flatten());
            }
            candidates.sort_unstable();
            candidates.dedup();
            for i in candidates {
                if !selects(&accepted[i], &a.sandbox_namespace, &a.labels, &a.uplink) {
                    continue;
                }
                if let Entry::Vacant(e) = holders.entry((a.uplink.as_str(), i)) {
                    e.insert(a);
                    held.entry(&a.key).or_default().push(i);
                }
            }
        }
        let index = keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect();
        Owners {
            accepted,
            index,
            holders,
            held,
        }
    }

    /// The attachment that holds `range` on `uplink`.
    pub fn holder(&self, uplink: &str, range: &ObjectKey) -> Option<&'a Attachment> {
        let i = *self.index.get(range)?;
        self.holders.get(&(uplink, i)).copied()
    }

    /// The ranges `a` holds, in the order of `accepted`.
    pub fn held_by(&self, a: &Attachment) -> impl Iterator<Item = &'a PortRange> + '_ {
        self.held
            .get(&a.key)
            .into_iter()
            .flatten()
            .map(|&i| &self.accepted[i])
    }

    /// The ports of every range `a` holds, sorted.
    pub fn ports_of(&self, a: &Attachment) -> Vec<(Protocol, u16, u16)> {
        let mut ports: Vec<_> = self
            .held_by(a)
            .flat_map(owned_spans)
            .map(|(_, p, s, e)| (p, s, e))
            .collect();
        ports.sort();
        ports
    }

    /// Every (range, holder) pair, on any uplink.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a PortRange, &'a Attachment)> + '_ {
        self.holders
            .iter()
            .map(|(&(_, i), &a)| (&self.accepted[i], a))
    }
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

/// The compiler's input for one bridge: the sandboxes and their ports from the agent's state,
/// the rest as the agent knows it of the bridge.
#[allow(clippy::too_many_arguments)]
pub fn bridge_state(
    uplink: &UplinkConfig,
    uplink_ofport: u32,
    mac: &str,
    accepted: &[PortRange],
    attachments: &[Attachment],
    egress_limit: Option<crate::flows::MeterRate>,
    meters_available: bool,
    datapath: crate::flows::Datapath,
) -> BridgeState {
    let owners = Owners::new(accepted, attachments);
    let mut sandboxes: Vec<SandboxPorts> = attachments
        .iter()
        .filter(|a| a.uplink == uplink.name)
        .map(|a| SandboxPorts {
            sandbox: a.sandbox(),
            ofport: a.ofport,
            ports: owners.ports_of(a),
        })
        .collect();
    sandboxes.sort_by_key(|s| s.ofport);
    BridgeState {
        uplink_ofport,
        shared_ip: uplink.address,
        shared_mac: mac.to_string(),
        sandboxes,
        egress_limit,
        meters_available,
        datapath,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(name: &str, namespace: &str, uplink: &str, ofport: u32) -> Attachment {
        Attachment {
            key: AttachmentKey {
                container_id: format!("c-{name}-{uplink}"),
                ifname: "eth0".into(),
            },
            uplink: uplink.into(),
            sandbox_name: name.into(),
            sandbox_namespace: namespace.into(),
            sandbox_uid: None,
            netns: format!("/run/netns/{name}"),
            host_if: format!("pi-{name}"),
            ofport,
            labels: BTreeMap::from([
                (SANDBOX_LABEL.to_string(), name.to_string()),
                ("tier".to_string(), "media".to_string()),
            ]),
            local_ports: None,
        }
    }

    fn range(name: &str, namespace: &str, selector: &str, start: u16) -> String {
        format!("---\napiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  selector: {selector}\n  ports: [{{protocol: TCP, start: {start}, end: {}}}]\n", start + 9)
    }

    #[test]
    fn owners_follow_selectors_namespaces_and_attach_order() {
        let yaml = [
            range(
                "a",
                "default",
                "{matchLabels: {portiso.io/sandbox: a}}",
                20000,
            ),
            range(
                "b",
                "default",
                "{matchLabels: {portiso.io/sandbox: b}}",
                20010,
            ),
            // An expression selector is not indexed by label: still found.
            range(
                "media",
                "default",
                "{matchExpressions: [{key: tier, operator: In, values: [media]}]}",
                20020,
            ),
            // Same label, other namespace: selects nothing here.
            range(
                "a",
                "other",
                "{matchLabels: {portiso.io/sandbox: a}}",
                20030,
            ),
        ]
        .concat();
        let accepted = crate::model::parse_portranges_yaml(&yaml, "test").unwrap();
        let attachments = vec![
            attachment("b", "default", "up1", 3),
            attachment("a", "default", "up1", 2),
            attachment("a", "default", "up2", 7),
        ];
        let owners = Owners::new(&accepted, &attachments);
        let key = |ns: &str, n: &str| ObjectKey {
            namespace: ns.into(),
            name: n.into(),
        };
        // a attached first (lower port number) on up1, so it holds the shared range there.
        assert_eq!(
            owners.holder("up1", &key("default", "media")),
            Some(&attachments[1])
        );
        assert_eq!(
            owners.holder("up2", &key("default", "media")),
            Some(&attachments[2])
        );
        assert_eq!(
            owners.holder("up1", &key("default", "b")),
            Some(&attachments[0])
        );
        assert_eq!(owners.holder("up1", &key("other", "a")), None);
        assert_eq!(
            owners.ports_of(&attachments[1]),
            vec![(Protocol::Tcp, 20000, 20009), (Protocol::Tcp, 20020, 20029)]
        );
        assert_eq!(
            owners.ports_of(&attachments[0]),
            vec![(Protocol::Tcp, 20010, 20019)]
        );
        assert_eq!(owners.pairs().count(), 5);
    }
}
