//! A real virtual machine as a portiso sandbox, wired the way KubeVirt's bridge binding wires
//! a VM into its pod, proven with real packets: what the peer sends to the VM's ports reaches
//! the guest's own kernel, and nothing else does.
//!
//! ```text
//!  vmkvm-out (peer)        vmkvm-node (OVS + agent)      vmkvm-vm1 (the "virt-launcher" netns)
//!  eth1 198.51.100.7 ──── up1 ─ br-up1 ─ pi… ════ eth0 (no IP, random MAC) ─┐
//!                                                           k6t-eth0 bridge ├─ tap0 ── qemu
//!                                          udhcpd on k6t-eth0 (169.254.75.10)┘   guest eth0:
//!                                                                 shared IP + shared MAC (DHCP)
//! ```
//!
//! The guest is Debian's own kernel with a busybox initramfs (`e2e/guest-image.sh`, cached in
//! /var/cache/portiso/guest/); qemu runs it with KVM when the host's KVM runs ordinary guest
//! kernels natively, else with TCG (see [`accelerator`]), so that the test never skips.
//! Needs root, Open vSwitch, qemu-system-x86 and the rest of `scripts/install-deps.sh`.

mod common;

use common::{portrange, testbed};
use portiso::exec::run;
use portiso::testbed::netns::{count_frames, spawn_in, tcp_send, udp_send};
use portiso::testbed::Testbed;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TAG: &str = "vmkvm";
const SANDBOX: &str = "vm1";
/// The VM's PortRange (TCP and UDP); the guest's own ip_local_port_range lies in it too.
const FIRST: u16 = 10000;
const LAST: u16 = 10099;
/// The guest's services (portiso-guest in the initramfs).
const GUEST_TCP: u16 = 10000;
const GUEST_UDP: u16 = 10001;
/// Outside the VM's range and outside the host's reserved ports: belongs to the host.
const HOST_PORT: u16 = 10200;
/// The peer's port the guest connects to at boot (an outbound client of the guest).
const HELLO_PORT: u16 = 7000;
/// Names as virt-launcher gives them.
const BRIDGE: &str = "k6t-eth0";
const TAP: &str = "tap0";
/// udhcpd needs an address on the interface it serves; KubeVirt puts the same kind of
/// link-local /32 on its bridge for its own DHCP server. It is never routed anywhere.
const DHCP_SERVER_ADDR: &str = "169.254.75.10/32";

/// The directory of this test's own files (qemu's serial log, udhcpd's config, pid files);
/// the testbed's directory is removed by `Testbed::new`, so these live beside it.
fn vm_dir() -> PathBuf {
    std::env::temp_dir().join(format!("portiso-vm-{TAG}"))
}

/// Builds (once; then cached) the guest kernel and initramfs and returns their directory.
fn guest_image() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/guest-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run e2e/guest-image.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "e2e/guest-image.sh failed ({}): {stdout}",
        out.status
    );
    let dir = PathBuf::from(stdout.lines().last().expect("image directory").trim());
    for f in ["vmlinuz", "initramfs.gz", "kernel-release"] {
        assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
    }
    dir
}

/// qemu's accelerator and how long the guest may take to boot with it.
struct Accel {
    args: &'static [&'static str],
    boot_bound: Duration,
    why: String,
}

/// KVM when /dev/kvm can run this guest natively, else TCG (slower, never absent).
/// `PORTISO_VM_ACCEL=kvm|tcg` forces one.
///
/// Some cloud VMs offer /dev/kvm through PVM (module kvm_pvm, no VMX/SVM underneath): it runs
/// only guest kernels built for PVM at native speed and emulates ordinary ones, such as
/// Debian's, instruction by instruction. Measured on such a machine: still in early boot
/// after minutes, where TCG reaches the services in ~20 s. So PVM counts as "no usable KVM".
fn accelerator() -> Accel {
    let kvm = Accel {
        args: &["-accel", "kvm"],
        boot_bound: Duration::from_secs(60),
        why: String::new(),
    };
    let tcg = Accel {
        args: &["-accel", "tcg", "-cpu", "max"],
        boot_bound: Duration::from_secs(240),
        why: String::new(),
    };
    let with = |a: Accel, why: &str| Accel {
        why: why.to_string(),
        ..a
    };
    match std::env::var("PORTISO_VM_ACCEL").as_deref() {
        Ok("kvm") => return with(kvm, "forced by PORTISO_VM_ACCEL"),
        Ok("tcg") => return with(tcg, "forced by PORTISO_VM_ACCEL"),
        _ => {}
    }
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    if !opens {
        with(tcg, "/dev/kvm is absent or cannot be opened")
    } else if module("kvm_intel") || module("kvm_amd") {
        with(kvm, "/dev/kvm backed by hardware virtualization")
    } else if module("kvm_pvm") {
        with(
            tcg,
            "/dev/kvm is PVM (kvm_pvm), which emulates non-PVM guest kernels far slower than TCG",
        )
    } else {
        with(kvm, "/dev/kvm opens (backend unknown)")
    }
}

/// Stops processes a killed earlier run left (they would keep its tap and netns alive), if
/// their command line still names this test's directory (a recycled pid is left alone).
fn stop_leftovers(dir: &Path) {
    for pidfile in ["qemu.pid", "udhcpd.pid"] {
        let Some(pid) = std::fs::read_to_string(dir.join(pidfile))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// qemu and the DHCP server; both are killed on drop (also when the test fails, after the
/// serial log has been printed).
struct Vm {
    dir: PathBuf,
    dhcpd: Option<Child>,
    qemu: Option<Child>,
}

impl Vm {
    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }

    /// Waits (bounded) for a line of the guest's serial console that contains `marker`;
    /// fails early if qemu exits or the guest reports a failed step.
    fn wait_for(&mut self, marker: &str, bound: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let log = self.serial();
            if log.contains(marker) {
                return start.elapsed();
            }
            assert!(
                !log.contains("PORTISO-GUEST dhcp failed"),
                "the guest got no DHCP lease"
            );
            if let Some(exit) = self.qemu.as_mut().and_then(|q| q.try_wait().ok().flatten()) {
                panic!(
                    "qemu exited ({exit}) before {marker:?}:\n{}",
                    std::fs::read_to_string(self.dir.join("qemu.out")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < bound,
                "no {marker:?} on the guest's console within {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- guest serial console ({}) ----\n{}\n---- qemu ----\n{}\n---- udhcpd ----\n{}",
                self.dir.join("serial.log").display(),
                self.serial(),
                std::fs::read_to_string(self.dir.join("qemu.out")).unwrap_or_default(),
                std::fs::read_to_string(self.dir.join("udhcpd.out")).unwrap_or_default(),
            );
        }
        for child in [self.qemu.take(), self.dhcpd.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the CNI result says the sandbox's interface is: the node's shared address and MAC.
struct Attached {
    mac: String,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
}

fn attached(result: &serde_json::Value) -> Attached {
    let mac = result["interfaces"][0]["mac"].as_str().expect("mac").into();
    let (ip, prefix) = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split_once('/'))
        .expect("ips[0].address");
    let gateway = result["routes"]
        .as_array()
        .and_then(|r| r.iter().find_map(|r| r["gw"].as_str()))
        .or_else(|| result["ips"][0]["gateway"].as_str())
        .expect("a gateway");
    Attached {
        mac,
        ip: ip.parse().expect("ip"),
        prefix: prefix.parse().expect("prefix"),
        gateway: gateway.parse().expect("gateway"),
    }
}

/// A random locally administered unicast MAC (what virt-launcher gives the pod's eth0 once
/// the original one has moved to the VM).
fn random_mac() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let b = h.finish().to_be_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        (b[0] & 0xfc) | 0x02,
        b[1],
        b[2],
        b[3],
        b[4],
        b[5]
    )
}

fn ns_run(ns: &str, program: &str, args: &[&str]) -> String {
    let mut argv = vec!["netns", "exec", ns, program];
    argv.extend_from_slice(args);
    run("ip", &argv).unwrap_or_else(|e| panic!("in {ns}: {program} {args:?}: {e}"))
}

/// Rewires the sandbox netns as virt-launcher does for a bridge-bound interface: eth0 loses
/// its address and MAC and becomes a bridge port beside the VM's tap.
fn wire_like_kubevirt(ns: &str) {
    // IPv6 would only add router solicitations that portiso drops anyway; keep the wire quiet
    // (the absence check below counts frames).
    ns_run(
        ns,
        "sysctl",
        &[
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    );
    ns_run(ns, "ip", &["addr", "flush", "dev", "eth0"]);
    ns_run(ns, "ip", &["link", "set", "eth0", "down"]);
    ns_run(ns, "ip", &["link", "set", "eth0", "address", &random_mac()]);
    ns_run(ns, "ip", &["link", "add", BRIDGE, "type", "bridge"]);
    ns_run(ns, "ip", &["link", "set", "eth0", "master", BRIDGE]);
    ns_run(ns, "ip", &["tuntap", "add", "dev", TAP, "mode", "tap"]);
    ns_run(ns, "ip", &["link", "set", TAP, "master", BRIDGE]);
    ns_run(ns, "ip", &["addr", "add", DHCP_SERVER_ADDR, "dev", BRIDGE]);
    for dev in ["eth0", TAP, BRIDGE] {
        // The userspace OVS datapath does not fill in checksums left to offload (the
        // testbed turns it off on the peer for the same reason); what leaves must be real.
        ns_run(ns, "ethtool", &["-K", dev, "tx", "off"]);
        ns_run(ns, "ip", &["link", "set", dev, "up"]);
    }
}

/// udhcpd on the bridge, handing the guest's MAC the shared address: KubeVirt's own DHCP
/// server does the same for a bridge-bound VM.
fn start_dhcpd(ns: &str, dir: &Path, a: &Attached) -> Child {
    let mask = u32::MAX.checked_shl(32 - u32::from(a.prefix)).unwrap_or(0);
    let conf = dir.join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "interface {BRIDGE}\nstart {ip}\nend {ip}\nmax_leases 1\nstatic_lease {mac} {ip}\n\
             lease_file {leases}\npidfile {pid}\nauto_time 0\n\
             option subnet {subnet}\noption router {gw}\noption lease 86400\n",
            ip = a.ip,
            mac = a.mac,
            leases = dir.join("udhcpd.leases").display(),
            pid = dir.join("udhcpd.pid").display(),
            subnet = Ipv4Addr::from(mask),
            gw = a.gateway,
        ),
    )
    .expect("write udhcpd.conf");
    std::fs::write(dir.join("udhcpd.leases"), "").expect("lease file");
    let out = std::fs::File::create(dir.join("udhcpd.out")).expect("udhcpd.out");
    Command::new("ip")
        .args(["netns", "exec", ns, "busybox", "udhcpd", "-f"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("start udhcpd")
}

/// qemu in the sandbox netns (as virt-launcher runs it in the pod): its virtio NIC on the tap
/// carries the shared MAC, its console goes to serial.log.
fn start_qemu(ns: &str, dir: &Path, image: &Path, accel: &Accel, mac: &str) -> Child {
    let append = format!(
        "console=ttyS0 quiet panic=-1 ipv6.disable=1 portiso_ports={FIRST}-{LAST} \
         portiso_tcp={GUEST_TCP} portiso_udp={GUEST_UDP} portiso_hello={HELLO_PORT}"
    );
    let out = std::fs::File::create(dir.join("qemu.out")).expect("qemu.out");
    Command::new("ip")
        .args(["netns", "exec", ns, "qemu-system-x86_64"])
        .args(accel.args)
        .args(["-m", "256", "-smp", "1", "-nodefaults", "-display", "none"])
        .args(["-monitor", "none", "-no-reboot", "-pidfile"])
        .arg(dir.join("qemu.pid"))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("serial.log").display()))
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initramfs.gz"))
        .args(["-append", &append])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
        ])
        // csum=off: the guest computes its own checksums rather than handing partial ones
        // through the tap to a datapath that would not finish them.
        .args([
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={mac},csum=off,guest_csum=off"),
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("start qemu-system-x86_64 (package qemu-system-x86)")
}

/// A one-connection TCP server in the peer's namespace: returns the client's address and
/// what it sent, or None when nobody came within `bound`.
fn peer_accepts_one(
    ns: &str,
    port: u16,
    bound: Duration,
) -> std::thread::JoinHandle<std::io::Result<Option<(SocketAddr, String)>>> {
    let h = spawn_in(
        ns,
        move || -> std::io::Result<Option<(SocketAddr, String)>> {
            let l = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
            l.set_nonblocking(true)?;
            let deadline = Instant::now() + bound;
            while Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, from)) => {
                        s.set_nonblocking(false)?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        let mut text = String::new();
                        let _ = s.read_to_string(&mut text);
                        return Ok(Some((from, text)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        },
    );
    std::thread::spawn(move || {
        h.join()
            .map_err(|_| std::io::Error::other("peer listener panicked"))?
            .and_then(|r| r)
    })
}

/// IPv4 TCP/UDP frames to a given destination port (`count_frames` takes plain fns).
fn ipv4_dst_port(f: &[u8], port: u16) -> bool {
    if f.len() < 34 || f[12] != 0x08 || f[13] != 0x00 {
        return false;
    }
    let ip = &f[14..];
    let l4 = &ip[usize::from(ip[0] & 0x0f) * 4..];
    (ip[9] == 6 || ip[9] == 17) && l4.len() >= 4 && u16::from_be_bytes([l4[2], l4[3]]) == port
}
fn to_host_port(f: &[u8]) -> bool {
    ipv4_dst_port(f, HOST_PORT)
}
fn to_guest_tcp(f: &[u8]) -> bool {
    ipv4_dst_port(f, GUEST_TCP)
}

/// Retries `f` until it returns Some or `bound` passes (the guest's first answers wait for
/// its ARP of the peer).
fn within<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_real_vm_bridged_like_kubevirt_gets_its_ports_and_nothing_else() {
    let image = guest_image();
    let guest_release = std::fs::read_to_string(image.join("kernel-release"))
        .expect("kernel-release")
        .trim()
        .to_string();
    let accel = accelerator();
    eprintln!(
        "guest image {}, kernel {guest_release}; accelerator {} ({})",
        image.display(),
        accel.args[1],
        accel.why
    );

    let dir = vm_dir();
    stop_leftovers(&dir);
    std::fs::create_dir_all(&dir).expect("vm dir");

    let ranges = portrange(
        SANDBOX,
        SANDBOX,
        &[("TCP", FIRST, LAST), ("UDP", FIRST, LAST)],
        &[],
    );
    // Declared before the Vm: dropped after it, so qemu is gone before the netns goes.
    let mut tb: Testbed = testbed(TAG, &ranges);
    let result = tb.attach(SANDBOX, "up1").expect("CNI ADD of the VM's pod");
    let a = attached(&result);
    let up = tb.uplinks[0].clone();
    assert_eq!(
        a.ip, up.shared,
        "the pod interface carries the shared address"
    );
    let node_mac = tb
        .node_cmd("cat", &[&format!("/sys/class/net/{}/address", up.bridge)])
        .expect("node MAC");
    assert_eq!(
        a.mac,
        node_mac.trim(),
        "the pod interface carries the shared MAC"
    );
    let ns = tb.sandbox_ns(SANDBOX);

    wire_like_kubevirt(&ns);
    let mut vm = Vm {
        dir: dir.clone(),
        dhcpd: None,
        qemu: None,
    };
    vm.dhcpd = Some(start_dhcpd(&ns, &dir, &a));
    // Listening before the guest boots: it says hello once, right after its DHCP lease.
    let hello = peer_accepts_one(&tb.outside, HELLO_PORT, accel.boot_bound);
    vm.qemu = Some(start_qemu(&ns, &dir, &image, &accel, &a.mac));

    let boot = vm.wait_for("PORTISO-GUEST READY", accel.boot_bound);
    eprintln!(
        "guest booted to its services in {:.1} s with {}",
        boot.as_secs_f64(),
        accel.args[1]
    );
    let serial = vm.serial();
    for line in serial.lines().filter(|l| l.starts_with("PORTISO-GUEST")) {
        eprintln!("  console: {line}");
    }
    assert!(
        serial.contains(&format!(
            "PORTISO-GUEST lease {}/{} router {}",
            a.ip, a.prefix, a.gateway
        )),
        "DHCP gave the guest the shared address and the gateway"
    );
    assert!(
        serial.contains(&format!("ip_local_port_range {FIRST}\t{LAST}")),
        "the guest's client ports lie in its range"
    );
    // The guest's echo requests pass portiso's egress checks and the replies find it.
    assert!(
        serial.contains(&format!("PORTISO-GUEST ping {} ok", a.gateway)),
        "the guest pings the peer"
    );

    // An outbound connection of the guest reached the peer, from a port of the guest's range.
    let (from, text) = hello
        .join()
        .expect("hello listener")
        .expect("hello listener")
        .expect("the guest's hello reaches the peer");
    assert_eq!(from.ip(), std::net::IpAddr::V4(a.ip));
    assert!(
        (FIRST..=LAST).contains(&from.port()),
        "hello from {from}, outside {FIRST}-{LAST}"
    );
    assert!(
        text.starts_with(&format!("guest {guest_release} hello")),
        "{text}"
    );

    // TCP into the range: the guest's own kernel answers (it names itself), through
    // OVS → eth0 → k6t-eth0 → tap0 → virtio-net. The frame counter sees it cross the netns.
    let crossing = count_frames(&ns, Duration::from_secs(3), to_guest_tcp).expect("counter");
    let answer = within(Duration::from_secs(10), || {
        tcp_send(&tb.outside, up.at(GUEST_TCP), None, "over tcp").ok()
    })
    .expect("TCP to the guest's port gets an answer");
    assert_eq!(answer, format!("guest {guest_release} over tcp"));
    assert!(crossing.join().unwrap().unwrap() > 0);

    // UDP into the range: the guest echoes.
    let echo = within(Duration::from_secs(10), || {
        udp_send(&tb.outside, up.at(GUEST_UDP), None, "over udp")
            .ok()
            .flatten()
    })
    .expect("UDP to the guest's port is echoed");
    assert_eq!(echo, format!("guest {guest_release} over udp"));

    // Outside the range: the host gets it and answers, and not one frame of it enters the
    // VM's netns (so neither the bridge nor the guest ever sees it).
    for udp in [false, true] {
        let seen = count_frames(&ns, Duration::from_secs(3), to_host_port).expect("counter");
        let p = tb.probe(udp, 0, HOST_PORT, &[]).expect("probe");
        assert_eq!(p.landed, ["host"], "udp={udp}: {p:?}");
        assert!(p.answered, "udp={udp}: the host's answer reaches the peer");
        assert_eq!(seen.join().unwrap().unwrap(), 0, "udp={udp}");
    }

    // The guest is still the one serving after all that.
    assert_eq!(
        tcp_send(&tb.outside, up.at(GUEST_TCP), None, "again").expect("TCP again"),
        format!("guest {guest_release} again")
    );
    drop(vm);
    drop(tb);
    let _ = std::fs::remove_dir_all(&dir);
}
