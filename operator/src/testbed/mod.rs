//! A throwaway portiso node in network namespaces, for the demo and the tests.
//!
//! ```text
//!   <name>-out (remote peer)          <name>-node (the "host")                 <name>-<sandbox>
//!   eth1 198.51.100.7/24 ── veth ──  up1 ─┐                                     eth0 198.51.100.1/24
//!   eth2 203.0.113.7/24  ── veth ──  up2 ─┤ OVS (private ovsdb + vswitchd) ── pi… (shared MAC)
//!                                         └ br-up1 198.51.100.1/24, br-up2 203.0.113.1/24
//! ```
//! The node namespace runs its own ovsdb-server and ovs-vswitchd (OVS_RUNDIR points the tools
//! at them) and the real `portiso agent`; sandboxes are attached by running the real
//! `portiso-cni` binary as a CNI runtime would. Nothing outside these namespaces is touched;
//! everything is removed on drop, and leftovers of an earlier run with the same name are
//! removed first.

pub mod craft;
pub mod kube;
pub mod netns;
pub mod ovs;

use crate::exec::{run, ExecError};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One uplink of the test node and the peer's address behind it.
#[derive(Debug, Clone)]
pub struct TestUplink {
    /// The NIC in the node namespace (also the uplink's name in the agent config).
    pub name: String,
    pub bridge: String,
    pub shared: Ipv4Addr,
    pub peer: Ipv4Addr,
}

impl TestUplink {
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.shared, port))
    }
}

/// Where a probe landed, and whether the answer made it back to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub landed: Vec<String>,
    pub answered: bool,
}

pub struct Testbed {
    pub name: String,
    pub dir: PathBuf,
    pub node: String,
    pub outside: String,
    pub uplinks: Vec<TestUplink>,
    pub portiso_bin: PathBuf,
    pub cni_bin: PathBuf,
    /// The agent config's `datapath:` value, if any: from [`DATAPATH_ENV`] unless a test sets
    /// it before starting the agent.
    pub datapath: Option<String>,
    /// More lines for the agent config (e.g. `sandboxEgressLimit: ...`), set before starting it.
    pub extra_config: String,
    agent: Option<Child>,
    sandboxes: Vec<String>,
}

/// The uplinks every testbed gets: two, so that multi-homing is always there to test.
fn default_uplinks() -> Vec<TestUplink> {
    vec![
        TestUplink {
            name: "up1".into(),
            bridge: "br-up1".into(),
            shared: Ipv4Addr::new(198, 51, 100, 1),
            peer: Ipv4Addr::new(198, 51, 100, 7),
        },
        TestUplink {
            name: "up2".into(),
            bridge: "br-up2".into(),
            shared: Ipv4Addr::new(203, 0, 113, 1),
            peer: Ipv4Addr::new(203, 0, 113, 7),
        },
    ]
}

/// Set to a `datapath:` value (e.g. `{type: netdev, userspacePorts: afxdp-nonpmd, fastPath: off}`)
/// to run every testbed's agent with it, so that whole test files can be re-run per port type.
pub const DATAPATH_ENV: &str = "PORTISO_TESTBED_DATAPATH";

/// The ports the host keeps in every testbed.
pub const RESERVED_HOST_PORTS: &str = "0-9999";

impl Testbed {
    /// Builds the namespaces, the private OVS and the uplinks; the agent is started by
    /// [`Testbed::start_agent`]. `name` must be short (it prefixes namespace names).
    pub fn new(name: &str, portiso_bin: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("portiso-testbed-{name}"));
        let cni_bin = portiso_bin.with_file_name("portiso-cni");
        anyhow::ensure!(
            cni_bin.exists(),
            "portiso-cni not found beside {}: build the workspace first",
            portiso_bin.display()
        );
        let tb = Testbed {
            name: name.into(),
            node: format!("{name}-node"),
            outside: format!("{name}-out"),
            uplinks: default_uplinks(),
            portiso_bin: portiso_bin.into(),
            cni_bin,
            datapath: std::env::var(DATAPATH_ENV)
                .ok()
                .filter(|d| !d.trim().is_empty()),
            extra_config: String::new(),
            dir,
            agent: None,
            sandboxes: Vec::new(),
        };
        tb.remove_leftovers();
        std::fs::create_dir_all(tb.dir.join("ranges"))?;
        tb.build()?;
        Ok(tb)
    }

    fn build(&self) -> anyhow::Result<()> {
        let bpf = self.bpf_dir();
        std::fs::create_dir_all(&bpf)?;
        run("mount", &["-t", "bpf", "bpf", &bpf.display().to_string()])?;
        run("ip", &["netns", "add", &self.node])?;
        run("ip", &["netns", "add", &self.outside])?;
        self.start_ovs()?;
        for u in &self.uplinks {
            let peer_if = u.name.replace("up", "eth");
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &u.name,
                    "netns",
                    &self.node,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &peer_if,
                    "netns",
                    &self.outside,
                ],
            )?;
            // The node's address starts on its NIC, as on a real machine; the agent moves it.
            self.node_cmd(
                "ip",
                &["addr", "add", &format!("{}/24", u.shared), "dev", &u.name],
            )?;
            self.node_cmd("ip", &["link", "set", &u.name, "up"])?;
            self.out_cmd(
                "ip",
                &["addr", "add", &format!("{}/24", u.peer), "dev", &peer_if],
            )?;
            self.out_cmd("ip", &["link", "set", &peer_if, "up"])?;
            // The peer's checksums must be real too (the userspace datapath does not fill them).
            self.out_cmd("ethtool", &["-K", &peer_if, "tx", "off"])?;
        }
        self.node_cmd("ip", &["link", "set", "lo", "up"])?;
        self.out_cmd("ip", &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn ovs_env(&self) -> Vec<(&'static str, String)> {
        ovs::env(&self.dir)
    }

    /// Runs a command in the node namespace with the private OVS in its environment.
    pub fn node_cmd(&self, program: &str, args: &[&str]) -> Result<String, ExecError> {
        ovs::cmd(&self.node, &self.dir, program, args)
    }

    pub fn out_cmd(&self, program: &str, args: &[&str]) -> Result<String, ExecError> {
        let mut argv = vec!["netns", "exec", self.outside.as_str(), program];
        argv.extend_from_slice(args);
        run("ip", &argv)
    }

    fn start_ovs(&self) -> anyhow::Result<()> {
        ovs::start(&self.node, &self.dir)
    }

    /// The agent config this testbed runs with.
    pub fn agent_config(&self) -> String {
        let mut y = String::from("uplinks:\n");
        for u in &self.uplinks {
            y += &format!(
                "  - name: {}\n    bridge: {}\n    address: {}/24\n    gateway: {}\n",
                u.name, u.bridge, u.shared, u.peer
            );
        }
        y += &format!(
            "reservedHostPorts: [\"{RESERVED_HOST_PORTS}\"]\nrangesDir: {}\nsocket: {}\ngcGraceSeconds: 2\n",
            self.dir.join("ranges").display(),
            self.socket().display()
        );
        y += &format!("datapath: {}\n", self.datapath_yaml());
        y += &self.extra_config;
        y
    }

    /// The `datapath:` section: the chosen one, with the fast path's pins in this testbed's
    /// own bpffs (so that testbeds never share maps and a restarted agent finds its pins).
    fn datapath_yaml(&self) -> String {
        let bpf = format!("bpfDir: {}", self.bpf_dir().display());
        match self.datapath.as_deref().map(str::trim) {
            None => format!("{{{bpf}}}"),
            Some(d) if d.starts_with('{') => {
                let inner = d.trim_start_matches('{').trim_end_matches('}').trim();
                if inner.is_empty() {
                    format!("{{{bpf}}}")
                } else if inner.contains("bpfDir") {
                    format!("{{{inner}}}")
                } else {
                    format!("{{{inner}, {bpf}}}")
                }
            }
            Some(d) => format!("{{type: {d}, {bpf}}}"),
        }
    }

    /// A bpffs of the testbed's own (mounted by `build`).
    pub fn bpf_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// Starts `portiso agent` in the node namespace and waits (bounded) until it answers.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        self.start_agent_with(&[], &[])
    }

    /// Starts the agent with extra arguments and environment (e.g. cluster mode).
    pub fn start_agent_with(&mut self, args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<()> {
        let config = self.dir.join("agent.yaml");
        std::fs::write(&config, self.agent_config())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node])
            .arg(&self.portiso_bin)
            .args(["agent", "--config"])
            .arg(&config)
            .args(args)
            .envs(self.ovs_env())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn()?;
        // Recorded so that a later run can stop an agent this run left behind (killed test).
        std::fs::write(self.dir.join("agent.pid"), child.id().to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = portiso_agent_api::call(
                &self.socket(),
                &portiso_agent_api::Request::Status {
                    uplink: self.uplinks[0].name.clone(),
                },
                Duration::from_secs(2),
            );
            if matches!(status, Ok(portiso_agent_api::Response::Done)) {
                break;
            }
            if let Some(exit) = child.try_wait()? {
                anyhow::bail!(
                    "portiso agent exited ({exit}); its log:\n{}",
                    self.agent_log()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "portiso agent did not answer within 20 s; its log:\n{}",
                    self.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.agent = Some(child);
        Ok(())
    }

    /// Kills the agent (SIGKILL): its flows and ports stay in OVS.
    /// Stops one OVS daemon of the node (`ovs-vswitchd` or `ovsdb-server`) and starts it
    /// again, as a crash and its supervisor would.
    pub fn restart_ovs_daemon(&self, name: &str) -> anyhow::Result<()> {
        ovs::stop(&self.dir, &[name]);
        ovs::start_daemon(&self.node, &self.dir, name)
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Writes a PortRange file into rangesDir.
    pub fn write_ranges(&self, file: &str, yaml: &str) -> std::io::Result<()> {
        let path = self.dir.join("ranges").join(file);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(tmp, path)
    }

    /// The netns name of a sandbox.
    pub fn sandbox_ns(&self, sandbox: &str) -> String {
        format!("{}-{sandbox}", self.name)
    }

    /// Creates an (empty) network namespace for a sandbox.
    /// Whether the sandbox's namespace was created (and not yet removed) by this testbed.
    pub fn has_sandbox(&self, sandbox: &str) -> bool {
        self.sandboxes.contains(&self.sandbox_ns(sandbox))
    }

    pub fn create_sandbox(&mut self, sandbox: &str) -> anyhow::Result<String> {
        let ns = self.sandbox_ns(sandbox);
        run("ip", &["netns", "add", &ns])?;
        self.sandboxes.push(ns.clone());
        Ok(ns)
    }

    /// Runs portiso-cni as a CNI runtime on the node would: in the node's network namespace,
    /// env + network config on stdin. Returns (exit success, stdout).
    pub fn cni(
        &self,
        command: &str,
        sandbox: &str,
        ifname: &str,
        uplink: &str,
        version: &str,
    ) -> anyhow::Result<(bool, String)> {
        let none = serde_json::json!({});
        let out = self
            .cni_spawn(command, sandbox, ifname, uplink, version, &none)?
            .wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Starts portiso-cni as [`Testbed::cni`] does, without waiting for it (collect it with
    /// `wait_with_output`), with the keys of `extra` added to the network config (e.g.
    /// `agentWaitSeconds`).
    pub fn cni_spawn(
        &self,
        command: &str,
        sandbox: &str,
        ifname: &str,
        uplink: &str,
        version: &str,
        extra: &serde_json::Value,
    ) -> anyhow::Result<Child> {
        use std::os::fd::AsFd;
        use std::os::unix::process::CommandExt;
        let mut conf = serde_json::json!({
            "cniVersion": version,
            "name": format!("portiso-{uplink}"),
            "type": "portiso-cni",
            "uplink": uplink,
            "agentSocket": self.socket(),
        });
        if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
            conf.extend(extra.clone());
        }
        let node_ns = std::fs::File::open(format!("/run/netns/{}", self.node))?;
        let mut cmd = Command::new(&self.cni_bin);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("ctr-{sandbox}"))
            .env(
                "CNI_NETNS",
                format!("/run/netns/{}", self.sandbox_ns(sandbox)),
            )
            .env("CNI_IFNAME", ifname)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAME={sandbox}"),
            )
            .env("CNI_PATH", self.cni_bin.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The plugin runs where a runtime runs it, in the node's network namespace (with the
        // agent and the veths: DEL removes the veth itself when the agent is down), entered
        // between fork and exec so that nothing is added to the time it takes.
        // SAFETY: setns is a plain system call, safe to make between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(node_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        Ok(child)
    }

    /// Creates a sandbox namespace and attaches it to `uplink` through the CNI plugin; fails
    /// with the plugin's error.
    pub fn attach(&mut self, sandbox: &str, uplink: &str) -> anyhow::Result<serde_json::Value> {
        if !self.has_sandbox(sandbox) {
            self.create_sandbox(sandbox)?;
        }
        let ifname = if uplink == self.uplinks[0].name {
            "eth0"
        } else {
            "eth1"
        };
        let (ok, out) = self.cni("ADD", sandbox, ifname, uplink, "1.0.0")?;
        if !ok {
            let msg = serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| {
                    let msg = v["msg"].as_str()?;
                    Some(match v["details"].as_str().filter(|d| !d.is_empty()) {
                        Some(d) => format!("{msg} ({d})"),
                        None => msg.to_string(),
                    })
                })
                .unwrap_or(out);
            anyhow::bail!(
                "{msg}\n(CNI ADD of {sandbox} on {uplink}; agent log:\n{})",
                self.agent_log()
            );
        }
        Ok(serde_json::from_str(&out)?)
    }

    /// Sends one TCP connection or UDP datagram from the peer to `port` on uplink `uplink`,
    /// with a listener in the host and in each of `sandboxes`, and reports who got it.
    pub fn probe(
        &self,
        udp: bool,
        uplink: usize,
        port: u16,
        sandboxes: &[&str],
    ) -> anyhow::Result<Probe> {
        let listen = Duration::from_secs(2);
        let mut who = vec![(
            "host".to_string(),
            netns::Listener::start(&self.node, udp, port, listen)?,
        )];
        for s in sandboxes {
            who.push((
                s.to_string(),
                netns::Listener::start(&self.sandbox_ns(s), udp, port, listen)?,
            ));
        }
        let msg = format!("to {port}");
        let to = self.uplinks[uplink].at(port);
        let echoed = if udp {
            netns::udp_send(&self.outside, to, None, &msg)
                .ok()
                .flatten()
        } else {
            netns::tcp_send(&self.outside, to, None, &msg).ok()
        };
        let mut landed = Vec::new();
        for (name, l) in who {
            if l.received()?.contains(&msg) {
                landed.push(name);
            }
        }
        Ok(Probe {
            landed,
            answered: echoed.as_deref() == Some(msg.as_str()),
        })
    }

    /// `ovs-ofctl dump-flows` of a bridge.
    pub fn dump_flows(&self, bridge: &str) -> Result<String, ExecError> {
        self.node_cmd("ovs-ofctl", &["-O", "OpenFlow14", "dump-flows", bridge])
    }

    /// Removes everything a testbed of this name may have left: processes, namespaces, files.
    fn remove_leftovers(&self) {
        ovs::stop(&self.dir, &["agent"]);
        ovs::stop(&self.dir, &ovs::DAEMONS);
        if let Ok(list) = run("ip", &["netns", "list"]) {
            let prefix = format!("{}-", self.name);
            for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if ns.starts_with(&prefix) {
                    let _ = run("ip", &["netns", "del", ns]);
                }
            }
        }
        // Unmounting the bpffs drops the fast path's pinned maps and links.
        let bpf = self.bpf_dir().display().to_string();
        for _ in 0..4 {
            if run("umount", &[&bpf]).is_err() {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.kill_agent();
        self.remove_leftovers();
    }
}
