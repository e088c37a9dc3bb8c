//! `portiso-cni` driven by a real CNI runtime: podman 4.3 with its CNI backend, against a
//! throwaway node (see `portiso::testbed`). Real containers (runc, a static busybox rootfs), real
//! packets from the remote peer. Needs root, Open vSwitch, podman, runc and busybox-static; skips
//! (and passes) only when podman is not installed.
//!
//! Podman's state (storage, run dir, libpod tmp dir, network configs) lives in a private dir
//! under the temp dir, so nothing of the machine's default podman setup is read or touched; the
//! containers and that dir are removed on drop, also when the test fails, and leftovers of an
//! earlier run are removed first.

mod common;

use common::{portrange, testbed};
use portiso::testbed::netns::{count_frames, frame, run_in};
use portiso::testbed::Testbed;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const TAG: &str = "pdpod";
/// The container that a PortRange selects (podman passes K8S_POD_NAME=<container name>).
const WEB: &str = "portiso-pod-web";
/// A container that no PortRange selects.
const STRAY: &str = "portiso-pod-stray";
const HELLO: &str = "hello-from-podman";

fn podman_installed() -> bool {
    Command::new("podman")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A private podman setup (CNI backend, portiso's conflist) and the containers it started.
/// Declare it after the [`Testbed`] so that it is dropped first: `podman rm` runs CNI DEL,
/// which needs the agent.
struct Podman {
    dir: PathBuf,
    network: String,
    names: Vec<String>,
    /// podman 4.3 lets libcni keep its result cache in /var/lib/cni (--root etc. do not move
    /// it): when this run (or an interrupted earlier one) created it, the directories are removed on
    /// drop if empty.
    cni_cache_created: bool,
}

const CNI_CACHE: &str = "/var/lib/cni";

impl Podman {
    fn new(tb: &Testbed, names: &[&str]) -> Self {
        let mut p = Podman {
            dir: std::env::temp_dir().join(format!("portiso-podman-{}", tb.name)),
            network: format!("portiso-up1-{}", tb.name),
            names: names.iter().map(|n| n.to_string()).collect(),
            cni_cache_created: !Path::new(CNI_CACHE).exists(),
        };
        // Leftovers of an earlier run: the containers first (CNI DEL reaches the new agent,
        // which does not know them and says done), then the state dir.
        if p.dir.exists() {
            // That run may have created the CNI cache too.
            p.cni_cache_created = true;
            p.write_config(tb);
            p.remove_containers();
            let _ = std::fs::remove_dir_all(&p.dir);
        }
        p.write_config(tb);
        p.build_rootfs();
        p
    }

    fn write_config(&self, tb: &Testbed) {
        let netdir = self.dir.join("networks");
        std::fs::create_dir_all(&netdir).unwrap();
        let cni_dir = tb.cni_bin.parent().expect("portiso-cni has a directory");
        std::fs::write(
            self.dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\n\n[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/usr/lib/cni\", \"{}\"]\nnetwork_config_dir = \"{}\"\n",
                cni_dir.display(),
                netdir.display()
            ),
        )
        .unwrap();
        std::fs::write(
            self.dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                self.dir.join("root").display(),
                self.dir.join("runroot").display()
            ),
        )
        .unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [{
                "type": "portiso-cni",
                "uplink": "up1",
                "agentSocket": tb.socket(),
            }],
        });
        std::fs::write(
            netdir.join(format!("{}.conflist", self.network)),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .unwrap();
    }

    /// A root filesystem with a static busybox and the directories podman mounts onto.
    fn build_rootfs(&self) {
        let root = self.rootfs();
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("copy /bin/busybox (package busybox-static)");
        for applet in ["sh", "nc", "sleep", "cat", "echo", "ip", "ifconfig", "ls"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Runs podman with the private config and state.
    fn cmd(&self, args: &[&str]) -> Output {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .args(["--root", &d("root"), "--runroot", &d("runroot")])
            .args(["--tmpdir", &d("tmp"), "--storage-driver", "vfs"])
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none"])
            .args(["--network-config-dir", &d("networks")])
            .args(args)
            .output()
            .expect("podman starts")
    }

    /// Runs podman and returns its stdout; panics with its stderr if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run -d` of a busybox container named `name` running `sh -c script`.
    fn run(&self, name: &str, script: &str) -> Output {
        let rootfs = self.rootfs().display().to_string();
        self.cmd(&[
            "run",
            "-d",
            "--name",
            name,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            &self.network,
            "--rootfs",
            &rootfs,
            "/bin/sh",
            "-c",
            script,
        ])
    }

    /// The container's network namespace path (/run/netns/cni-…).
    fn netns_path(&self, name: &str) -> String {
        self.ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name])
            .trim()
            .to_string()
    }

    fn remove(&self, name: &str) -> Output {
        self.cmd(&["rm", "-f", "-t", "0", name])
    }

    fn remove_containers(&self) {
        for n in &self.names {
            let _ = self.remove(n);
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let mut left = Vec::new();
        for n in &self.names {
            let out = self.cmd(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", n]);
            if out.status.success() {
                left.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
        }
        self.remove_containers();
        // Should podman have left a namespace behind, do not leave it on the machine.
        for path in left.iter().filter(|p| !p.is_empty()) {
            if let Some(ns) = path.strip_prefix("/run/netns/") {
                if Path::new(path).exists() {
                    let _ = portiso::exec::run("ip", &["netns", "del", ns]);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.cni_cache_created {
            // remove_dir only removes empty directories: a result left there stays.
            let _ = std::fs::remove_dir(Path::new(CNI_CACHE).join("results"));
            let _ = std::fs::remove_dir(CNI_CACHE);
        }
    }
}

/// Connects from the peer to `to` and returns what the server sends (without sending
/// anything), retrying for up to `within` while the container's server is starting.
fn read_from(ns: &str, to: SocketAddr, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = run_in(ns, move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .and_then(|r| r);
        match got {
            Ok(text) if !text.is_empty() => return text,
            other if Instant::now() > deadline => {
                panic!("no answer from {to} within {within:?}: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn sandbox_ports(tb: &Testbed) -> Vec<String> {
    tb.node_cmd("ovs-vsctl", &["list-ports", "br-up1"])
        .unwrap()
        .lines()
        .filter(|p| p.starts_with("pi"))
        .map(str::to_string)
        .collect()
}

#[test]
fn podman_containers_get_their_ports_through_portiso_cni_and_lose_them_on_removal() {
    if !podman_installed() {
        eprintln!("SKIPPED: podman is not installed (apt-get install podman runc containernetworking-plugins busybox-static)");
        return;
    }
    let ranges = portrange("podweb", WEB, &[("TCP", 10000, 10099)], &["up1"]);
    let tb = testbed(TAG, &ranges);
    let podman = Podman::new(&tb, &[WEB, STRAY]);
    let shared_mac = tb
        .node_cmd("cat", &["/sys/class/net/up1/address"])
        .unwrap()
        .trim()
        .to_string();
    let up1 = &tb.uplinks[0];

    // A container serving HELLO on 10000 (in its range) and something else on 10100 (not in
    // its range): a connection to 10100 must never reach it.
    let out = podman.run(
        WEB,
        &format!(
            "nc -ll -p 10000 -e /bin/echo {HELLO} & exec nc -ll -p 10100 -e /bin/echo wrong-port-in-container"
        ),
    );
    assert!(
        out.status.success(),
        "podman run {WEB} failed ({}): {}\nagent log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tb.agent_log()
    );
    let netns = podman.netns_path(WEB);
    let ns = netns
        .strip_prefix("/run/netns/")
        .unwrap_or_else(|| panic!("podman's netns {netns:?} is not under /run/netns"))
        .to_string();
    eprintln!("container {WEB} runs in {netns}");

    // Its interface has the node's shared MAC and address, and podman saw the CNI result.
    let link = portiso::exec::run("ip", &["-n", &ns, "-o", "link", "show", "eth0"]).unwrap();
    assert!(
        link.contains(&format!("link/ether {shared_mac} ")),
        "eth0 in the container has the shared MAC {shared_mac}: {link}"
    );
    let addr = portiso::exec::run("ip", &["-n", &ns, "-o", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(
        addr.contains(&format!("inet {}/24 ", up1.shared)),
        "eth0 in the container has the shared address {}: {addr}",
        up1.shared
    );
    let inspect = podman.ok(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", WEB]);
    let nets: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let net = &nets[&podman.network];
    assert_eq!(
        net["IPAddress"],
        up1.shared.to_string(),
        "podman inspect: {inspect}"
    );
    assert_eq!(
        net["MacAddress"],
        shared_mac.as_str(),
        "podman inspect: {inspect}"
    );
    let ports = sandbox_ports(&tb);
    assert_eq!(ports.len(), 1, "one sandbox port on br-up1: {ports:?}");

    // The peer reaches the container on a port of its range, and the answer comes back.
    let seen = count_frames(&ns, Duration::from_secs(4), frame::to_sandbox_ports).unwrap();
    let got = read_from(&tb.outside, up1.at(10000), Duration::from_secs(15));
    assert_eq!(got.trim(), HELLO, "the container answers on 10000");
    assert!(
        seen.join().unwrap().unwrap() >= 1,
        "the connection to 10000 arrived in the container's namespace"
    );

    // A port outside its range lands on the host, and not a frame of it reaches the container,
    // although the container listens there.
    let seen = count_frames(&ns, Duration::from_secs(4), frame::to_sandbox_ports).unwrap();
    let p = tb.probe(false, 0, 10100, &[]).unwrap();
    assert_eq!(p.landed, ["host"], "10100 lands on the host: {p:?}");
    assert!(
        p.answered,
        "the host's answer on 10100 reaches the peer: {p:?}"
    );
    assert_eq!(
        seen.join().unwrap().unwrap(),
        0,
        "no frame to 10100 arrives in the container"
    );

    // A container that no PortRange selects is refused with portiso's explanation, and
    // nothing is attached for it.
    let out = podman.run(STRAY, "exec sleep 600");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "podman run {STRAY} must fail");
    eprintln!("podman run {STRAY}: {}", stderr.trim());
    assert!(
        stderr.contains("no accepted PortRange selects sandbox"),
        "podman reports portiso's refusal: {stderr}"
    );
    assert!(
        stderr.contains(STRAY),
        "the refusal names the sandbox: {stderr}"
    );
    assert_eq!(sandbox_ports(&tb), ports, "no port is added for {STRAY}");
    let rm = podman.remove(STRAY);
    assert!(
        rm.status.success(),
        "podman rm {STRAY}: {}",
        String::from_utf8_lossy(&rm.stderr)
    );

    // Removing the container runs CNI DEL: the agent removes its port, its namespace is gone,
    // and 10000 lands on the host again.
    let rm = podman.remove(WEB);
    assert!(
        rm.status.success(),
        "podman rm {WEB}: {}",
        String::from_utf8_lossy(&rm.stderr)
    );
    let log = tb.agent_log();
    assert!(
        log.lines()
            .any(|l| l.contains("sandbox detached") && l.contains(WEB) && l.contains(&ports[0])),
        "CNI DEL reached the agent, which detached {WEB}:\n{log}"
    );
    let cached: Vec<_> = std::fs::read_dir(Path::new(CNI_CACHE).join("results"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(&podman.network))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        cached.is_empty(),
        "libcni dropped its cached results: {cached:?}"
    );
    let left = sandbox_ports(&tb);
    assert!(
        left.is_empty(),
        "the agent removed the container's port {ports:?}: {left:?}\nagent log:\n{}",
        tb.agent_log()
    );
    assert!(
        !Path::new(&netns).exists(),
        "podman removed the container's namespace {netns}"
    );
    let p = tb.probe(false, 0, 10000, &[]).unwrap();
    assert_eq!(
        p.landed,
        ["host"],
        "10000 lands on the host after removal: {p:?}"
    );
    assert!(p.answered, "{p:?}");
    let ps = podman.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(ps.trim().is_empty(), "no containers left: {ps}");
}
