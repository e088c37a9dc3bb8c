//! `portiso operator`: watches every PortRange, and — while it holds the leader Lease — writes
//! each one's decision (Accepted, allocations, ports) to its status; every replica serves the
//! admission webhook from the same watch cache.

use super::{tls, webhook, FIELD_MANAGER, FINALIZER};
use crate::cluster::{decide, status_for, Decision, Pool, Programmed};
use crate::metrics::{Counter, Exposition, Gauge, Histogram, Kind};
use crate::model::{ObjectKey, PortRange, Verdict};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Where the admission webhook listens (TLS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// PEM certificate for the webhook; without it a self-signed one is shared through a Secret.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// ValidatingWebhookConfiguration whose caBundle the operator sets to its self-signed certificate.
    #[arg(long)]
    pub webhook_config_name: Option<String>,
    /// The webhook Service's name (the certificate's DNS name; the Secret is `<name>-tls`).
    #[arg(long, default_value = "portiso-webhook")]
    pub webhook_service: String,
    /// Ports the operator allocates `size` spans from.
    #[arg(long, default_value = "20000-29999")]
    pub pool: Pool,
    /// Host ports no PortRange may own, comma-separated spans.
    #[arg(long, value_delimiter = ',', default_value = "0-9999")]
    pub reserved_host_ports: Vec<String>,
    /// The coordination.k8s.io Lease that elects the one replica that writes.
    #[arg(long, default_value = "portiso-operator")]
    pub lease_name: String,
    /// Lease validity in seconds; a new leader takes over at most this long after the old one died.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// The namespace of the Lease and the Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Serve Prometheus metrics here (plain HTTP).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

struct Metrics {
    /// 1 while this replica holds the Lease.
    leader: Gauge,
    accepted: Gauge,
    refused: Gauge,
    status_writes: Counter,
    write_errors: Counter,
    /// Each pass that decides every PortRange and writes what changed.
    reconcile: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            leader: Gauge::default(),
            accepted: Gauge::default(),
            refused: Gauge::default(),
            status_writes: Counter::default(),
            write_errors: Counter::default(),
            reconcile: Histogram::seconds(),
        }
    }
}

impl Metrics {
    fn render(&self) -> String {
        let mut page = Exposition::default();
        page.family(
            "portiso_operator_leader",
            Kind::Gauge,
            "1 while this replica holds the Lease and writes statuses.",
        )
        .sample(&[], self.leader.get());
        page.family(
            "portiso_operator_portranges",
            Kind::Gauge,
            "PortRanges by the leader's last verdict.",
        )
        .sample(&[("verdict", "accepted")], self.accepted.get())
        .sample(&[("verdict", "refused")], self.refused.get());
        page.family(
            "portiso_operator_status_writes_total",
            Kind::Counter,
            "PortRange statuses written.",
        )
        .sample(&[], self.status_writes.get());
        page.family(
            "portiso_operator_write_errors_total",
            Kind::Counter,
            "Failed writes of a PortRange's status or finalizers (reconcile errors).",
        )
        .sample(&[], self.write_errors.get());
        page.family(
            "portiso_operator_reconcile_seconds",
            Kind::Histogram,
            "Duration of each pass that decides every PortRange and writes what changed.",
        )
        .histogram(&[], &self.reconcile);
        page.finish()
    }
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let reserved = args
        .reserved_host_ports
        .iter()
        .map(|s| {
            crate::config::parse_port_span(s)
                .map_err(|e| anyhow::anyhow!("--reserved-host-ports: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = Client::try_default().await?;
    let ranges: Api<PortRange> = Api::all(client.clone());

    // One watch cache for the status writer and the webhook; nodes carry the agents' reports.
    let changed = Arc::new(tokio::sync::Notify::new());
    let store = super::watch(
        ranges.clone(),
        watcher::Config::default(),
        Some(changed.clone()),
    );
    let nodes = super::watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        Some(changed.clone()),
    );

    let cert = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => tls::ServingCert {
            cert_pem: std::fs::read(c)?,
            key_pem: std::fs::read(k)?,
        },
        _ => {
            let secret = format!("{}-tls", args.webhook_service);
            let cert =
                tls::shared_cert(&client, &args.namespace, &secret, &args.webhook_service).await?;
            if let Some(vwc) = &args.webhook_config_name {
                tls::patch_ca_bundle(&client, vwc, &cert.cert_pem).await?;
            }
            cert
        }
    };
    let state = webhook::WebhookState {
        ranges: store.clone(),
        reserved: Arc::new(reserved.clone()),
    };
    // Answer admission only with a full cache: an empty one would let overlaps through.
    store.wait_until_ready().await?;
    let addr = args.webhook_addr;
    let webhook =
        tokio::spawn(async move { webhook::serve(addr, cert.cert_pem, cert.key_pem, state).await });

    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = args.metrics_addr {
        let m = metrics.clone();
        crate::metrics::serve(addr, move || m.render()).await?;
    }

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("portiso-operator-{}", std::process::id()));
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration)
        .with_grace((args.lease_duration / 3).max(1))
        .build()
        .await?;
    let (mut leader, _lease_task) = lease.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "waiting for the lease");

    let writer = StatusWriter {
        api: ranges,
        pool: args.pool,
        reserved,
        metrics: metrics.clone(),
    };
    loop {
        let is_leader = *leader.borrow_and_update();
        if metrics.leader.get() != is_leader as u64 {
            tracing::info!(%identity, is_leader, "leadership changed");
        }
        metrics.leader.set(is_leader as u64);
        if is_leader {
            let started = std::time::Instant::now();
            let snapshot: Vec<PortRange> = store.state().iter().map(|r| (**r).clone()).collect();
            writer.write_all(&snapshot, &programmed(&nodes)).await;
            metrics.reconcile.observe(started.elapsed());
        }
        if webhook.is_finished() {
            anyhow::bail!("the admission webhook server stopped");
        }
        tokio::select! {
            _ = changed.notified() => {}
            r = leader.changed() => r?,
            // A periodic pass repairs statuses someone else overwrote.
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// Sums the agents' reports (see `k8s::agent::PROGRAMMED_ANNOTATION`) per PortRange.
fn programmed(nodes: &Store<Node>) -> BTreeMap<String, Programmed> {
    let mut sum: BTreeMap<String, Programmed> = BTreeMap::new();
    for node in nodes.state() {
        let Some(report) = node.annotations().get(super::agent::PROGRAMMED_ANNOTATION) else {
            continue;
        };
        let Ok(counts) = serde_json::from_str::<BTreeMap<String, u32>>(report) else {
            tracing::warn!(node = %node.name_any(), "unreadable programmed report");
            continue;
        };
        for (range, n) in counts.into_iter().filter(|(_, n)| *n > 0) {
            let p = sum.entry(range).or_default();
            p.nodes += 1;
            p.sandboxes += n;
        }
    }
    sum
}

struct StatusWriter {
    api: Api<PortRange>,
    pool: Pool,
    reserved: Vec<(u16, u16)>,
    metrics: Arc<Metrics>,
}

impl StatusWriter {
    /// Decides every live range and writes what changed: finalizers, then statuses.
    async fn write_all(&self, ranges: &[PortRange], programmed: &BTreeMap<String, Programmed>) {
        let (deleting, live): (Vec<&PortRange>, Vec<&PortRange>) = ranges
            .iter()
            .partition(|r| r.metadata.deletion_timestamp.is_some());
        for r in deleting {
            // Its ports are free as soon as it is out of `live`; let the API server finish.
            if r.finalizers().iter().any(|f| f == FINALIZER) {
                let keep: Vec<&String> =
                    r.finalizers().iter().filter(|f| *f != FINALIZER).collect();
                self.patch_meta(r, serde_json::json!({"metadata": {"finalizers": keep, "resourceVersion": r.resource_version()}})).await;
            }
        }
        let live: Vec<PortRange> = live.into_iter().cloned().collect();
        let decisions = decide(&live, self.pool, &self.reserved);
        let accepted = decisions
            .iter()
            .filter(|d| d.verdict == Verdict::Accepted)
            .count();
        self.metrics.accepted.set(accepted as u64);
        self.metrics
            .refused
            .set((decisions.len() - accepted) as u64);
        // Whole seconds: the API server stores no more, and a finer time would never compare equal.
        let now = Time(
            k8s_openapi::jiff::Timestamp::from_second(
                k8s_openapi::jiff::Timestamp::now().as_second(),
            )
            .unwrap_or_default(),
        );
        for (r, d) in live.iter().zip(&decisions) {
            let sized = r.spec.ports.iter().any(|p| p.size.is_some());
            if sized && !r.finalizers().iter().any(|f| f == FINALIZER) {
                let mut fins: Vec<String> = r.finalizers().to_vec();
                fins.push(FINALIZER.into());
                self.patch_meta(r, serde_json::json!({"metadata": {"finalizers": fins, "resourceVersion": r.resource_version()}})).await;
            }
            let p = programmed
                .get(&d.key.to_string())
                .copied()
                .unwrap_or_default();
            self.write_status(r, d, p, now.clone()).await;
        }
    }

    async fn patch_meta(&self, r: &PortRange, patch: serde_json::Value) {
        let api: Api<PortRange> =
            Api::namespaced(self.api.clone().into_client(), &ObjectKey::of(r).namespace);
        if let Err(e) = api
            .patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            // A conflict means a newer version is on its way through the watch.
            self.metrics.write_errors.inc();
            tracing::warn!(portrange = %ObjectKey::of(r), error = %e, "could not update finalizers");
        }
    }

    async fn write_status(&self, r: &PortRange, d: &Decision, p: Programmed, now: Time) {
        let status = status_for(r, d, p, now);
        if r.status.as_ref() == Some(&status) {
            return;
        }
        let key = ObjectKey::of(r);
        let api: Api<PortRange> = Api::namespaced(self.api.clone().into_client(), &key.namespace);
        let patch = serde_json::json!({"apiVersion": "portiso.io/v1alpha1", "kind": "PortRange", "status": status});
        match api
            .patch_status(
                &key.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            Ok(_) => {
                self.metrics.status_writes.inc();
                tracing::info!(portrange = %key, verdict = ?d.verdict, ports = %d.ports, "status written");
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                tracing::warn!(portrange = %key, error = %e, "could not write status");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_page_keeps_its_series_names() {
        let m = Metrics::default();
        m.leader.set(1);
        m.accepted.set(3);
        m.write_errors.inc();
        m.reconcile.observe(Duration::from_millis(7));
        let page = m.render();
        for line in [
            "# TYPE portiso_operator_leader gauge\nportiso_operator_leader 1\n",
            "portiso_operator_portranges{verdict=\"accepted\"} 3\n",
            "portiso_operator_portranges{verdict=\"refused\"} 0\n",
            "# TYPE portiso_operator_status_writes_total counter\nportiso_operator_status_writes_total 0\n",
            "portiso_operator_write_errors_total 1\n",
            "portiso_operator_reconcile_seconds_bucket{le=\"0.005\"} 0\n",
            "portiso_operator_reconcile_seconds_bucket{le=\"0.01\"} 1\n",
            "portiso_operator_reconcile_seconds_count 1\n",
        ] {
            assert!(page.contains(line), "{line:?} in:\n{page}");
        }
    }
}
