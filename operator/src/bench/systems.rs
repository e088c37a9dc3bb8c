//! The dataplanes `portiso bench` compares, each built in namespaces of its own with
//! documentation addresses only, and removed on drop (also when building fails half-way).
//!
//! ```text
//! raw veth    pbv-peer 198.51.100.7 ── veth ── pbv-sI 198.51.100.(10+I)          (one pair per sandbox)
//! plain OVS   pbo-peer 198.51.100.7 ── veth ── pbo-sw [OVS br0 NORMAL] ── veth ── pbo-sI 198.51.100.(10+I)
//! Linux DNAT  pbn-peer 198.51.100.7 ── veth ── pbn-node 198.51.100.1, iptables DNAT per port range,
//!                                               Linux bridge br0 203.0.113.1 ── veth ── pbn-sI 203.0.113.(10+I)
//! portiso     the Testbed (pbp-*): real agent, real CNI plugin, sandboxes share 198.51.100.1
//! ```
//! Sandbox `I` serves TCP and UDP on port `10000 + 100·I` (its range is `10000+100·I ..+99`).

use crate::exec::{run, run_with_stdin, ExecError};
use crate::testbed::ovs;
use crate::testbed::Testbed;
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
    /// portiso: the real agent and CNI plugin, sandboxes sharing the node's address.
    Portiso,
}

impl System {
    pub const ALL: [System; 4] = [
        System::RawVeth,
        System::PlainOvs,
        System::LinuxNat,
        System::Portiso,
    ];

    pub fn label(self) -> &'static str {
        match self {
            System::RawVeth => "raw veth",
            System::PlainOvs => "plain OVS",
            System::LinuxNat => "Linux DNAT",
            System::Portiso => "portiso",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            System::RawVeth => "raw-veth",
            System::PlainOvs => "plain-ovs",
            System::LinuxNat => "linux-nat",
            System::Portiso => "portiso",
        }
    }
}

/// The most sandboxes one system holds in this cut (addresses 198.51.100.10-253).
pub const MAX_SANDBOXES: usize = 240;

/// The port sandbox `i` serves on.
pub fn sandbox_port(i: usize) -> u16 {
    10000 + 100 * i as u16
}

/// One system, built and ready for traffic.
pub struct Built {
    pub peer_ns: String,
    /// Where the peer sends to, one per sandbox.
    pub targets: Vec<SocketAddr>,
    /// Where the servers listen: (namespace, port), one per sandbox.
    pub servers_at: Vec<(String, u16)>,
    /// Wall time of each sandbox's CNI ADD (portiso only).
    pub attach_ms: Vec<f64>,
    /// The agent's resident memory with every sandbox attached (portiso only).
    pub agent_rss_kib: Option<u64>,
    pub setup: Duration,
    /// Removes everything on drop.
    _guard: Guard,
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
    /// Called with (done, total) while sandboxes are attached.
    pub progress: fn(&str, usize, usize),
}

pub fn build(system: System, o: &BuildOptions) -> anyhow::Result<Built> {
    anyhow::ensure!(
        (1..=MAX_SANDBOXES).contains(&o.sandboxes),
        "1 to {MAX_SANDBOXES} sandboxes per system in this version, not {}",
        o.sandboxes
    );
    let start = Instant::now();
    let mut b = match system {
        System::RawVeth => raw_veth(o),
        System::PlainOvs => plain_ovs(o),
        System::LinuxNat => linux_nat(o),
        System::Portiso => portiso(o),
    }?;
    b.setup = start.elapsed();
    Ok(b)
}

/// The datapath OVS uses here: the one the agent would choose.
pub fn ovs_datapath() -> &'static str {
    crate::agent::choose_datapath(crate::config::DatapathChoice::Auto)
}

/// Namespaces (and a private OVS) of one system, removed on drop; leftovers of an earlier
/// run with the same prefix are removed first.
struct Namespaces {
    prefix: String,
    ovs_dir: Option<PathBuf>,
}

impl Namespaces {
    fn new(prefix: &str) -> Self {
        let n = Namespaces {
            prefix: prefix.into(),
            ovs_dir: None,
        };
        n.remove();
        n
    }

    fn add(&self, name: &str) -> Result<String, ExecError> {
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

fn ip(ns: &str, args: &[&str]) -> Result<String, ExecError> {
    let mut argv = vec!["-n", ns];
    argv.extend_from_slice(args);
    run("ip", &argv)
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, ExecError> {
    let mut argv = vec!["netns", "exec", ns, program];
    argv.extend_from_slice(args);
    run("ip", &argv)
}

/// A veth pair with one end in each namespace, both up, optionally without TX checksum offload.
fn veth(a_ns: &str, a: &str, b_ns: &str, b: &str, offload_off: bool) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
        ],
    )?;
    for (ns, ifname) in [(a_ns, a), (b_ns, b)] {
        if offload_off {
            in_ns(ns, "ethtool", &["-K", ifname, "tx", "off"])?;
        }
        ip(ns, &["link", "set", "dev", ifname, "up"])?;
    }
    Ok(())
}

fn sandbox_ip(net: [u8; 3], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(net[0], net[1], net[2], 10 + i as u8)
}

const DOC1: [u8; 3] = [198, 51, 100];
const DOC2: [u8; 3] = [203, 0, 113];
const PEER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

fn raw_veth(o: &BuildOptions) -> anyhow::Result<Built> {
    let g = Namespaces::new("pbv");
    let peer = g.add("peer")?;
    ip(&peer, &["addr", "add", &format!("{PEER}/32"), "dev", "lo"])?;
    let mut sandboxes = Vec::new();
    for i in 0..o.sandboxes {
        let ns = g.add(&format!("s{i}"))?;
        let addr = sandbox_ip(DOC1, i);
        let v = format!("v{i}");
        veth(&peer, &v, &ns, "eth0", o.offloads_off_everywhere)?;
        ip(&ns, &["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        ip(&ns, &["route", "add", &format!("{PEER}/32"), "dev", "eth0"])?;
        ip(
            &peer,
            &[
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                &v,
                "src",
                &PEER.to_string(),
            ],
        )?;
        sandboxes.push((ns, SocketAddr::from((addr, sandbox_port(i))), i));
        (o.progress)("wiring", i + 1, o.sandboxes);
    }
    Ok(Built::with(peer, Guard::Namespaces(g), sandboxes))
}

fn plain_ovs(o: &BuildOptions) -> anyhow::Result<Built> {
    let mut g = Namespaces::new("pbo");
    let dir = std::env::temp_dir().join("portiso-bench-ovs");
    stop_ovs(&dir);
    std::fs::create_dir_all(&dir)?;
    g.ovs_dir = Some(dir.clone());
    let sw = g.add("sw")?;
    let peer = g.add("peer")?;
    ovs::start(&sw, &dir)?;
    let datapath = ovs_datapath();
    let netdev = datapath == "netdev";
    let vsctl = |args: &[&str]| ovs::cmd(&sw, &dir, "ovs-vsctl", args);
    vsctl(&[
        "add-br",
        "br0",
        "--",
        "set",
        "bridge",
        "br0",
        &format!("datapath_type={datapath}"),
    ])?;
    let off = netdev || o.offloads_off_everywhere;
    veth(&peer, "eth1", &sw, "uplink", off)?;
    ip(
        &peer,
        &["addr", "add", &format!("{PEER}/24"), "dev", "eth1"],
    )?;
    let mut ports = vec!["uplink".to_string()];
    let mut sandboxes = Vec::new();
    for i in 0..o.sandboxes {
        let ns = g.add(&format!("s{i}"))?;
        let addr = sandbox_ip(DOC1, i);
        let port = format!("s{i}");
        veth(&sw, &port, &ns, "eth0", off)?;
        ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ports.push(port);
        sandboxes.push((ns, SocketAddr::from((addr, sandbox_port(i))), i));
        (o.progress)("wiring", i + 1, o.sandboxes);
    }
    // As the agent does on the userspace datapath: OVS reads the ports through packet
    // sockets, and this namespace's IP stack must not process the frames a second time.
    if netdev {
        for p in &ports {
            crate::link::isolate_from_host_stack_in(&format!("/run/netns/{sw}"), p)?;
        }
    }
    for chunk in ports.chunks(50) {
        let mut args: Vec<&str> = Vec::new();
        for p in chunk {
            args.extend(["--", "add-port", "br0", p.as_str()]);
        }
        vsctl(&args[1..])?;
    }
    Ok(Built::with(peer, Guard::Namespaces(g), sandboxes))
}

fn linux_nat(o: &BuildOptions) -> anyhow::Result<Built> {
    let g = Namespaces::new("pbn");
    let node = g.add("node")?;
    let peer = g.add("peer")?;
    let off = o.offloads_off_everywhere;
    veth(&peer, "eth1", &node, "up1", off)?;
    ip(
        &peer,
        &["addr", "add", &format!("{PEER}/24"), "dev", "eth1"],
    )?;
    ip(&node, &["addr", "add", &format!("{NODE}/24"), "dev", "up1"])?;
    ip(&node, &["link", "add", "br0", "type", "bridge"])?;
    let gw = Ipv4Addr::new(203, 0, 113, 1);
    ip(&node, &["addr", "add", &format!("{gw}/24"), "dev", "br0"])?;
    ip(&node, &["link", "set", "br0", "up"])?;
    in_ns(&node, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
    let mut rules = String::from("*nat\n");
    let mut sandboxes = Vec::new();
    for i in 0..o.sandboxes {
        let ns = g.add(&format!("s{i}"))?;
        let addr = sandbox_ip(DOC2, i);
        let port = format!("s{i}");
        veth(&node, &port, &ns, "eth0", off)?;
        ip(&node, &["link", "set", &port, "master", "br0"])?;
        ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(&ns, &["route", "add", "default", "via", &gw.to_string()])?;
        let (lo, hi) = (sandbox_port(i), sandbox_port(i) + 99);
        for proto in ["tcp", "udp"] {
            rules += &format!(
                "-A PREROUTING -p {proto} -d {NODE} --dport {lo}:{hi} -j DNAT --to-destination {addr}\n"
            );
        }
        sandboxes.push((ns, SocketAddr::from((NODE, sandbox_port(i))), i));
        (o.progress)("wiring", i + 1, o.sandboxes);
    }
    rules += "COMMIT\n";
    run_with_stdin(
        "ip",
        &["netns", "exec", &node, "iptables-restore", "--noflush"],
        &rules,
    )?;
    Ok(Built::with(peer, Guard::Namespaces(g), sandboxes))
}

fn portiso(o: &BuildOptions) -> anyhow::Result<Built> {
    let mut tb = Testbed::new("pbp", &o.portiso_bin)?;
    let mut ranges = String::new();
    for i in 0..o.sandboxes {
        let (lo, hi) = (sandbox_port(i), sandbox_port(i) + 99);
        ranges += &format!(
            "---\napiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {{name: s{i}}}\nspec:\n  selector: {{matchLabels: {{portiso.io/sandbox: s{i}}}}}\n  ports:\n    - {{protocol: TCP, start: {lo}, end: {hi}}}\n    - {{protocol: UDP, start: {lo}, end: {hi}}}\n  uplinks: [up1]\n"
        );
    }
    tb.write_ranges("bench.yaml", &ranges)?;
    tb.start_agent()?;
    let mut attach_ms = Vec::with_capacity(o.sandboxes);
    let mut sandboxes = Vec::with_capacity(o.sandboxes);
    for i in 0..o.sandboxes {
        let name = format!("s{i}");
        tb.create_sandbox(&name)?;
        let t0 = Instant::now();
        tb.attach(&name, "up1")?;
        attach_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        sandboxes.push((tb.sandbox_ns(&name), i));
        (o.progress)("attaching", i + 1, o.sandboxes);
    }
    let rss = std::fs::read_to_string(tb.dir.join("agent.pid"))
        .ok()
        .and_then(|p| rss_kib(p.trim()));
    let peer = tb.outside.clone();
    let shared = tb.uplinks[0].shared;
    let mut b = Built::new(peer, Guard::Testbed(Box::new(tb)));
    for (ns, i) in sandboxes {
        b.push_sandbox(ns, SocketAddr::from((shared, sandbox_port(i))), i);
    }
    b.attach_ms = attach_ms;
    b.agent_rss_kib = rss;
    Ok(b)
}

impl Built {
    fn new(peer_ns: String, guard: Guard) -> Self {
        Built {
            peer_ns,
            targets: Vec::new(),
            servers_at: Vec::new(),
            attach_ms: Vec::new(),
            agent_rss_kib: None,
            setup: Duration::ZERO,
            _guard: guard,
        }
    }

    fn push_sandbox(&mut self, ns: String, target: SocketAddr, i: usize) {
        self.targets.push(target);
        self.servers_at.push((ns, sandbox_port(i)));
    }

    fn with(peer_ns: String, guard: Guard, sandboxes: Vec<(String, SocketAddr, usize)>) -> Self {
        let mut b = Built::new(peer_ns, guard);
        for (ns, target, i) in sandboxes {
            b.push_sandbox(ns, target, i);
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
