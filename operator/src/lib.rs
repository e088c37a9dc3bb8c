//! portiso: a node agent and tools that let many sandboxes share one IPv4 address and MAC,
//! isolated by port range on an Open vSwitch bridge.
//!
//! Where things happen:
//! - `model`: the PortRange API, port blocks, overlap and arbitration (pure);
//! - `flows`: where a packet's fate is decided — the pure compiler from node state to OpenFlow;
//! - `ovs`: the only module that runs ovs-vsctl / ovs-ofctl / ovs-appctl;
//! - `fastpath`: the eBPF/XDP fast path beside OVS, fed from the same state as the flows;
//! - `link`: the only module that creates veths and configures sandbox namespaces;
//! - `agent`: the node agent (socket server, state, reconcile);
//! - `status`: `portiso status`, what the agent is doing, rendered for people;
//! - `trace`: `portiso trace`, where one packet goes and why, from the agent and OVS's own trace;
//! - `metrics`: the Prometheus endpoint of the agent and the operator;
//! - `testbed` and `demo`: a throwaway node in network namespaces, for the demo and the tests.

pub mod agent;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod exec;
pub mod fastpath;
pub mod flows;
pub mod k8s;
pub mod link;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod ovs;
pub mod status;
pub mod testbed;
pub mod trace;
