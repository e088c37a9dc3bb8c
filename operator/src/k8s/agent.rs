//! The agent's cluster mode: PortRanges the operator accepted, and the labels of the pods
//! scheduled on this node, from watch caches of the API server.

use crate::agent::sources::Sources;
use crate::k8s::webhook::is_accepted;
use crate::model::{ObjectKey, PortRange};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;

pub struct KubeSources {
    ranges: Store<PortRange>,
    pods: Store<Pod>,
    /// (key, resourceVersion) of the accepted ranges last handed out.
    last: Option<Vec<(ObjectKey, String)>>,
}

fn watch<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watch");
            }
        }
    });
    store
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
        );
        let pods = watch(
            Api::<Pod>::all(client),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        );
        ranges.wait_until_ready().await?;
        pods.wait_until_ready().await?;
        tracing::info!(%node, pods = pods.len(), portranges = ranges.len(), "watching the API server");
        Ok(Self {
            ranges,
            pods,
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
        let pod = self.pods.get(&ObjectRef::new(name).within(namespace))?;
        Some(pod.labels().clone())
    }

    /// Gone: deleted, or past its deletionTimestamp — the end of its grace period, after which
    /// its containers are killed whether or not the kubelet reports back.
    fn gone(&self, namespace: &str, name: &str) -> bool {
        match self.pods.get(&ObjectRef::new(name).within(namespace)) {
            None => true,
            Some(pod) => pod
                .metadata
                .deletion_timestamp
                .as_ref()
                .is_some_and(|t| t.0 < k8s_openapi::jiff::Timestamp::now()),
        }
    }

    fn wait_for_ranges(&self) -> bool {
        true
    }
}
