//! Raw veth: one veth pair per sandbox between the peer's namespace and the sandbox's, /32
//! routes both ways. The physical limit of this machine.

use super::{ip, sandbox_ip, veth, BuildOptions, Built, Guard, Namespaces, Plan, DOC1, PEER};

pub(super) fn build(o: &BuildOptions, plan: Plan) -> anyhow::Result<Built> {
    let g = Namespaces::new("pbv");
    let peer = g.add("peer")?;
    ip(&peer, &["addr", "add", &format!("{PEER}/32"), "dev", "lo"])?;
    let mut sandboxes = Vec::new();
    for i in 0..plan.sandboxes {
        o.check()?;
        let ns = g.add(&format!("s{i}"))?;
        let addr = sandbox_ip(DOC1, i);
        let v = format!("v{i}");
        veth((&peer, &v), (&ns, "eth0"), o.offloads_off_everywhere, None)?;
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
        sandboxes.push((ns, addr));
        (o.progress)("wiring", i + 1, plan.sandboxes);
    }
    Ok(Built::with_ranges(
        plan,
        peer,
        Guard::Namespaces(g),
        &sandboxes,
        None,
    ))
}
