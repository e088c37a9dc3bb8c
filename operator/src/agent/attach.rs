//! The CNI verbs as the agent carries them out. ADD answers only after the sandbox's flows
//! are installed, and undoes everything it did when any step fails.

use super::state::{self, Attachment};
use super::Agent;
use crate::link::{self, SandboxLink};
use crate::model::overlap::owned_spans;
use crate::model::ObjectKey;
use crate::ovs::bridge as ovsdb;
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

    fn add(&mut self, r: &AttachRequest) -> Result<Attached, AgentError> {
        let started = std::time::Instant::now();
        let uplink = self.known_uplink(&r.uplink)?.clone();
        if let Some(i) = self.find(&r.key) {
            // A repeated ADD for the same attachment: it is already there.
            return Ok(self.attached(&self.attachments[i].clone()));
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
            if let Some(holder) = owners.holder(&r.uplink, &ObjectKey::of(pr)) {
                return Err(AgentError::new(
                    code::INTERNAL,
                    format!(
                        "PortRange {} already gives its ports on uplink {} to sandbox {}: one range serves one sandbox per uplink; give {sandbox} a PortRange of its own",
                        ObjectKey::of(pr),
                        r.uplink,
                        holder.sandbox()
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
        let cidr = uplink.config.cidr();
        let checked = started.elapsed();
        link::create(&SandboxLink {
            host_if: &host_if,
            netns: &r.netns,
            ifname: &r.key.ifname,
            mac: &uplink.mac,
            cidr: &cidr,
            gateway: uplink.config.gateway.map(|g| g.to_string()),
            local_ports: state::local_port_range(&ports),
            checksum_offload_off: self.datapath_type == "netdev",
            isolate_host_end: self.datapath_type == "netdev",
        })
        .map_err(|e| {
            AgentError::new(
                code::INTERNAL,
                format!("could not create the interface of {sandbox}: {e}"),
            )
        })?;

        let mut ids = vec![
            (ovsdb::EXT_CONTAINER, r.key.container_id.as_str()),
            (ovsdb::EXT_IFNAME, r.key.ifname.as_str()),
            (ovsdb::EXT_NETNS, r.netns.as_str()),
            (ovsdb::EXT_UPLINK, r.uplink.as_str()),
            (ovsdb::EXT_SANDBOX, sandbox.as_str()),
        ];
        if let Some(uid) = &r.sandbox_uid {
            ids.push((ovsdb::EXT_UID, uid.as_str()));
        }
        let undo_link = |e: String| {
            let _ = link::delete(&host_if);
            AgentError::new(
                code::INTERNAL,
                format!(
                    "could not attach {sandbox} to bridge {}: {e}",
                    uplink.config.bridge
                ),
            )
        };
        let linked = started.elapsed();
        let kind = ovsdb::PortKind {
            ovs_type: self.port_type.ovs_type().into(),
            n_rxq: link::rx_queues(&host_if),
        };
        let ofport = ovsdb::add_sandbox_port(
            self.ovs.as_ref(),
            &uplink.config.bridge,
            &host_if,
            &kind,
            &ids,
        )
        .map_err(|e| {
            let _ = ovsdb::del_port(self.ovs.as_ref(), &uplink.config.bridge, &host_if);
            undo_link(e.to_string())
        })?;
        let ported = started.elapsed();
        let attachment = Attachment {
            key: r.key.clone(),
            uplink: r.uplink.clone(),
            sandbox_name: r.sandbox_name.clone(),
            sandbox_namespace: r.sandbox_namespace.clone(),
            sandbox_uid: r.sandbox_uid.clone(),
            netns: r.netns.clone(),
            host_if: host_if.clone(),
            ofport,
            local_ports: state::local_port_range(&ports),
            labels,
        };
        self.attachments.push(attachment.clone());
        if let Err(e) = self.reconcile(&uplink) {
            self.attachments.pop();
            let _ = ovsdb::del_port(self.ovs.as_ref(), &uplink.config.bridge, &host_if);
            let _ = self.reconcile(&uplink);
            return Err(undo_link(e.to_string()));
        }
        // Where an ADD's time goes, in milliseconds since the request was taken up.
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let portrange = range_keys(selecting.iter().copied());
        tracing::info!(%sandbox, %portrange, uplink = %r.uplink, port = %host_if, ofport,
            checked_ms = ms(checked), linked_ms = ms(linked), ported_ms = ms(ported), total_ms = ms(started.elapsed()),
            "sandbox attached");
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
