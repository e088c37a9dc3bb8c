//! The node agent: owns one bridge per uplink, attaches sandboxes for the CNI plugin, and
//! keeps every bridge's flows equal to what the compiler makes of the current state.
//!
//! State lives in OVS (ports with external_ids, flows with content-derived cookies), so a
//! restarted agent re-adopts its ports, recompiles, finds the same cookies installed and
//! changes nothing.

mod add;
mod attach;
pub mod fragments;
pub mod icmp_errors;
mod icmp_relay;
mod leftovers;
mod meters;
pub mod metrics;
pub mod port_type;
mod ranges;
pub mod request;
mod server;
mod slow_path;
pub mod sources;
pub mod state;
mod status;
mod trace;
pub mod uninstall;

pub use server::serve;
pub use status::EGRESS_NOT_ALLOWED;

use crate::config::{AgentConfig, DatapathChoice, PortTypeChoice, UplinkConfig};
use crate::fastpath::{self, FastPath};
use crate::flows::{compile_bridge, diff};
use crate::model::{arbitrate, ObjectKey, PortRange, Verdict};
use crate::ovs::{self, OvsExec};
use crate::{link, ovs::bridge as ovsdb};
use sources::Sources;
use state::Attachment;
use std::collections::BTreeMap;

/// An uplink whose bridge is up.
#[derive(Debug, Clone)]
pub struct UplinkRuntime {
    pub config: UplinkConfig,
    pub uplink_ofport: u32,
    /// The shared MAC: the uplink NIC's own.
    pub mac: String,
    /// The uplink NIC's interface index (the fast path's key for it).
    pub ifindex: u32,
    /// The host's default route through the bridge, to put back if OVS re-creates the bridge.
    pub host_gateway: Option<String>,
}

pub struct Agent {
    pub config: AgentConfig,
    /// Shared, so that an ADD can make its port without the agent's lock (see `add`).
    ovs: std::sync::Arc<dyn OvsExec>,
    /// `netdev` or `system`.
    pub datapath_type: String,
    /// The kind of port the uplinks and new sandbox ports get, and why (see `port_type`).
    pub port_type: PortTypeChoice,
    pub port_type_reason: String,
    /// The eBPF fast path, when it runs; it sits behind a lock because its maps are written
    /// from `reconcile`, which only reads the rest of the agent.
    fast_path: Option<std::sync::Mutex<FastPath>>,
    /// Why the fast path does not run, when it never started ("off: …").
    fast_path_off: String,
    pub uplinks: Vec<UplinkRuntime>,
    sources: Box<dyn Sources>,
    /// PortRanges that passed validation and arbitration.
    pub accepted: Vec<PortRange>,
    /// Refused PortRanges and why.
    pub refused: BTreeMap<ObjectKey, String>,
    pub attachments: Vec<Attachment>,
    /// ADDs not answered yet (see `add`): their ports are being made, or they wait to join.
    in_flight: Vec<add::InFlight>,
    /// Sandboxes whose ports are made, queued to join `attachments` (filled without the lock).
    joining: add::Joining,
    /// Answers of ADDs whose sandbox joined with another ADD's group.
    settled: add::Settled,
    /// Since when each attachment's sandbox has been reported gone.
    gone_since: BTreeMap<portiso_agent_api::AttachmentKey, std::time::Instant>,
    /// Who owns which ports on each bridge, for the ICMP error slow path.
    icmp_relay: icmp_relay::IcmpRelay,
    /// The cookies each bridge holds since the agent's last successful bundle (sorted), so
    /// that a reconcile diffs against memory instead of dumping every flow from OVS; dropped
    /// whenever that may no longer be true (a failed bundle, a flow count OVS disagrees
    /// with, the periodic full resync).
    installed: std::sync::Mutex<BTreeMap<String, Vec<u64>>>,
    /// The meters each bridge holds since the last reconcile (see `meters`), trusted only
    /// while the installed cookies are.
    meters: std::sync::Mutex<BTreeMap<String, Vec<crate::flows::Meter>>>,
    /// Whether each bridge's datapath has meters, once asked (see `meters`).
    meter_support: std::sync::Mutex<BTreeMap<String, bool>>,
    /// When OVS was last re-read in full (ports, numbers, every flow).
    last_full_resync: std::time::Instant,
    /// Counted as the agent works; shared with the metrics endpoint, which reads it without
    /// the agent's lock.
    pub metrics: std::sync::Arc<metrics::AgentMetrics>,
}

/// How often the agent re-reads OVS in full even when its flow counts look right: catches
/// flows someone else replaced with as many of their own.
const FULL_RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentStartError {
    #[error("uplink {uplink}: {detail}")]
    Uplink { uplink: String, detail: String },
    #[error(transparent)]
    Ovs(#[from] ovs::OvsError),
}

/// The kernel datapath needs the openvswitch module; without it only the userspace one works.
pub fn choose_datapath(choice: DatapathChoice) -> &'static str {
    match choice {
        DatapathChoice::System => "system",
        DatapathChoice::Netdev => "netdev",
        DatapathChoice::Auto if std::path::Path::new("/sys/module/openvswitch").exists() => {
            "system"
        }
        DatapathChoice::Auto => "netdev",
    }
}

impl Agent {
    /// Builds or adopts every uplink's bridge, re-adopts attached sandboxes, loads the
    /// PortRanges and brings the flows in line.
    pub fn start(
        config: AgentConfig,
        ovs: Box<dyn OvsExec>,
        sources: Box<dyn Sources>,
    ) -> Result<Self, AgentStartError> {
        let datapath_type = choose_datapath(config.datapath.kind).to_string();
        tracing::info!(datapath = %datapath_type, requested = ?config.datapath, "OVS datapath chosen");
        // The fast path first: when it runs, it holds the devices' XDP hook, which AF_XDP
        // ports would otherwise take.
        let uplink_names: Vec<String> = config.uplinks.iter().map(|u| u.name.clone()).collect();
        let (fast_path, fast_path_off) = match fastpath::wanted(&config.datapath, &datapath_type)
            .and_then(|()| FastPath::open(&config.datapath, &uplink_names))
        {
            Ok(fp) => {
                tracing::info!(status = %fp.status(), "eBPF fast path on");
                (Some(std::sync::Mutex::new(fp)), String::new())
            }
            Err(why) => {
                let removed = fastpath::remove_leftover_links(&config.datapath.bpf_dir);
                tracing::info!(reason = %why, removed_leftover_links = removed, "eBPF fast path off: OVS carries all traffic");
                (None, format!("off: {why}"))
            }
        };
        let fast_path_active = fast_path.is_some();
        let (port_type, port_type_reason) = port_type::choose_port_type(
            config.datapath.userspace_ports,
            &datapath_type,
            fast_path_active,
            port_type::node_cpus(),
            &ovsdb::iface_types(ovs.as_ref())?,
        );
        tracing::info!(port_type = port_type.ovs_type(), reason = %port_type_reason, "OVS port type chosen");
        let mut uplinks = Vec::new();
        for u in &config.uplinks {
            let fail = |detail: String| AgentStartError::Uplink {
                uplink: u.name.clone(),
                detail,
            };
            let mut u = u.clone();
            if u.address_from_nic {
                // The NIC's address, or its bridge's if an earlier run already moved it.
                let cidr = link::ipv4_cidr(&u.name)
                    .or_else(|| link::ipv4_cidr(&u.bridge))
                    .ok_or_else(|| {
                        fail("has no IPv4 address to share: set uplinks[].address".into())
                    })?;
                (u.address, u.prefix_len) = crate::config::parse_cidr(&cidr).map_err(fail)?;
            }
            let mac = link::mac_of(&u.name).map_err(|e| {
                fail(format!(
                    "no such network interface ({e}): check uplinks[].name"
                ))
            })?;
            let kind = ovsdb::PortKind {
                ovs_type: port_type.ovs_type().into(),
                n_rxq: link::rx_queues(&u.name),
            };
            let uplink_ofport = ovsdb::ensure_bridge(
                ovs.as_ref(),
                &u.bridge,
                &u.name,
                &datapath_type,
                &mac,
                &kind,
            )?;
            if datapath_type == "netdev" {
                link::checksum_offload_off(&u.name).map_err(|e| fail(e.to_string()))?;
                if !link::is_isolated(&u.name) {
                    link::isolate_from_host_stack(&u.name).map_err(|e| fail(e.to_string()))?;
                }
            }
            link::move_address(&u.name, &u.bridge, &u.cidr()).map_err(|e| fail(e.to_string()))?;
            tracing::info!(uplink = %u.name, bridge = %u.bridge, address = %u.cidr(), %mac, "uplink bridge ready");
            let ifindex = fastpath::ifindex(&u.name).unwrap_or(0);
            let host_gateway = link::default_gateway(&u.bridge);
            uplinks.push(UplinkRuntime {
                config: u,
                uplink_ofport,
                mac,
                ifindex,
                host_gateway,
            });
        }
        let mut agent = Agent {
            config,
            ovs: ovs.into(),
            datapath_type,
            port_type,
            port_type_reason,
            uplinks,
            sources,
            accepted: Vec::new(),
            refused: BTreeMap::new(),
            attachments: Vec::new(),
            in_flight: Vec::new(),
            joining: Default::default(),
            settled: Default::default(),
            gone_since: BTreeMap::new(),
            icmp_relay: icmp_relay::IcmpRelay::default(),
            fast_path,
            fast_path_off,
            installed: Default::default(),
            meters: Default::default(),
            meter_support: Default::default(),
            last_full_resync: std::time::Instant::now(),
            metrics: Default::default(),
        };
        agent.adopt_ports()?;
        agent.refresh();
        // After the PortRanges are in (detaching reconciles), before the first reconcile, so
        // that no flow is installed again for a sandbox that is gone.
        agent.sweep_leftovers();
        agent.reconcile_all()?;
        Ok(agent)
    }

    /// Rebuilds the attachments from the sandbox ports recorded in OVSDB.
    fn adopt_ports(&mut self) -> Result<(), ovs::OvsError> {
        for u in &self.uplinks {
            for p in ovsdb::list_sandbox_ports(self.ovs.as_ref(), &u.config.bridge)? {
                let id = |k: &str| p.external_ids.get(k).cloned().unwrap_or_default();
                let (ns, name) = id(ovsdb::EXT_SANDBOX)
                    .split_once('/')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .unwrap_or_default();
                let a = Attachment {
                    key: portiso_agent_api::AttachmentKey {
                        container_id: id(ovsdb::EXT_CONTAINER),
                        ifname: id(ovsdb::EXT_IFNAME),
                    },
                    uplink: u.config.name.clone(),
                    sandbox_name: name,
                    sandbox_namespace: ns,
                    sandbox_uid: p.external_ids.get(ovsdb::EXT_UID).cloned(),
                    netns: id(ovsdb::EXT_NETNS),
                    host_if: p.name.clone(),
                    ofport: p.ofport,
                    labels: BTreeMap::new(),
                    local_ports: None,
                };
                tracing::info!(sandbox = %a.sandbox(), port = %a.host_if, "re-adopted attachment");
                // A port keeps the type it was created with even when the choice changed since:
                // converting would interrupt a running sandbox, and ports of every type work
                // side by side on one userspace bridge (the veth settings are the same for all).
                // The sandbox's next attachment gets the new type.
                if p.iface_type != self.port_type.ovs_type() {
                    tracing::warn!(sandbox = %a.sandbox(), port = %a.host_if, has = %p.iface_type, chosen = self.port_type.ovs_type(), "re-adopted port keeps its earlier port type");
                }
                self.attachments.push(a);
            }
        }
        Ok(())
    }

    /// The node's reserved ports: the configured ones and the host's own ephemeral range.
    pub fn reserved_ports(&self) -> Vec<(u16, u16)> {
        let mut r = self.config.reserved_host_ports.clone();
        r.extend(link::local_port_range());
        r
    }

    /// Takes in what changed in the sources: PortRanges (re-arbitrated) and sandbox labels.
    /// Returns whether the flows may have to change.
    pub fn refresh(&mut self) -> bool {
        let mut changed = false;
        if let Some(ranges) = self.sources.changed_ranges() {
            let names: Vec<String> = self.uplinks.iter().map(|u| u.config.name.clone()).collect();
            let verdicts = arbitrate(&ranges, &names, &self.reserved_ports());
            let mut accepted = Vec::new();
            let mut refused = BTreeMap::new();
            for (range, verdict) in ranges.into_iter().zip(verdicts) {
                match verdict.verdict {
                    Verdict::Accepted => accepted.push(range),
                    Verdict::Refused { reason } => {
                        if self.refused.get(&verdict.key) != Some(&reason) {
                            tracing::warn!(portrange = %verdict.key, %reason, "PortRange refused");
                        }
                        refused.insert(verdict.key, reason);
                    }
                }
            }
            changed |= accepted != self.accepted || refused != self.refused;
            self.accepted = accepted;
            self.refused = refused;
        }
        for a in &mut self.attachments {
            if let Some(labels) = self.sources.labels(&a.sandbox_namespace, &a.sandbox_name) {
                if labels != a.labels {
                    a.labels = labels;
                    changed = true;
                }
            }
        }
        changed
    }

    /// Brings OVS back in line when OVS itself changed under the agent: a restarted
    /// ovs-vswitchd comes back with the ports of its database but no flows, possibly other
    /// port numbers, and a new internal bridge port without the shared address.
    ///
    /// Cheap when nothing changed, however many sandboxes there are: a netlink read of each
    /// bridge's address and one flow count per bridge. Only a count that differs from what
    /// the agent installed (or every [`FULL_RESYNC`]) re-reads the ports and every flow.
    pub fn resync(&mut self) -> Result<(), ovs::OvsError> {
        for u in &self.uplinks {
            let bridge = &u.config.bridge;
            if link::ipv4_cidr(bridge).is_none() {
                tracing::warn!(%bridge, address = %u.config.cidr(), "bridge lost the shared address (OVS re-created it): restored");
                link::move_address(&u.config.name, bridge, &u.config.cidr())?;
                if let Some(gw) = &u.host_gateway {
                    link::restore_default_route(bridge, gw)?;
                }
            }
        }
        if self.last_full_resync.elapsed() < FULL_RESYNC
            && !self.attachment_link_gone()
            && self.flow_counts_match()?
        {
            return Ok(());
        }
        self.resync_in_full()
    }

    /// Whether every bridge holds as many flows as the agent last installed there.
    fn flow_counts_match(&self) -> Result<bool, ovs::OvsError> {
        for u in &self.uplinks {
            let bridge = &u.config.bridge;
            let known = self.installed_cookies(bridge).map(|c| c.len());
            let count = self.ovs.flow_count(bridge)?;
            if known != Some(count) {
                if known.is_some() {
                    tracing::warn!(%bridge, installed = ?known, found = count, "bridge's flows differ from what the agent installed (OVS restarted?): re-reading OVS");
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Re-reads port numbers and every flow from OVS, then reconciles.
    fn resync_in_full(&mut self) -> Result<(), ovs::OvsError> {
        self.installed_cache().clear();
        self.sweep_leftovers();
        let mut all_numbered = true;
        for i in 0..self.uplinks.len() {
            let (name, bridge) = (
                self.uplinks[i].config.name.clone(),
                self.uplinks[i].config.bridge.clone(),
            );
            let ofport = ovsdb::port_ofport(self.ovs.as_ref(), &name)?;
            if ofport != self.uplinks[i].uplink_ofport {
                tracing::warn!(uplink = %name, old = self.uplinks[i].uplink_ofport, new = ofport, "uplink's OVS port number changed (OVS restarted?)");
                self.uplinks[i].uplink_ofport = ofport;
            }
            let ports = ovsdb::list_sandbox_ports(self.ovs.as_ref(), &bridge)?;
            for a in self.attachments.iter_mut().filter(|a| a.uplink == name) {
                match ports.iter().find(|p| p.name == a.host_if) {
                    Some(p) if p.ofport != a.ofport => {
                        tracing::warn!(sandbox = %a.sandbox(), old = a.ofport, new = p.ofport, "sandbox's OVS port number changed (OVS restarted?)");
                        a.ofport = p.ofport;
                    }
                    Some(_) => {}
                    // Not numbered yet: OVS is still opening it.
                    None => all_numbered = false,
                }
            }
        }
        self.reconcile_all()?;
        crate::memory::give_back_freed();
        if all_numbered {
            self.last_full_resync = std::time::Instant::now();
        } else {
            // Forget what was installed, so that the next poll re-reads OVS in full.
            self.installed_cache().clear();
        }
        Ok(())
    }

    fn installed_cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u64>>> {
        self.installed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cookies the agent last installed on `bridge`, if it still trusts that knowledge.
    fn installed_cookies(&self, bridge: &str) -> Option<Vec<u64>> {
        self.installed_cache().get(bridge).cloned()
    }

    /// After a refresh: flows first (the sandbox's new ports must be reachable before its
    /// clients start using them), then each sandbox's ip_local_port_range.
    pub fn apply_refresh(&mut self) -> Result<(), ovs::OvsError> {
        self.reconcile_all()?;
        self.update_local_ports();
        Ok(())
    }

    /// Keeps each sandbox's ip_local_port_range inside the ports it owns now.
    pub(super) fn update_local_ports(&mut self) {
        let owners = state::Owners::new(&self.accepted, &self.attachments);
        let wanted: Vec<Option<(u16, u16)>> = self
            .attachments
            .iter()
            .map(|a| state::local_port_range(&owners.ports_of(a)))
            .collect();
        for (a, want) in self.attachments.iter_mut().zip(wanted) {
            if want.is_some() && want != a.local_ports {
                match link::set_local_ports(&a.netns, want) {
                    Ok(()) => a.local_ports = want,
                    Err(e) => {
                        tracing::warn!(sandbox = %a.sandbox(), error = %e, "could not set ip_local_port_range")
                    }
                }
            }
        }
    }

    /// The compiler's input for one uplink's bridge.
    pub fn bridge_state(&self, u: &UplinkRuntime) -> crate::flows::BridgeState {
        state::bridge_state(
            &u.config,
            u.uplink_ofport,
            &u.mac,
            &self.accepted,
            &self.attachments,
            self.config.sandbox_egress_limit,
            self.meters_available(&u.config.bridge),
            crate::flows::Datapath::of_type(&self.datapath_type),
        )
    }

    /// Brings one bridge's flows in line with the state: one atomic bundle of only the flows
    /// that differ.
    pub fn reconcile(&self, uplink: &UplinkRuntime) -> Result<(), ovs::OvsError> {
        let result = self.reconcile_flows(uplink);
        if result.is_err() {
            self.metrics.reconcile_errors.inc();
        }
        result
    }

    fn reconcile_flows(&self, uplink: &UplinkRuntime) -> Result<(), ovs::OvsError> {
        let bridge_state = self.bridge_state(uplink);
        let desired = compile_bridge(&bridge_state);
        let bridge = &uplink.config.bridge;
        let installed = match self.installed_cookies(bridge) {
            Some(known) => known,
            None => self.ovs.installed_cookies(bridge)?,
        };
        let d = diff(&desired, &installed);
        if !d.is_empty() {
            tracing::info!(bridge = %uplink.config.bridge, add = d.add.len(), delete = d.delete.len(), "flows updated");
        }
        // The fast path never steers a frame where OVS would not: entries that go are removed
        // before the flows change, new ones are added once the flows are in.
        let fast_maps = self.fast_path.as_ref().map(|_| {
            let host_ifs = self
                .attachments
                .iter()
                .filter(|a| a.uplink == uplink.config.name)
                .map(|a| (a.ofport, a.host_if.clone()))
                .collect();
            FastPath::compile(&bridge_state, uplink.ifindex, &host_ifs)
        });
        self.fast_path_step(uplink, fast_maps.as_ref(), FastPath::before_flows);
        let stale_meters = self.meters_before_flows(&bridge_state, bridge)?;
        if let Err(e) = self.ovs.apply(bridge, &d) {
            self.installed_cache().remove(bridge);
            return Err(e);
        }
        self.meters_after_flows(&bridge_state, bridge, stale_meters);
        let mut now_installed = desired.cookies();
        now_installed.sort_unstable();
        now_installed.dedup();
        self.installed_cache().insert(bridge.clone(), now_installed);
        self.fast_path_step(uplink, fast_maps.as_ref(), FastPath::after_flows);
        self.report_programmed();
        // ICMP errors follow the same ports as the flows now installed.
        self.icmp_relay.update(
            &uplink.config.bridge,
            icmp_errors::PortMap::from(&bridge_state),
        );
        Ok(())
    }

    /// Runs one step of the fast path's update. A fast path that fails is turned off (its
    /// links removed), never left half-updated: OVS then carries everything, as it can.
    fn fast_path_step(
        &self,
        uplink: &UplinkRuntime,
        maps: Option<&fastpath::maps::FastPathMaps>,
        step: fn(&mut FastPath, u32, &fastpath::maps::FastPathMaps) -> anyhow::Result<()>,
    ) {
        let (Some(lock), Some(maps)) = (&self.fast_path, maps) else {
            return;
        };
        let mut fp = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = step(&mut fp, uplink.ifindex, maps) {
            tracing::error!(uplink = %uplink.config.name, error = %format!("{e:#}"), "eBPF fast path failed: turned off, OVS carries all traffic");
            fp.turn_off();
        }
    }

    /// Starts, per bridge, the supervised slow path that passes inbound ICMP errors on to the
    /// sandbox (or host) whose traffic they are about.
    pub fn start_icmp_relay(&self) -> std::io::Result<()> {
        for u in &self.uplinks {
            let control_dir = ovs::monitor::control_dir(&self.config.socket);
            self.icmp_relay.start(&u.config.bridge, &control_dir)?;
        }
        Ok(())
    }

    pub fn reconcile_all(&self) -> Result<(), ovs::OvsError> {
        for u in &self.uplinks {
            self.reconcile(u)?;
        }
        Ok(())
    }

    /// Tells the source for how many sandboxes each PortRange is programmed on this node.
    fn report_programmed(&self) {
        let owners = state::Owners::new(&self.accepted, &self.attachments);
        let mut sandboxes: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for (range, a) in owners.pairs() {
            sandboxes
                .entry(ObjectKey::of(range).to_string())
                .or_default()
                .insert(a.sandbox());
        }
        self.sources.report(
            sandboxes
                .into_iter()
                .map(|(k, v)| (k, v.len() as u32))
                .collect(),
        );
    }

    /// "on (…)" or "off: why", for `portiso status`: derived, so never stale after a failure.
    pub fn fast_path_status(&self) -> String {
        match &self.fast_path {
            Some(lock) => lock.lock().unwrap_or_else(|p| p.into_inner()).status(),
            None => self.fast_path_off.clone(),
        }
    }

    pub fn uplink(&self, name: &str) -> Option<&UplinkRuntime> {
        self.uplinks.iter().find(|u| u.config.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::fake::FakeOvs;
    use std::sync::Arc;

    pub(super) fn agent(ovs: Arc<FakeOvs>) -> Agent {
        let config = AgentConfig::parse(
            "uplinks: [{name: eth1, address: 198.51.100.1/24}]\nreservedHostPorts: [\"0-9999\"]",
            "test",
        )
        .unwrap();
        let ranges = crate::model::parse_portranges_yaml(
            "apiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {name: a}\nspec: {selector: {matchLabels: {portiso.io/sandbox: a}}, ports: [{protocol: TCP, start: 10000, end: 10099}]}\n---\napiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {name: b}\nspec: {selector: {matchLabels: {portiso.io/sandbox: b}}, ports: [{protocol: UDP, start: 10100, end: 10163}]}\n",
            "test",
        )
        .unwrap();
        Agent {
            uplinks: vec![UplinkRuntime {
                config: config.uplinks[0].clone(),
                uplink_ofport: 1,
                mac: "02:00:00:00:00:01".into(),
                ifindex: 0,
                host_gateway: None,
            }],
            config,
            ovs,
            datapath_type: "netdev".into(),
            port_type: PortTypeChoice::AfxdpNonpmd,
            port_type_reason: "test".into(),
            sources: Box::new(sources::StaticSources { ranges: None }),
            gone_since: BTreeMap::new(),
            accepted: ranges,
            refused: BTreeMap::new(),
            attachments: vec![attachment("a", 2), attachment("b", 3)],
            in_flight: Vec::new(),
            joining: Default::default(),
            settled: Default::default(),
            icmp_relay: Default::default(),
            fast_path: None,
            fast_path_off: "off: test".into(),
            installed: Default::default(),
            meters: Default::default(),
            meter_support: Default::default(),
            last_full_resync: std::time::Instant::now(),
            metrics: Default::default(),
        }
    }

    fn attachment(name: &str, ofport: u32) -> Attachment {
        Attachment {
            key: portiso_agent_api::AttachmentKey {
                container_id: format!("c-{name}"),
                ifname: "eth0".into(),
            },
            uplink: "eth1".into(),
            sandbox_name: name.into(),
            sandbox_namespace: "default".into(),
            sandbox_uid: None,
            netns: format!("/run/netns/{name}"),
            host_if: format!("pi-{name}"),
            ofport,
            labels: BTreeMap::from([(state::SANDBOX_LABEL.to_string(), name.to_string())]),
            local_ports: None,
        }
    }

    #[test]
    fn each_sandbox_gets_its_own_meter_and_loses_it_with_its_flows() {
        use crate::flows::meters::{icmp_error_meter, slow_path_meter, SANDBOX_SLOW_PATH};
        use crate::flows::meters::{UPLINK_ICMP_ERRORS, UPLINK_SLOW_PATH};
        use crate::flows::MeterRate;
        let ovs = Arc::new(FakeOvs::default());
        let mut a = agent(ovs.clone());
        let limit = MeterRate {
            packets_per_second: 1000,
            burst: 100,
        };
        a.config.sandbox_egress_limit = Some(limit);
        a.reconcile_all().unwrap();
        let meters = |ovs: &FakeOvs| ovs.meter_table.lock().unwrap()["br-eth1"].clone();
        let slow_path = [
            (slow_path_meter(1), UPLINK_SLOW_PATH),
            (slow_path_meter(2), SANDBOX_SLOW_PATH),
            (slow_path_meter(3), SANDBOX_SLOW_PATH),
            (icmp_error_meter(1), UPLINK_ICMP_ERRORS),
        ];
        let with = |egress: &[(u32, MeterRate)]| {
            crate::ovs::fake::Meters::from_iter(slow_path.iter().chain(egress).copied())
        };
        assert_eq!(meters(&ovs), with(&[(2, limit), (3, limit)]));
        let first = ovs.applied.lock().unwrap()[0].1.clone();
        assert!(first
            .add
            .iter()
            .any(|f| f.actions.starts_with("meter:3,") && f.matches.contains("in_port=3")));
        a.attachments.retain(|x| x.sandbox_name != "b");
        a.reconcile_all().unwrap();
        let mut left = with(&[(2, limit)]);
        left.remove(&slow_path_meter(3));
        assert_eq!(meters(&ovs), left);

        // A changed limit changes the meter in place; no limit removes the sandbox's meter
        // (after its flows stop naming it), the slow path's stay.
        let lower = MeterRate {
            packets_per_second: 10,
            burst: 10,
        };
        a.config.sandbox_egress_limit = Some(lower);
        a.reconcile_all().unwrap();
        assert_eq!(meters(&ovs)[&2], lower);
        a.config.sandbox_egress_limit = None;
        a.reconcile_all().unwrap();
        assert_eq!(
            meters(&ovs).into_keys().collect::<Vec<_>>(),
            [slow_path_meter(1), slow_path_meter(2), icmp_error_meter(1)]
        );
    }

    #[test]
    fn meters_another_agent_added_meanwhile_are_changed_not_added_again() {
        let ovs = Arc::new(FakeOvs::default());
        let mut a = agent(ovs.clone());
        a.reconcile_all().unwrap();
        // Another agent of the node (one still stopping) removed all and added one back,
        // behind this agent's knowledge: adding fails with "exists", changing does it.
        let id = crate::flows::meters::slow_path_meter(4);
        ovs.meter_table
            .lock()
            .unwrap()
            .get_mut("br-eth1")
            .unwrap()
            .insert(
                id,
                crate::flows::MeterRate {
                    packets_per_second: 1,
                    burst: 1,
                },
            );
        a.attachments.push(attachment("c", 4));
        a.reconcile_all().unwrap();
        assert_eq!(
            ovs.meter_table.lock().unwrap()["br-eth1"][&id],
            crate::flows::meters::SANDBOX_SLOW_PATH
        );
    }

    #[test]
    fn a_meter_that_cannot_be_removed_does_not_fail_the_reconcile_and_is_tried_again() {
        let ovs = Arc::new(FakeOvs::default());
        let mut a = agent(ovs.clone());
        a.reconcile_all().unwrap();
        ovs.refuse_del_meter
            .store(true, std::sync::atomic::Ordering::SeqCst);
        a.attachments.retain(|x| x.sandbox_name != "b");
        a.reconcile_all().unwrap();
        let gone = crate::flows::meters::slow_path_meter(3);
        let has = |ovs: &FakeOvs| ovs.meter_table.lock().unwrap()["br-eth1"].contains_key(&gone);
        assert!(has(&ovs));
        assert_eq!(a.metrics.reconcile_errors.get(), 1);
        ovs.refuse_del_meter
            .store(false, std::sync::atomic::Ordering::SeqCst);
        a.reconcile_all().unwrap();
        assert!(!has(&ovs));
    }

    #[test]
    fn reconcile_is_idempotent_and_a_detach_touches_only_that_sandbox() {
        let ovs = Arc::new(FakeOvs::default());
        let mut a = agent(ovs.clone());
        a.reconcile_all().unwrap();
        let first = ovs.applied.lock().unwrap()[0].1.clone();
        assert!(first.delete.is_empty() && first.add.len() > 10);

        // Same state again: nothing to change.
        a.reconcile_all().unwrap();
        assert!(ovs.applied.lock().unwrap()[1].1.is_empty());

        // Remove b: only b's flows and the shared ARP-reply flood change.
        a.attachments.retain(|x| x.sandbox_name != "b");
        a.reconcile_all().unwrap();
        let d = ovs.applied.lock().unwrap()[2].1.clone();
        let of_port = |f: &crate::flows::Flow, p: &str| {
            f.actions == format!("output:{p}")
                || f.matches.split(',').any(|m| m == format!("in_port={p}"))
        };
        let b_flows: Vec<_> = first.add.iter().filter(|f| of_port(f, "3")).collect();
        assert_eq!(
            d.add.len(),
            1,
            "only the ARP-reply flood is rewritten: {:?}",
            d.add
        );
        assert!(d.add[0].matches.contains("arp_op=2"));
        assert_eq!(
            d.delete.len(),
            b_flows.len() + 1,
            "b's flows and the old flood: {:?}",
            d.delete
        );
        for f in first.add.iter().filter(|f| of_port(f, "2")) {
            assert!(!d.delete.contains(&f.cookie()), "a's flow deleted: {f}");
        }
    }
}
