//! The agent's cluster mode: PortRanges the operator accepted, and the labels of the pods
//! scheduled on this node, from watch caches of the API server.

use super::watch;
use crate::agent::sources::Sources;
use crate::k8s::webhook::is_accepted;
use crate::model::{ObjectKey, PortRange};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;

/// The Node annotation where an agent publishes, per PortRange, for how many of the node's
/// sandboxes it is programmed; the operator sums them into the `Programmed` condition.
pub const PROGRAMMED_ANNOTATION: &str = "portiso.io/programmed";

pub struct KubeSources {
    ranges: Store<PortRange>,
    pods: Store<Pod>,
    client: Client,
    node: String,
    runtime: tokio::runtime::Handle,
    /// What the Node's annotation last said after a patch that succeeded: a failed patch is
    /// sent again at the next report.
    reported: std::sync::Arc<std::sync::Mutex<Option<BTreeMap<String, u32>>>>,
    /// (key, resourceVersion) of the accepted ranges last handed out.
    last: Option<Vec<(ObjectKey, String)>>,
}

/// The labels of a node (for per-node uplink overrides).
pub async fn node_labels(client: &Client, node: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let n = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .get(node)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read node {node} for its labels: {e}"))?;
    Ok(n.labels().clone())
}

impl KubeSources {
    /// Starts the watches (PortRanges everywhere, pods of `node` only) and waits for both caches.
    pub async fn start(client: Client, node: &str) -> anyhow::Result<Self> {
        let ranges = watch(
            Api::<PortRange>::all(client.clone()),
            watcher::Config::default(),
            None,
        );
        let pods = watch(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            None,
        );
        ranges.wait_until_ready().await?;
        pods.wait_until_ready().await?;
        tracing::info!(%node, pods = pods.len(), portranges = ranges.len(), "watching the API server");
        Ok(Self {
            ranges,
            pods,
            client,
            node: node.to_string(),
            runtime: tokio::runtime::Handle::current(),
            reported: Default::default(),
            last: None,
        })
    }
}

impl Sources for KubeSources {
    fn changed_ranges(&mut self) -> Option<Vec<PortRange>> {
        let mut accepted: Vec<PortRange> = self
            .ranges
            .state()
            .iter()
            .filter(|r| is_accepted(r) && r.metadata.deletion_timestamp.is_none())
            .map(|r| (**r).clone())
            .collect();
        accepted.sort_by_key(ObjectKey::of);
        let signature: Vec<(ObjectKey, String)> = accepted
            .iter()
            .map(|r| (ObjectKey::of(r), r.resource_version().unwrap_or_default()))
            .collect();
        if self.last.as_ref() == Some(&signature) {
            return None;
        }
        self.last = Some(signature);
        Some(accepted)
    }

    fn labels(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        if let Some(pod) = self.pods.get(&ObjectRef::new(name).within(namespace)) {
            return Some(pod.labels().clone());
        }
        // Not in the watch cache (yet): ask the API server once, bounded. Only a pod scheduled on
        // this node counts. (Called from the agent's blocking threads, never from async code.)
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let get = tokio::time::timeout(std::time::Duration::from_secs(2), pods.get_opt(name));
        match self.runtime.block_on(get) {
            Ok(Ok(Some(pod)))
                if pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(self.node.as_str()) =>
            {
                Some(pod.labels().clone())
            }
            _ => None,
        }
    }

    /// Gone: deleted, re-created (another UID), or past its deletionTimestamp — the end of its
    /// grace period, after which its containers are killed whether or not the kubelet reports.
    fn gone(&self, namespace: &str, name: &str, uid: Option<&str>) -> bool {
        match self.pods.get(&ObjectRef::new(name).within(namespace)) {
            None => true,
            Some(pod) => {
                uid.is_some_and(|u| pod.metadata.uid.as_deref() != Some(u))
                    || pod
                        .metadata
                        .deletion_timestamp
                        .as_ref()
                        .is_some_and(|t| t.0 < k8s_openapi::jiff::Timestamp::now())
            }
        }
    }

    fn wait_for_ranges(&self) -> bool {
        true
    }

    fn report(&self, programmed: BTreeMap<String, u32>) {
        if self
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&programmed)
        {
            return;
        }
        let value = serde_json::to_string(&programmed).unwrap_or_default();
        let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(self.client.clone());
        let (node, reported) = (self.node.clone(), self.reported.clone());
        self.runtime.spawn(async move {
            let patch =
                serde_json::json!({"metadata": {"annotations": {PROGRAMMED_ANNOTATION: value}}});
            match nodes
                .patch(
                    &node,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => *reported.lock().unwrap_or_else(|p| p.into_inner()) = Some(programmed),
                Err(e) => {
                    tracing::warn!(%node, error = %e, "could not publish programmed PortRanges; trying again at the next report")
                }
            }
        });
    }
}
