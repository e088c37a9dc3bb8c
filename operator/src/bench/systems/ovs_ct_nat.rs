//! OVS ct(nat): the NAT way on the same switch portiso uses. The same private OVS and datapath
//! as plain OVS; the node's address 198.51.100.1 lives on the bridge, the sandboxes sit on
//! private addresses in 203.0.113.0/24 behind it, and OpenFlow conntrack flows translate:
//!
//! ```text
//! table 0  ARP request for 198.51.100.1 or 203.0.113.1 → answered by the bridge itself
//!          IPv4 to 198.51.100.1 from the uplink, IPv4 from 203.0.113.0/24 → ct(nat,table=1)
//! table 1  +inv → drop;  -new (established, replies: already translated by ct(nat)) → table 2
//!          +new, tcp/udp to 198.51.100.1, tp_dst value/mask of range K → ct(commit,nat(dst=SANDBOX),table=2)
//!          +new from 203.0.113.0/24 (outbound) → ct(commit,nat(src=198.51.100.1),table=2)
//! table 2  route by destination: set the router's and the next hop's MACs, dec_ttl, output
//! ```
//!
//! ARP and routing: the peer's side and the sandboxes' side are different subnets, so the
//! bridge must route between them. The simplest way that keeps every packet inside OVS is to
//! make the bridge the router: it answers ARP for the node's address (towards the peer) and
//! for the sandboxes' gateway 203.0.113.1 with flows (the usual OVS ARP responder), and
//! forwards IPv4 by rewriting the Ethernet addresses to MACs it knows, because the bench sets
//! every MAC itself (`02:00:` + the IPv4 address). The alternative, a LOCAL port with both
//! addresses and the node's kernel routing, would send every packet through the kernel's IP
//! stack as well and measure that instead of OVS.

use super::plain_ovs::Switch;
use super::{
    ip, range_span, sandbox_ip, veth, BuildOptions, Built, Guard, Namespaces, Plan, DOC2, GATEWAY,
    NODE, PEER,
};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// OpenFlow port numbers: the uplink, and sandbox `i` at `SANDBOX_OFPORT + i`.
const UPLINK_OFPORT: u32 = 1;
const SANDBOX_OFPORT: u32 = 100;

/// The MAC the bench gives an address here: `02:00:` and the address's four bytes.
fn mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

pub(super) fn build(o: &BuildOptions, plan: Plan) -> anyhow::Result<Built> {
    let mut g = Namespaces::new("pbc");
    let sw = g.add("sw")?;
    let peer = g.add("peer")?;
    let dir = g.start_ovs(&sw)?;
    let switch = Switch::new(&sw, &dir)?;
    let off = switch.offloads_off(o);
    veth((&peer, "eth1"), (&sw, "uplink"), off, Some(&mac(PEER)))?;
    ip(
        &peer,
        &["addr", "add", &format!("{PEER}/24"), "dev", "eth1"],
    )?;
    let mut ports = vec!["uplink".to_string()];
    let mut ofports = vec![UPLINK_OFPORT];
    let mut sandboxes = Vec::new();
    for i in 0..plan.sandboxes {
        o.check()?;
        let ns = g.add(&format!("s{i}"))?;
        let addr = sandbox_ip(DOC2, i);
        let port = format!("s{i}");
        veth((&ns, "eth0"), (&sw, &port), off, Some(&mac(addr)))?;
        ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(
            &ns,
            &["route", "add", "default", "via", &GATEWAY.to_string()],
        )?;
        ports.push(port);
        ofports.push(SANDBOX_OFPORT + i as u32);
        sandboxes.push((ns, addr));
        (o.progress)("wiring", i + 1, plan.sandboxes);
    }
    switch.add_ports(&ports, &ofports)?;
    let file = dir.join("ct-nat.flows");
    std::fs::write(&file, flows(&plan))?;
    switch.ofctl(&["del-flows", "br0"])?;
    switch.ofctl(&["add-flows", "br0", &file.display().to_string()])?;
    Ok(Built::with_ranges(
        plan,
        peer,
        Guard::Namespaces(g),
        &sandboxes,
        Some(NODE),
    ))
}

/// The whole flow table (see the module's description).
fn flows(plan: &Plan) -> String {
    let mut f = String::new();
    for ip in [NODE, GATEWAY] {
        let _ = writeln!(
            f,
            "table=0,priority=300,arp,arp_op=1,arp_tpa={ip} actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:{mac},load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],load:0x0200{ip_hex:08x}->NXM_NX_ARP_SHA[],load:{ip_hex:#x}->NXM_OF_ARP_SPA[],in_port",
            mac = mac(ip),
            ip_hex = u32::from(ip),
        );
    }
    let inside = format!("{}/24", Ipv4Addr::from([DOC2[0], DOC2[1], DOC2[2], 0]));
    let _ = writeln!(
        f,
        "table=0,priority=200,ip,in_port={UPLINK_OFPORT},nw_dst={NODE} actions=ct(nat,table=1)"
    );
    let _ = writeln!(
        f,
        "table=0,priority=200,ip,nw_src={inside} actions=ct(nat,table=1)"
    );
    f += "table=0,priority=0 actions=drop\n";
    f += "table=1,priority=300,ct_state=+inv+trk actions=drop\n";
    f += "table=1,priority=200,ct_state=-new+trk,ip actions=resubmit(,2)\n";
    for k in 0..plan.ranges {
        let (lo, hi) = range_span(k);
        let to = sandbox_ip(DOC2, plan.sandbox_of(k));
        for block in crate::model::cover(lo, hi) {
            for proto in ["tcp", "udp"] {
                let _ = writeln!(
                    f,
                    "table=1,priority=100,ct_state=+new+trk,{proto},nw_dst={NODE},tp_dst={block} actions=ct(commit,nat(dst={to}),table=2)"
                );
            }
        }
    }
    let _ = writeln!(
        f,
        "table=1,priority=100,ct_state=+new+trk,ip,nw_src={inside} actions=ct(commit,nat(src={NODE}),table=2)"
    );
    f += "table=1,priority=0 actions=drop\n";
    for i in 0..plan.sandboxes {
        let to = sandbox_ip(DOC2, i);
        let _ = writeln!(
            f,
            "table=2,priority=100,ip,nw_dst={to} actions=dec_ttl,mod_dl_src:{},mod_dl_dst:{},output:{}",
            mac(GATEWAY),
            mac(to),
            SANDBOX_OFPORT + i as u32
        );
    }
    let _ = writeln!(
        f,
        "table=2,priority=100,ip,nw_dst={PEER} actions=dec_ttl,mod_dl_src:{},mod_dl_dst:{},output:{UPLINK_OFPORT}",
        mac(NODE),
        mac(PEER)
    );
    f += "table=2,priority=0 actions=drop\n";
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_set_has_its_blocks_and_macs_follow_addresses() {
        assert_eq!(mac(NODE), "02:00:c6:33:64:01");
        let plan = crate::bench::systems::System::OvsCtNat.plan(1000);
        let f = flows(&plan);
        let blocks: usize = (0..1000)
            .map(|k| {
                let (lo, hi) = range_span(k);
                crate::model::cover(lo, hi).len()
            })
            .sum();
        assert_eq!(f.matches("nat(dst=").count(), 2 * blocks);
        // Range 240 leads to the first sandbox again.
        let (lo, _) = range_span(240);
        let first = crate::model::cover(lo, lo + 19)[0];
        assert!(f.contains(&format!(
            "tp_dst={first} actions=ct(commit,nat(dst=203.0.113.10)"
        )));
        assert!(f.contains("load:0x0200c6336401->NXM_NX_ARP_SHA[],load:0xc6336401->"));
    }
}
