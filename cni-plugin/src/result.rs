//! Turning the agent's `Attached` answer into a CNI ADD result in the requested version.

use crate::version::CniVersion;
use portiso_agent_api::Attached;
use serde_json::{json, Value};

/// The CNI result for one attached interface. The agent decides everything; this only lays
/// it out as the spec for `version` wants it. `ports` has no place in a CNI result and stays
/// the agent's business.
pub fn add_result(attached: &Attached, version: CniVersion) -> Value {
    let mut ip = json!({
        "address": attached.address,
        // The only interface in `interfaces`.
        "interface": 0,
    });
    if let Some(gw) = &attached.gateway {
        ip["gateway"] = json!(gw);
    }
    if version.ip_has_version_field() {
        // The shared address is always IPv4 (portiso shares the host's IPv4 address).
        ip["version"] = json!("4");
    }
    let routes: Vec<Value> = attached
        .gateway
        .iter()
        .map(|gw| json!({"dst": "0.0.0.0/0", "gw": gw}))
        .collect();
    json!({
        "cniVersion": version.as_str(),
        "interfaces": [{
            "name": attached.ifname,
            "mac": attached.mac,
            "sandbox": attached.sandbox,
        }],
        "ips": [ip],
        "routes": routes,
        "dns": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(gateway: Option<&str>) -> Attached {
        Attached {
            ifname: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            sandbox: "/run/netns/x".into(),
            address: "198.51.100.7/24".into(),
            gateway: gateway.map(str::to_string),
            ports: vec!["tcp 10000-10099".into()],
        }
    }

    #[test]
    fn shape_per_version() {
        for v in CniVersion::ALL {
            let r = add_result(&attached(Some("198.51.100.1")), v);
            assert_eq!(r["cniVersion"], v.as_str());
            assert_eq!(
                r["interfaces"],
                json!([{"name": "eth0", "mac": "52:54:00:12:34:56", "sandbox": "/run/netns/x"}])
            );
            let mut ip =
                json!({"address": "198.51.100.7/24", "gateway": "198.51.100.1", "interface": 0});
            if v < CniVersion::V1_0_0 {
                ip["version"] = json!("4");
            }
            assert_eq!(r["ips"], json!([ip]), "{v:?}");
            assert_eq!(
                r["routes"],
                json!([{"dst": "0.0.0.0/0", "gw": "198.51.100.1"}])
            );
            assert_eq!(r["dns"], json!({}));
        }
    }

    #[test]
    fn no_gateway_means_no_route_and_no_gateway_field() {
        let r = add_result(&attached(None), CniVersion::V1_1_0);
        assert_eq!(r["routes"], json!([]));
        assert!(r["ips"][0].get("gateway").is_none(), "{r}");
    }
}
