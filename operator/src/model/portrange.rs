//! The `PortRange` custom resource: which sandboxes own which host ports.
//!
//! The types are deliberately permissive where a stricter type would make serde refuse the
//! object with a vague message: ports are `u32` so that `0` or `70000` parse and are then
//! refused by [`validate`](super::validate::validate) with a message that names the field and the fix.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of a `PortRange`: the sandboxes selected by `selector` own `ports` on `uplinks`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portiso.io",
    version = "v1alpha1",
    kind = "PortRange",
    namespaced,
    shortname = "pr",
    status = "PortRangeStatus",
    derive = "PartialEq",
    doc = "Host ports that the selected sandboxes own: inbound TCP/UDP to the host's address on these ports is delivered to them."
)]
#[serde(rename_all = "camelCase")]
pub struct PortRangeSpec {
    /// Which sandboxes (by pod labels) own the ports. Required: an empty selector `{}` selects
    /// every sandbox in the namespace, so it has to be written out on purpose.
    pub selector: LabelSelector,
    /// The owned port spans; spans of one protocol must not overlap.
    #[schemars(length(min = 1))]
    pub ports: Vec<PortSpan>,
    /// Names of the host uplinks the ports are owned on; empty or absent means every uplink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uplinks: Vec<String>,
}

/// One contiguous span of ports, `start` to `end` inclusive, of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct PortSpan {
    pub protocol: Protocol,
    /// First port of the span.
    #[schemars(schema_with = "port_schema")]
    pub start: u32,
    /// Last port of the span (inclusive); equal to `start` for a single port.
    #[schemars(schema_with = "port_schema")]
    pub end: u32,
}

/// A TCP/UDP port for the API server to check: written by hand because the derived `u32`
/// schema carries `format: uint32`, which Kubernetes does not know, and float bounds.
fn port_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer",
        "minimum": 1,
        "maximum": 65535,
    })
}

/// Transport protocol of a span; written `TCP` or `UDP` as in a Kubernetes `ContainerPort`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// Status written by the operator: whether the range was accepted, and why not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRangeStatus {
    /// Standard conditions; the operator sets `Accepted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `namespace/name` of an object: how messages and verdicts name a `PortRange`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// Key of `range`; an object without a namespace is in `default`, as kubectl would put it.
    pub fn of(range: &PortRange) -> ObjectKey {
        ObjectKey {
            namespace: range.namespace().unwrap_or_else(|| "default".to_string()),
            name: range.name_any(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_is_written_uppercase() {
        let json = serde_json::to_string(&[Protocol::Tcp, Protocol::Udp]).unwrap();
        assert_eq!(json, r#"["TCP","UDP"]"#);
        assert!(serde_json::from_str::<Protocol>(r#""tcp""#).is_err());
    }

    #[test]
    fn out_of_range_ports_still_parse() {
        let span: PortSpan =
            serde_json::from_str(r#"{"protocol":"UDP","start":0,"end":70000}"#).unwrap();
        assert_eq!((span.start, span.end), (0, 70000));
    }

    #[test]
    fn key_defaults_namespace() {
        let range = PortRange::new(
            "web",
            PortRangeSpec {
                selector: LabelSelector::default(),
                ports: vec![],
                uplinks: vec![],
            },
        );
        assert_eq!(ObjectKey::of(&range).to_string(), "default/web");
    }
}
