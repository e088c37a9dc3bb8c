//! Cluster-wide decisions over all PortRanges, pure: which ranges are accepted (the same rule
//! as a node's agent: older creationTimestamp, then name, wins) and which ports a `size` span
//! gets. The `k8s` module feeds this from the API server and writes the result back.

mod alloc;
mod decide;

pub use alloc::{allocate, Pool};
pub use decide::{
    decide, status_for, Decision, Programmed, ACCEPTED, CLUSTER_WIDE_UPLINK, PROGRAMMED,
};
