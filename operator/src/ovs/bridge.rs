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
///
/// The uplink's Interface type is set to `port` on every call: when the chosen port type
/// changed since the last run, the uplink follows it (OVS re-opens the device under the same
/// OpenFlow port number, so the installed flows stay valid; the uplink pauses for a moment).
pub fn ensure_bridge(
    ovs: &dyn OvsExec,
    bridge: &str,
    uplink: &str,
    datapath_type: &str,
    mac: &str,
    port: &PortKind,
) -> Result<u32, OvsError> {
    let mut args: Vec<String> = [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(port.set_args(uplink));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ovs.vsctl(&argv)?;
    port_ofport(ovs, uplink)
}

/// The kind of Interface a port is created as on the userspace datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortKind {
    /// `system`, `afxdp` or `afxdp-nonpmd`.
    pub ovs_type: String,
    /// AF_XDP: how many receive queues OVS opens a socket on. The XDP program passes frames
    /// of queues without a socket on to the kernel stack, so this must cover every queue
    /// the device receives on (a veth: 1; a NIC: its channels).
    pub n_rxq: u32,
}

impl PortKind {
    pub fn system() -> Self {
        PortKind {
            ovs_type: "system".into(),
            n_rxq: 1,
        }
    }

    pub fn is_afxdp(&self) -> bool {
        self.ovs_type.starts_with("afxdp")
    }

    /// `ovs-vsctl` commands (each after a `--`) that give `iface` this kind.
    fn set_args(&self, iface: &str) -> Vec<String> {
        let mut a: Vec<String> = ["--", "set", "Interface", iface]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(format!("type={}", self.ovs_type));
        if self.is_afxdp() {
            a.push(format!("options:n_rxq={}", self.n_rxq.max(1)));
        } else {
            // Back from AF_XDP: an ordinary port takes no queue option.
            a.extend(
                ["--", "remove", "Interface", iface, "options", "n_rxq"]
                    .iter()
                    .map(|s| s.to_string()),
            );
        }
        a
    }
}

/// The Interface types this Open vSwitch can create (`Open_vSwitch.iface_types`), waiting
/// (bounded) for a just-started ovs-vswitchd to fill the column in.
pub fn iface_types(ovs: &dyn OvsExec) -> Result<Vec<String>, OvsError> {
    let mut types = Vec::new();
    for _ in 0..30 {
        types = parse_set(&ovs.vsctl(&["get", "Open_vSwitch", ".", "iface_types"])?);
        if !types.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(types)
}

/// Reads an OVSDB set as ovs-vsctl prints it: `[a, "b-c", d]`.
fn parse_set(text: &str) -> Vec<String> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|t| t.trim().trim_matches('"').to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The OpenFlow port number of an interface, waiting (bounded) for OVS to assign it.
/// A port OVS could not open (ofport -1) fails at once with OVS's own reason
/// (`Interface.error`), e.g. an AF_XDP socket the device refused.
pub fn port_ofport(ovs: &dyn OvsExec, iface: &str) -> Result<u32, OvsError> {
    let mut last = String::new();
    for _ in 0..50 {
        last = ovs.vsctl(&["get", "Interface", iface, "ofport"])?;
        if let Ok(n) = last.trim().parse::<i64>() {
            if n > 0 {
                return Ok(n as u32);
            }
            if n == -1 {
                let error = ovs
                    .vsctl(&["get", "Interface", iface, "error"])
                    .unwrap_or_default();
                let error = error.trim().trim_matches('"');
                let kind = ovs
                    .vsctl(&["get", "Interface", iface, "type"])
                    .unwrap_or_default();
                if !error.is_empty() && error != "[]" {
                    return Err(OvsError {
                        argv: format!("ovs-vsctl get Interface {iface} ofport"),
                        status: format!(
                            "Open vSwitch could not open port {iface} (type {})",
                            kind.trim().trim_matches('"')
                        ),
                        stderr: format!(
                            "{error}; datapath.userspacePorts: system in the agent config avoids AF_XDP ports"
                        ),
                    });
                }
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
    /// The Interface type (`system` when OVSDB leaves it empty).
    pub iface_type: String,
    pub external_ids: BTreeMap<String, String>,
}

/// Every port the agent attached for a sandbox that is on bridge `bridge` and that OVS has
/// numbered. By membership of the bridge, not by the uplink recorded with the port: an
/// OpenFlow port number means something only on its own bridge.
pub fn list_sandbox_ports(ovs: &dyn OvsExec, bridge: &str) -> Result<Vec<OvsPort>, OvsError> {
    let on_bridge = ovs.vsctl(&["list-ports", bridge])?;
    let on_bridge: std::collections::BTreeSet<&str> = on_bridge.lines().map(str::trim).collect();
    Ok(sandbox_interfaces(ovs)?
        .into_iter()
        .filter(|r| r.ofport > 0 && on_bridge.contains(r.name.as_str()))
        .map(|r| OvsPort {
            name: r.name,
            bridge: bridge.to_string(),
            ofport: r.ofport as u32,
            iface_type: r.iface_type,
            external_ids: r.ids,
        })
        .collect())
}

/// A sandbox's Interface row in OVSDB, whatever its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRow {
    pub name: String,
    /// -1 while OVS has not numbered it, or could not open it.
    pub ofport: i64,
    /// `system` when OVSDB leaves the type empty.
    pub iface_type: String,
    pub ids: BTreeMap<String, String>,
    /// OVS's reason it could not open the interface; empty if none.
    pub error: String,
}

/// Every Interface the agent made for a sandbox, on any bridge, in one `ovs-vsctl` call: each
/// call reads the whole Interface table, so one call per port would make a resync cost
/// seconds with a thousand sandboxes.
pub fn sandbox_interfaces(ovs: &dyn OvsExec) -> Result<Vec<InterfaceRow>, OvsError> {
    let json = ovs.vsctl(&[
        "--format=json",
        "--columns=name,ofport,type,external_ids,error",
        "find",
        "Interface",
        &format!("external_ids:{EXT_ROLE}=sandbox"),
    ])?;
    parse_interface_rows(&json).map_err(|why| OvsError {
        argv: "ovs-vsctl --format=json find Interface".into(),
        status: "exit status: 0".into(),
        stderr: format!("unreadable answer ({why}): {}", json.trim()),
    })
}

/// Reads `{"data":[[name, ofport, type, ["map", [[k, v], ...]], error], ...], ...}` as
/// `ovs-vsctl --format=json --columns=name,ofport,type,external_ids,error` prints it; an unset
/// ofport or error (`["set",[]]`) reads as -1 and "". Anything else is an error, never an
/// empty list: the leftover sweep would take a port it cannot see for a stray.
fn parse_interface_rows(json: &str) -> Result<Vec<InterfaceRow>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let rows = v
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or("no \"data\" array")?;
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            parse_interface_row(row).ok_or(format!(
                "row {i} is not name, ofport, type, external_ids, error"
            ))
        })
        .collect()
}

fn parse_interface_row(row: &serde_json::Value) -> Option<InterfaceRow> {
    let iface_type = match row.get(2)?.as_str()? {
        "" => "system",
        t => t,
    }
    .to_string();
    let pairs = row.get(3)?.get(1)?.as_array()?;
    Some(InterfaceRow {
        name: row.get(0)?.as_str()?.to_string(),
        ofport: row.get(1)?.as_i64().unwrap_or(-1),
        iface_type,
        ids: pairs
            .iter()
            .map(|p| {
                Some((
                    p.get(0)?.as_str()?.to_string(),
                    p.get(1)?.as_str()?.to_string(),
                ))
            })
            .collect::<Option<_>>()?,
        error: row
            .get(4)
            .and_then(|e| e.as_str())
            .unwrap_or_default()
            .to_string(),
    })
}

/// Adds a sandbox's host-side interface to the bridge as a port of kind `port`, recording who
/// it belongs to.
pub fn add_sandbox_port(
    ovs: &dyn OvsExec,
    bridge: &str,
    iface: &str,
    port: &PortKind,
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
    args.extend(port.set_args(iface));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ovs.vsctl(&argv)?;
    port_ofport(ovs, iface)
}

/// Removes a port; a port that is already gone is fine.
pub fn del_port(ovs: &dyn OvsExec, bridge: &str, iface: &str) -> Result<(), OvsError> {
    ovs.vsctl(&["--if-exists", "del-port", bridge, iface])
        .map(|_| ())
}

/// Removes a bridge with its ports, flows and meters; a bridge that is already gone is fine.
pub fn del_bridge(ovs: &dyn OvsExec, bridge: &str) -> Result<(), OvsError> {
    ovs.vsctl(&["--if-exists", "del-br", bridge]).map(|_| ())
}

/// The names of a bridge's ports; none if the bridge does not exist.
pub fn bridge_ports(ovs: &dyn OvsExec, bridge: &str) -> Result<Vec<String>, OvsError> {
    let listed = match ovs.vsctl(&["list-ports", bridge]) {
        Ok(l) => l,
        Err(e) if e.stderr.contains("no bridge named") => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_interface_rows() {
        let json = r#"{"data":[["pi-a",3,"afxdp-nonpmd",["map",[["portiso-role","sandbox"],["portiso-ifname","eth0"]]],["set",[]]],["pi-b",["set",[]],"",["map",[]],"could not open network device pi-b (No such device)"]],"headings":["name","ofport","type","external_ids","error"]}"#;
        let rows = parse_interface_rows(json).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].name.as_str(), rows[0].ofport), ("pi-a", 3));
        assert_eq!(rows[0].iface_type, "afxdp-nonpmd");
        assert_eq!(rows[0].ids["portiso-role"], "sandbox");
        assert_eq!(rows[0].ids["portiso-ifname"], "eth0");
        assert_eq!(
            (rows[1].ofport, rows[1].iface_type.as_str()),
            (-1, "system")
        );
        for bad in [
            "not json",
            r#"{"headings":[]}"#,
            r#"{"data":[["pi-a",3]]}"#,
            r#"{"data":[["pi-a",3,"",["map",[["k"]]],""]]}"#,
        ] {
            assert!(parse_interface_rows(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_interface_rows(r#"{"data":[],"headings":[]}"#),
            Ok(vec![])
        );
    }

    #[test]
    fn external_id_values_are_quoted() {
        assert_eq!(quote("/run/netns/a b"), "\"/run/netns/a b\"");
        assert_eq!(quote("x\"y"), "\"x\\\"y\"");
    }

    #[test]
    fn reads_the_interface_types() {
        assert_eq!(
            parse_set("[afxdp, afxdp-nonpmd, geneve, internal, system, tap]\n"),
            [
                "afxdp",
                "afxdp-nonpmd",
                "geneve",
                "internal",
                "system",
                "tap"
            ]
        );
        assert!(parse_set("[]\n").is_empty());
    }

    #[test]
    fn afxdp_ports_get_their_queues_and_system_ports_lose_them() {
        let afxdp = PortKind {
            ovs_type: "afxdp-nonpmd".into(),
            n_rxq: 4,
        };
        assert_eq!(
            afxdp.set_args("pi1").join(" "),
            "-- set Interface pi1 type=afxdp-nonpmd options:n_rxq=4"
        );
        assert_eq!(
            PortKind::system().set_args("pi1").join(" "),
            "-- set Interface pi1 type=system -- remove Interface pi1 options n_rxq"
        );
    }
}
