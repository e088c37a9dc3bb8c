//! The node agent's configuration file (`portiso agent --config FILE`).
//!
//! Parsing is strict: unknown keys are refused (a typo like `reservedHostPort` must not be
//! silently ignored), and every error names the field and how to fix it.

use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("agent config {path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("agent config {path}: {field}: {problem}")]
    Invalid {
        path: String,
        field: String,
        problem: String,
    },
}

/// Which OVS datapath the agent builds its bridges on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatapathChoice {
    /// The kernel datapath if the openvswitch module is there, else the userspace one.
    #[default]
    Auto,
    /// The kernel datapath (`datapath_type=system`).
    System,
    /// The userspace datapath (`datapath_type=netdev`).
    Netdev,
}

/// What kind of OVS port the agent gives the uplink and the sandboxes on the userspace
/// datapath (the kernel datapath always uses ordinary `system` ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PortTypeChoice {
    /// `system` when the eBPF fast path carries the bulk of the traffic (it needs XDP on the
    /// devices, which AF_XDP ports would take), else `afxdp` when the node has a core to give
    /// OVS's poll-mode thread, else `afxdp-nonpmd`; `system` where AF_XDP is not available.
    #[default]
    Auto,
    /// Ordinary ports: OVS reads and writes frames through packet (AF_PACKET) sockets.
    System,
    /// AF_XDP sockets polled by a dedicated OVS thread (a full core).
    Afxdp,
    /// AF_XDP sockets serviced by OVS's main thread.
    AfxdpNonpmd,
}

impl PortTypeChoice {
    /// The Interface type OVS knows it by.
    pub fn ovs_type(self) -> &'static str {
        match self {
            PortTypeChoice::Auto | PortTypeChoice::System => "system",
            PortTypeChoice::Afxdp => "afxdp",
            PortTypeChoice::AfxdpNonpmd => "afxdp-nonpmd",
        }
    }
}

/// Whether TCP/UDP by port goes through the kernel eBPF fast path beside OVS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FastPathChoice {
    /// On with the userspace datapath when the kernel offers BPF and XDP; off with the
    /// kernel datapath, which is fast already.
    #[default]
    Auto,
    /// Also with the kernel datapath. Still falls back to OVS alone, with a log line, when the
    /// kernel lacks what it needs.
    On,
    Off,
}

/// The `datapath` section: either a bare datapath type (`datapath: netdev`) or the full form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    pub kind: DatapathChoice,
    pub userspace_ports: PortTypeChoice,
    pub fast_path: FastPathChoice,
    /// Where the fast path pins its maps and links (a bpffs; mounted there if it is not one),
    /// so that they outlive the agent.
    pub bpf_dir: PathBuf,
}

/// The default `datapath.bpfDir`.
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/portiso";

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            kind: DatapathChoice::Auto,
            userspace_ports: PortTypeChoice::Auto,
            fast_path: FastPathChoice::Auto,
            bpf_dir: PathBuf::from(DEFAULT_BPF_DIR),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDatapath {
    #[serde(default, rename = "type")]
    kind: DatapathChoice,
    #[serde(default)]
    userspace_ports: PortTypeChoice,
    #[serde(default)]
    fast_path: FastPathChoice,
    bpf_dir: Option<PathBuf>,
}

/// `datapath: auto|system|netdev` or `datapath: {type, userspacePorts, fastPath}`. Errors are
/// (field, problem).
fn parse_datapath(v: Option<serde_yaml::Value>) -> Result<DatapathConfig, (String, String)> {
    let Some(v) = v else {
        return Ok(DatapathConfig::default());
    };
    let raw: RawDatapath = if v.is_string() {
        let kind = serde_yaml::from_value(v).map_err(|e| {
            ("datapath".to_string(), format!("{e}: write one of auto, system, netdev, or the full form {{type: auto, userspacePorts: auto, fastPath: auto}}"))
        })?;
        RawDatapath {
            kind,
            userspace_ports: PortTypeChoice::Auto,
            fast_path: FastPathChoice::Auto,
            bpf_dir: None,
        }
    } else {
        serde_yaml::from_value(v.clone()).map_err(|e| {
            let field = datapath_key_at_fault(&v).map_or("datapath".to_string(), |k| format!("datapath.{k}"));
            (field, format!("{e} (the full form is {{type: auto|system|netdev, userspacePorts: auto|system|afxdp|afxdp-nonpmd, fastPath: auto|on|off, bpfDir: {DEFAULT_BPF_DIR}}})"))
        })?
    };
    Ok(DatapathConfig {
        kind: raw.kind,
        userspace_ports: raw.userspace_ports,
        fast_path: raw.fast_path,
        bpf_dir: raw
            .bpf_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BPF_DIR)),
    })
}

/// The key of a full-form `datapath` that does not read (serde_yaml's errors from a `Value`
/// carry no path): an unknown one, or one whose value is not of its kind.
fn datapath_key_at_fault(v: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::from_value;
    v.as_mapping()?.iter().find_map(|(key, value)| {
        let value = value.clone();
        let ok = match key.as_str() {
            Some("type") => from_value::<DatapathChoice>(value).is_ok(),
            Some("userspacePorts") => from_value::<PortTypeChoice>(value).is_ok(),
            Some("fastPath") => from_value::<FastPathChoice>(value).is_ok(),
            Some("bpfDir") => from_value::<Option<PathBuf>>(value).is_ok(),
            _ => false,
        };
        (!ok).then(|| match key.as_str() {
            Some(k) => k.to_string(),
            None => serde_yaml::to_string(key)
                .unwrap_or_default()
                .trim_end()
                .to_string(),
        })
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawUplink {
    name: String,
    bridge: Option<String>,
    /// Absent: the address the NIC (or, after a restart, its bridge) already has.
    address: Option<String>,
    gateway: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    uplinks: Vec<RawUplink>,
    #[serde(default)]
    reserved_host_ports: Vec<String>,
    ranges_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    datapath: Option<serde_yaml::Value>,
    gc_grace_seconds: Option<u64>,
    metrics_address: Option<String>,
    sandbox_egress_limit: Option<RawEgressLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEgressLimit {
    packets_per_second: u64,
    burst: Option<u64>,
}

/// What each sandbox may send per second, enforced by an OpenFlow meter of its own, so that a
/// flood from one sandbox cannot take the uplink (or OVS's time) from the others.
pub type EgressLimit = crate::flows::MeterRate;

/// Rates OVS's userspace meters take, in packets per second.
const EGRESS_RATE: std::ops::RangeInclusive<u64> = 1..=100_000_000;

fn parse_egress_limit(raw: &RawEgressLimit) -> Result<EgressLimit, (String, String)> {
    let field = |f: &str| format!("sandboxEgressLimit.{f}");
    if !EGRESS_RATE.contains(&raw.packets_per_second) {
        return Err((
            field("packetsPerSecond"),
            format!(
                "{} is outside 1-100000000: give each sandbox's packets per second, e.g. 50000, or leave sandboxEgressLimit out for no limit",
                raw.packets_per_second
            ),
        ));
    }
    let rate = raw.packets_per_second as u32;
    // A tenth of a second's worth by default, so that short bursts of a busy sandbox pass.
    let burst = raw.burst.unwrap_or(u64::from((rate / 10).max(32)));
    if burst == 0 || burst > u64::from(rate) * 10 {
        return Err((
            field("burst"),
            format!(
                "{burst} is outside 1-{}: at most ten seconds' worth of packetsPerSecond",
                u64::from(rate) * 10
            ),
        ));
    }
    Ok(EgressLimit {
        packets_per_second: rate,
        burst: burst as u32,
    })
}

/// One uplink: a NIC, the bridge built around it, and the address the host and its
/// sandboxes share on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    pub name: String,
    pub bridge: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// The address was not configured: the agent takes the one the NIC has at start.
    pub address_from_nic: bool,
}

impl UplinkConfig {
    /// The address with its prefix, as `ip addr` takes it.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub uplinks: Vec<UplinkConfig>,
    /// Port spans (inclusive) that belong to the host on every uplink, for TCP and UDP.
    pub reserved_host_ports: Vec<(u16, u16)>,
    pub ranges_dir: PathBuf,
    pub socket: PathBuf,
    pub datapath: DatapathConfig,
    /// How long a sandbox must be gone (cluster mode: its pod deleted) before the agent removes
    /// its port and flows.
    pub gc_grace: std::time::Duration,
    /// Where the agent serves Prometheus metrics (plain HTTP); None: it does not.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Each sandbox's egress meter; None: no limit.
    pub sandbox_egress_limit: Option<EgressLimit>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates a config document; `path` only names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        if let Some(detail) = crate::model::parse::nesting_problem(text) {
            return Err(ConfigError::Parse {
                path: path.into(),
                detail,
            });
        }
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            detail: e.to_string(),
        })?;
        let invalid = |field: String, problem: String| ConfigError::Invalid {
            path: path.into(),
            field,
            problem,
        };
        if raw.uplinks.is_empty() {
            return Err(invalid(
                "uplinks".into(),
                "no uplink configured: list at least one, e.g. `- {name: eth1, address: 198.51.100.1/24}`"
                    .into(),
            ));
        }
        let mut uplinks = Vec::new();
        for (i, u) in raw.uplinks.iter().enumerate() {
            uplinks.push(parse_uplink(u, i).map_err(|(f, p)| invalid(f, p))?);
        }
        // Which uplink each NIC or bridge name belongs to (a map: configs are machine-written
        // too, and a pairwise check is quadratic).
        let mut owner: std::collections::HashMap<&str, usize> = Default::default();
        for (i, u) in uplinks.iter().enumerate() {
            if u.bridge == u.name {
                return Err(invalid(
                    format!("uplinks[{i}].bridge"),
                    format!(
                        "{:?} is the uplink's own NIC: give the bridge another name, or leave `bridge` out",
                        u.bridge
                    ),
                ));
            }
            // NICs and bridges are all network devices: no name may stand for two of them.
            let clash = [&u.name, &u.bridge]
                .iter()
                .find_map(|n| owner.get(n.as_str()).copied());
            owner.insert(&u.name, i);
            owner.insert(&u.bridge, i);
            if let Some(j) = clash {
                return Err(invalid(
                    format!("uplinks[{i}]"),
                    format!(
                        "uplink {:?} (bridge {:?}) repeats the name or bridge of uplinks[{j}]: give each uplink its own NIC and bridge",
                        u.name, u.bridge
                    ),
                ));
            }
        }
        let mut reserved = Vec::new();
        for (i, span) in raw.reserved_host_ports.iter().enumerate() {
            reserved.push(
                parse_port_span(span).map_err(|p| invalid(format!("reservedHostPorts[{i}]"), p))?,
            );
        }
        Ok(AgentConfig {
            uplinks,
            reserved_host_ports: reserved,
            ranges_dir: raw
                .ranges_dir
                .unwrap_or_else(|| PathBuf::from("/etc/portiso/ranges")),
            socket: raw
                .socket
                .unwrap_or_else(|| PathBuf::from(portiso_agent_api::DEFAULT_SOCKET)),
            datapath: parse_datapath(raw.datapath).map_err(|(f, p)| invalid(f, p))?,
            gc_grace: std::time::Duration::from_secs(raw.gc_grace_seconds.unwrap_or(30)),
            metrics_address: raw
                .metrics_address
                .as_deref()
                .map(parse_metrics_address)
                .transpose()
                .map_err(|p| invalid("metricsAddress".into(), p))?,
            sandbox_egress_limit: raw
                .sandbox_egress_limit
                .as_ref()
                .map(parse_egress_limit)
                .transpose()
                .map_err(|(f, p)| invalid(f, p))?,
        })
    }

    pub fn uplink(&self, name: &str) -> Option<&UplinkConfig> {
        self.uplinks.iter().find(|u| u.name == name)
    }
}

fn parse_uplink(u: &RawUplink, i: usize) -> Result<UplinkConfig, (String, String)> {
    let field = |f: &str| format!("uplinks[{i}].{f}");
    // What the kernel takes as an interface name (dev_valid_name): 1-15 bytes, not "." or
    // "..", no '/', ':', NUL or whitespace.
    let ifname_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 15
            && !n
                .chars()
                .any(|c| matches!(c, '/' | ':' | '\0') || c.is_whitespace())
            && n != "."
            && n != ".."
    };
    if !ifname_ok(&u.name) {
        return Err((
            field("name"),
            format!(
                "{:?} is not a network interface name (1-15 bytes, no '/', ':', NUL or whitespace)",
                u.name
            ),
        ));
    }
    let bridge = u.bridge.clone().unwrap_or_else(|| {
        let mut b = format!("br-{}", u.name);
        // At most 15 bytes, cut between characters (a name may hold multi-byte ones).
        let mut end = b.len().min(15);
        while !b.is_char_boundary(end) {
            end -= 1;
        }
        b.truncate(end);
        b
    });
    if !ifname_ok(&bridge) {
        return Err((
            field("bridge"),
            format!("{bridge:?} is not a bridge name (1-15 bytes, no '/', ':', NUL or whitespace)"),
        ));
    }
    let (address, prefix_len) = match &u.address {
        None => (Ipv4Addr::UNSPECIFIED, 0),
        Some(a) => parse_cidr(a).map_err(|p| (field("address"), p))?,
    };
    let gateway = match &u.gateway {
        None => None,
        Some(g) => Some(g.parse::<Ipv4Addr>().map_err(|_| {
            (
                field("gateway"),
                format!("{g:?} is not an IPv4 address, e.g. 198.51.100.254"),
            )
        })?),
    };
    Ok(UplinkConfig {
        name: u.name.clone(),
        bridge,
        address,
        prefix_len,
        gateway,
        address_from_nic: u.address.is_none(),
    })
}

/// Parses `metricsAddress`: an address and a port a scraper can be pointed at.
pub fn parse_metrics_address(text: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = text.trim().parse().map_err(|_| {
        format!("{text:?} is not an address and port: write e.g. 127.0.0.1:9465, or 0.0.0.0:9465 to serve on every interface")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "{text:?} has port 0, which no scraper could find: give a fixed port, e.g. 9465"
        ));
    }
    Ok(addr)
}

/// Parses ADDRESS/PREFIX.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = cidr.split_once('/').ok_or_else(|| {
        format!("{cidr:?} has no prefix length: write it as ADDRESS/PREFIX, e.g. 198.51.100.1/24")
    })?;
    let address: Ipv4Addr = addr.parse().map_err(|_| {
        format!("{addr:?} is not an IPv4 address: write it as ADDRESS/PREFIX, e.g. 198.51.100.1/24")
    })?;
    let prefix_len: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("prefix length {prefix:?} must be 1-32"))?;
    Ok((address, prefix_len))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOverrides {
    #[serde(default)]
    overrides: Vec<RawOverride>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOverride {
    node_selector: std::collections::BTreeMap<String, String>,
    uplinks: Vec<RawUplink>,
}

impl AgentConfig {
    /// Per-node uplinks (cluster mode): the first override whose nodeSelector the node's labels
    /// satisfy replaces the uplinks. Returns the index of the override used.
    pub fn apply_overrides(
        &mut self,
        text: &str,
        path: &str,
        node_labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<usize>, ConfigError> {
        if let Some(detail) = crate::model::parse::nesting_problem(text) {
            return Err(ConfigError::Parse {
                path: path.into(),
                detail,
            });
        }
        let raw: RawOverrides = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            detail: e.to_string(),
        })?;
        let Some(i) = raw.overrides.iter().position(|o| {
            o.node_selector
                .iter()
                .all(|(k, v)| node_labels.get(k) == Some(v))
        }) else {
            return Ok(None);
        };
        let mut uplinks = Vec::new();
        for (j, u) in raw.overrides[i].uplinks.iter().enumerate() {
            uplinks.push(parse_uplink(u, j).map_err(|(f, p)| ConfigError::Invalid {
                path: path.into(),
                field: format!("overrides[{i}].{f}"),
                problem: p,
            })?);
        }
        if uplinks.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.into(),
                field: format!("overrides[{i}].uplinks"),
                problem: "no uplink: list at least one".into(),
            });
        }
        self.uplinks = uplinks;
        Ok(Some(i))
    }
}

/// Parses "N" or "A-B" (inclusive, 0-65535).
pub fn parse_port_span(span: &str) -> Result<(u16, u16), String> {
    let fix = "write a port or an inclusive span within 0-65535, e.g. \"0-9999\" or \"22\"";
    let (a, b) = span.split_once('-').unwrap_or((span, span));
    let start: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{span:?} is not a port span: {fix}"))?;
    let end: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{span:?} is not a port span: {fix}"))?;
    if start > end {
        return Err(format!("{span:?} starts after it ends: swap the two ports"));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
uplinks:
  - name: eth1
    address: 198.51.100.1/24
    gateway: 198.51.100.254
  - name: eth2
    bridge: br-up2
    address: 203.0.113.1/24
reservedHostPorts: ["0-9999", "22"]
rangesDir: /etc/portiso/ranges
socket: /run/portiso/agent.sock
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = AgentConfig::parse(GOOD, "t.yaml").unwrap();
        assert_eq!(c.uplinks.len(), 2);
        assert_eq!(c.uplinks[0].bridge, "br-eth1");
        assert_eq!(c.uplinks[0].cidr(), "198.51.100.1/24");
        assert_eq!(c.uplinks[0].gateway, Some(Ipv4Addr::new(198, 51, 100, 254)));
        assert_eq!(c.uplinks[1].bridge, "br-up2");
        assert_eq!(c.reserved_host_ports, vec![(0, 9999), (22, 22)]);
        assert_eq!(c.datapath, DatapathConfig::default());
    }

    #[test]
    fn datapath_takes_a_bare_type_or_the_full_form() {
        let up = "uplinks: [{name: eth1, address: 198.51.100.1/24}]\n";
        let c = AgentConfig::parse(&format!("{up}datapath: netdev"), "t").unwrap();
        assert_eq!(c.datapath.kind, DatapathChoice::Netdev);
        let c = AgentConfig::parse(
            &format!("{up}datapath: {{type: netdev, userspacePorts: afxdp-nonpmd, fastPath: off}}"),
            "t",
        )
        .unwrap();
        assert_eq!(
            c.datapath,
            DatapathConfig {
                kind: DatapathChoice::Netdev,
                userspace_ports: PortTypeChoice::AfxdpNonpmd,
                fast_path: FastPathChoice::Off,
                bpf_dir: PathBuf::from(DEFAULT_BPF_DIR),
            }
        );
        assert_eq!(c.datapath.userspace_ports.ovs_type(), "afxdp-nonpmd");
        let e = err(&format!("{up}datapath: dpdk"));
        assert!(e.contains("datapath") && e.contains("netdev"), "{e}");
        let e = err(&format!("{up}datapath: {{userspacePort: afxdp}}"));
        assert!(
            e.contains("datapath") && e.contains("userspacePorts"),
            "{e}"
        );
        let e = err(&format!("{up}datapath: {{fastPath: maybe}}"));
        assert!(e.contains("datapath") && e.contains("fastPath"), "{e}");
    }

    fn err(text: &str) -> String {
        AgentConfig::parse(text, "t.yaml").unwrap_err().to_string()
    }

    #[test]
    fn node_overrides_replace_the_uplinks_of_matching_nodes() {
        let mut c = AgentConfig::parse(GOOD, "t.yaml").unwrap();
        let text = "overrides:\n  - nodeSelector: {rack: a}\n    uplinks: [{name: eth7, address: 203.0.113.9/24}]\n";
        let labels =
            |k: &str, v: &str| std::collections::BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            c.apply_overrides(text, "o.yaml", &labels("rack", "b"))
                .unwrap(),
            None
        );
        assert_eq!(c.uplinks.len(), 2);
        assert_eq!(
            c.apply_overrides(text, "o.yaml", &labels("rack", "a"))
                .unwrap(),
            Some(0)
        );
        assert_eq!(c.uplinks[0].name, "eth7");
        let bad =
            "overrides:\n  - nodeSelector: {rack: a}\n    uplinks: [{name: eth7, address: x}]\n";
        let e = c
            .apply_overrides(bad, "o.yaml", &labels("rack", "a"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("overrides[0].uplinks[0].address"), "{e}");
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let e = err("uplinks: [{name: eth1, address: 198.51.100.1}]");
        assert!(
            e.contains("uplinks[0].address") && e.contains("ADDRESS/PREFIX"),
            "{e}"
        );
        let c = AgentConfig::parse("uplinks: [{name: eth1}]", "t.yaml").unwrap();
        assert!(
            c.uplinks[0].address_from_nic,
            "no address: taken from the NIC"
        );
        assert!(
            e.contains("uplinks[0].address") && e.contains("ADDRESS/PREFIX"),
            "{e}"
        );
        let e = err("uplinks: [{name: eth1, address: 198.51.100.300/24}]");
        assert!(e.contains("uplinks[0].address"), "{e}");
        let e = err("uplinks: [{name: eth1, address: 198.51.100.1/24, gateway: x}]");
        assert!(e.contains("uplinks[0].gateway"), "{e}");
        let e =
            err("uplinks: [{name: eth1, address: 198.51.100.1/24}]\nreservedHostPorts: [\"9-1\"]");
        assert!(
            e.contains("reservedHostPorts[0]") && e.contains("swap"),
            "{e}"
        );
        let e = err("uplinks: []");
        assert!(e.contains("uplinks") && e.contains("at least one"), "{e}");
        let e = err("uplinks: [{name: eth1, address: 198.51.100.1/24}]\nreservedHostPort: []");
        assert!(e.contains("reservedHostPort"), "{e}");
        let e = err("uplinks: [{name: eth1, address: 198.51.100.1/24}, {name: eth1, address: 203.0.113.1/24}]");
        assert!(e.contains("uplinks[1]") && e.contains("repeats"), "{e}");
        let e = err("uplinks: [{name: a-very-long-interface, address: 198.51.100.1/24}]");
        assert!(e.contains("uplinks[0].name"), "{e}");
        let e = err(": : :");
        assert!(e.contains("t.yaml"), "{e}");
    }

    #[test]
    fn the_egress_limit_is_optional_and_checked() {
        let up = "uplinks: [{name: eth1, address: 198.51.100.1/24}]\n";
        assert_eq!(
            AgentConfig::parse(up, "t").unwrap().sandbox_egress_limit,
            None
        );
        let c = AgentConfig::parse(
            &format!("{up}sandboxEgressLimit: {{packetsPerSecond: 5000}}"),
            "t",
        )
        .unwrap();
        assert_eq!(
            c.sandbox_egress_limit,
            Some(EgressLimit {
                packets_per_second: 5000,
                burst: 500
            })
        );
        for (bad, field) in [
            (
                "{packetsPerSecond: 0}",
                "sandboxEgressLimit.packetsPerSecond",
            ),
            (
                "{packetsPerSecond: 1000, burst: 0}",
                "sandboxEgressLimit.burst",
            ),
            (
                "{packetsPerSecond: 1000, burst: 20000}",
                "sandboxEgressLimit.burst",
            ),
            ("{packetsPerSecond: 1000, bytes: 5}", "bytes"),
        ] {
            let e = err(&format!("{up}sandboxEgressLimit: {bad}"));
            assert!(e.contains(field), "{bad}: {e}");
        }
    }

    #[test]
    fn metrics_address_is_optional_and_checked() {
        let up = "uplinks: [{name: eth1, address: 198.51.100.1/24}]\n";
        assert_eq!(AgentConfig::parse(up, "t").unwrap().metrics_address, None);
        let c = AgentConfig::parse(&format!("{up}metricsAddress: 127.0.0.1:9465"), "t").unwrap();
        assert_eq!(c.metrics_address, Some(([127, 0, 0, 1], 9465).into()));
        let c = AgentConfig::parse(&format!("{up}metricsAddress: \"[::]:9465\""), "t").unwrap();
        assert_eq!(c.metrics_address.map(|a| a.port()), Some(9465));
        for (bad, hint) in [
            ("9465", "127.0.0.1:9465"),
            ("localhost:9465", "127.0.0.1:9465"),
            ("0.0.0.0:0", "fixed port"),
            ("0.0.0.0:70000", "127.0.0.1:9465"),
        ] {
            let e = err(&format!("{up}metricsAddress: \"{bad}\""));
            assert!(
                e.contains("metricsAddress") && e.contains(hint),
                "{bad}: {e}"
            );
        }
        let e = err(&format!("{up}metricsAdress: 127.0.0.1:9465"));
        assert!(e.contains("metricsAdress"), "{e}");
    }
}
