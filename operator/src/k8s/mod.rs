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
