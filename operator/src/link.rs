//! The only place that creates links and configures a sandbox's network namespace: a veth
//! whose host end joins the bridge and whose sandbox end takes the shared MAC and address.
//! Runs `ip`, `nsenter`, `sysctl` and `ethtool` with argument vectors.

use crate::exec::{run, ExecError};

/// What the sandbox side of an attachment looks like.
#[derive(Debug, Clone)]
pub struct SandboxLink<'a> {
    /// Host-side veth name (on the bridge).
    pub host_if: &'a str,
    /// Path of the sandbox's network namespace.
    pub netns: &'a str,
    /// Interface name inside the sandbox (CNI_IFNAME).
    pub ifname: &'a str,
    pub mac: &'a str,
    /// ADDRESS/PREFIX.
    pub cidr: &'a str,
    pub gateway: Option<String>,
    /// Set as net.ipv4.ip_local_port_range so that clients pick source ports it owns.
    pub local_ports: Option<(u16, u16)>,
    /// The userspace datapath leaves TCP/UDP checksums to offload and they arrive broken:
    /// TX checksum offload must be off on both ends. AF_XDP ports (copy mode on veths) do not
    /// complete them either: with offload on, TCP to the sandbox fails there too.
    pub checksum_offload_off: bool,
    /// Keep the host's IP stack away from the host end (userspace datapath only).
    pub isolate_host_end: bool,
}

/// A deterministic host-side name for an attachment ("pi" + 12 hex digits), at most 15 bytes;
/// shared with the CNI plugin, which removes the veth itself on DEL when the agent is down.
pub use portiso_agent_api::{host_if_name, is_host_if_name};

fn in_netns(netns: &str, program: &str, args: &[&str]) -> Result<String, ExecError> {
    let net = format!("--net={netns}");
    let mut argv = vec![net.as_str(), program];
    argv.extend_from_slice(args);
    run("nsenter", &argv)
}

/// Creates and configures the veth. On error, whatever was created is removed again.
pub fn create(l: &SandboxLink) -> Result<(), ExecError> {
    let result = create_inner(l);
    if result.is_err() {
        let _ = delete(l.host_if);
    }
    result
}

fn create_inner(l: &SandboxLink) -> Result<(), ExecError> {
    // A temporary name inside the sandbox, so that creating cannot collide with an existing
    // interface there; it is renamed to CNI_IFNAME once configured.
    let tmp = format!("pt{}", &l.host_if[2..]);
    run(
        "ip",
        &[
            "link", "add", l.host_if, "type", "veth", "peer", "name", &tmp, "netns", l.netns,
        ],
    )?;
    in_netns(
        l.netns,
        "ip",
        &["link", "set", &tmp, "name", l.ifname, "address", l.mac],
    )?;
    // IPv6 would make the sandbox send neighbour discovery as its own; portiso shares IPv4.
    let _ = in_netns(
        l.netns,
        "sysctl",
        &[
            "-q",
            "-w",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", l.ifname),
        ],
    );
    in_netns(l.netns, "ip", &["addr", "add", l.cidr, "dev", l.ifname])?;
    in_netns(l.netns, "ip", &["link", "set", "lo", "up"])?;
    in_netns(l.netns, "ip", &["link", "set", l.ifname, "up"])?;
    if let Some(gw) = &l.gateway {
        in_netns(
            l.netns,
            "ip",
            &["route", "replace", "default", "via", gw, "dev", l.ifname],
        )?;
    }
    set_local_ports(l.netns, l.local_ports)?;
    // Only the sandbox's end: its kernel would leave TCP/UDP checksums to an offload that
    // OVS's userspace datapath, reading the frame raw, never does. The host end needs nothing:
    // OVS writes whole frames into it, and each change of it (a link event) makes OVS
    // reconsider every port of the node.
    if l.checksum_offload_off {
        in_netns(l.netns, "ethtool", &["-K", l.ifname, "tx", "off"])?;
    }
    if l.isolate_host_end {
        isolate_from_host_stack(l.host_if)?;
    }
    run("ip", &["link", "set", l.host_if, "up"])?;
    Ok(())
}

/// Sets net.ipv4.ip_local_port_range in the sandbox.
pub fn set_local_ports(netns: &str, range: Option<(u16, u16)>) -> Result<(), ExecError> {
    let Some((lo, hi)) = range else { return Ok(()) };
    in_netns(
        netns,
        "sysctl",
        &[
            "-q",
            "-w",
            &format!("net.ipv4.ip_local_port_range={lo} {hi}"),
        ],
    )
    .map(|_| ())
}

/// Deletes the host end (which takes the sandbox end with it). Already gone is fine.
pub fn delete(host_if: &str) -> Result<(), ExecError> {
    release_from_host_stack(host_if);
    if !exists(host_if) {
        return Ok(());
    }
    run("ip", &["link", "del", host_if]).map(|_| ())
}

/// Whether an interface of that name exists in the agent's namespace.
pub fn exists(ifname: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(ifname).exists()
}

/// Whether the sandbox still has its interface (for CNI CHECK).
pub fn sandbox_has(netns: &str, ifname: &str) -> bool {
    in_netns(netns, "ip", &["link", "show", "dev", ifname]).is_ok()
}

/// The first IPv4 address of an interface, as ADDRESS/PREFIX.
pub fn ipv4_cidr(ifname: &str) -> Option<String> {
    let out = run("ip", &["-4", "-o", "addr", "show", "dev", ifname]).ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(str::to_string)
}

/// The MAC of an interface in the agent's namespace.
pub fn mac_of(ifname: &str) -> std::io::Result<String> {
    Ok(
        std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?
            .trim()
            .to_string(),
    )
}

/// The gateway of the default route through `dev`, if there is one.
pub fn default_gateway(dev: &str) -> Option<String> {
    run("ip", &["-4", "route", "show", "default", "dev", dev])
        .ok()?
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .map(str::to_string)
}

/// Puts the host's default route back on the bridge (after OVS re-created its internal port).
pub fn restore_default_route(bridge: &str, gateway: &str) -> Result<(), ExecError> {
    run(
        "ip",
        &["route", "replace", "default", "via", gateway, "dev", bridge],
    )
    .map(|_| ())
}

/// Moves the uplink's address to the bridge's internal port, with the default route if it went
/// through the uplink; brings both up. Idempotent.
pub fn move_address(uplink: &str, bridge: &str, cidr: &str) -> Result<(), ExecError> {
    let gateway = default_gateway(uplink);
    let on_uplink = run("ip", &["-4", "-o", "addr", "show", "dev", uplink])?;
    if on_uplink.split_whitespace().any(|w| w == cidr) {
        run("ip", &["addr", "del", cidr, "dev", uplink])?;
    }
    run("ip", &["addr", "replace", cidr, "dev", bridge])?;
    run("ip", &["link", "set", uplink, "up"])?;
    run("ip", &["link", "set", bridge, "up"])?;
    if let Some(gw) = gateway {
        restore_default_route(bridge, &gw)?;
    }
    Ok(())
}

/// Every IPv4 address of an interface, as ADDRESS/PREFIX; none if it does not exist.
pub fn ipv4_cidrs(ifname: &str) -> Vec<String> {
    let Ok(out) = run("ip", &["-4", "-o", "addr", "show", "dev", ifname]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .map(str::to_string)
        })
        .collect()
}

/// The IPv4 routes of the main table through `dev` other than the kernel's own prefix routes
/// (which come and go with the addresses), as `ip route` prints them without `dev` (e.g.
/// `default via 198.51.100.7`); none if the interface does not exist.
pub fn routes_through(dev: &str) -> Vec<String> {
    run("ip", &["-4", "route", "show", "dev", dev])
        .map(|out| parse_routes(&out))
        .unwrap_or_default()
}

/// Keeps what `ip route replace` takes back: the kernel's prefix routes and the state flags
/// `ip` prints (linkdown, dead, offload...) go.
fn parse_routes(out: &str) -> Vec<String> {
    const FLAGS: [&str; 6] = [
        "linkdown",
        "dead",
        "offload",
        "trap",
        "rt_offload",
        "rt_trap",
    ];
    out.lines()
        .filter(|l| !l.split_whitespace().any(|w| w == "kernel"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| !FLAGS.contains(w))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// The reverse of [`move_address`]: takes `cidrs` off the bridge's internal port (when it is
/// still there), gives them to the uplink with `routes` (as [`routes_through`] read them from
/// the bridge), and brings the uplink up. Idempotent; every step is tried, the first error is
/// returned.
pub fn return_address(
    bridge: &str,
    uplink: &str,
    cidrs: &[String],
    routes: &[String],
) -> Result<(), ExecError> {
    let mut first: Option<ExecError> = None;
    let mut note = |r: Result<String, ExecError>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    if exists(bridge) {
        let on_bridge = ipv4_cidrs(bridge);
        for c in cidrs.iter().filter(|c| on_bridge.contains(c)) {
            note(run("ip", &["addr", "del", c, "dev", bridge]));
        }
    }
    for c in cidrs {
        note(run("ip", &["addr", "replace", c, "dev", uplink]));
    }
    note(run("ip", &["link", "set", uplink, "up"]));
    for r in routes {
        let mut argv = vec!["route", "replace"];
        argv.extend(r.split_whitespace());
        argv.extend(["dev", uplink]);
        note(run("ip", &argv));
    }
    first.map_or(Ok(()), Err)
}

/// Deletes a link of the agent's namespace by name (e.g. a bridge's internal port that
/// outlived OVS). Gone already is fine.
pub fn delete_device(ifname: &str) -> Result<(), ExecError> {
    if !exists(ifname) {
        return Ok(());
    }
    run("ip", &["link", "del", ifname]).map(|_| ())
}

/// Deletes many links of the agent's namespace at once (one `ip -force -batch` for all, not
/// one process each: an uninstall of hundreds of sandboxes must stay quick). Links already gone
/// are skipped; returns how many were deleted, or the batch's error (the lines before and
/// after a failed one still run).
pub fn delete_many(names: &[String]) -> Result<usize, ExecError> {
    let present: Vec<&String> = names.iter().filter(|n| exists(n)).collect();
    if present.is_empty() {
        return Ok(0);
    }
    let batch: String = present.iter().map(|n| format!("link del {n}\n")).collect();
    crate::exec::run_with_stdin("ip", &["-force", "-batch", "-"], &batch)?;
    Ok(present.len())
}

/// The veths of the agent's namespace with the agent's host-side naming.
pub fn host_veths() -> Vec<String> {
    run("ip", &["-o", "link", "show", "type", "veth"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches(':'))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| is_host_if_name(n))
        .map(str::to_string)
        .collect()
}

/// Removes the nftables table of [`isolate_from_host_stack`] with every chain left in it;
/// gone already is fine.
pub fn remove_isolation_table() {
    let _ = run("nft", &["delete", "table", "netdev", NFT_TABLE]);
}

/// On the userspace datapath OVS reads a port's frames through a packet socket, but the
/// host's own IP stack still receives them too: it would answer a sandbox's connections with
/// resets (the shared address is local to the host) and accept a sandbox's packets for the
/// host's other addresses. A netfilter ingress chain that drops everything keeps the host stack
/// out; packet sockets see a frame before that hook, so OVS still gets it. AF_XDP ports take
/// their frames in XDP, earlier still; the chain then only stops what OVS's XDP program passes
/// on to the stack (a queue without a socket, a port being re-opened). (With the kernel
/// datapath OVS takes the frame itself and this must not be used.)
pub fn isolate_from_host_stack(ifname: &str) -> Result<(), ExecError> {
    isolate_with(ifname, |args| run("nft", args))
}

/// [`isolate_from_host_stack`] for an interface in network namespace `netns` (a path).
pub fn isolate_from_host_stack_in(netns: &str, ifname: &str) -> Result<(), ExecError> {
    isolate_with(ifname, |args| in_netns(netns, "nft", args))
}

fn isolate_with(
    ifname: &str,
    nft: impl Fn(&[&str]) -> Result<String, ExecError>,
) -> Result<(), ExecError> {
    nft(&["add", "table", "netdev", NFT_TABLE])?;
    let chain = format!("in-{ifname}");
    let spec =
        format!("{{ type filter hook ingress device \"{ifname}\" priority -500 ; policy drop ; }}");
    nft(&["add", "chain", "netdev", NFT_TABLE, &chain, &spec]).map(|_| ())
}

/// Whether the interface already has its chain (a restarted agent must not add a second one).
pub fn is_isolated(ifname: &str) -> bool {
    run(
        "nft",
        &[
            "list",
            "chain",
            "netdev",
            NFT_TABLE,
            &format!("in-{ifname}"),
        ],
    )
    .is_ok()
}

/// Removes the chain of [`isolate_from_host_stack`]; gone already is fine.
pub fn release_from_host_stack(ifname: &str) {
    let chain = format!("in-{ifname}");
    let _ = run("nft", &["delete", "chain", "netdev", NFT_TABLE, &chain]);
}

const NFT_TABLE: &str = "portiso";

/// How many receive queues an interface of the agent's namespace has (at least 1).
pub fn rx_queues(ifname: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(0)
        .max(1)
}

/// Turns TX checksum offload off on an interface of the agent's namespace.
pub fn checksum_offload_off(ifname: &str) -> Result<(), ExecError> {
    run("ethtool", &["-K", ifname, "tx", "off"]).map(|_| ())
}

/// The namespace's ip_local_port_range: the host's ephemeral ports, which no sandbox may own.
pub fn local_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    #[test]
    fn routes_to_give_back_leave_the_kernels_own_and_state_flags() {
        let out = "default via 198.51.100.7 linkdown \n198.51.100.0/24 proto kernel scope link src 198.51.100.1 \n10.9.0.0/16 via 198.51.100.254 proto static metric 50 \n";
        assert_eq!(
            super::parse_routes(out),
            [
                "default via 198.51.100.7",
                "10.9.0.0/16 via 198.51.100.254 proto static metric 50"
            ]
        );
    }

    #[test]
    fn host_names_fit_and_differ() {
        let a = super::host_if_name("c1", "eth0");
        let b = super::host_if_name("c1", "eth1");
        assert_eq!(a.len(), 14);
        assert_ne!(a, b);
        assert_eq!(a, super::host_if_name("c1", "eth0"));
    }

    /// The shared function names veths exactly as the agent always did (fnv::FnvHasher), so
    /// that a new agent re-adopts the ports of an older one.
    #[test]
    fn host_names_are_the_fnv_hash_they_always_were() {
        use std::hash::Hasher;
        for (c, i) in [
            ("c1", "eth0"),
            ("ctr-web1", "eth1"),
            ("", ""),
            ("0123abc", "net12"),
        ] {
            let mut h = fnv::FnvHasher::default();
            h.write(c.as_bytes());
            h.write(b"/");
            h.write(i.as_bytes());
            let old = format!("pi{:012x}", h.finish() & 0xffff_ffff_ffff);
            assert_eq!(super::host_if_name(c, i), old);
            assert!(super::is_host_if_name(&old));
        }
    }
}
