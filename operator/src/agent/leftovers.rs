//! Leftovers: what a crash mid-attach, a sandbox that vanished behind the agent's back, or a
//! DEL carried out while no agent ran (the CNI plugin then removes the veth itself) leave
//! behind, found and removed at start and on every full resync:
//!
//! - an attachment whose host-side interface is gone, or whose network namespace is gone:
//!   detached (flows first, then the OVS port, then the veth);
//! - a sandbox port in OVSDB that no attachment holds (never adopted: OVS could not open it,
//!   ofport -1) whose interface or network namespace is gone: removed with its veth;
//! - a host-side veth with the agent's naming (`pi` + 12 hex digits) that no attachment or
//!   sandbox port records (a crash between creating the veth and adding the port): deleted;
//! - the host-stack isolation chain (nftables) of an interface that is gone.
//!
//! Flows that point at ports that no longer exist need no search of their own: every
//! reconcile deletes each installed flow whose cookie the compiler does not produce.
//!
//! Nothing of a live sandbox is touched: an attachment is only judged dead when its interface
//! or its namespace path is really gone, and a port that OVS holds but the agent did not adopt
//! is left alone while its interface and namespace exist. The sweep runs with the agent's
//! lock held (at start, before the socket is served, or from the poll); an ADD makes its veth
//! and port without that lock, but is recorded as in flight under it first, and what an ADD
//! in flight names is never taken for a leftover.

use super::state::Attachment;
use super::Agent;
use crate::exec::run;
use crate::link;
use crate::ovs::bridge as ovsdb;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ovsdb::InterfaceRow as Row;

/// An OVS sandbox port to remove, with its veth if it still has one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrphanPort {
    bridge: String,
    name: String,
    /// -1: OVS could not open it.
    ofport: i64,
    sandbox: String,
    why: String,
}

/// What one sweep found; nothing is changed while it is computed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Attachments to detach (by host-side name), and why.
    dead: Vec<(String, String)>,
    ports: Vec<OrphanPort>,
    /// Stray host-side veths.
    veths: Vec<String>,
    /// Interfaces whose isolation chain is left over.
    chains: Vec<String>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.dead.is_empty()
            && self.ports.is_empty()
            && self.veths.is_empty()
            && self.chains.is_empty()
    }
}

/// What the node looks like, as far as the sweep asks.
struct Node<'a> {
    link_exists: &'a dyn Fn(&str) -> bool,
    netns_gone: &'a dyn Fn(&str) -> bool,
}

/// Decides what is left over. `uplinks` maps each served uplink to its bridge: ports of
/// uplinks this agent does not serve are not its to judge.
fn plan(
    attachments: &[Attachment],
    in_flight: &[&str],
    uplinks: &BTreeMap<String, String>,
    rows: &[Row],
    veths: &[String],
    chains: &[String],
    node: &Node,
) -> Plan {
    let mut p = Plan::default();
    // Names whose removal is already planned: removing them deletes the veth and its chain.
    let mut handled = BTreeSet::new();
    let mut live: BTreeSet<String> = in_flight.iter().map(|n| n.to_string()).collect();
    for a in attachments {
        let why = if !(node.link_exists)(&a.host_if) {
            Some(format!("its interface {} is gone", a.host_if))
        } else if (node.netns_gone)(&a.netns) {
            Some(format!("its network namespace {} is gone", a.netns))
        } else {
            None
        };
        match why {
            Some(why) => {
                handled.insert(a.host_if.clone());
                p.dead.push((a.host_if.clone(), why));
            }
            None => {
                live.insert(a.host_if.clone());
            }
        }
    }
    // Ports no attachment holds and that nothing alive needs any more; the others are kept.
    let mut kept = BTreeSet::new();
    for r in rows {
        if live.contains(&r.name) || handled.contains(&r.name) {
            continue;
        }
        let id = |k: &str| r.ids.get(k).cloned().unwrap_or_default();
        let Some(bridge) = uplinks.get(&id(ovsdb::EXT_UPLINK)) else {
            kept.insert(r.name.clone());
            continue;
        };
        let netns = id(ovsdb::EXT_NETNS);
        let why = if !(node.link_exists)(&r.name) {
            let ovs_says = if r.error.is_empty() {
                String::new()
            } else {
                format!(" (OVS: {})", r.error)
            };
            format!("its interface is gone{ovs_says}")
        } else if (node.netns_gone)(&netns) {
            format!("its network namespace {netns} is gone")
        } else {
            // OVS could not open it (ofport -1) or has not numbered it yet, but the sandbox is
            // there: not a leftover. Its DEL removes the veth, a later sweep then the port.
            kept.insert(r.name.clone());
            continue;
        };
        handled.insert(r.name.clone());
        p.ports.push(OrphanPort {
            bridge: bridge.clone(),
            name: r.name.clone(),
            ofport: r.ofport,
            sandbox: id(ovsdb::EXT_SANDBOX),
            why,
        });
    }
    let ours = |n: &String| {
        link::is_host_if_name(n) && !live.contains(n) && !kept.contains(n) && !handled.contains(n)
    };
    p.veths = veths.iter().filter(|n| ours(n)).cloned().collect();
    p.chains = chains
        .iter()
        .filter(|n| ours(n) && !p.veths.contains(n) && !(node.link_exists)(n))
        .cloned()
        .collect();
    p
}

/// Whether a sandbox's network namespace path is gone. A path whose directory is missing as
/// well says more about what the agent can see (a mount it lacks) than about the sandbox, so
/// it does not count, except under /proc, where a process's directory goes with it.
fn netns_gone(path: &str) -> bool {
    if path.is_empty() {
        return false;
    }
    let p = Path::new(path);
    if p.exists() {
        return false;
    }
    path.starts_with("/proc/") || p.parent().is_some_and(Path::is_dir)
}

/// Whether an interface exists in the agent's namespace. /sys/class/net first (a stat); only
/// when it says no, netlink (`ip link show`) too: a sysfs mounted from another namespace must
/// never make a live sandbox look gone.
fn link_exists(name: &str) -> bool {
    link::exists(name) || run("ip", &["link", "show", "dev", name]).is_ok()
}

/// The veths of the agent's namespace, from `ip -o link show type veth`
/// (`5: pi0123456789ab@if4: <...> ...`).
fn parse_veths(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches(':'))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The interfaces that have an isolation chain (`chain in-NAME {` in `nft list table`).
fn parse_chains(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("chain in-"))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

impl Agent {
    /// Whether the host-side interface of some attachment is gone (the sandbox's namespace was
    /// deleted, or DEL ran while no agent did): one stat per attachment, so checked on every
    /// poll; a full resync, which sweeps the leftovers, follows.
    pub(super) fn attachment_link_gone(&self) -> bool {
        // Only where /sys/class/net shows the agent's own namespace (its bridges are there);
        // elsewhere the stat says nothing and the periodic sweep alone looks.
        let sysfs_is_ours = self.uplinks.iter().all(|u| link::exists(&u.config.bridge));
        sysfs_is_ours && self.attachments.iter().any(|a| !link::exists(&a.host_if))
    }

    /// Finds and removes leftovers (see the module's documentation). Never fails: what it
    /// cannot remove now is found again by the next sweep. Must run with the agent's lock
    /// held, after the PortRanges were loaded (detaching reconciles the flows).
    pub(super) fn sweep_leftovers(&mut self) {
        let uplinks: BTreeMap<String, String> = self
            .uplinks
            .iter()
            .map(|u| (u.config.name.clone(), u.config.bridge.clone()))
            .collect();
        let rows = match ovsdb::sandbox_interfaces(self.ovs.as_ref()) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the sandbox ports to look for leftovers; trying again at the next resync");
                return;
            }
        };
        let veths = run("ip", &["-o", "link", "show", "type", "veth"])
            .map(|t| parse_veths(&t))
            .unwrap_or_default();
        let chains = if self.datapath_type == "netdev" {
            run("nft", &["list", "table", "netdev", "portiso"])
                .map(|t| parse_chains(&t))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let node = Node {
            link_exists: &link_exists,
            netns_gone: &netns_gone,
        };
        let in_flight: Vec<&str> = self.in_flight.iter().map(|f| f.host_if.as_str()).collect();
        let p = plan(
            &self.attachments,
            &in_flight,
            &uplinks,
            &rows,
            &veths,
            &chains,
            &node,
        );
        if p.is_empty() {
            return;
        }
        tracing::debug!(?p, "leftovers found");

        // Dead attachments: out of the state, flows first (one reconcile for them all), then
        // their ports and veths.
        if !p.dead.is_empty() {
            let (dead, live): (Vec<Attachment>, Vec<Attachment>) =
                std::mem::take(&mut self.attachments)
                    .into_iter()
                    .partition(|a| p.dead.iter().any(|(n, _)| *n == a.host_if));
            self.attachments = live;
            if let Err(e) = self.reconcile_all() {
                tracing::warn!(error = %e, "could not remove the flows of sandboxes that are gone; trying again at the next resync");
                self.attachments.extend(dead);
                return;
            }
            for a in &dead {
                self.gone_since.remove(&a.key);
                let why = p
                    .dead
                    .iter()
                    .find(|(n, _)| *n == a.host_if)
                    .map(|(_, w)| w.as_str())
                    .unwrap_or_default();
                let bridge = uplinks.get(&a.uplink).map(String::as_str).unwrap_or("");
                let removed = ovsdb::del_port(self.ovs.as_ref(), bridge, &a.host_if)
                    .map_err(|e| e.to_string())
                    .and_then(|()| link::delete(&a.host_if).map_err(|e| e.to_string()));
                match removed {
                    Ok(()) => {
                        tracing::info!(sandbox = %a.sandbox(), port = %a.host_if, ofport = a.ofport, reason = %why, "leftover removed: sandbox detached (flows, port and veth)")
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %a.sandbox(), port = %a.host_if, reason = %why, error = %e, "leftover: flows removed, port or veth not yet; trying again at the next resync")
                    }
                }
            }
        }
        for o in &p.ports {
            let removed = ovsdb::del_port(self.ovs.as_ref(), &o.bridge, &o.name)
                .map_err(|e| e.to_string())
                .and_then(|()| link::delete(&o.name).map_err(|e| e.to_string()));
            match removed {
                Ok(()) => {
                    tracing::info!(sandbox = %o.sandbox, port = %o.name, bridge = %o.bridge, ofport = o.ofport, reason = %o.why, "leftover removed: OVS port no attachment held")
                }
                Err(e) => {
                    tracing::warn!(sandbox = %o.sandbox, port = %o.name, error = %e, "could not remove a leftover OVS port; trying again at the next resync")
                }
            }
        }
        for v in &p.veths {
            match link::delete(v) {
                Ok(()) => {
                    tracing::info!(sandbox = "-", port = %v, reason = "no attachment or OVS port records it (a crash between creating it and adding its port?)", "leftover removed: stray veth")
                }
                Err(e) => {
                    tracing::warn!(sandbox = "-", port = %v, error = %e, "could not remove a stray veth; trying again at the next resync")
                }
            }
        }
        for c in &p.chains {
            link::release_from_host_stack(c);
            tracing::info!(sandbox = "-", port = %c, "leftover removed: isolation chain of an interface that is gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(name: &str, host_if: &str) -> Attachment {
        Attachment {
            key: portiso_agent_api::AttachmentKey {
                container_id: format!("c-{name}"),
                ifname: "eth0".into(),
            },
            uplink: "up1".into(),
            sandbox_name: name.into(),
            sandbox_namespace: "default".into(),
            sandbox_uid: None,
            netns: format!("/run/netns/{name}"),
            host_if: host_if.into(),
            ofport: 2,
            labels: BTreeMap::new(),
            local_ports: None,
        }
    }

    fn row(name: &str, uplink: &str, netns: &str, ofport: i64) -> Row {
        Row {
            name: name.into(),
            ofport,
            ids: BTreeMap::from([
                (ovsdb::EXT_ROLE.to_string(), "sandbox".to_string()),
                (ovsdb::EXT_UPLINK.to_string(), uplink.to_string()),
                (ovsdb::EXT_NETNS.to_string(), netns.to_string()),
                (ovsdb::EXT_SANDBOX.to_string(), "default/x".to_string()),
            ]),
            iface_type: "system".into(),
            error: String::new(),
        }
    }

    const LIVE: &str = "pi00000000000a";
    const NO_LINK: &str = "pi00000000000b";
    const NO_NETNS: &str = "pi00000000000c";
    const ORPHAN_NO_LINK: &str = "pi00000000000d";
    const ORPHAN_ALIVE: &str = "pi00000000000e";
    const STRAY: &str = "pi00000000000f";
    const OTHER_UPLINK: &str = "pi000000000010";
    const CHAIN_ONLY: &str = "pi000000000011";

    #[test]
    fn only_what_is_really_gone_is_planned_for_removal() {
        let attachments = vec![
            attachment("live", LIVE),
            attachment("nolink", NO_LINK),
            attachment("nonetns", NO_NETNS),
        ];
        let uplinks = BTreeMap::from([("up1".to_string(), "br-up1".to_string())]);
        let mut gone_port = row(ORPHAN_NO_LINK, "up1", "/run/netns/o1", -1);
        gone_port.error = "could not open network device (No such device)".into();
        let rows = vec![
            row(LIVE, "up1", "/run/netns/live", 2),
            row(NO_LINK, "up1", "/run/netns/nolink", 3),
            gone_port,
            row(ORPHAN_ALIVE, "up1", "/run/netns/o2", -1),
            row(OTHER_UPLINK, "up9", "/run/netns/o3", -1),
        ];
        // The kernel's veths: the live one, two adopted ones, the orphan that is alive, a
        // stray one, one of another uplink, and interfaces that are not the agent's.
        let veths: Vec<String> = [
            LIVE,
            NO_NETNS,
            ORPHAN_ALIVE,
            STRAY,
            OTHER_UPLINK,
            "up1",
            "pi0123",
            "veth0",
        ]
        .map(String::from)
        .to_vec();
        let chains: Vec<String> = [LIVE, NO_LINK, CHAIN_ONLY, ORPHAN_ALIVE, "up1"]
            .map(String::from)
            .to_vec();
        let exists = |n: &str| veths.iter().any(|v| v == n);
        let gone = |p: &str| p == "/run/netns/nonetns";
        let node = Node {
            link_exists: &exists,
            netns_gone: &gone,
        };
        let p = plan(&attachments, &[], &uplinks, &rows, &veths, &chains, &node);
        let dead: Vec<&str> = p.dead.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(dead, [NO_LINK, NO_NETNS]);
        assert!(p.dead[0].1.contains("interface"), "{:?}", p.dead);
        assert!(p.dead[1].1.contains("/run/netns/nonetns"), "{:?}", p.dead);
        assert_eq!(p.ports.len(), 1, "{:?}", p.ports);
        assert_eq!(
            (p.ports[0].name.as_str(), p.ports[0].bridge.as_str()),
            (ORPHAN_NO_LINK, "br-up1")
        );
        assert!(p.ports[0].why.contains("No such device"), "{:?}", p.ports);
        assert_eq!(p.veths, [STRAY]);
        // NO_LINK's chain goes with its detach; only the chain of nothing is planned alone.
        assert_eq!(p.chains, [CHAIN_ONLY]);

        // The stray veth is an ADD's that is making its port right now: not a leftover.
        let p = plan(
            &attachments,
            &[STRAY],
            &uplinks,
            &rows,
            &veths,
            &chains,
            &node,
        );
        assert!(p.veths.is_empty(), "{p:?}");
        assert_eq!(p.dead.len(), 2, "{p:?}");

        // Everything alive: nothing to do.
        let all = |_: &str| true;
        let never = |_: &str| false;
        let node = Node {
            link_exists: &all,
            netns_gone: &never,
        };
        let p = plan(
            &attachments,
            &[],
            &uplinks,
            &rows,
            &[LIVE.to_string(), NO_LINK.to_string()],
            &[],
            &node,
        );
        assert!(p.ports.is_empty() && p.dead.is_empty(), "{p:?}");
        assert!(p.veths.is_empty(), "{p:?}");
    }

    #[test]
    fn reads_veths_and_chains() {
        let ip = "4: ptx@pi0123456789ab: <BROADCAST> mtu 1500\n5: pi0123456789ab@ptx: <BROADCAST> mtu 1500\n9: pi00000000000a@if2: <UP> mtu 1500\n";
        assert_eq!(parse_veths(ip), ["ptx", "pi0123456789ab", "pi00000000000a"]);
        let nft = "table netdev portiso {\n\tchain in-up1 {\n\t\ttype filter hook ingress device \"up1\" priority -500; policy drop;\n\t}\n\tchain in-pi0123456789ab {\n\t}\n}\n";
        assert_eq!(parse_chains(nft), ["up1", "pi0123456789ab"]);
    }

    #[test]
    fn a_namespace_counts_as_gone_only_where_its_directory_is_visible() {
        let dir = std::env::temp_dir().join(format!("portiso-leftovers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let present = dir.join("ns");
        std::fs::write(&present, "").unwrap();
        assert!(!netns_gone(&present.display().to_string()));
        assert!(netns_gone(&dir.join("deleted").display().to_string()));
        assert!(!netns_gone(
            &dir.join("no-such-dir").join("ns").display().to_string()
        ));
        assert!(netns_gone("/proc/999999999/ns/net"));
        assert!(!netns_gone(""));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
