//! Where a packet's fate is decided: the pure compiler from a bridge's desired state to its
//! OpenFlow table, and the diff between that table and what OVS holds.
//!
//! Nothing here does I/O. `compile_bridge` is a function of `BridgeState` only; the agent
//! hands its result to `ovs` as a `FlowDiff`.

mod compile;
mod flow;
pub mod meters;

pub use compile::{compile_bridge, BridgeState, Datapath, SandboxPorts, CT_ZONE};
pub use flow::{diff, Flow, FlowDiff, FlowRef, FlowTable, Flows};
pub use meters::{bridge_meters, Meter, MeterRate};

/// The tables of a portiso bridge, in the order a packet visits them.
pub mod table {
    /// Every packet starts here and is sorted by the port it came in on.
    pub const CLASSIFY: u8 = 0;
    /// Inbound from the uplink: ARP, echo replies, and TCP/UDP by destination port.
    pub const FROM_UPLINK: u8 = 10;
    /// Inbound ICMP echo replies after conntrack: to the sandbox that sent the request.
    pub const ECHO_REPLY: u8 = 11;
    /// Inbound UDP fragments after conntrack reassembled their datagram: by its port.
    pub const FRAGMENT_IN: u8 = 12;
    /// Outbound from a sandbox: only what the egress rules allow reaches the uplink.
    pub const FROM_SANDBOX: u8 = 20;
    /// Outbound UDP fragments after conntrack reassembled their datagram: by its port.
    pub const FRAGMENT_OUT: u8 = 21;
}
