//! The CNI verbs as the agent carries them out. ADD (in `add`) answers only after the
//! sandbox's flows are installed, and undoes everything it did when any step fails.

use super::add::Begun;
use super::state::{self, Attachment};
use super::Agent;
use crate::link;
use crate::model::ObjectKey;
use crate::ovs::bridge as ovsdb;
use portiso_agent_api::{
    code, AgentError, AttachRequest, Attached, AttachmentKey, DetachRequest, Request, Response,
};

/// PortRange keys for a log field: `default/web1,default/web1-udp`.
pub(super) fn range_keys<'a>(ranges: impl Iterator<Item = &'a crate::model::PortRange>) -> String {
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

    pub(super) fn known_uplink(&self, name: &str) -> Result<&super::UplinkRuntime, AgentError> {
        self.uplink(name).ok_or_else(|| {
            let known: Vec<&str> = self.uplinks.iter().map(|u| u.config.name.as_str()).collect();
            AgentError::new(
                code::INVALID_NETWORK_CONFIG,
                format!("uplink {name:?} is not served by this node's portiso agent: set `uplink` to one of {known:?}"),
            )
        })
    }

    pub(super) fn find(&self, key: &AttachmentKey) -> Option<usize> {
        self.attachments.iter().position(|a| &a.key == key)
    }

    pub(super) fn attached(&self, a: &Attachment) -> Attached {
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

    /// ADD with the agent's lock held throughout (requests through [`Agent::handle`], as unit
    /// tests send them); the socket carries ADD out with `add::add_unlocked`.
    fn add(&mut self, r: &AttachRequest) -> Result<Attached, AgentError> {
        match self.add_begin(r)? {
            Begun::Already(attached) => Ok(attached),
            Begun::Pending(p) => match p.make_port() {
                Ok(made) => {
                    p.queue_to_join(&made);
                    self.add_join(&p, &made)
                }
                Err(e) => {
                    self.in_flight.retain(|f| f.key != r.key);
                    Err(e)
                }
            },
        }
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

    pub(super) fn del(&mut self, r: &DetachRequest) -> Result<(), AgentError> {
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
        // An ADD in flight is not the runtime's yet: GC cannot name it.
        let stale: Vec<AttachmentKey> = self
            .attachments
            .iter()
            .filter(|a| a.uplink == uplink && !valid.contains(&a.key))
            .filter(|a| !self.in_flight.iter().any(|f| f.key == a.key))
            .map(|a| a.key.clone())
            .collect();
        let mut first_error = None;
        for key in stale {
            let Some(i) = self.find(&key) else { continue };
            let a = self.attachments.remove(i);
            if let Err(e) = self.detach(&a) {
                // Kept, so that the runtime's next GC finds it again.
                self.attachments.push(a);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
