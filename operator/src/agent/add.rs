//! CNI ADD, carried out so that concurrent ADDs overlap where OVS is slow.
//!
//! `ovs-vsctl add-port` waits until ovs-vswitchd has reconfigured, and every reconfiguration
//! walks every port of the node: with hundreds of sandboxes one ADD spends most of its time
//! there, and the flow bundle that follows waits for the same busy thread. So an ADD runs in
//! three steps, and only the first and last hold the agent's lock:
//!
//! 1. [`Agent::add_begin`]: the request is checked and recorded as in flight: its PortRanges
//!    count as held, its veth and port are never taken for leftovers, and a DEL or a repeated
//!    ADD of the same attachment waits until it is answered ([`when_settled`]);
//! 2. [`PendingAttach::make_port`], without the lock: the veth and the OVS port, so that the
//!    ADDs waiting on ovs-vswitchd wait together and share its passes;
//! 3. the sandbox is queued to join ([`Joining`], without the lock), then
//!    [`Agent::add_join`] takes the lock, lets every queued sandbox join the state and
//!    installs their flows in one reconcile (a group commit); an ADD whose sandbox another one
//!    took in finds its answer waiting.
//!
//! Everything an ADD made is undone when it fails, also when it unwinds ([`FlightGuard`]).

use super::attach::range_keys;
use super::state::{self, Attachment};
use super::Agent;
use crate::link::{self, SandboxLink};
use crate::model::overlap::owned_spans;
use crate::model::ObjectKey;
use crate::ovs::bridge as ovsdb;
use crate::ovs::OvsExec;
use portiso_agent_api::{code, AgentError, AttachRequest, Attached, AttachmentKey};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a DEL or a repeated ADD waits for an ADD of the same attachment in flight (below
/// the CNI plugin's default timeout, so that the runtime gets the agent's own answer).
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(20);

/// An ADD between [`Agent::add_begin`] and its answer, as the agent remembers it.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) key: AttachmentKey,
    uplink: String,
    /// `namespace/name`.
    sandbox: String,
    /// The PortRanges it will hold.
    ranges: Vec<ObjectKey>,
    pub(super) host_if: String,
}

/// Sandboxes whose ports are made, queued to join the state; filled without the agent's lock
/// and emptied with it.
pub(super) type Joining = Arc<Mutex<Vec<Attachment>>>;

/// The answers of ADDs whose sandbox joined with another ADD's group, until their own
/// thread takes them up.
pub(super) type Settled = BTreeMap<AttachmentKey, Result<(), AgentError>>;

/// What [`Agent::add_begin`] found.
pub(super) enum Begun {
    /// The attachment exists (a repeated ADD).
    Already(Attached),
    Pending(Box<PendingAttach>),
}

/// Everything an ADD needs to make the sandbox's veth and OVS port without the agent.
pub(super) struct PendingAttach {
    request: AttachRequest,
    sandbox: String,
    portrange: String,
    uplink: super::UplinkRuntime,
    host_if: String,
    local_ports: Option<(u16, u16)>,
    labels: BTreeMap<String, String>,
    netdev: bool,
    ovs_type: String,
    ovs: Arc<dyn OvsExec>,
    joining: Joining,
    started: Instant,
    checked: Duration,
}

/// The port an ADD made, and when (since the request was taken up).
pub(super) struct Made {
    pub(super) ofport: u32,
    pub(super) linked: Duration,
    pub(super) ported: Duration,
}

impl Agent {
    /// ADD's first locked step: checks the request and the PortRanges that select the
    /// sandbox, and records the ADD as in flight, so that its ranges count as held and its
    /// veth is not taken for a leftover.
    pub(super) fn add_begin(&mut self, r: &AttachRequest) -> Result<Begun, AgentError> {
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
            // An ADD in flight may still fail and free the range: the runtime may try again.
            let holder = match owners.holder(&r.uplink, &key) {
                Some(a) => Some((a.sandbox(), code::INTERNAL)),
                None => self
                    .in_flight
                    .iter()
                    .find(|f| f.uplink == r.uplink && f.ranges.contains(&key))
                    .map(|f| {
                        (
                            format!("{} (being attached)", f.sandbox),
                            code::TRY_AGAIN_LATER,
                        )
                    }),
            };
            if let Some((holder, code)) = holder {
                return Err(AgentError::new(
                    code,
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
            joining: self.joining.clone(),
            started,
            checked: started.elapsed(),
        })))
    }

    /// ADD's last step (with the agent's lock): unless another ADD already took this one's
    /// sandbox in, every queued sandbox joins the state and their bridges are reconciled once;
    /// a sandbox whose reconcile failed is taken out again with its port and veth. Answers
    /// this ADD; the others find their answers in `settled`.
    pub(super) fn add_join(
        &mut self,
        p: &PendingAttach,
        made: &Made,
    ) -> Result<Attached, AgentError> {
        let key = &p.request.key;
        if !self.settled.contains_key(key) {
            self.join_queued();
        }
        let result = self.settled.remove(key).unwrap_or_else(|| {
            Err(AgentError::new(
                code::INTERNAL,
                format!("{} was neither queued nor taken in", p.sandbox),
            ))
        });
        self.in_flight.retain(|f| &f.key != key);
        result?;
        let Some(attachment) = self.find(key).map(|i| self.attachments[i].clone()) else {
            // The leftover sweep or the gone-sandbox collector took it out meanwhile.
            return Err(AgentError::new(
                code::TRY_AGAIN_LATER,
                format!("{} went away while it was being attached", p.sandbox),
            ));
        };
        // Where an ADD's time goes, in milliseconds since the request was taken up.
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(sandbox = %p.sandbox, portrange = %p.portrange, uplink = %p.request.uplink, port = %p.host_if, ofport = made.ofport,
            checked_ms = ms(p.checked), linked_ms = ms(made.linked), ported_ms = ms(made.ported), total_ms = ms(p.started.elapsed()),
            "sandbox attached");
        Ok(self.attached(&attachment))
    }

    /// Lets every queued sandbox join and installs their flows: one reconcile per bridge for
    /// all of them. Each one's outcome is left in `settled` for its ADD.
    fn join_queued(&mut self) {
        let group: Vec<Attachment> =
            std::mem::take(&mut *self.joining.lock().unwrap_or_else(|p| p.into_inner()));
        if group.len() > 1 {
            let sandboxes: Vec<String> = group.iter().map(|a| a.sandbox()).collect();
            tracing::info!(count = group.len(), sandboxes = %sandboxes.join(","), "sandboxes joined together: one reconcile for all");
        }
        let mut uplinks: Vec<String> = group.iter().map(|a| a.uplink.clone()).collect();
        uplinks.sort();
        uplinks.dedup();
        self.attachments.extend(group.iter().cloned());
        // PortRanges may have changed while the ports were made.
        self.update_local_ports();
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        for name in &uplinks {
            let Some(u) = self.uplink(name).cloned() else {
                continue;
            };
            if let Err(e) = self.reconcile(&u) {
                failed.insert(
                    name.clone(),
                    format!("could not attach to bridge {}: {e}", u.config.bridge),
                );
            }
        }
        for a in &group {
            let result = match failed.get(&a.uplink) {
                None => Ok(()),
                Some(why) => {
                    self.attachments.retain(|x| x.key != a.key);
                    let bridge = self.uplink(&a.uplink).map(|u| u.config.bridge.clone());
                    if let Some(bridge) = bridge {
                        let _ = ovsdb::del_port(self.ovs.as_ref(), &bridge, &a.host_if);
                    }
                    let _ = link::delete(&a.host_if);
                    Err(AgentError::new(
                        code::INTERNAL,
                        format!("{}: {why}", a.sandbox()),
                    ))
                }
            };
            self.settled.insert(a.key.clone(), result);
        }
        for name in failed.keys() {
            // Best effort: the flows as they were before the group came.
            if let Some(u) = self.uplink(name).cloned() {
                let _ = self.reconcile(&u);
            }
        }
    }
}

impl PendingAttach {
    /// The veth and the OVS port; everything made is undone when a step fails. Runs without
    /// the agent's lock (see the module's documentation).
    pub(super) fn make_port(&self) -> Result<Made, AgentError> {
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
                AgentError::new(
                    code::INTERNAL,
                    format!("could not attach {} to bridge {bridge}: {e}", self.sandbox),
                )
            })?;
        Ok(Made {
            ofport,
            linked,
            ported: self.started.elapsed(),
        })
    }

    /// Queues the sandbox, with the port made, to join the state (no agent lock needed).
    pub(super) fn queue_to_join(&self, made: &Made) {
        let r = &self.request;
        self.joining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Attachment {
                key: r.key.clone(),
                uplink: r.uplink.clone(),
                sandbox_name: r.sandbox_name.clone(),
                sandbox_namespace: r.sandbox_namespace.clone(),
                sandbox_uid: r.sandbox_uid.clone(),
                netns: r.netns.clone(),
                host_if: self.host_if.clone(),
                ofport: made.ofport,
                local_ports: self.local_ports,
                labels: self.labels.clone(),
            });
    }
}

/// Runs `f` with the agent's lock once no ADD of `key` is in flight (or after
/// [`IN_FLIGHT_WAIT`], when `f` answers for itself): a repeated ADD then finds the
/// attachment made, a DEL removes it whole — as if the ADD had held the lock throughout.
pub(super) fn when_settled<T>(
    agent: &Mutex<Agent>,
    key: &AttachmentKey,
    f: impl FnOnce(&mut Agent) -> T,
) -> T {
    let deadline = Instant::now() + IN_FLIGHT_WAIT;
    loop {
        let mut a = super::server::lock(agent);
        if !a.in_flight.iter().any(|f| &f.key == key) || Instant::now() >= deadline {
            return f(&mut a);
        }
        drop(a);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Takes an ADD that unwinds (a panic) out of flight, with what it made, so that nothing
/// waits on it or holds its PortRanges for ever.
struct FlightGuard<'a> {
    agent: &'a Mutex<Agent>,
    key: AttachmentKey,
    host_if: String,
    bridge: String,
    armed: bool,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut a = super::server::lock(self.agent);
        let key = &self.key;
        a.in_flight.retain(|f| &f.key != key);
        a.settled.remove(key);
        a.joining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|x| &x.key != key);
        if a.find(key).is_none() {
            let _ = ovsdb::del_port(a.ovs.as_ref(), &self.bridge, &self.host_if);
            let _ = link::delete(&self.host_if);
        }
        tracing::warn!(container = %key.container_id, port = %self.host_if, "an ADD unwound: taken out of flight");
    }
}

/// ADD as the socket carries it out, in the steps of the module's documentation.
pub(super) fn add_unlocked(
    agent: &Mutex<Agent>,
    r: &AttachRequest,
) -> Result<Attached, AgentError> {
    let begun = when_settled(agent, &r.key, |a| a.add_begin(r))?;
    let p = match begun {
        Begun::Already(attached) => return Ok(attached),
        Begun::Pending(p) => p,
    };
    let mut guard = FlightGuard {
        agent,
        key: r.key.clone(),
        host_if: p.host_if.clone(),
        bridge: p.uplink.config.bridge.clone(),
        armed: true,
    };
    let result = match p.make_port() {
        Err(e) => {
            super::server::lock(agent)
                .in_flight
                .retain(|f| f.key != r.key);
            Err(e)
        }
        Ok(made) => {
            p.queue_to_join(&made);
            super::server::lock(agent).add_join(&p, &made)
        }
    };
    guard.armed = false;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::fake::FakeOvs;
    use portiso_agent_api::DetachRequest;

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

    fn made(ofport: u32) -> Made {
        Made {
            ofport,
            linked: Duration::ZERO,
            ported: Duration::ZERO,
        }
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

    fn empty_agent(ovs: &Arc<FakeOvs>) -> Agent {
        let mut agent = super::super::tests::agent(ovs.clone());
        agent.attachments.clear();
        agent
    }

    fn bundles(ovs: &FakeOvs) -> usize {
        ovs.applied.lock().unwrap().len()
    }

    #[test]
    fn an_add_in_flight_holds_its_ranges_and_its_attachment() {
        let ovs = Arc::new(FakeOvs::default());
        let mut agent = empty_agent(&ovs);
        let first = request("c1", "a");
        let pending = begin(&mut agent, &first);

        // The same ADD again, and another sandbox the same PortRange selects, while the
        // first one's port is being made.
        let again = refused(&mut agent, &first);
        assert_eq!(again.code, code::TRY_AGAIN_LATER, "{again}");
        let other = refused(&mut agent, &request("c2", "a"));
        assert!(
            other.msg.contains("default/a") && other.msg.contains("being attached"),
            "{other}"
        );
        assert_eq!(
            other.code,
            code::TRY_AGAIN_LATER,
            "the holder may still fail"
        );

        // A DEL meanwhile (the socket waits for the ADD before it hands one over).
        let del = DetachRequest {
            key: first.key.clone(),
            netns: None,
            uplink: "eth1".into(),
        };
        let e = agent.del(&del).expect_err("DEL of an ADD in flight");
        assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
        pending.queue_to_join(&made(7));
        let attached = agent.add_join(&pending, &made(7)).expect("attached");
        assert_eq!(attached.ports, ["TCP 10000-10099"]);
        assert!(agent.in_flight.is_empty() && agent.settled.is_empty());
        agent.del(&del).expect("DEL after the ADD");
        assert!(agent.attachments.is_empty());
        let removed = ovs
            .vsctl_calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.contains(&"del-port".to_string()) && c.contains(&pending.host_if));
        assert!(removed, "the DEL removed the port the ADD made");

        // Nothing is held any more: another sandbox of that range attaches.
        let p = begin(&mut agent, &request("c2", "a"));
        p.queue_to_join(&made(8));
        agent.add_join(&p, &made(8)).expect("attached");
        assert_eq!(agent.attachments.len(), 1);
        assert_eq!(agent.attachments[0].ofport, 8);
    }

    #[test]
    fn sandboxes_queued_together_join_with_one_bundle() {
        let ovs = Arc::new(FakeOvs::default());
        let mut agent = empty_agent(&ovs);
        let (pa, pb) = (
            begin(&mut agent, &request("c1", "a")),
            begin(&mut agent, &request("c2", "b")),
        );
        // Both ports were made while neither ADD held the lock.
        pa.queue_to_join(&made(2));
        pb.queue_to_join(&made(3));
        let before = bundles(&ovs);
        agent.add_join(&pa, &made(2)).expect("a attached");
        assert_eq!(
            bundles(&ovs),
            before + 1,
            "a's ADD installs a's and b's flows"
        );
        assert_eq!(agent.attachments.len(), 2);
        assert!(
            agent.settled.contains_key(&pb.request.key),
            "b's answer waits"
        );
        let b = agent.add_join(&pb, &made(3)).expect("b attached");
        assert_eq!(b.ports, ["UDP 10100-10163"]);
        assert_eq!(bundles(&ovs), before + 1, "b's flows came with a's bundle");
        assert!(agent.in_flight.is_empty() && agent.settled.is_empty());
    }

    #[test]
    fn an_add_that_fails_or_unwinds_holds_nothing() {
        let ovs = Arc::new(FakeOvs::default());
        let agent = Mutex::new(empty_agent(&ovs));
        // A port that could not be made: the socket's path takes it out of flight.
        let r = request("c1", "b");
        let p = begin(&mut agent.lock().unwrap(), &r);
        {
            let _guard = FlightGuard {
                agent: &agent,
                key: r.key.clone(),
                host_if: p.host_if.clone(),
                bridge: "br-eth1".into(),
                armed: true,
            };
            // Queued, then the thread unwinds before it joins.
            p.queue_to_join(&made(5));
        }
        let a = agent.lock().unwrap();
        assert!(a.in_flight.is_empty());
        assert!(a.joining.lock().unwrap().is_empty());
        let removed = ovs
            .vsctl_calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.contains(&"del-port".to_string()) && c.contains(&p.host_if));
        assert!(removed, "what the unwound ADD made is removed");
        drop(a);
        // And the range is free again.
        begin(&mut agent.lock().unwrap(), &request("c3", "b"));
    }
}
