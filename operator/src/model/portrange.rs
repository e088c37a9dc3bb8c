//! The `PortRange` custom resource: which sandboxes own which host ports.
//!
//! The types are deliberately permissive where a stricter type would make serde refuse the
//! object with a vague message: ports are `u32` so that `0` or `70000` parse and are then
//! refused by [`validate`](super::validate::validate) with a message that names the field and the fix.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of a `PortRange`: the sandboxes selected by `selector` own `ports` on `uplinks`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "portiso.io",
    version = "v1alpha1",
    kind = "PortRange",
    namespaced,
    shortname = "pr",
    status = "PortRangeStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ports","type":"string","jsonPath":".status.ports"}"#,
    printcolumn = r#"{"name":"Uplinks","type":"string","jsonPath":".spec.uplinks"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Sandboxes","type":"integer","jsonPath":".status.sandboxes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "Host ports that the selected sandboxes own: inbound TCP/UDP to the host's address on these ports is delivered to them."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRangeSpec {
    /// Which sandboxes (by pod labels) own the ports. Required: an empty selector `{}` selects
    /// every sandbox in the namespace, so it has to be written out on purpose.
    pub selector: LabelSelector,
    /// The owned port spans; spans of one protocol must not overlap.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(
        "self.all(a, !has(a.start) || !has(a.end) || self.filter(b, b.protocol == a.protocol && has(b.start) && has(b.end) && b.start <= a.end && a.start <= b.end).size() == 1)"
    ).message("spans of one protocol overlap or repeat: merge or split them"))]
    pub ports: Vec<PortSpan>,
    /// Names of the host uplinks the ports are owned on; empty or absent means every uplink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub uplinks: Vec<String>,
}

/// One contiguous span of ports of one protocol: either `start` to `end` inclusive, or `size`
/// ports that the operator allocates (an aligned power-of-two block, written to the status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, KubeSchema)]
#[serde(deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.size) != (has(self.start) || has(self.end))").message("give either start and end, or size: not both"))]
#[x_kube(validation = Rule::new("has(self.size) || (has(self.start) && has(self.end))").message("give both start and end"))]
#[x_kube(validation = Rule::new("!has(self.start) || !has(self.end) || self.start <= self.end").message("start is greater than end: swap them"))]
pub struct PortSpan {
    pub protocol: Protocol,
    /// First port of the span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "port_schema")]
    pub start: Option<u32>,
    /// Last port of the span (inclusive); equal to `start` for a single port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "port_schema")]
    pub end: Option<u32>,
    /// Instead of start/end: how many ports the operator should allocate, a power of two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "size_schema")]
    pub size: Option<u32>,
}

impl PortSpan {
    /// A span of explicit ports.
    pub fn ports(protocol: Protocol, start: u32, end: u32) -> Self {
        Self {
            protocol,
            start: Some(start),
            end: Some(end),
            size: None,
        }
    }

    /// A span the operator allocates.
    pub fn sized(protocol: Protocol, size: u32) -> Self {
        Self {
            protocol,
            start: None,
            end: None,
            size: Some(size),
        }
    }
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

/// A count or index: a plain integer (the API server knows no `uint32` format).
fn count_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer",
        "minimum": 0,
    })
}

/// The sizes one value/mask match can cover.
pub const ALLOCATABLE_SIZES: [u32; 16] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768,
];

fn size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer",
        "enum": ALLOCATABLE_SIZES,
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

/// Status written by the operator: whether the range was accepted, what was allocated, and
/// where it is programmed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRangeStatus {
    /// Standard conditions: `Accepted` (by the operator) and `Programmed` (on nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Ports allocated for the spans that asked for a `size`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocations: Vec<Allocation>,
    /// The owned ports in words, for `kubectl get pr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// Sandboxes the range is programmed for, over all nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "count_schema")]
    pub sandboxes: Option<u32>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The block allocated for `spec.ports[index]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Allocation {
    #[schemars(schema_with = "count_schema")]
    pub index: u32,
    #[schemars(schema_with = "port_schema")]
    pub start: u32,
    #[schemars(schema_with = "port_schema")]
    pub end: u32,
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
        assert_eq!((span.start, span.end), (Some(0), Some(70000)));
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
