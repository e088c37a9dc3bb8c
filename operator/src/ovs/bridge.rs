//! Bridges and ports in OVSDB, through `OvsExec::vsctl`.
//!
//! A sandbox port carries what the agent needs to re-adopt it after a restart in its
//! Interface's external_ids, so OVSDB is the agent's only durable state.

use super::{OvsError, OvsExec};
use std::collections::BTreeMap;
use std::time::Duration;

/// external_ids keys on a sandbox's Interface row.
pub const EXT_ROLE: &str = "portiso-role";
pub const EXT_CONTAINER: &str = "portiso-container-id";
pub const EXT_IFNAME: &str = "portiso-ifname";
pub const EXT_NETNS: &str = "portiso-netns";
pub const EXT_UPLINK: &str = "portiso-uplink";
pub const EXT_SANDBOX: &str = "portiso-sandbox";
pub const EXT_UID: &str = "portiso-sandbox-uid";

/// Creates (or adopts) the bridge around an uplink NIC: fail-mode secure so that OVS never
/// floods on its own, the uplink's MAC as the bridge's (the address the world already knows),
/// and the uplink as a port. Idempotent.
pub fn ensure_bridge(
    ovs: &dyn OvsExec,
    bridge: &str,
    uplink: &str,
    datapath_type: &str,
    mac: &str,
) -> Result<u32, OvsError> {
    ovs.vsctl(&[
        "--may-exist",
        "add-br",
        bridge,
        "--",
        "set",
        "Bridge",
        bridge,
        &format!("datapath_type={datapath_type}"),
        "fail-mode=secure",
        &format!("other_config:hwaddr=\"{mac}\""),
        "protocols=OpenFlow10,OpenFlow13,OpenFlow14",
        "--",
        "--may-exist",
        "add-port",
        bridge,
        uplink,
        "--",
        "set",
        "Interface",
        uplink,
        &format!("external_ids:{EXT_ROLE}=uplink"),
    ])?;
    port_ofport(ovs, uplink)
}

/// The OpenFlow port number of an interface, waiting (bounded) for OVS to assign it.
pub fn port_ofport(ovs: &dyn OvsExec, iface: &str) -> Result<u32, OvsError> {
    let mut last = String::new();
    for _ in 0..50 {
        last = ovs.vsctl(&["get", "Interface", iface, "ofport"])?;
        if let Ok(n) = last.trim().parse::<i64>() {
            if n > 0 {
                return Ok(n as u32);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(OvsError {
        argv: format!("ovs-vsctl get Interface {iface} ofport"),
        status: "no port number after 5 s".into(),
        stderr: format!(
            "last answer {:?}; see ovs-vswitchd's log for why the port did not open",
            last.trim()
        ),
    })
}

/// A sandbox port found in OVSDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsPort {
    pub name: String,
    pub bridge: String,
    pub ofport: u32,
    pub external_ids: BTreeMap<String, String>,
}

/// Every port on the bridge that the agent attached for a sandbox.
pub fn list_sandbox_ports(ovs: &dyn OvsExec, bridge: &str) -> Result<Vec<OvsPort>, OvsError> {
    let names = ovs.vsctl(&["list-ports", bridge])?;
    let mut out = Vec::new();
    for name in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
        let json = ovs.vsctl(&[
            "--format=json",
            "--columns=ofport,external_ids",
            "list",
            "Interface",
            name,
        ])?;
        let Some((ofport, ids)) = parse_interface_row(&json) else {
            continue;
        };
        if ids.get(EXT_ROLE).map(String::as_str) == Some("sandbox") && ofport > 0 {
            out.push(OvsPort {
                name: name.to_string(),
                bridge: bridge.to_string(),
                ofport: ofport as u32,
                external_ids: ids,
            });
        }
    }
    Ok(out)
}

/// Reads `{"data":[[ofport, ["map", [[k, v], ...]]]], ...}` as ovs-vsctl --format=json prints it.
fn parse_interface_row(json: &str) -> Option<(i64, BTreeMap<String, String>)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let row = v.get("data")?.get(0)?;
    let ofport = row.get(0)?.as_i64().unwrap_or(-1);
    let pairs = row.get(1)?.get(1)?.as_array()?;
    let ids = pairs
        .iter()
        .filter_map(|p| {
            Some((
                p.get(0)?.as_str()?.to_string(),
                p.get(1)?.as_str()?.to_string(),
            ))
        })
        .collect();
    Some((ofport, ids))
}

/// Adds a sandbox's host-side interface to the bridge, recording who it belongs to.
pub fn add_sandbox_port(
    ovs: &dyn OvsExec,
    bridge: &str,
    iface: &str,
    ids: &[(&str, &str)],
) -> Result<u32, OvsError> {
    let mut args = vec![
        "--may-exist".to_string(),
        "add-port".into(),
        bridge.into(),
        iface.into(),
        "--".into(),
        "set".into(),
        "Interface".into(),
        iface.into(),
        format!("external_ids:{EXT_ROLE}=sandbox"),
    ];
    // Values are quoted: OVSDB would otherwise read ':' or '/' in them as syntax.
    args.extend(
        ids.iter()
            .map(|(k, v)| format!("external_ids:{k}={}", quote(v))),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ovs.vsctl(&argv)?;
    port_ofport(ovs, iface)
}

/// Removes a port; a port that is already gone is fine.
pub fn del_port(ovs: &dyn OvsExec, bridge: &str, iface: &str) -> Result<(), OvsError> {
    ovs.vsctl(&["--if-exists", "del-port", bridge, iface])
        .map(|_| ())
}

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_interface_row() {
        let json = r#"{"data":[[3,["map",[["portiso-role","sandbox"],["portiso-ifname","eth0"]]]]],"headings":["ofport","external_ids"]}"#;
        let (ofport, ids) = parse_interface_row(json).unwrap();
        assert_eq!(ofport, 3);
        assert_eq!(ids["portiso-role"], "sandbox");
        assert_eq!(ids["portiso-ifname"], "eth0");
    }

    #[test]
    fn external_id_values_are_quoted() {
        assert_eq!(quote("/run/netns/a b"), "\"/run/netns/a b\"");
        assert_eq!(quote("x\"y"), "\"x\\\"y\"");
    }
}
