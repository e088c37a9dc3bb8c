//! The only place that talks to Kubernetes: the operator's watch, status writes, leader
//! election and admission webhook. Decisions themselves are made by the pure `cluster` and
//! `model` modules.

pub mod agent;
pub mod operator;
pub mod tls;
pub mod webhook;

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "portiso-operator";
/// The finalizer on PortRanges that hold an allocation.
pub const FINALIZER: &str = "portiso.io/allocation";

use futures::StreamExt;
use kube::runtime::reflector::{self, reflector, Store};
use kube::runtime::{watcher, WatchStreamExt};
use std::sync::Arc;

/// A watch cache of `api`'s objects, kept up to date by a background task; `notify` (if given)
/// is told after every change.
pub fn watch<K>(
    api: kube::Api<K>,
    config: watcher::Config,
    notify: Option<Arc<tokio::sync::Notify>>,
) -> Store<K>
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
                tracing::warn!(error = %e, kind = %K::kind(&Default::default()), "watch");
            }
            if let Some(n) = &notify {
                n.notify_one();
            }
        }
    });
    store
}
