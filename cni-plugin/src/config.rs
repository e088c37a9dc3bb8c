//! The network configuration the runtime passes on stdin.
//!
//! Decoding happens in three steps so that each kind of mistake gets the error code the spec
//! prescribes: unreadable JSON is 6 (decoding failure), an unsupported `cniVersion` is 1, and
//! everything about our own keys is 7 (invalid network config) or 2 (unsupported field).

use crate::error::{code, CniError};
use crate::version::{supported_list, CniVersion};
use portiso_agent_api::json_kind;
use portiso_agent_api::AttachmentKey;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The `type` this plugin is installed as; a config naming another type reached us by mistake.
pub const PLUGIN_TYPE: &str = "portiso-cni";

/// How long to wait for the agent by default. Attaching involves netlink and OVS work on the
/// agent side, so be generous, but stay below typical runtime timeouts (kubelet: 4 minutes).
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

/// How long ADD waits for an agent that is down or still starting (a restart takes a few
/// seconds) before it fails with code 11 ("try again later"), by default and at most.
pub const DEFAULT_AGENT_WAIT_SECONDS: u64 = 10;
pub const MAX_AGENT_WAIT_SECONDS: u64 = 300;

/// The key CNI 1.1 runtimes use to pass the still-valid attachments to GC.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// The name an earlier draft of the 1.1 spec used; libcni still sends both (CNI issue #1101),
/// so a runtime that sends only this one must work too.
pub const VALID_ATTACHMENTS_OLD: &str = "cni.dev/attachments";

/// The parts of the network config this plugin uses. Everything else (runtimeConfig,
/// capabilities, args, dns, prevResult, unknown keys) is tolerated and ignored: the agent
/// decides addresses and ports, so there is nothing for the plugin to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub uplink: String,
    pub agent_socket: PathBuf,
    pub timeout: Duration,
    /// How long ADD keeps trying to reach an agent that is not listening (`agentWaitSeconds`).
    pub agent_wait: Duration,
    /// Present only when the runtime passed `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<AttachmentKey>>,
    /// A MAC the runtime asked for (runtimeConfig.mac), which portiso cannot give.
    pub requested_mac: Option<String>,
}

/// Step 1: stdin must be one JSON object.
pub fn decode(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "no network config on stdin: the runtime must pass the network config as a JSON object",
        ));
    }
    // serde_json's message includes the line and column, which is what the operator needs to
    // find the mistake in a hand-written conflist.
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("cannot decode the network config on stdin as JSON: {e}"),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(CniError::new(
            code::DECODING_FAILURE,
            format!(
                "the network config on stdin must be a JSON object, got {}",
                json_kind(&other)
            ),
        )),
    }
}

/// Step 2: the requested spec version, which decides the shape of our output.
pub fn version(map: &Map<String, Value>) -> Result<CniVersion, CniError> {
    match map.get("cniVersion") {
        Some(Value::String(v)) => CniVersion::require(v),
        // Pre-0.2 configs had no cniVersion; whatever they are, we do not speak them.
        None => Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "network config field `cniVersion` is missing: set it to one of {}",
                supported_list()
            ),
        )),
        Some(other) => Err(CniError::config(format!(
            "network config field `cniVersion` must be a string, got {}: set it to one of {}",
            json_kind(other),
            supported_list()
        ))),
    }
}

/// Step 3: our own keys.
pub fn parse(map: &Map<String, Value>, cni_version: CniVersion) -> Result<NetConf, CniError> {
    let name = required_string(map, "name", "the network's name, e.g. \"portiso\"")?;
    let plugin_type = required_string(map, "type", &format!("{PLUGIN_TYPE:?}"))?;
    if plugin_type != PLUGIN_TYPE {
        return Err(CniError::config(format!(
            "network config field `type` is {plugin_type:?}, but this plugin is {PLUGIN_TYPE}: \
             set `type` to {PLUGIN_TYPE:?} or install the right plugin binary"
        )));
    }
    let uplink = required_string(map, "uplink", "the name of a portiso uplink, e.g. \"eth1\"")?;
    let agent_socket = match optional(map, "agentSocket") {
        None => PathBuf::from(portiso_agent_api::DEFAULT_SOCKET),
        // A unix socket's address holds at most 107 bytes and no NUL; a path that cannot be
        // one would fail every connect as "unreachable", which runtimes retry forever.
        Some(Value::String(s)) if s.starts_with('/') && s.len() < 108 && !s.contains('\0') => {
            PathBuf::from(s)
        }
        // A relative path would resolve against the runtime's working directory, which is
        // never what was meant.
        Some(other) => {
            return Err(CniError::config(format!(
                "network config field `agentSocket` must be an absolute path of at most 107 \
                 bytes without NUL (a unix socket's address), got {}: \
                 remove it to use {} or set it to the agent's socket path",
                shown(other),
                portiso_agent_api::DEFAULT_SOCKET
            )))
        }
    };
    let timeout = match optional(map, "timeoutSeconds") {
        None => Duration::from_secs(DEFAULT_TIMEOUT_SECONDS),
        Some(v) => match v.as_u64().filter(|s| *s > 0) {
            Some(secs) => Duration::from_secs(secs),
            None => {
                return Err(CniError::config(format!(
                    "network config field `timeoutSeconds` must be a positive whole number, \
                     got {}: remove it to use {DEFAULT_TIMEOUT_SECONDS} or set e.g. 30",
                    shown(v)
                )))
            }
        },
    };
    let agent_wait = match optional(map, "agentWaitSeconds") {
        None => Duration::from_secs(DEFAULT_AGENT_WAIT_SECONDS),
        Some(v) => match v.as_u64().filter(|s| *s <= MAX_AGENT_WAIT_SECONDS) {
            Some(secs) => Duration::from_secs(secs),
            None => {
                return Err(CniError::config(format!(
                    "network config field `agentWaitSeconds` must be a whole number from 0 to \
                     {MAX_AGENT_WAIT_SECONDS}, got {}: remove it to use \
                     {DEFAULT_AGENT_WAIT_SECONDS} or set e.g. 10 (0: fail at once)",
                    shown(v)
                )))
            }
        },
    };
    // The address is the uplink's shared address, chosen by the agent; an IPAM section would
    // silently not be honoured, so say so instead of ignoring it.
    if let Some(ipam) = optional(map, "ipam") {
        if ipam.as_object().is_none_or(|o| !o.is_empty()) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "network config field `ipam` is not supported: portiso sandboxes share the \
                 uplink's address, which the portiso agent assigns; remove the `ipam` section",
            ));
        }
    }
    // Multus passes a network selection's `mac` (e.g. a KubeVirt interface's macAddress) as
    // runtimeConfig.mac; ADD refuses it (see `plugin`), DEL must not.
    let requested_mac = map
        .get("runtimeConfig")
        .and_then(|r| r.get("mac"))
        .map(shown);
    let valid_attachments = match (
        optional(map, VALID_ATTACHMENTS),
        optional(map, VALID_ATTACHMENTS_OLD),
    ) {
        (Some(list), _) => Some(parse_valid_attachments(VALID_ATTACHMENTS, list)?),
        (None, Some(list)) => Some(parse_valid_attachments(VALID_ATTACHMENTS_OLD, list)?),
        (None, None) => None,
    };
    Ok(NetConf {
        cni_version,
        name,
        uplink,
        agent_socket,
        timeout,
        agent_wait,
        valid_attachments,
        requested_mac,
    })
}

fn parse_valid_attachments(field: &str, value: &Value) -> Result<Vec<AttachmentKey>, CniError> {
    let bad = |what: String| {
        CniError::config(format!(
            "network config field `{field}` {what}: it must be a list of \
             {{\"containerID\": ..., \"ifname\": ...}} objects"
        ))
    };
    let list = value
        .as_array()
        .ok_or_else(|| bad(format!("is {}", json_kind(value))))?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let field = |key: &str| {
                entry
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("entry {i} has no string `{key}`")))
            };
            Ok(AttachmentKey {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

/// A present, non-null key. JSON `null` means "not set" in every CNI implementation.
fn optional<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn required_string(map: &Map<String, Value>, key: &str, hint: &str) -> Result<String, CniError> {
    match optional(map, key) {
        None => Err(CniError::config(format!(
            "network config field `{key}` is missing: set it to {hint}"
        ))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(CniError::config(format!(
            "network config field `{key}` must be a non-empty string, got {}: set it to {hint}",
            shown(other)
        ))),
    }
}

/// The offending value itself for scalars (short and useful), its kind otherwise.
fn shown(value: &Value) -> String {
    match value {
        Value::Array(_) | Value::Object(_) => json_kind(value).to_string(),
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(value: Value) -> Result<NetConf, CniError> {
        let text = value.to_string();
        let map = decode(text.as_bytes())?;
        let v = version(&map)?;
        parse(&map, v)
    }

    fn base() -> Value {
        json!({"cniVersion": "1.1.0", "name": "portiso", "type": "portiso-cni", "uplink": "eth1"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = base();
        v[key] = value;
        v
    }

    fn without(key: &str) -> Value {
        let mut v = base();
        v.as_object_mut().map(|o| o.remove(key));
        v
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = conf(base()).unwrap();
        assert_eq!(c.uplink, "eth1");
        assert_eq!(c.name, "portiso");
        assert_eq!(c.cni_version, CniVersion::V1_1_0);
        assert_eq!(
            c.agent_socket,
            PathBuf::from(portiso_agent_api::DEFAULT_SOCKET)
        );
        assert_eq!(c.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECONDS));
        assert_eq!(
            c.agent_wait,
            Duration::from_secs(DEFAULT_AGENT_WAIT_SECONDS)
        );
        assert_eq!(c.valid_attachments, None);
    }

    #[test]
    fn runtime_and_unknown_keys_are_tolerated() {
        let mut v = base();
        v["runtimeConfig"] = json!({"portMappings": [{"hostPort": 80}]});
        v["capabilities"] = json!({"portMappings": true});
        v["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": []});
        v["somethingNew"] = json!([1, 2]);
        v["agentSocket"] = json!("/tmp/a.sock");
        v["timeoutSeconds"] = json!(5);
        v["agentWaitSeconds"] = json!(0);
        v["ipam"] = json!({});
        let c = conf(v).unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.agent_wait, Duration::ZERO);
    }

    #[test]
    fn a_requested_mac_is_recorded() {
        let mut v = base();
        v["runtimeConfig"] = json!({"mac": "02:00:00:00:00:42"});
        assert_eq!(
            conf(v).unwrap().requested_mac.as_deref(),
            Some("\"02:00:00:00:00:42\"")
        );
    }

    /// Each bad config, the code it must yield, and words the message must contain.
    #[test]
    fn invalid_config_table() {
        let table: Vec<(Value, u32, &[&str])> = vec![
            (without("uplink"), 7, &["`uplink`", "missing", "\"eth1\""]),
            (with("uplink", json!("")), 7, &["`uplink`", "non-empty"]),
            (with("uplink", json!(3)), 7, &["`uplink`", "got 3"]),
            (without("name"), 7, &["`name`", "missing"]),
            (without("type"), 7, &["`type`", "missing", "portiso-cni"]),
            (
                with("type", json!("bridge")),
                7,
                &["`type`", "\"bridge\"", "portiso-cni"],
            ),
            (
                with("agentSocket", json!("agent.sock")),
                7,
                &["`agentSocket`", "absolute"],
            ),
            (
                with("timeoutSeconds", json!(0)),
                7,
                &["`timeoutSeconds`", "got 0"],
            ),
            (
                with("timeoutSeconds", json!("30")),
                7,
                &["`timeoutSeconds`"],
            ),
            (
                with("agentWaitSeconds", json!(-1)),
                7,
                &["`agentWaitSeconds`", "got -1", "0 to 300"],
            ),
            (
                with("agentWaitSeconds", json!(2.5)),
                7,
                &["`agentWaitSeconds`", "got 2.5"],
            ),
            (
                with("agentWaitSeconds", json!(301)),
                7,
                &["`agentWaitSeconds`", "got 301"],
            ),
            (
                with("agentWaitSeconds", json!("10")),
                7,
                &["`agentWaitSeconds`"],
            ),
            (with("ipam", json!({"type": "host-local"})), 2, &["`ipam`"]),
            (
                with("cniVersion", json!("0.2.0")),
                1,
                &["\"0.2.0\"", "1.1.0"],
            ),
            (without("cniVersion"), 1, &["`cniVersion`", "0.3.0"]),
            (with("cniVersion", json!(1)), 7, &["`cniVersion`"]),
            (with(VALID_ATTACHMENTS, json!({})), 7, &[VALID_ATTACHMENTS]),
            (
                with(
                    VALID_ATTACHMENTS,
                    json!([{"containerID": "a", "ifname": "eth0"}, {"ifname": "eth0"}]),
                ),
                7,
                &["entry 1", "`containerID`"],
            ),
        ];
        for (value, want_code, words) in table {
            let err = conf(value.clone()).expect_err(&value.to_string());
            assert_eq!(err.code, want_code, "{value}: {err}");
            for w in words {
                assert!(err.msg.contains(w), "{value}: {:?} lacks {w:?}", err.msg);
            }
        }
    }

    #[test]
    fn malformed_stdin_is_a_decoding_failure_with_position() {
        let table: [(&[u8], &[&str]); 4] = [
            (
                b"{\"cniVersion\": \"1.1.0\",\n \"name\": }",
                &["line 2", "column"],
            ),
            (b"", &["no network config"]),
            (b"[1,2]", &["JSON object", "an array"]),
            (b"\xff\xfe", &["JSON"]),
        ];
        for (input, words) in table {
            let err = decode(input).unwrap_err();
            assert_eq!(err.code, code::DECODING_FAILURE, "{input:?}");
            for w in words {
                assert!(err.msg.contains(w), "{input:?}: {:?} lacks {w:?}", err.msg);
            }
        }
    }

    #[test]
    fn valid_attachments_are_parsed_in_order() {
        let c = conf(with(
            VALID_ATTACHMENTS,
            json!([{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1", "extra": 1}]),
        ))
        .unwrap();
        let keys = c.valid_attachments.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            (keys[1].container_id.as_str(), keys[1].ifname.as_str()),
            ("b", "net1")
        );
        // The old key alone works; when both are present the spec's key wins.
        let old_only = with(
            VALID_ATTACHMENTS_OLD,
            json!([{"containerID": "o", "ifname": "eth0"}]),
        );
        let keys = conf(old_only.clone()).unwrap().valid_attachments.unwrap();
        assert_eq!(keys[0].container_id, "o");
        let mut both = old_only;
        both[VALID_ATTACHMENTS] = json!([]);
        assert_eq!(conf(both).unwrap().valid_attachments, Some(vec![]));
    }
}
