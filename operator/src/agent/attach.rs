//! The CNI verbs as the agent carries them out. ADD answers only after the sandbox's flows
//! are installed, and undoes everything it did when any step fails.

use super::state::{self, Attachment};
use super::Agent;
use crate::link::{self, SandboxLink};
use crate::model::overlap::owned_spans;
use crate::model::ObjectKey;
use crate::ovs::bridge as ovsdb;
use crate::ovs::OvsExec;
use portiso_agent_api::{
    code, AgentError, AttachRequest, Attached, AttachmentKey, DetachRequest, Request, Response,
};

/// PortRange keys for a log field: `default/web1,default/web1-udp`.
fn range_keys<'a>(ranges: impl Iterator<Item = &'a crate::model::PortRange>) -> String {
    ranges
        .map(|r| ObjectKey::of(r).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Agent {
    /// Answers one request from the CNI plugin.
    pub fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Add(r) => self.add(&r).map(Response::Attached),
            Request::Check(r) => self.check(&r).map(|_| Response::Done),
            Request::Del(r) => self.del(&r).map(|_| Response::Done),
            Request::Status { uplink } => self.known_uplink(&uplink).map(|_| Response::Done),
            Request::Gc { uplink, valid } => self.gc(&uplink, &valid).map(|_| Response::Done),
            Request::Describe => Ok(Response::Node(self.describe())),
            Request::Trace(r) => self.trace(&r).map(Response::Trace),
        };
        result.unwrap_or_else(Response::Error)
    }

    fn known_uplink(&self, name: &str) -> Result<&super::UplinkRuntime, AgentError> {
        self.uplink(name).ok_or_else(|| {
            let known: Vec<&str> = self.uplinks.iter().map(|u| u.config.name.as_str()).collect();
            AgentError::new(
                code::INVALID_NETWORK_CONFIG,
                format!("uplink {name:?} is not served by this node's portiso agent: set `uplink` to one of {known:?}"),
            )
        })
    }

    fn find(&self, key: &AttachmentKey) -> Option<usize> {
        self.attachments.iter().position(|a| &a.key == key)
    }

    fn attached(&self, a: &Attachment) -> Attached {
        let u = self
            .uplink(&a.uplink)
            .expect("attachments only exist on known uplinks");
        let owners = state::Owners::new(&self.accepted, &self.attachments);
        Attached {
            ifname: a.key.ifname.clone(),
            mac: u.mac.clone(),
            sandbox: a.netns.clone(),
            address: u.config.cidr(),
            gateway: u.config.gateway.map(|g| g.to_string()),
            ports: owners
                .ports_of(a)
                .iter()
                .map(|(p, s, e)| format!("{p} {s}-{e}"))
                .collect(),
        }
    }

    /// ADD in one go, with the agent's lock held throughout (tests, and requests that come
    /// through [`Agent::handle`]); the socket carries ADD out with [`add_unlocked`].
    fn add(&mut self, r: &AttachRequest) -> Result<Attached, AgentError> {
        match self.add_begin(r)? {
            Begun::Already(attached) => Ok(attached),
            Begun::Pending(p) => {
                let made = p.make_port();
                self.add_finish(*p, made)
            }
        }
    }

    /// ADD's first locked step: checks the request and the PortRanges that select the
    /// sandbox, and records the ADD as in flight, so that its ranges count as held and its
    /// veth is not taken for a leftover.
    fn add_begin(&mut self, r: &AttachRequest) -> Result<Begun, AgentError> {
        let started = std::time::Instant::now();
        let uplink = self.known_uplink(&r.uplink)?.clone();
        if let Some(i) = self.find(&r.key) {
            // A repeated ADD for the same attachment: it is already there.
            return Ok(Begun::Already(self.attached(&self.attachments[i].clone())));
        }
        if self.in_flight.iter().any(|f| f.key == r.key) {
            return Err(AgentError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "an ADD of container {} interface {} is already being carried out: try again",
                    r.key.container_id, r.key.ifname
                ),
            ));
        }
        if !std::path::Path::new(&r.netns).exists() {
            return Err(AgentError::new(
                code::INTERNAL,
                format!(
                    "network namespace {:?} does not exist: the runtime must create it before ADD",
                    r.netns
                ),
            ));
        }
        let sandbox = format!("{}/{}", r.sandbox_namespace, r.sandbox_name);
        let labels = self
            .sources
            .labels(&r.sandbox_namespace, &r.sandbox_name)
            .ok_or_else(|| {
                AgentError::new(
                    code::TRY_AGAIN_LATER,
                    format!("sandbox {sandbox} is not known on this node yet (no such pod scheduled here): try again"),
                )
            })?;
        let selecting: Vec<_> = self
            .accepted
            .iter()
            .filter(|pr| state::selects(pr, &r.sandbox_namespace, &labels, &r.uplink))
            .collect();
        if selecting.is_empty() {
            let refused: Vec<String> = self
                .refused
                .iter()
                .map(|(k, why)| format!("{k} ({why})"))
                .collect();
            return Err(AgentError {
                code: code::INTERNAL,
                msg: format!(
                    "no accepted PortRange selects sandbox {sandbox} on uplink {}: create one in namespace {} with selector matchLabels {{{}: {}}}",
                    r.uplink, r.sandbox_namespace, state::SANDBOX_LABEL, r.sandbox_name
                ),
                details: if refused.is_empty() { String::new() } else { format!("refused PortRanges: {}", refused.join("; ")) },
            });
        }
        let owners = state::Owners::new(&self.accepted, &self.attachments);
        for pr in &selecting {
            let key = ObjectKey::of(pr);
            let holder = owners
                .holder(&r.uplink, &key)
                .map(|a| a.sandbox())
                .or_else(|| {
                    self.in_flight
                        .iter()
                        .find(|f| f.uplink == r.uplink && f.ranges.contains(&key))
                        .map(|f| format!("{} (being attached)", f.sandbox))
                });
            if let Some(holder) = holder {
                return Err(AgentError::new(
                    code::INTERNAL,
                    format!(
                        "PortRange {key} already gives its ports on uplink {} to sandbox {holder}: one range serves one sandbox per uplink; give {sandbox} a PortRange of its own",
                        r.uplink,
                    ),
                ));
            }
        }
        let ports: Vec<_> = selecting
            .iter()
            .flat_map(|pr| owned_spans(pr))
            .map(|(_, p, s, e)| (p, s, e))
            .collect();
        let host_if = link::host_if_name(&r.key.container_id, &r.key.ifname);
        self.in_flight.push(InFlight {
            key: r.key.clone(),
            uplink: r.uplink.clone(),
            sandbox: sandbox.clone(),
            ranges: selecting.iter().map(|pr| ObjectKey::of(pr)).collect(),
            host_if: host_if.clone(),
        });
        let portrange = range_keys(selecting.iter().copied());
        Ok(Begun::Pending(Box::new(PendingAttach {
            request: r.clone(),
            sandbox,
            portrange,
            uplink,
            host_if,
            local_ports: state::local_port_range(&ports),
            labels,
            netdev: self.datapath_type == "netdev",
            ovs_type: self.port_type.ovs_type().into(),
            ovs: self.ovs.clone(),
            started,
            checked: started.elapsed(),
        })))
    }

    /// ADD's second and third locked steps in one (see [`add_unlocked`]).
    fn add_finish(
        &mut self,
        p: PendingAttach,
        made: Result<Made, AgentError>,
    ) -> Result<Attached, AgentError> {
        let entered = self.add_enter(&p, made)?;
        self.add_flows(p, entered)
    }

    /// ADD's second locked step: the port is made (or not); the sandbox joins the state, still
    /// in flight until its flows are in.
    fn add_enter(
        &mut self,
        p: &PendingAttach,
        made: Result<Made, AgentError>,
    ) -> Result<Entered, AgentError> {
        let made = made.inspect_err(|_| self.in_flight.retain(|f| f.key != p.request.key))?;
        let r = &p.request;
        self.attachments.push(Attachment {
            key: r.key.clone(),
            uplink: r.uplink.clone(),
            sandbox_name: r.sandbox_name.clone(),
            sandbox_namespace: r.sandbox_namespace.clone(),
            sandbox_uid: r.sandbox_uid.clone(),
            netns: r.netns.clone(),
            host_if: p.host_if.clone(),
            ofport: made.ofport,
            local_ports: p.local_ports,
            labels: p.labels.clone(),
        });
        self.attachments_joined += 1;
        Ok(Entered {
            made,
            joined: self.attachments_joined,
        })
    }

    /// ADD's third locked step: the sandbox's flows, unless a reconcile of its bridge that
    /// began after it joined put them in already (concurrent ADDs share one bundle that way);
    /// then the ADD is out of flight. Undoes everything on failure.
    fn add_flows(&mut self, p: PendingAttach, e: Entered) -> Result<Attached, AgentError> {
        let r = &p.request;
        self.in_flight.retain(|f| f.key != r.key);
        let covered = self.flows_cover().get(&r.uplink).copied().unwrap_or(0) >= e.joined;
        if !covered {
            if let Err(err) = self.reconcile(&p.uplink) {
                self.attachments.retain(|a| a.key != r.key);
                let _ = ovsdb::del_port(self.ovs.as_ref(), &p.uplink.config.bridge, &p.host_if);
                let _ = link::delete(&p.host_if);
                let _ = self.reconcile(&p.uplink);
                return Err(p.attach_failed(err.to_string()));
            }
        }
        let Some(attachment) = self.find(&r.key).map(|i| self.attachments[i].clone()) else {
            // The leftover sweep or the gone-sandbox collector took it out meanwhile.
            return Err(AgentError::new(
                code::TRY_AGAIN_LATER,
                format!("{} went away while it was being attached", p.sandbox),
            ));
        };
        // Where an ADD's time goes, in milliseconds since the request was taken up.
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::info!(sandbox = %p.sandbox, portrange = %p.portrange, uplink = %r.uplink, port = %p.host_if, ofport = e.made.ofport,
            checked_ms = ms(p.checked), linked_ms = ms(e.made.linked), ported_ms = ms(e.made.ported), total_ms = ms(p.started.elapsed()),
            flows_by_another = covered, "sandbox attached");
        Ok(self.attached(&attachment))
    }

    /// Whether an ADD should wait: the source may still deliver the sandbox's labels or a
    /// PortRange for it (cluster mode, where pods and PortRanges are created concurrently).
    pub fn should_wait_for(&self, r: &AttachRequest) -> bool {
        if !self.sources.wait_for_ranges() || self.find(&r.key).is_some() {
            return false;
        }
        match self.sources.labels(&r.sandbox_namespace, &r.sandbox_name) {
            None => true,
            Some(labels) => !self
                .accepted
                .iter()
                .any(|pr| state::selects(pr, &r.sandbox_namespace, &labels, &r.uplink)),
        }
    }

    /// Detaches sandboxes whose source says they are gone (cluster mode: the pod was deleted
    /// and the runtime never sent DEL, as Multus never sends GC), after a grace period so that
    /// a pod still being created is never touched.
    pub fn collect_gone(&mut self) {
        let now = std::time::Instant::now();
        let gone: Vec<AttachmentKey> = self
            .attachments
            .iter()
            .filter(|a| {
                self.sources.gone(
                    &a.sandbox_namespace,
                    &a.sandbox_name,
                    a.sandbox_uid.as_deref(),
                )
            })
            .map(|a| a.key.clone())
            .collect();
        self.gone_since.retain(|k, _| gone.contains(k));
        for key in gone {
            let since = *self.gone_since.entry(key.clone()).or_insert(now);
            if now.duration_since(since) < self.config.gc_grace {
                continue;
            }
            if let Some(i) = self.find(&key) {
                let a = self.attachments.remove(i);
                tracing::info!(sandbox = %a.sandbox(), "sandbox is gone: removing its port and flows");
                if let Err(e) = self.detach(&a) {
                    tracing::warn!(sandbox = %a.sandbox(), error = %e, "could not remove a gone sandbox; will retry");
                    self.attachments.push(a);
                } else {
                    self.gone_since.remove(&key);
                }
            }
        }
    }

    fn check(&self, r: &AttachRequest) -> Result<(), AgentError> {
        self.known_uplink(&r.uplink)?;
        let a = self
            .find(&r.key)
            .map(|i| &self.attachments[i])
            .ok_or_else(|| {
                AgentError::new(
                    code::INTERNAL,
                    format!(
                        "container {} interface {} is not attached to uplink {}",
                        r.key.container_id, r.key.ifname, r.uplink
                    ),
                )
            })?;
        if !link::exists(&a.host_if) || !link::sandbox_has(&a.netns, &a.key.ifname) {
            return Err(AgentError::new(
                code::INTERNAL,
                format!(
                    "the interface of {} is gone (host side {}, sandbox side {} in {})",
                    a.sandbox(),
                    a.host_if,
                    a.key.ifname,
                    a.netns
                ),
            ));
        }
        Ok(())
    }

    fn del(&mut self, r: &DetachRequest) -> Result<(), AgentError> {
        // DEL succeeds when things are already gone, and even for an uplink we do not know:
        // there is nothing of ours to remove then.
        let Some(i) = self.find(&r.key) else {
            if self.in_flight.iter().any(|f| f.key == r.key) {
                // Its ADD is making the veth and port right now (the socket waits for that
                // before it hands a DEL over; see `when_settled`).
                return Err(AgentError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "container {} interface {} is being attached right now: try DEL again",
                        r.key.container_id, r.key.ifname
                    ),
                ));
            }
            let _ = link::delete(&link::host_if_name(&r.key.container_id, &r.key.ifname));
            return Ok(());
        };
        let a = self.attachments.remove(i);
        let result = self.detach(&a);
        if result.is_err() {
            // Keep it, so that the runtime's retry of DEL finds it again.
            self.attachments.push(a);
        }
        result
    }

    /// Removes an attachment already taken out of `attachments`: flows first, so that no
    /// packet is sent to a port that is going away, then the port and the veth.
    fn detach(&self, a: &Attachment) -> Result<(), AgentError> {
        let fail = |e: String| {
            AgentError::new(
                code::TRY_AGAIN_LATER,
                format!("could not detach {}: {e}", a.sandbox()),
            )
        };
        if let Some(u) = self.uplink(&a.uplink) {
            self.reconcile(u).map_err(|e| fail(e.to_string()))?;
            ovsdb::del_port(self.ovs.as_ref(), &u.config.bridge, &a.host_if)
                .map_err(|e| fail(e.to_string()))?;
        }
        link::delete(&a.host_if).map_err(|e| fail(e.to_string()))?;
        // The ranges it held: those that select it (it holds nothing once out of `attachments`).
        let held = state::Owners::new(&self.accepted, std::slice::from_ref(a));
        let portrange = range_keys(held.held_by(a));
        tracing::info!(sandbox = %a.sandbox(), %portrange, port = %a.host_if, "sandbox detached");
        self.metrics.detached.inc();
        Ok(())
    }

    fn gc(&mut self, uplink: &str, valid: &[AttachmentKey]) -> Result<(), AgentError> {
        self.known_uplink(uplink)?;
        let (stale, keep): (Vec<Attachment>, Vec<Attachment>) =
            std::mem::take(&mut self.attachments)
                .into_iter()
                .partition(|a| a.uplink == uplink && !valid.contains(&a.key));
        self.attachments = keep;
        for a in &stale {
            self.detach(a)?;
        }
        Ok(())
    }
}

/// An ADD between [`Agent::add_begin`] and [`Agent::add_finish`], as the agent remembers it.
#[derive(Debug)]
pub(super) struct InFlight {
    key: AttachmentKey,
    uplink: String,
    /// `namespace/name`.
    sandbox: String,
    /// The PortRanges it will hold.
    ranges: Vec<ObjectKey>,
    pub(super) host_if: String,
}

/// What [`Agent::add_begin`] found.
enum Begun {
    /// The attachment exists (a repeated ADD).
    Already(Attached),
    Pending(Box<PendingAttach>),
}

/// Everything an ADD needs to make the sandbox's veth and OVS port without the agent.
struct PendingAttach {
    request: AttachRequest,
    sandbox: String,
    portrange: String,
    uplink: super::UplinkRuntime,
    host_if: String,
    local_ports: Option<(u16, u16)>,
    labels: std::collections::BTreeMap<String, String>,
    netdev: bool,
    ovs_type: String,
    ovs: std::sync::Arc<dyn OvsExec>,
    started: std::time::Instant,
    checked: std::time::Duration,
}

/// An ADD whose sandbox joined the state: its port, and its place in the order of joining
/// (compared with the reconcile that covered the bridge last, see `Agent::flows_cover`).
struct Entered {
    made: Made,
    joined: u64,
}

/// The port an ADD made, and when (since the request was taken up).
struct Made {
    ofport: u32,
    linked: std::time::Duration,
    ported: std::time::Duration,
}

impl PendingAttach {
    fn attach_failed(&self, e: String) -> AgentError {
        AgentError::new(
            code::INTERNAL,
            format!(
                "could not attach {} to bridge {}: {e}",
                self.sandbox, self.uplink.config.bridge
            ),
        )
    }

    /// The veth and the OVS port; everything made is undone when a step fails. Runs without
    /// the agent's lock: `ovs-vsctl add-port` waits for ovs-vswitchd to reconfigure, which
    /// walks every port, and ADDs that wait together share its passes.
    fn make_port(&self) -> Result<Made, AgentError> {
        let r = &self.request;
        link::create(&SandboxLink {
            host_if: &self.host_if,
            netns: &r.netns,
            ifname: &r.key.ifname,
            mac: &self.uplink.mac,
            cidr: &self.uplink.config.cidr(),
            gateway: self.uplink.config.gateway.map(|g| g.to_string()),
            local_ports: self.local_ports,
            checksum_offload_off: self.netdev,
            isolate_host_end: self.netdev,
        })
        .map_err(|e| {
            AgentError::new(
                code::INTERNAL,
                format!("could not create the interface of {}: {e}", self.sandbox),
            )
        })?;
        let linked = self.started.elapsed();
        let mut ids = vec![
            (ovsdb::EXT_CONTAINER, r.key.container_id.as_str()),
            (ovsdb::EXT_IFNAME, r.key.ifname.as_str()),
            (ovsdb::EXT_NETNS, r.netns.as_str()),
            (ovsdb::EXT_UPLINK, r.uplink.as_str()),
            (ovsdb::EXT_SANDBOX, self.sandbox.as_str()),
        ];
        if let Some(uid) = &r.sandbox_uid {
            ids.push((ovsdb::EXT_UID, uid.as_str()));
        }
        let kind = ovsdb::PortKind {
            ovs_type: self.ovs_type.clone(),
            n_rxq: link::rx_queues(&self.host_if),
        };
        let bridge = &self.uplink.config.bridge;
        let ofport = ovsdb::add_sandbox_port(self.ovs.as_ref(), bridge, &self.host_if, &kind, &ids)
            .map_err(|e| {
                let _ = ovsdb::del_port(self.ovs.as_ref(), bridge, &self.host_if);
                let _ = link::delete(&self.host_if);
                self.attach_failed(e.to_string())
            })?;
        Ok(Made {
            ofport,
            linked,
            ported: self.started.elapsed(),
        })
    }
}

/// How long a DEL or a repeated ADD waits for an ADD of the same attachment in flight.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `f` with the agent's lock once no ADD of `key` is in flight (or after
/// [`IN_FLIGHT_WAIT`], when `f` answers for itself): a repeated ADD then finds the
/// attachment made, a DEL removes it whole — as if the ADD had held the lock throughout.
pub(super) fn when_settled<T>(
    agent: &std::sync::Mutex<Agent>,
    key: &AttachmentKey,
    f: impl FnOnce(&mut Agent) -> T,
) -> T {
    let deadline = std::time::Instant::now() + IN_FLIGHT_WAIT;
    loop {
        let mut a = super::server::lock(agent);
        if !a.in_flight.iter().any(|f| &f.key == key) || std::time::Instant::now() >= deadline {
            return f(&mut a);
        }
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// ADD as the socket carries it out: checked and recorded under the agent's lock, the veth
/// and OVS port made without it (so that concurrent ADDs overlap where OVS is slow), then the
/// sandbox joins the state and its flows are installed under it again, in two steps.
pub(super) fn add_unlocked(
    agent: &std::sync::Mutex<Agent>,
    r: &AttachRequest,
) -> Result<Attached, AgentError> {
    let begun = when_settled(agent, &r.key, |a| a.add_begin(r))?;
    match begun {
        Begun::Already(attached) => Ok(attached),
        Begun::Pending(p) => {
            let made = p.make_port();
            let entered = super::server::lock(agent).add_enter(&p, made)?;
            // The lock is let go between the two steps, so that the ADDs whose ports were
            // made meanwhile join too and the next reconcile installs all their flows.
            super::server::lock(agent).add_flows(*p, entered)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::fake::FakeOvs;
    use std::sync::Arc;
    use std::time::Duration;

    fn request(container: &str, sandbox: &str) -> AttachRequest {
        AttachRequest {
            key: AttachmentKey {
                container_id: container.into(),
                ifname: "eth0".into(),
            },
            // Any path that exists: the ADD's port is not made here.
            netns: "/proc/self/ns/net".into(),
            uplink: "eth1".into(),
            sandbox_name: sandbox.into(),
            sandbox_namespace: "default".into(),
            sandbox_uid: None,
        }
    }

    fn made(ofport: u32) -> Result<Made, AgentError> {
        Ok(Made {
            ofport,
            linked: Duration::ZERO,
            ported: Duration::ZERO,
        })
    }

    fn begin(agent: &mut Agent, r: &AttachRequest) -> PendingAttach {
        match agent.add_begin(r) {
            Ok(Begun::Pending(p)) => *p,
            Ok(Begun::Already(a)) => panic!("already attached: {a:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    fn refused(agent: &mut Agent, r: &AttachRequest) -> AgentError {
        match agent.add_begin(r) {
            Err(e) => e,
            Ok(_) => panic!("ADD of {:?} was taken up", r.key),
        }
    }

    #[test]
    fn an_add_in_flight_holds_its_ranges_and_its_attachment() {
        let ovs = Arc::new(FakeOvs::default());
        let mut agent = super::super::tests::agent(ovs.clone());
        agent.attachments.clear();
        let first = request("c1", "a");
        let pending = begin(&mut agent, &first);
        let host_if = pending.host_if.clone();

        // The same ADD again, and another sandbox the same PortRange selects, while the
        // first one's port is being made.
        let again = refused(&mut agent, &first);
        assert_eq!(again.code, code::TRY_AGAIN_LATER, "{again}");
        let other = refused(&mut agent, &request("c2", "a"));
        assert!(
            other.msg.contains("default/a") && other.msg.contains("being attached"),
            "{other}"
        );

        // A DEL meanwhile (the socket waits for the ADD before it hands one over).
        let del = DetachRequest {
            key: first.key.clone(),
            netns: None,
            uplink: "eth1".into(),
        };
        let e = agent.del(&del).expect_err("DEL of an ADD in flight");
        assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
        agent.add_finish(pending, made(7)).expect("attached");
        assert!(agent.in_flight.is_empty());
        agent.del(&del).expect("DEL after the ADD");
        assert!(agent.attachments.is_empty());
        let removed = ovs
            .vsctl_calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.contains(&"del-port".to_string()) && c.contains(&host_if));
        assert!(removed, "the DEL removed the port the ADD made");

        // Nothing is held any more: the next ADD attaches with the port it made.
        let pending = begin(&mut agent, &request("c2", "a"));
        let attached = agent.add_finish(pending, made(8)).expect("attached");
        assert_eq!(attached.ports, ["TCP 10000-10099"]);
        assert_eq!(agent.attachments.len(), 1);
        assert_eq!(agent.attachments[0].ofport, 8);
        assert!(agent.in_flight.is_empty());
    }

    #[test]
    fn adds_that_join_before_one_reconcile_share_its_bundle() {
        let ovs = Arc::new(FakeOvs::default());
        let mut agent = super::super::tests::agent(ovs.clone());
        agent.attachments.clear();
        let (a, b) = (request("c1", "a"), request("c2", "b"));
        let (pa, pb) = (begin(&mut agent, &a), begin(&mut agent, &b));
        let ea = agent.add_enter(&pa, made(2)).expect("a joins");
        let eb = agent.add_enter(&pb, made(3)).expect("b joins");
        let bundles = |ovs: &FakeOvs| ovs.applied.lock().unwrap().len();
        let before = bundles(&ovs);
        agent.add_flows(pa, ea).expect("a's flows");
        assert_eq!(
            bundles(&ovs),
            before + 1,
            "a's ADD installs a's and b's flows"
        );
        agent.add_flows(pb, eb).expect("b attached");
        assert_eq!(bundles(&ovs), before + 1, "b's flows came with a's bundle");
        assert!(agent.in_flight.is_empty());
        assert_eq!(agent.attachments.len(), 2);

        // One that joins after that reconcile began gets a bundle of its own.
        agent
            .del(&DetachRequest {
                key: b.key.clone(),
                netns: None,
                uplink: "eth1".into(),
            })
            .expect("DEL");
        let before = bundles(&ovs);
        let pb = begin(&mut agent, &b);
        let eb = agent.add_enter(&pb, made(4)).expect("b joins again");
        agent.add_flows(pb, eb).expect("b attached again");
        assert_eq!(bundles(&ovs), before + 1);
    }

    #[test]
    fn a_failed_port_takes_the_add_out_of_flight() {
        let ovs = Arc::new(FakeOvs::default());
        let mut agent = super::super::tests::agent(ovs);
        agent.attachments.clear();
        let pending = begin(&mut agent, &request("c1", "b"));
        let failed = Err(AgentError::new(code::INTERNAL, "no veth".to_string()));
        assert!(agent.add_finish(pending, failed).is_err());
        assert!(agent.in_flight.is_empty());
        // And the range is free again.
        begin(&mut agent, &request("c3", "b"));
    }
}
