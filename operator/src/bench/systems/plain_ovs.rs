//! Plain OVS: a private OVS (the datapath portiso uses) with one bridge and the NORMAL action;
//! the peer and every sandbox on one subnet, each sandbox with an address of its own.

use super::{
    ip, ovs_datapath, sandbox_ip, veth, BuildOptions, Built, Guard, Namespaces, Plan, DOC1, PEER,
};
use crate::testbed::ovs;
use std::path::Path;

pub(super) fn build(o: &BuildOptions, plan: Plan) -> anyhow::Result<Built> {
    let mut g = Namespaces::new("pbo");
    let sw = g.add("sw")?;
    let peer = g.add("peer")?;
    let dir = g.start_ovs(&sw)?;
    let switch = Switch::new(&sw, &dir)?;
    let off = switch.offloads_off(o);
    veth((&peer, "eth1"), (&sw, "uplink"), off, None)?;
    ip(
        &peer,
        &["addr", "add", &format!("{PEER}/24"), "dev", "eth1"],
    )?;
    let mut ports = vec!["uplink".to_string()];
    let mut sandboxes = Vec::new();
    for i in 0..plan.sandboxes {
        o.check()?;
        let ns = g.add(&format!("s{i}"))?;
        let addr = sandbox_ip(DOC1, i);
        let port = format!("s{i}");
        veth((&sw, &port), (&ns, "eth0"), off, None)?;
        ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ports.push(port);
        sandboxes.push((ns, addr));
        (o.progress)("wiring", i + 1, plan.sandboxes);
    }
    switch.add_ports(&ports, &[])?;
    Ok(Built::with_ranges(
        plan,
        peer,
        Guard::Namespaces(g),
        &sandboxes,
        None,
    ))
}

/// Bridge `br0` of a private OVS in namespace `ns` (shared with the ct(nat) system).
pub(super) struct Switch<'a> {
    ns: &'a str,
    dir: &'a Path,
    netdev: bool,
}

impl<'a> Switch<'a> {
    /// Creates br0 on the datapath the agent would choose.
    pub(super) fn new(ns: &'a str, dir: &'a Path) -> anyhow::Result<Self> {
        let datapath = ovs_datapath();
        let s = Switch {
            ns,
            dir,
            netdev: datapath == "netdev",
        };
        s.vsctl(&[
            "--may-exist",
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            &format!("datapath_type={datapath}"),
        ])?;
        Ok(s)
    }

    /// OVS's userspace datapath needs TX checksum offload off on its veths.
    pub(super) fn offloads_off(&self, o: &BuildOptions) -> bool {
        self.netdev || o.offloads_off_everywhere
    }

    pub(super) fn vsctl(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(ovs::cmd(self.ns, self.dir, "ovs-vsctl", args)?)
    }

    pub(super) fn ofctl(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(ovs::cmd(self.ns, self.dir, "ovs-ofctl", args)?)
    }

    /// Adds the (switch-side) veth ends as ports, 50 per transaction; `ofports` (if not empty)
    /// are the OpenFlow port numbers to request, one per port.
    pub(super) fn add_ports(&self, ports: &[String], ofports: &[u32]) -> anyhow::Result<()> {
        // As the agent does on the userspace datapath: OVS reads the ports through packet
        // sockets, and this namespace's IP stack must not process the frames a second time.
        if self.netdev {
            for p in ports {
                crate::link::isolate_from_host_stack_in(&format!("/run/netns/{}", self.ns), p)?;
            }
        }
        let requests: Vec<String> = ofports
            .iter()
            .map(|n| format!("ofport_request={n}"))
            .collect();
        for (c, chunk) in ports.chunks(50).enumerate() {
            let mut args: Vec<&str> = Vec::new();
            for (j, p) in chunk.iter().enumerate() {
                args.extend(["--", "add-port", "br0", p.as_str()]);
                if let Some(r) = requests.get(c * 50 + j) {
                    args.extend(["--", "set", "Interface", p.as_str(), r.as_str()]);
                }
            }
            self.vsctl(&args[1..])?;
        }
        Ok(())
    }
}
