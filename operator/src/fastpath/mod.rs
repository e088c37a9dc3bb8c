//! The kernel fast path beside OVS: XDP programs that carry TCP/UDP by port straight between
//! the uplink and the sandboxes, fed from the same state the flow compiler turns into OpenFlow.
//!
//! OVS keeps every flow it has without the fast path, so anything the programs leave alone
//! (ARP, ICMP, fragments, spoofed frames, ports in no range) meets exactly the same rules; and
//! a fast path that is missing, being attached or being torn down never loses a frame, it only
//! makes it take the slow path. Where a packet's fate is decided stays `flows::compile`; the
//! programs (operator/bpf/fastpath.c) take only what those flows would send on unchanged.

pub mod kernel;
pub mod maps;

use crate::config::{DatapathConfig, FastPathChoice, PortTypeChoice};
use crate::flows::BridgeState;
pub use kernel::{Counters, Role};
use maps::FastPathMaps;
use std::collections::{BTreeMap, BTreeSet};

pub struct FastPath {
    kernel: kernel::Kernel,
    /// Interfaces whose program this agent has (re)attached since it started.
    attached: BTreeSet<u32>,
    /// How the programs run: `generic` (skb mode) or `native` (the driver's XDP hook).
    pub mode: &'static str,
    /// Turned off after a failure; stays off until the agent restarts.
    off: bool,
}

/// Whether the fast path should run, and if not, why not (for the log and `portiso status`).
pub fn wanted(config: &DatapathConfig, datapath_type: &str) -> Result<(), String> {
    match config.fast_path {
        FastPathChoice::Off => Err("off in the config (datapath.fastPath: off)".into()),
        _ if matches!(
            config.userspace_ports,
            PortTypeChoice::Afxdp | PortTypeChoice::AfxdpNonpmd
        ) && datapath_type == "netdev" =>
        {
            Err("AF_XDP ports were asked for (datapath.userspacePorts), and they take the devices' XDP hook".into())
        }
        FastPathChoice::Auto if datapath_type != "netdev" => Err(
            "the kernel datapath is fast already (datapath.fastPath: on adds it there too)".into(),
        ),
        _ => Ok(()),
    }
}

/// When the fast path does not run: takes off the programs an earlier run left attached
/// through pins in `dir` (e.g. before `fastPath: off` was set), so that OVS alone carries
/// the traffic as the log says. The maps stay; a later run with the fast path reuses them.
pub fn remove_leftover_links(dir: &std::path::Path) -> usize {
    let mut removed = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(kernel::LINK_PIN_PREFIX)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

pub fn ifindex(ifname: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(ifname).ok()
}

impl FastPath {
    /// Loads the programs and attaches the uplinks' one. Any failure (no BPF, a verifier that
    /// refuses the programs, no XDP on a device, no bpffs) is returned as one sentence: the
    /// agent then runs on OVS alone.
    pub fn open(config: &DatapathConfig, uplinks: &[String]) -> Result<Self, String> {
        // Generic (skb-mode) XDP works on every device and can redirect to any device; the
        // native hook of a veth can only hand frames to a peer that runs NAPI.
        let flags = aya::programs::XdpFlags::SKB_MODE;
        let kernel = kernel::Kernel::load(&config.bpf_dir, flags)
            .map_err(|e| format!("cannot load the BPF programs: {e:#}"))?;
        let mut fp = FastPath {
            kernel,
            attached: BTreeSet::new(),
            mode: "generic",
            off: false,
        };
        for name in uplinks {
            let i = ifindex(name).ok_or_else(|| format!("uplink {name} has no ifindex"))?;
            fp.kernel
                .attach(i, Role::Uplink)
                .map_err(|e| format!("cannot attach XDP to uplink {name}: {e:#}"))?;
            fp.attached.insert(i);
        }
        Ok(fp)
    }

    /// Before OVS's flows of the uplink change: removes the entries `desired` no longer has.
    pub fn before_flows(&mut self, uplink: u32, desired: &FastPathMaps) -> anyhow::Result<()> {
        if self.off {
            return Ok(());
        }
        let current = self.kernel.read(uplink)?;
        self.kernel.remove_stale(&current, desired)?;
        for gone in current
            .endpoints
            .keys()
            .filter(|k| !desired.endpoints.contains_key(k))
        {
            self.attached.remove(gone);
        }
        Ok(())
    }

    /// After OVS's flows are in place: attaches new sandboxes' program and adds their entries.
    pub fn after_flows(&mut self, uplink: u32, desired: &FastPathMaps) -> anyhow::Result<()> {
        if self.off {
            return Ok(());
        }
        for &i in desired.endpoints.keys() {
            if i != uplink && !self.attached.contains(&i) {
                self.kernel.attach(i, Role::Sandbox)?;
                self.attached.insert(i);
            }
        }
        let current = self.kernel.read(uplink)?;
        self.kernel.add_missing(&current, desired)
    }

    /// The maps of one bridge; sandboxes are found by their host-side interface names.
    pub fn compile(
        state: &BridgeState,
        uplink_ifindex: u32,
        host_ifs: &BTreeMap<u32, String>,
    ) -> FastPathMaps {
        let ifindexes: BTreeMap<u32, u32> = host_ifs
            .iter()
            .filter_map(|(ofport, name)| Some((*ofport, ifindex(name)?)))
            .collect();
        maps::compile(state, uplink_ifindex, &ifindexes)
    }

    /// Takes every program off its interface: all traffic goes through OVS from now on.
    pub fn turn_off(&mut self) {
        for i in self.kernel.attached() {
            self.kernel.detach(i);
        }
        self.attached.clear();
        self.off = true;
    }

    /// Whether the programs still run (false once a failure turned them off).
    pub fn is_on(&self) -> bool {
        !self.off
    }

    /// "on (…)" or, after a failure, "off: …", for the log and `portiso status`.
    pub fn status(&self) -> String {
        if self.off {
            "off: turned off after a failure, OVS carries all traffic (the agent's log says why)"
                .into()
        } else {
            format!("on ({} XDP on the uplinks and sandbox ports)", self.mode)
        }
    }

    pub fn counters(&mut self) -> anyhow::Result<BTreeMap<u32, Counters>> {
        self.kernel.counters()
    }
}
