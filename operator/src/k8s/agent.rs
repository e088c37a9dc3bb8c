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
    /// Publishes the reports on the Node, one patch at a time, newest wins.
    reported: Publisher<BTreeMap<String, u32>>,
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
        let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(self.client.clone());
        let node = self.node.clone();
        let publish = self.reported.publish(programmed, move |programmed| async move {
            let value = serde_json::to_string(&programmed).unwrap_or_default();
            let patch =
                serde_json::json!({"metadata": {"annotations": {PROGRAMMED_ANNOTATION: value}}});
            nodes
                .patch(
                    &node,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await
                .map(|_| ())
                .map_err(|e| format!("node {node}: {e}"))
        });
        if let Some(publish) = publish {
            self.runtime.spawn(publish);
        }
    }
}

/// Publishes a value that changes (the agent's programmed counts) with one patch at a time:
/// patches are spawned as reports come, and two in flight could complete in either order, so
/// an older one could overwrite a newer one. Here each report gets a generation; a patch
/// waits for the one before it to finish and is skipped if a newer report came meanwhile (the
/// newer one sends the newer value). A report equal to the last one is not sent again, unless
/// that one's patch failed.
pub struct Publisher<T> {
    state: std::sync::Arc<PublisherState<T>>,
}

struct PublisherState<T> {
    /// The last report's generation and value; None after its patch failed.
    last: std::sync::Mutex<(u64, Option<T>)>,
    /// Held by the patch being sent.
    in_flight: tokio::sync::Mutex<()>,
}

impl<T> Default for Publisher<T> {
    fn default() -> Self {
        Publisher {
            state: std::sync::Arc::new(PublisherState {
                last: std::sync::Mutex::new((0, None)),
                in_flight: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

impl<T: PartialEq + Clone + Send + 'static> Publisher<T> {
    /// The future that sends `value` with `patch` (to spawn), or None when `value` is what the
    /// last report sent or is sending.
    pub fn publish<F, Fut>(
        &self,
        value: T,
        patch: F,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static>
    where
        F: FnOnce(T) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send,
    {
        let generation = {
            let mut last = self.state.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.1.as_ref() == Some(&value) {
                return None;
            }
            last.0 += 1;
            last.1 = Some(value.clone());
            last.0
        };
        let state = self.state.clone();
        Some(async move {
            let _one_at_a_time = state.in_flight.lock().await;
            let latest = |s: &PublisherState<T>| {
                s.last.lock().unwrap_or_else(|p| p.into_inner()).0 == generation
            };
            if !latest(&state) {
                tracing::debug!(generation, "a newer report supersedes this one; not sent");
                return;
            }
            if let Err(e) = patch(value).await {
                tracing::warn!(error = %e, "could not publish programmed PortRanges; trying again at the next report");
                let mut last = state.last.lock().unwrap_or_else(|p| p.into_inner());
                if last.0 == generation {
                    last.1 = None;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Publisher;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A patch that takes `delay` (the first report's patch is the slow one), then records
    /// the value as the API server would have it, or fails.
    fn patcher(
        sent: Arc<Mutex<Vec<u32>>>,
        delay: Duration,
        fail: bool,
    ) -> impl FnOnce(
        u32,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
           + Send
           + 'static {
        move |v| {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if fail {
                    return Err("refused".into());
                }
                sent.lock().unwrap().push(v);
                Ok(())
            })
        }
    }

    #[test]
    fn an_older_report_never_overwrites_a_newer_one() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let p = Publisher::default();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let slow = Duration::from_millis(200);
        let first = p.publish(1, patcher(sent.clone(), slow, false)).unwrap();
        let second = p
            .publish(2, patcher(sent.clone(), Duration::ZERO, false))
            .unwrap();
        // The newer one is spawned first, as the runtime may well run it.
        let handles = [rt.spawn(second), rt.spawn(first)];
        rt.block_on(async {
            for h in handles {
                h.await.unwrap();
            }
        });
        // Whatever ran first, what stays is the newest report.
        assert_eq!(sent.lock().unwrap().last(), Some(&2));
        // In order: never 2 then 1.
        assert!(!sent.lock().unwrap().windows(2).any(|w| w == [2, 1]));

        // While 3's slow patch is in flight, 4 and then 3 again: 3 is sent last.
        let (a, b, c) = (
            p.publish(3, patcher(sent.clone(), slow, false)).unwrap(),
            p.publish(4, patcher(sent.clone(), Duration::ZERO, false))
                .unwrap(),
            p.publish(3, patcher(sent.clone(), Duration::ZERO, false))
                .unwrap(),
        );
        let handles = [rt.spawn(a), rt.spawn(b), rt.spawn(c)];
        rt.block_on(async {
            for h in handles {
                h.await.unwrap();
            }
        });
        assert_eq!(sent.lock().unwrap().last(), Some(&3));
        // The same value again: nothing to send.
        assert!(p.publish(3, patcher(sent.clone(), slow, false)).is_none());
    }

    #[test]
    fn a_report_whose_patch_failed_is_sent_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let p = Publisher::default();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let failing = p
            .publish(5, patcher(sent.clone(), Duration::ZERO, true))
            .unwrap();
        rt.block_on(failing);
        assert!(sent.lock().unwrap().is_empty());
        let again = p.publish(5, patcher(sent.clone(), Duration::ZERO, false));
        rt.block_on(again.expect("sent again after the failure"));
        assert_eq!(*sent.lock().unwrap(), [5]);
    }
}
