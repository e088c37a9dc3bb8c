//! Uninstalling: gives the node back what the agent took, so that `helm uninstall` (or
//! `portiso agent --uninstall` on a node without Kubernetes) leaves no bridge, port, flow,
//! veth, fast-path pin or nftables chain behind, and every uplink NIC has its address(es) and
//! routes again.
//!
//! What is undone, in this order, each step best-effort (a failure is logged and the next
//! step runs) and idempotent (a second run finds nothing and changes nothing):
//!
//! 1. per uplink, as one step that runs whatever the time (a node whose uplink lost its
//!    address is cut off, above all on the userspace datapath): the addresses and routes on
//!    the bridge's internal port are read, the bridge is deleted (`ovs-vsctl --if-exists
//!    del-br`: its ports, flows and meters with it), the uplink's isolation chain is removed,
//!    the addresses and routes go back onto the uplink, and a bridge device that outlived OVS
//!    (the userspace datapath's tap) is deleted;
//! 2. the sandboxes' host-side veths (the sandbox's end goes with each), those OVS knew and any
//!    other with the agent's naming, all in one `ip -batch`;
//! 3. the eBPF fast path: its pinned links (which hold the XDP programs on the uplinks and
//!    sandbox ports) and its pinned maps in `datapath.bpfDir`;
//! 4. the nftables table that held the isolation chains, and the agent's socket.
//!
//! The whole run is bounded: once its time is up the remaining steps are skipped (logged),
//! except step 1, which always runs.
//!
//! When it runs: `portiso agent --uninstall`, or a cluster agent that gets SIGTERM after its
//! DaemonSet was marked for uninstall (the annotation [`UNINSTALL_ANNOTATION`], put there by the
//! chart's pre-delete hook running `portiso uninstall-mark`) and while it is gone or being
//! deleted (`helm uninstall`). An ordinary restart or rolling update (the DaemonSet is still
//! there), or a DaemonSet deleted without the mark (`kubectl delete` and apply again, `kubectl
//! replace --force`, `helm uninstall --no-hooks`), leaves everything running. [`decide`] is that
//! choice; [`DaemonSetWatch`] gathers what it needs from the API server. Agent work never runs
//! beside an uninstall: see [`unless_stopping`] and [`stop_agent_work`].

use crate::config::AgentConfig;
use crate::fastpath;
use crate::link;
use crate::ovs::{bridge as ovsdb, OvsExec};
use std::time::{Duration, Instant};

/// How long an uninstall may take in all (within the pod's termination grace period, beside
/// the decision and the OVS container's wait for it).
pub const UNINSTALL_BUDGET: Duration = Duration::from_secs(15);

/// Agent work that touches OVS or links (start-up, CNI requests, the poll) runs under a read
/// guard of this lock; an uninstall takes the write guard, so that it never runs beside such
/// work (which could put back what it takes away).
static AGENT_WORK: std::sync::RwLock<()> = std::sync::RwLock::new(());
/// Set once the agent is stopping for an uninstall: no agent work starts any more.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `f`, a piece of agent work that touches OVS or links, unless the agent is stopping for
/// an uninstall (then `None`, and nothing is done). An uninstall waits for it to finish.
pub fn unless_stopping<T>(f: impl FnOnce() -> T) -> Option<T> {
    let _work = AGENT_WORK.read().unwrap_or_else(|p| p.into_inner());
    if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    Some(f())
}

/// Stops all agent work before an uninstall: no new work starts from now on, and the work in
/// flight is waited for, at most `wait`. Returns the write guard to hold during the uninstall,
/// or `None` (logged) when work was still running after `wait`.
pub fn stop_agent_work(wait: Duration) -> Option<std::sync::RwLockWriteGuard<'static, ()>> {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    let until = Instant::now() + wait;
    loop {
        match AGENT_WORK.try_write() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                tracing::warn!(waited = ?wait, "uninstall: agent work still running; uninstalling anyway");
                return None;
            }
        }
    }
}

/// What an uninstall run did not manage.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The steps that failed or were skipped, each with why.
    pub failed: Vec<String>,
}

impl Outcome {
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
    }
}

/// One step of an uninstall, in the order [`plan`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Delete the bridge of this uplink (by name) and give the uplink its addresses and routes
    /// back. Runs whatever the time.
    GiveBack { uplink: String },
    /// Delete the sandboxes' host-side veths, in one batch.
    Veths,
    /// Remove the fast path's pins.
    FastPath,
    /// Remove the nftables table and the agent's socket.
    Isolation,
}

impl Step {
    /// Whether the step runs even when the time is up.
    pub fn always(&self) -> bool {
        matches!(self, Step::GiveBack { .. })
    }
}

/// The steps of an uninstall of `config`, in order: every uplink is given back first (so that
/// a node with hundreds of sandboxes is never left without its address because the rest took
/// long), then what no longer carries traffic.
pub fn plan(config: &AgentConfig) -> Vec<Step> {
    config
        .uplinks
        .iter()
        .map(|u| Step::GiveBack {
            uplink: u.name.clone(),
        })
        .chain([Step::Veths, Step::FastPath, Step::Isolation])
        .collect()
}

struct Run {
    deadline: Instant,
    outcome: Outcome,
}

impl Run {
    /// Runs one step unless the time is up (and it is not `always`); logs and records its
    /// failure.
    fn step<E: std::fmt::Display>(
        &mut self,
        what: &str,
        always: bool,
        f: impl FnOnce() -> Result<(), E>,
    ) {
        if !always && Instant::now() >= self.deadline {
            tracing::warn!(step = %what, "uninstall: out of time, step skipped");
            self.outcome
                .failed
                .push(format!("{what}: skipped (out of time)"));
            return;
        }
        match f() {
            Ok(()) => tracing::debug!(step = %what, "uninstall: done"),
            Err(e) => {
                tracing::warn!(step = %what, error = %e, "uninstall: step failed; going on");
                self.outcome.failed.push(format!("{what}: {e}"));
            }
        }
    }
}

/// Undoes everything the agent did on this node for the uplinks of `config` (see the module's
/// documentation), within `budget` (giving the uplinks back is never skipped). Must not run
/// beside a live agent (it would put things back).
pub fn uninstall(config: &AgentConfig, ovs: &dyn OvsExec, budget: Duration) -> Outcome {
    let started = Instant::now();
    let mut run = Run {
        deadline: started + budget,
        outcome: Outcome::default(),
    };
    tracing::info!(
        uplinks = config.uplinks.len(),
        "uninstall: giving the node back"
    );
    // The sandbox ports OVS knows, read before their bridges go (one query for all).
    let mut veths: Vec<String> = match ovsdb::sandbox_interfaces(ovs) {
        Ok(rows) => rows.into_iter().map(|r| r.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "uninstall: cannot list sandbox ports in OVS; veths with the agent's naming are still removed");
            run.outcome.failed.push(format!("list sandbox ports: {e}"));
            Vec::new()
        }
    };
    for step in plan(config) {
        let always = step.always();
        match &step {
            Step::GiveBack { uplink } => {
                let Some(u) = config.uplinks.iter().find(|u| &u.name == uplink) else {
                    continue;
                };
                run.step(&format!("give {} back", u.name), always, || {
                    give_back(ovs, u)
                });
            }
            Step::Veths => {
                for v in link::host_veths() {
                    if !veths.contains(&v) {
                        veths.push(v);
                    }
                }
                run.step("remove the sandboxes' veths", always, || {
                    link::delete_many(&veths)
                        .map(|n| tracing::info!(veths = n, "uninstall: sandbox veths removed"))
                });
            }
            Step::FastPath => {
                let bpf_dir = config.datapath.bpf_dir.clone();
                run.step("remove the fast path's pins", always, || {
                    remove_pins(&bpf_dir)
                });
            }
            Step::Isolation => run.step("remove the isolation table", always, || {
                link::remove_isolation_table();
                let _ = std::fs::remove_file(&config.socket);
                Ok::<(), String>(())
            }),
        }
    }

    let outcome = run.outcome;
    if outcome.is_clean() {
        tracing::info!(took = ?started.elapsed(), "uninstall: done, nothing of portiso left");
    } else {
        tracing::warn!(took = ?started.elapsed(), failed = ?outcome.failed, "uninstall: done, with steps that failed");
    }
    outcome
}

/// One uplink given back: its bridge deleted (with the ports and flows on it), its addresses and
/// routes back on the NIC, a leftover bridge device deleted. Every part is tried; the first
/// failure is returned.
fn give_back(ovs: &dyn OvsExec, u: &crate::config::UplinkConfig) -> Result<(), String> {
    let mut cidrs = link::ipv4_cidrs(&u.bridge);
    if cidrs.is_empty() && !u.address_from_nic {
        // The bridge's device is gone already (a second run, or OVS re-created nothing):
        // the configured address belongs on the uplink.
        cidrs.push(u.cidr());
    }
    let routes = link::routes_through(&u.bridge);
    let mut failed: Vec<String> = Vec::new();
    if let Err(e) = ovsdb::del_bridge(ovs, &u.bridge) {
        failed.push(format!("delete bridge {}: {e}", u.bridge));
    }
    link::release_from_host_stack(&u.name);
    if let Err(e) = link::return_address(&u.bridge, &u.name, &cidrs, &routes) {
        failed.push(format!("give {} its address back: {e}", u.name));
    }
    if link::exists(&u.bridge) {
        // A userspace datapath's internal port outlives OVS when OVS is not running.
        if let Err(e) = link::delete_device(&u.bridge) {
            failed.push(format!("delete device {}: {e}", u.bridge));
        }
    }
    tracing::info!(uplink = %u.name, bridge = %u.bridge, addresses = ?cidrs, routes = ?routes, "uninstall: uplink given back");
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Removes the fast path's pinned links (which takes its programs off the devices) and then
/// its pinned maps. A directory that is a mount point of its own stays (empty).
fn remove_pins(dir: &std::path::Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let links = fastpath::remove_leftover_links(dir);
    let mut maps = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        if std::fs::remove_file(e.path()).is_ok() {
            maps += 1;
        }
    }
    let _ = std::fs::remove_dir(dir);
    tracing::info!(dir = %dir.display(), links, maps, "uninstall: fast path pins removed");
    Ok(())
}

/// What the agent knows about its own DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonSetState {
    Present,
    /// It has a deletionTimestamp (foreground deletion).
    Deleting,
    /// Not found.
    Gone,
    /// The API server did not say (an error, a timeout), and why.
    Unknown(String),
}

/// Whether to uninstall, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub uninstall: bool,
    pub reason: String,
}

/// The annotation `helm uninstall` (the chart's pre-delete hook, `portiso uninstall-mark`) puts
/// on the agent's DaemonSet: the explicit word that the DaemonSet's deletion is an uninstall.
pub const UNINSTALL_ANNOTATION: &str = "portiso.io/uninstall";

/// On SIGTERM: uninstall only when the DaemonSet was marked for uninstall ([`UNINSTALL_ANNOTATION`],
/// seen by the watch at any time or on the GET now: `marked`) AND is gone or being deleted;
/// never on an ordinary restart, nor when the DaemonSet was deleted without the mark (`kubectl
/// delete` and apply again, `kubectl replace --force`, a rename, `helm uninstall --no-hooks`).
/// `fetched` is a GET made now; `watched` what the watch on it last saw (None when the watch
/// never synced). A GET that fails (after `helm uninstall` the agent's ServiceAccount and Role
/// may already be gone) defers to the watch; when neither tells, the node is left as it is.
pub fn decide(
    marked: bool,
    watched: Option<&DaemonSetState>,
    fetched: &DaemonSetState,
) -> Decision {
    use DaemonSetState::*;
    let (going, reason) = match (fetched, watched) {
        (Gone, _) => (true, "the agent's DaemonSet is gone".to_string()),
        (Deleting, _) => (true, "the agent's DaemonSet is being deleted".to_string()),
        (Present, _) => (
            false,
            "the agent's DaemonSet is still there: an ordinary restart".to_string(),
        ),
        (Unknown(why), Some(Gone)) => (
            true,
            format!("the watch saw the agent's DaemonSet deleted (a GET now failed: {why})"),
        ),
        (Unknown(why), Some(Deleting)) => (
            true,
            format!("the watch saw the agent's DaemonSet being deleted (a GET now failed: {why})"),
        ),
        (Unknown(why), Some(Present)) => (
            false,
            format!("the watch last saw the agent's DaemonSet (a GET now failed: {why})"),
        ),
        (Unknown(why), None | Some(Unknown(_))) => (
            false,
            format!("cannot tell whether the agent's DaemonSet is being deleted ({why}): the node is left as it is"),
        ),
    };
    match (going, marked) {
        (true, true) => Decision {
            uninstall: true,
            reason: format!("{reason}, marked {UNINSTALL_ANNOTATION} (helm uninstall)"),
        },
        (true, false) => Decision {
            uninstall: false,
            reason: format!(
                "{reason}, but never marked {UNINSTALL_ANNOTATION} (deleted by hand, replaced, or helm uninstall --no-hooks): the node is left as it is; `portiso agent --uninstall` gives it back"
            ),
        },
        (false, _) => Decision {
            uninstall: false,
            reason,
        },
    }
}

/// Whether a DaemonSet carries [`UNINSTALL_ANNOTATION`].
fn is_marked(ds: &k8s_openapi::api::apps::v1::DaemonSet) -> bool {
    ds.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(UNINSTALL_ANNOTATION))
}

/// A watch on the agent's own DaemonSet (`--daemonset NAMESPACE/NAME`), for [`decide`]: it
/// keeps the DaemonSet's last state and remembers whether it ever saw the uninstall mark
/// (a deleted object's last state counts too).
pub struct DaemonSetWatch {
    api: kube::Api<k8s_openapi::api::apps::v1::DaemonSet>,
    name: String,
    namespace: String,
    store: kube::runtime::reflector::Store<k8s_openapi::api::apps::v1::DaemonSet>,
    marked: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// `NAMESPACE/NAME`, both parts non-empty.
fn split_daemonset(which: &str) -> anyhow::Result<(&str, &str)> {
    which
        .split_once('/')
        .filter(|(n, d)| !n.is_empty() && !d.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--daemonset {which:?}: write NAMESPACE/NAME"))
}

impl DaemonSetWatch {
    /// Starts the watch (needs a Tokio runtime); `which` is `NAMESPACE/NAME`.
    pub fn start(client: kube::Client, which: &str) -> anyhow::Result<Self> {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        let (namespace, name) = split_daemonset(which)?;
        let api = kube::Api::namespaced(client, namespace);
        let (store, writer) = kube::runtime::reflector::store();
        let config =
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = kube::runtime::reflector(writer, kube::runtime::watcher(api.clone(), config))
            .default_backoff()
            .touched_objects();
        let marked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = marked.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(ds) if is_marked(&ds) => {
                        if !seen.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            tracing::info!(
                                annotation = UNINSTALL_ANNOTATION,
                                "the agent's DaemonSet is marked for uninstall"
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watch of the agent's DaemonSet"),
                }
            }
        });
        Ok(Self {
            api,
            name: name.to_string(),
            namespace: namespace.to_string(),
            store,
            marked,
        })
    }

    fn state_of(ds: &k8s_openapi::api::apps::v1::DaemonSet) -> DaemonSetState {
        if ds.metadata.deletion_timestamp.is_some() {
            DaemonSetState::Deleting
        } else {
            DaemonSetState::Present
        }
    }

    fn marked(&self) -> bool {
        self.marked.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn watched(&self) -> Option<DaemonSetState> {
        tokio::time::timeout(Duration::from_millis(100), self.store.wait_until_ready())
            .await
            .ok()?
            .ok()?;
        let key = kube::runtime::reflector::ObjectRef::new(&self.name).within(&self.namespace);
        Some(match self.store.get(&key) {
            Some(ds) => Self::state_of(&ds),
            None => DaemonSetState::Gone,
        })
    }

    async fn fetched(&self) -> DaemonSetState {
        match tokio::time::timeout(Duration::from_secs(3), self.api.get_opt(&self.name)).await {
            Ok(Ok(Some(ds))) => {
                if is_marked(&ds) {
                    self.marked.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Self::state_of(&ds)
            }
            Ok(Ok(None)) => DaemonSetState::Gone,
            Ok(Err(e)) => DaemonSetState::Unknown(e.to_string()),
            Err(_) => DaemonSetState::Unknown("no answer within 3 s".into()),
        }
    }

    /// Decides (see [`decide`]); when the GET fails and the watch still shows the DaemonSet,
    /// gives the watch up to 2 s to report a deletion that is under way.
    pub async fn decide(&self) -> Decision {
        let fetched = self.fetched().await;
        let mut d = decide(self.marked(), self.watched().await.as_ref(), &fetched);
        if matches!(fetched, DaemonSetState::Unknown(_)) && !d.uninstall {
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until && !d.uninstall {
                tokio::time::sleep(Duration::from_millis(100)).await;
                d = decide(self.marked(), self.watched().await.as_ref(), &fetched);
            }
        }
        d
    }
}

/// `portiso uninstall-mark`: puts [`UNINSTALL_ANNOTATION`] on the agent's DaemonSet
/// (`NAMESPACE/NAME`), so that its agents give their nodes back when it is deleted next. Run by
/// the chart's pre-delete hook; a DaemonSet that does not exist is fine (nothing to mark).
pub async fn mark_for_uninstall(client: kube::Client, which: &str) -> anyhow::Result<()> {
    let (namespace, name) = split_daemonset(which)?;
    let api: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(client, namespace);
    let patch = serde_json::json!({
        "metadata": {"annotations": {UNINSTALL_ANNOTATION: "true"}}
    });
    match api
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(daemonset = %which, annotation = UNINSTALL_ANNOTATION, "marked for uninstall");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::info!(daemonset = %which, "no such DaemonSet: nothing to mark");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot mark DaemonSet {which} for uninstall: {e}"
        )),
    }
}

/// Tells the chart's OVS container that the agent is done (cleaned up, or decided not to):
/// it waits for this file before stopping the daemons the cleanup needs.
pub fn mark_done(marker: &std::path::Path, decision: &str) {
    if let Some(dir) = marker.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(marker, format!("{decision}\n")) {
        tracing::warn!(marker = %marker.display(), error = %e, "cannot write the stop marker");
    }
}

#[cfg(test)]
mod tests {
    use super::DaemonSetState::*;
    use super::*;

    #[test]
    fn every_uplink_is_given_back_first_and_whatever_the_time() {
        let config = AgentConfig::parse(
            "uplinks:\n  - name: eth1\n    address: 198.51.100.1/24\n  - name: eth2\n    address: 203.0.113.1/24\n",
            "t.yaml",
        )
        .unwrap();
        let steps = plan(&config);
        assert_eq!(
            steps,
            [
                Step::GiveBack {
                    uplink: "eth1".into()
                },
                Step::GiveBack {
                    uplink: "eth2".into()
                },
                Step::Veths,
                Step::FastPath,
                Step::Isolation,
            ]
        );
        assert_eq!(
            steps.iter().map(Step::always).collect::<Vec<_>>(),
            [true, true, false, false, false]
        );
        // Out of time: a step that must run still runs; the others are skipped and recorded.
        let mut run = Run {
            deadline: Instant::now(),
            outcome: Outcome::default(),
        };
        let mut ran = Vec::new();
        run.step("give eth1 back", true, || {
            ran.push("give");
            Ok::<(), String>(())
        });
        run.step("veths", false, || {
            ran.push("veths");
            Ok::<(), String>(())
        });
        assert_eq!(ran, ["give"]);
        assert_eq!(run.outcome.failed, ["veths: skipped (out of time)"]);
    }

    #[test]
    fn only_a_daemonset_marked_and_then_gone_or_being_deleted_uninstalls() {
        let unknown = Unknown("Unauthorized".into());
        // A GET that answers decides, whatever the watch last saw.
        for watched in [None, Some(Present), Some(Gone), Some(Deleting)] {
            assert!(decide(true, watched.as_ref(), &Gone).uninstall);
            assert!(decide(true, watched.as_ref(), &Deleting).uninstall);
            for marked in [true, false] {
                let d = decide(marked, watched.as_ref(), &Present);
                assert!(!d.uninstall, "{d:?}");
                assert!(d.reason.contains("ordinary restart"), "{d:?}");
            }
        }
        // A GET that fails (ServiceAccount or Role already deleted) defers to the watch.
        assert!(decide(true, Some(&Gone), &unknown).uninstall);
        assert!(decide(true, Some(&Deleting), &unknown).uninstall);
        assert!(!decide(true, Some(&Present), &unknown).uninstall);
        // Nothing tells: the node is left as it is.
        let d = decide(true, None, &unknown);
        assert!(!d.uninstall && d.reason.contains("Unauthorized"), "{d:?}");
        assert!(!decide(true, Some(&unknown), &unknown).uninstall);
    }

    #[test]
    fn a_daemonset_deleted_without_the_mark_keeps_the_node() {
        // kubectl delete + apply, kubectl replace --force, a rename, helm uninstall --no-hooks.
        let unknown = Unknown("Unauthorized".into());
        for watched in [None, Some(Present), Some(Gone), Some(Deleting)] {
            for fetched in [&Gone, &Deleting, &Present, &unknown] {
                let d = decide(false, watched.as_ref(), fetched);
                assert!(!d.uninstall, "{watched:?} {fetched:?}: {d:?}");
            }
        }
        let d = decide(false, Some(&Present), &Gone);
        assert!(
            d.reason.contains(UNINSTALL_ANNOTATION) && d.reason.contains("--uninstall"),
            "{d:?}"
        );
    }

    #[test]
    fn the_mark_is_the_annotation() {
        let mut ds = k8s_openapi::api::apps::v1::DaemonSet::default();
        assert!(!is_marked(&ds));
        ds.metadata.annotations =
            Some([(UNINSTALL_ANNOTATION.to_string(), "true".to_string())].into());
        assert!(is_marked(&ds));
        assert_eq!(split_daemonset("ns/ds").unwrap(), ("ns", "ds"));
        assert!(split_daemonset("ns/").is_err() && split_daemonset("ds").is_err());
    }
}
