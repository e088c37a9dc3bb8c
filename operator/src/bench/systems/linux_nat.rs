//! Linux DNAT, the CNI `portmap` way: the node has 198.51.100.1 towards the peer, sandboxes sit
//! on a Linux bridge in 203.0.113.0/24, and every port range is one iptables (nft) DNAT rule
//! per protocol; outbound, the sandboxes are masqueraded behind the node's address (the
//! `bridge` plugin's `ipMasq`).

use super::{
    in_ns, ip, range_span, sandbox_ip, veth, BuildOptions, Built, Guard, Namespaces, Plan, DOC2,
    GATEWAY, NODE, PEER,
};
use crate::exec::run_with_stdin;

pub(super) fn build(o: &BuildOptions, plan: Plan) -> anyhow::Result<Built> {
    let g = Namespaces::new("pbn");
    let node = g.add("node")?;
    let peer = g.add("peer")?;
    let off = o.offloads_off_everywhere;
    veth((&peer, "eth1"), (&node, "up1"), off, None)?;
    ip(
        &peer,
        &["addr", "add", &format!("{PEER}/24"), "dev", "eth1"],
    )?;
    ip(&node, &["addr", "add", &format!("{NODE}/24"), "dev", "up1"])?;
    ip(&node, &["link", "add", "br0", "type", "bridge"])?;
    ip(
        &node,
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", "br0"],
    )?;
    ip(&node, &["link", "set", "br0", "up"])?;
    in_ns(&node, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
    let mut sandboxes = Vec::new();
    for i in 0..plan.sandboxes {
        o.check()?;
        let ns = g.add(&format!("s{i}"))?;
        let addr = sandbox_ip(DOC2, i);
        let port = format!("s{i}");
        veth((&node, &port), (&ns, "eth0"), off, None)?;
        ip(&node, &["link", "set", &port, "master", "br0"])?;
        ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(
            &ns,
            &["route", "add", "default", "via", &GATEWAY.to_string()],
        )?;
        sandboxes.push((ns, addr));
        (o.progress)("wiring", i + 1, plan.sandboxes);
    }
    let mut rules = String::from("*nat\n");
    for k in 0..plan.ranges {
        let (lo, hi) = range_span(k);
        let addr = sandboxes[plan.sandbox_of(k)].1;
        for proto in ["tcp", "udp"] {
            rules += &format!(
                "-A PREROUTING -p {proto} -d {NODE} --dport {lo}:{hi} -j DNAT --to-destination {addr}\n"
            );
        }
    }
    rules += &format!(
        "-A POSTROUTING -s {}.0/24 -o up1 -j MASQUERADE\n",
        DOC2.map(|b| b.to_string()).join(".")
    );
    rules += "COMMIT\n";
    run_with_stdin(
        "ip",
        &["netns", "exec", &node, "iptables-restore", "--noflush"],
        &rules,
    )?;
    Ok(Built::with_ranges(
        plan,
        peer,
        Guard::Namespaces(g),
        &sandboxes,
        Some(NODE),
    ))
}
