//! `portiso-cni`: a thin CNI plugin. It checks the CNI input, asks the portiso node agent over
//! its unix socket to do the actual attaching, and turns the answer into a CNI result or error.

pub mod args;
pub mod config;
pub mod error;
pub mod plugin;
pub mod result;
pub mod skel;
pub mod version;

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod fake_agent;

#[cfg(test)]
mod tests;
