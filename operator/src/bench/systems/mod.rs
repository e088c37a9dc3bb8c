//! The dataplanes `portiso bench` compares, each built in namespaces of its own with
//! documentation addresses only, and removed on drop (also when building fails half-way).
//!
//! ```text
//! raw veth    pbv-peer 198.51.100.7 ── veth ── pbv-sA 198.51.100.(10+A)          (one pair per sandbox)
//! plain OVS   pbo-peer 198.51.100.7 ── veth ── pbo-sw [OVS br0 NORMAL] ── veth ── pbo-sA 198.51.100.(10+A)
//! Linux DNAT  pbn-peer 198.51.100.7 ── veth ── pbn-node 198.51.100.1, iptables DNAT per port range,
//!                                               Linux bridge br0 203.0.113.1 ── veth ── pbn-sA 203.0.113.(10+A)
//! OVS ct(nat) pbc-peer 198.51.100.7 ── veth ── pbc-sw [OVS br0: ARP answers, ct(nat) per port range,
//!                                               routing by rewriting MACs] ── veth ── pbc-sA 203.0.113.(10+A)
//! portiso     the Testbed (pbp-*): real agent, real CNI plugin, sandboxes share 198.51.100.1
//! ```
//!
//! Port plan: range `K` (a sandbox's PortRange, or one NAT rule set) is TCP and UDP
//! [`range_port`]`(K) ..+19`, and its server listens on its first port. The address plan
//! ([`Plan`]): a system that needs an address per sandbox holds at most [`MAX_ADDRESSES`]
//! (`.10`–`.249` of one /24); asked for more, it is measured with that many sandboxes, and the
//! NAT systems still get a rule set for every requested range (range `K` → address
//! `K mod addresses`), so that their tables are as large as for the requested count.

mod linux_nat;
mod ovs_ct_nat;
mod plain_ovs;
mod portiso;
mod raw_veth;

use crate::exec::{run, ExecError};
use crate::testbed::{ovs, Testbed};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The dataplanes, in the order they are measured and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// A veth pair between two namespaces: the physical limit here.
    RawVeth,
    /// An OVS bridge (same datapath as portiso), NORMAL action, the sandbox with its own address.
    PlainOvs,
    /// Linux bridge + iptables DNAT per port range (the CNI portmap way).
    LinuxNat,
    /// The same OVS as plain OVS, NAT by conntrack: ct(commit,nat(dst=…)) per port range.
    OvsCtNat,
    /// portiso: the real agent and CNI plugin, sandboxes sharing the node's address.
    Portiso,
    /// portiso with the eBPF/XDP fast path beside OVS carrying TCP/UDP by port.
    PortisoFastpath,
    /// portiso on OVS alone with AF_XDP ports serviced by OVS's main thread.
    PortisoAfxdpNonpmd,
}

impl System {
    pub const ALL: [System; 7] = [
        System::RawVeth,
        System::PlainOvs,
        System::LinuxNat,
        System::OvsCtNat,
        System::Portiso,
        System::PortisoFastpath,
        System::PortisoAfxdpNonpmd,
    ];

    /// What a run measures unless `--systems` says otherwise: every system but the AF_XDP row,
    /// which is the fast path's fallback and only adds minutes (1000 more ports to build).
    pub const DEFAULT: [System; 6] = [
        System::RawVeth,
        System::PlainOvs,
        System::LinuxNat,
        System::OvsCtNat,
        System::Portiso,
        System::PortisoFastpath,
    ];

    pub fn label(self) -> &'static str {
        match self {
            System::RawVeth => "raw veth",
            System::PlainOvs => "plain OVS",
            System::LinuxNat => "Linux DNAT",
            System::OvsCtNat => "OVS ct(nat)",
            System::Portiso => "portiso",
            System::PortisoFastpath => "portiso + eBPF fast path",
            System::PortisoAfxdpNonpmd => "portiso, afxdp-nonpmd ports",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            System::RawVeth => "raw-veth",
            System::PlainOvs => "plain-ovs",
            System::LinuxNat => "linux-nat",
            System::OvsCtNat => "ovs-ct-nat",
            System::Portiso => "portiso",
            System::PortisoFastpath => "portiso-fastpath",
            System::PortisoAfxdpNonpmd => "portiso-afxdp-nonpmd",
        }
    }

    /// Whether the row runs portiso (the testbed's real agent and CNI plugin).
    pub fn is_portiso(self) -> bool {
        matches!(
            self,
            System::Portiso | System::PortisoFastpath | System::PortisoAfxdpNonpmd
        )
    }

    /// For portiso rows: the `datapath:` value of the agent config (the testbed writes the
    /// rest). The `portiso` row pins ordinary `system` ports and no fast path, so that it runs
    /// on the same switch, datapath and kind of port as plain OVS and OVS ct(nat) whatever the
    /// agent's defaults become. A row for AF_XDP ports or the eBPF fast path is one more
    /// variant with its own value here (e.g. `{userspacePorts: afxdp-nonpmd, fastPath: off}`),
    /// plus its label, key, `is_portiso` and `build` arms.
    pub fn portiso_datapath(self) -> Option<&'static str> {
        match self {
            System::Portiso => Some("{userspacePorts: system, fastPath: off}"),
            System::PortisoFastpath => Some("{userspacePorts: system, fastPath: on}"),
            System::PortisoAfxdpNonpmd => Some("{userspacePorts: afxdp-nonpmd, fastPath: off}"),
            _ => None,
        }
    }

    /// Whether a node built for `self` serves `next` too, after [`switch_to`]: portiso rows
    /// on the same kind of OVS port differ only in the agent's config.
    pub fn shares_node_with(self, next: System) -> bool {
        let ports = |s: System| {
            s.portiso_datapath()
                .and_then(|d| d.split("userspacePorts: ").nth(1))
                .and_then(|rest| rest.split([',', '}']).next())
        };
        self != next && ports(self).is_some() && ports(self) == ports(next)
    }

    /// Whether one address per sandbox is needed (so at most [`MAX_ADDRESSES`] sandboxes).
    fn address_per_sandbox(self) -> bool {
        !self.is_portiso()
    }

    /// Whether the system holds one NAT rule set per port range.
    fn has_rule_sets(self) -> bool {
        matches!(self, System::LinuxNat | System::OvsCtNat)
    }

    /// What is built when `requested` sandboxes are asked for.
    pub fn plan(self, requested: usize) -> Plan {
        let sandboxes = if self.address_per_sandbox() {
            requested.min(MAX_ADDRESSES)
        } else {
            requested
        };
        Plan {
            requested,
            sandboxes,
            ranges: if self.has_rule_sets() || !self.address_per_sandbox() {
                requested
            } else {
                sandboxes
            },
        }
    }
}

/// Sandbox namespaces and port ranges of one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// The count asked for.
    pub requested: usize,
    /// Sandboxes (namespaces) built: `requested`, or as many as the address plan holds.
    pub sandboxes: usize,
    /// Port ranges (PortRanges, NAT rule sets), one traffic target each.
    pub ranges: usize,
}

impl Plan {
    /// The sandbox (address) that port range `k` leads to.
    pub fn sandbox_of(&self, k: usize) -> usize {
        k % self.sandboxes
    }

    /// "measured at 240, 1000 rule sets" when the build differs from the request.
    pub fn note(&self) -> Option<String> {
        match (
            self.sandboxes < self.requested,
            self.ranges > self.sandboxes,
        ) {
            (false, _) => None,
            (true, true) => Some(format!(
                "measured at {}, {} rule sets",
                self.sandboxes, self.ranges
            )),
            (true, false) => Some(format!("measured at {}", self.sandboxes)),
        }
    }
}

/// Sandboxes of systems that give each its own address: `.10`–`.249` of one /24.
pub const MAX_ADDRESSES: usize = 240;
/// Sandboxes portiso is built with at most: ranges up to 1000 (and the next sandbox's) stay
/// below the node's ephemeral ports (32768-), beside [`UPDATE_PORT`].
pub const MAX_PORTISO: usize = 1000;
/// Ports per range.
pub const RANGE_PORTS: u16 = 20;
/// The port range the flow-update measurement adds to portiso's first sandbox.
pub const UPDATE_PORT: u16 = 31000;
/// Where the peer's sink listens (sandbox→peer throughput).
pub const PEER_PORT: u16 = 5001;

/// The first port of range `k` (where its server listens).
pub fn range_port(k: usize) -> u16 {
    10000 + RANGE_PORTS * k as u16
}

/// The span of range `k`.
pub fn range_span(k: usize) -> (u16, u16) {
    (range_port(k), range_port(k) + RANGE_PORTS - 1)
}

/// One system, built and ready for traffic.
pub struct Built {
    pub plan: Plan,
    pub peer_ns: String,
    /// Where the peer's sink listens, as the sandboxes reach it.
    pub peer_at: SocketAddr,
    /// Where the peer sends to, one per port range.
    pub targets: Vec<SocketAddr>,
    /// Where the servers listen: (namespace, port), one per port range.
    pub servers_at: Vec<(String, u16)>,
    /// Wall time of each sandbox's CNI ADD while building (portiso only).
    pub attach_ms: Vec<f64>,
    /// How many of those ADDs ran at a time.
    pub attach_workers: usize,
    /// CNI ADD of one more sandbox with all of them present, a few times (portiso only).
    pub next_attach_ms: Vec<f64>,
    /// Flow update of one sandbox (portiso only).
    pub flow_update: Option<FlowUpdate>,
    /// The agent's resident memory with every sandbox attached (portiso only).
    pub agent_rss_kib: Option<u64>,
    /// The agent config's `datapath:` value (portiso only; `None`: the agent's default).
    pub agent_datapath: Option<String>,
    pub setup: Duration,
    /// Removes everything on drop.
    guard: Guard,
}

/// A PortRange change for one sandbox until traffic reaches it on the new ports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FlowUpdate {
    /// From the file written to the first connection the sandbox accepts on the new port:
    /// includes the agent's rangesDir poll (up to 1 s).
    pub total_ms: f64,
    /// From the agent reading the file (its access time) to that connection: the agent's
    /// parse, arbitration, compile, OVS update and the first packet.
    pub after_read_ms: Option<f64>,
}

/// Held only for its `Drop`, which removes the system.
#[allow(dead_code)]
enum Guard {
    Namespaces(Namespaces),
    Testbed(Box<Testbed>),
}

/// How a system is built.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub sandboxes: usize,
    /// Turn TX checksum offload off on every veth, also where the kernel alone forwards.
    pub offloads_off_everywhere: bool,
    /// The portiso binary (portiso-cni beside it), for the testbed's agent.
    pub portiso_bin: PathBuf,
    /// CNI ADDs in parallel while building portiso's node.
    pub attach_workers: usize,
    /// Called with (done, total) while sandboxes are attached.
    pub progress: fn(&str, usize, usize),
    /// Interrupted by a signal: stop building.
    pub interrupted: &'static std::sync::atomic::AtomicBool,
}

impl BuildOptions {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.interrupted.load(std::sync::atomic::Ordering::Relaxed),
            "interrupted while building"
        );
        Ok(())
    }
}

pub fn build(system: System, o: &BuildOptions) -> anyhow::Result<Built> {
    let plan = system.plan(o.sandboxes);
    anyhow::ensure!(
        (1..=MAX_PORTISO).contains(&o.sandboxes),
        "1 to {MAX_PORTISO} sandboxes per system, not {}",
        o.sandboxes
    );
    let start = Instant::now();
    let mut b = match system {
        System::RawVeth => raw_veth::build(o, plan),
        System::PlainOvs => plain_ovs::build(o, plan),
        System::LinuxNat => linux_nat::build(o, plan),
        System::OvsCtNat => ovs_ct_nat::build(o, plan),
        System::Portiso | System::PortisoFastpath | System::PortisoAfxdpNonpmd => {
            portiso::build(o, plan, system.portiso_datapath())
        }
    }?;
    b.setup = start.elapsed();
    Ok(b)
}

/// Makes `built` (a node built for a system that [`System::shares_node_with`] `next`) into
/// `next`'s node.
pub fn switch_to(built: &mut Built, next: System) -> anyhow::Result<()> {
    let datapath = next
        .portiso_datapath()
        .ok_or_else(|| anyhow::anyhow!("{} is not a portiso row", next.label()))?;
    portiso::switch_datapath(built, datapath)
}

/// The datapath OVS uses here: the one the agent would choose.
pub fn ovs_datapath() -> &'static str {
    crate::agent::choose_datapath(crate::config::DatapathChoice::Auto)
}

/// Namespaces (and a private OVS, and a directory) of one system, removed on drop; leftovers
/// of an earlier run with the same prefix are removed first.
pub(super) struct Namespaces {
    prefix: String,
    ovs_dir: Option<PathBuf>,
    dir: Option<PathBuf>,
}

impl Namespaces {
    pub(super) fn new(prefix: &str) -> Self {
        let n = Namespaces {
            prefix: prefix.into(),
            ovs_dir: None,
            dir: None,
        };
        n.remove();
        n
    }

    /// A scratch directory removed with the namespaces (emptied first if a run left it).
    pub(super) fn with_dir(mut self, dir: PathBuf) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        self.dir = Some(dir);
        Ok(self)
    }

    /// Starts a private OVS in namespace `ns` (of this group), stopped on drop.
    pub(super) fn start_ovs(&mut self, ns: &str) -> anyhow::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("portiso-bench-ovs-{}", self.prefix));
        stop_ovs(&dir);
        std::fs::create_dir_all(&dir)?;
        self.ovs_dir = Some(dir.clone());
        ovs::start(ns, &dir)?;
        Ok(dir)
    }

    pub(super) fn add(&self, name: &str) -> Result<String, ExecError> {
        let ns = format!("{}-{name}", self.prefix);
        run("ip", &["netns", "add", &ns])?;
        ip(&ns, &["link", "set", "lo", "up"])?;
        // Neighbour discovery and router solicitations would only add noise.
        in_ns(
            &ns,
            "sysctl",
            &["-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
        )?;
        Ok(ns)
    }

    fn remove(&self) {
        if let Some(dir) = &self.ovs_dir {
            stop_ovs(dir);
        }
        remove_namespaces(&format!("{}-", self.prefix));
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Deletes every namespace whose name starts with `prefix`.
pub fn remove_namespaces(prefix: &str) {
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(prefix) {
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
}

pub(super) fn ip(ns: &str, args: &[&str]) -> Result<String, ExecError> {
    let mut argv = vec!["-n", ns];
    argv.extend_from_slice(args);
    run("ip", &argv)
}

pub(super) fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, ExecError> {
    let mut argv = vec!["netns", "exec", ns, program];
    argv.extend_from_slice(args);
    run("ip", &argv)
}

/// A veth pair with one end in each namespace, both up, optionally without TX checksum
/// offload, optionally with a given MAC on the `a` end.
pub(super) fn veth(
    (a_ns, a): (&str, &str),
    (b_ns, b): (&str, &str),
    offload_off: bool,
    a_mac: Option<&str>,
) -> anyhow::Result<()> {
    let mut argv = vec!["link", "add", a, "netns", a_ns];
    if let Some(mac) = a_mac {
        argv.extend(["address", mac]);
    }
    argv.extend(["type", "veth", "peer", "name", b, "netns", b_ns]);
    run("ip", &argv)?;
    for (ns, ifname) in [(a_ns, a), (b_ns, b)] {
        if offload_off {
            in_ns(ns, "ethtool", &["-K", ifname, "tx", "off"])?;
        }
        ip(ns, &["link", "set", "dev", ifname, "up"])?;
    }
    Ok(())
}

/// Sandbox `i`'s address in a /24.
pub(super) fn sandbox_ip(net: [u8; 3], i: usize) -> Ipv4Addr {
    assert!(i < MAX_ADDRESSES, "sandbox {i} outside the address plan");
    Ipv4Addr::new(net[0], net[1], net[2], 10 + i as u8)
}

pub(super) const DOC1: [u8; 3] = [198, 51, 100];
pub(super) const DOC2: [u8; 3] = [203, 0, 113];
pub(super) const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub(super) const NODE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The sandboxes' gateway behind a NAT node.
pub(super) const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

impl Built {
    fn new(plan: Plan, peer_ns: String, guard: Guard) -> Self {
        Built {
            plan,
            peer_ns,
            peer_at: SocketAddr::from((PEER, PEER_PORT)),
            targets: Vec::new(),
            servers_at: Vec::new(),
            attach_ms: Vec::new(),
            attach_workers: 0,
            next_attach_ms: Vec::new(),
            flow_update: None,
            agent_rss_kib: None,
            agent_datapath: None,
            setup: Duration::ZERO,
            guard,
        }
    }

    /// Range `k`: the peer sends to `target`, the server listens in `ns`.
    fn push_range(&mut self, ns: String, target: SocketAddr, k: usize) {
        self.targets.push(target);
        self.servers_at.push((ns, range_port(k)));
    }

    /// One target per range: range `k` served by sandbox `plan.sandbox_of(k)`, whose namespace
    /// and address are `sandboxes[..]`; `via` the address the peer sends to (`None`: the
    /// sandbox's own).
    fn with_ranges(
        plan: Plan,
        peer_ns: String,
        guard: Guard,
        sandboxes: &[(String, Ipv4Addr)],
        via: Option<Ipv4Addr>,
    ) -> Self {
        let mut b = Built::new(plan, peer_ns, guard);
        for k in 0..plan.ranges {
            let (ns, addr) = &sandboxes[plan.sandbox_of(k)];
            b.push_range(
                ns.clone(),
                SocketAddr::from((via.unwrap_or(*addr), range_port(k))),
                k,
            );
        }
        b
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Stops a private OVS of an earlier build (or run) and removes its directory.
fn stop_ovs(dir: &Path) {
    ovs::stop(dir, &ovs::DAEMONS);
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_portiso_rows_on_the_same_ports_share_a_node() {
        assert!(System::Portiso.shares_node_with(System::PortisoFastpath));
        assert!(System::PortisoFastpath.shares_node_with(System::Portiso));
        assert!(!System::Portiso.shares_node_with(System::PortisoAfxdpNonpmd));
        assert!(!System::Portiso.shares_node_with(System::Portiso));
        assert!(!System::PlainOvs.shares_node_with(System::Portiso));
        assert!(!System::RawVeth.shares_node_with(System::LinuxNat));
    }

    #[test]
    fn plans_keep_to_the_address_plan_and_say_so() {
        let p = System::LinuxNat.plan(1000);
        assert_eq!((p.sandboxes, p.ranges), (MAX_ADDRESSES, 1000));
        assert_eq!(p.note().unwrap(), "measured at 240, 1000 rule sets");
        assert_eq!(p.sandbox_of(MAX_ADDRESSES + 3), 3);
        let p = System::PlainOvs.plan(1000);
        assert_eq!((p.sandboxes, p.ranges), (MAX_ADDRESSES, MAX_ADDRESSES));
        assert_eq!(p.note().unwrap(), "measured at 240");
        let p = System::Portiso.plan(1000);
        assert_eq!((p.sandboxes, p.ranges, p.note()), (1000, 1000, None));
        assert_eq!(System::OvsCtNat.plan(100).note(), None);
    }

    #[test]
    fn port_ranges_stay_clear_of_the_reserved_and_ephemeral_ports() {
        // The next sandbox of the largest portiso build, and the flow-update range.
        let (_, last) = range_span(MAX_PORTISO);
        assert!(last < UPDATE_PORT && UPDATE_PORT + RANGE_PORTS < 32768);
        assert!(range_port(0) >= 10000);
    }
}
