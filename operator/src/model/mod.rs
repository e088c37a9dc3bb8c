//! The PortRange API and the pure logic over it.
//!
//! - `portrange`: the custom resource types;
//! - `validate`: checks on one range on its own;
//! - `parse`: ranges from a multi-document YAML file;
//! - `crd`: the CRD as YAML;
//! - `selector`: label selector matching;
//! - `ports`: port spans as OVS value/mask blocks;
//! - `overlap`: which ranges claim the same ports;
//! - `arbitrate`: which ranges a node honours.

pub mod arbitrate;
pub mod crd;
pub mod overlap;
pub mod parse;
pub mod portrange;
pub mod ports;
pub mod selector;
pub mod validate;

pub use arbitrate::{arbitrate, RangeVerdict, Verdict};
pub use crd::crd_yaml;
pub use overlap::{expand_entries, overlapping_pairs, reserved_hits, PortEntry};
pub use parse::{parse_portranges_yaml, ParseError};
pub use portrange::{
    Allocation, ObjectKey, PortRange, PortRangeSpec, PortRangeStatus, PortSpan, Protocol,
    ALLOCATABLE_SIZES,
};
pub use ports::{cover, PortBlock};
pub use selector::matches;
pub use validate::{validate, Problem, ValidationError};
