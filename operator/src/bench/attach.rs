//! Attach time of the CNI `bridge` plugin (with `host-local` IPAM), the usual way to give a
//! sandbox a network, for comparison with `portiso-cni`; and `portmap` for one sandbox with a
//! range of ports, the NAT way to publish a range.
//!
//! The plugins (Debian's containernetworking-plugins, `/usr/lib/cni`) are invoked directly as
//! the CNI spec says: `CNI_COMMAND`, `CNI_NETNS`, … in the environment, the network config on
//! stdin, the result on stdout. They run in a namespace of their own (`pbb-host`, the "host",
//! where the bridge `cni0` and its NAT rules go), and attach namespaces `pbb-sI` from
//! 203.0.113.0/24; host-local keeps its leases in a scratch directory, not in /var/lib/cni.

use crate::testbed::netns;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Where Debian installs the reference plugins.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";
/// Sandboxes the bridge plugin's /24 holds: 203.0.113.2-254 less the ones measured next.
pub const BRIDGE_MAX_PRESENT: usize = 250;
/// ADD/DEL cycles of the next sandbox.
const NEXT: usize = 3;
/// Ports of the `portmap` measurement.
const PORTMAP_PORTS: u16 = 100;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BridgePlugin {
    /// Sandboxes attached before the measured ADDs.
    pub present: usize,
    /// Wall time of each ADD of the next sandbox (one at a time, DEL in between).
    pub next_add_ms: Vec<f64>,
    pub next_add_ms_p50: f64,
    /// Wall time of the ADDs that filled the bridge, median.
    pub fill_add_ms_p50: f64,
    /// `portmap` ADD for one sandbox with this many ports (one mapping per port), if measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portmap_ports: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portmap_add_ms: Option<f64>,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

/// The network config the bridge plugin gets.
fn bridge_conf(data_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "portiso-bench",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": "host-local",
            "subnet": "203.0.113.0/24",
            "dataDir": data_dir,
        },
    })
}

/// Runs one plugin in namespace `host_ns` for sandbox namespace `sandbox_ns`; returns its
/// stdout (the result), or fails with its output.
fn plugin(
    host_ns: &str,
    plugin: &str,
    command: &str,
    sandbox_ns: &str,
    conf: &serde_json::Value,
) -> anyhow::Result<String> {
    let bin = Path::new(CNI_PLUGINS).join(plugin);
    let conf = conf.to_string();
    let netns_path = format!("/run/netns/{sandbox_ns}");
    let id = format!("bench-{sandbox_ns}");
    let cmd = command.to_string();
    // A child forked from a thread inside the namespace starts in it (as `ip netns exec`
    // would run it, without the extra process in the timing).
    let out = netns::run_in(host_ns, move || -> std::io::Result<std::process::Output> {
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns_path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.as_bytes())?;
        }
        child.wait_with_output()
    })??;
    anyhow::ensure!(
        out.status.success(),
        "CNI {plugin} {command} for {sandbox_ns}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fills the bridge plugin's network with `present` sandboxes, then times the ADD of the next
/// one [`NEXT`] times (DEL in between); with `portmap`, also one `portmap` ADD of a
/// 100-port range for that sandbox. Everything is removed on return.
pub fn bridge_plugin(
    present: usize,
    portmap: bool,
    progress: fn(&str, usize, usize),
    interrupted: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<BridgePlugin> {
    anyhow::ensure!(
        (1..=BRIDGE_MAX_PRESENT).contains(&present),
        "the bridge plugin's /24 holds 1 to {BRIDGE_MAX_PRESENT} sandboxes here, not {present}"
    );
    let data_dir: PathBuf = std::env::temp_dir().join("portiso-bench-cni");
    let g = super::systems::Namespaces::new("pbb").with_dir(data_dir.clone())?;
    let host = g.add("host")?;
    let conf = bridge_conf(&data_dir);
    let mut fill = Vec::with_capacity(present);
    for i in 0..present {
        anyhow::ensure!(
            !interrupted.load(std::sync::atomic::Ordering::Relaxed),
            "interrupted"
        );
        let ns = g.add(&format!("s{i}"))?;
        let t0 = Instant::now();
        plugin(&host, "bridge", "ADD", &ns, &conf)?;
        fill.push(t0.elapsed().as_secs_f64() * 1e3);
        progress("bridge plugin ADD", i + 1, present);
    }
    let next_ns = g.add("next")?;
    let mut next = Vec::new();
    let mut result = String::new();
    for j in 0..NEXT {
        let t0 = Instant::now();
        result = plugin(&host, "bridge", "ADD", &next_ns, &conf)?;
        next.push(t0.elapsed().as_secs_f64() * 1e3);
        if j + 1 < NEXT || !portmap {
            plugin(&host, "bridge", "DEL", &next_ns, &conf)?;
        }
    }
    let mut r = BridgePlugin {
        present,
        next_add_ms_p50: median(&next),
        next_add_ms: next,
        fill_add_ms_p50: median(&fill),
        portmap_ports: None,
        portmap_add_ms: None,
    };
    if portmap {
        let mappings: Vec<_> = (0..PORTMAP_PORTS)
            .map(|j| serde_json::json!({"hostPort": 10000 + j, "containerPort": 10000 + j, "protocol": "tcp"}))
            .collect();
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "portiso-bench",
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": serde_json::from_str::<serde_json::Value>(&result)?,
        });
        let t0 = Instant::now();
        plugin(&host, "portmap", "ADD", &next_ns, &conf)?;
        r.portmap_add_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
        r.portmap_ports = Some(PORTMAP_PORTS);
    }
    drop(g);
    Ok(r)
}
