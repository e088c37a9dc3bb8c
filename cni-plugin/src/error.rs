//! The one error type of the plugin: a CNI error object (spec section "Error").

use portiso_agent_api::AgentError;
use serde_json::{json, Value};

/// Well-known CNI error codes (CNI spec 1.1, "Well-known Error Codes").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS only: the plugin cannot add any sandbox right now.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Codes 100+ are plugin-specific; we use 999 like the reference plugins for "internal".
    pub const INTERNAL: u32 = 999;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// A required CNI_* variable is missing or malformed (code 4).
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    /// The network config is invalid (code 7).
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_NETWORK_CONFIG, msg)
    }

    /// The error object in the shape the spec prescribes. `details` is optional in the spec,
    /// so it is left out rather than printed empty.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut obj = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            obj["details"] = Value::String(self.details.clone());
        }
        obj
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// The agent already speaks CNI error codes, so its errors pass through unchanged.
impl From<AgentError> for CniError {
    fn from(e: AgentError) -> Self {
        // The spec requires a msg; an agent of another version might send none.
        let msg = if e.msg.trim().is_empty() {
            format!(
                "the portiso agent reported error {} without a message",
                e.code
            )
        } else {
            e.msg
        };
        Self {
            code: e.code,
            msg,
            details: e.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_printed_only_when_present() {
        let bare = CniError::new(7, "bad").to_json("1.0.0");
        assert_eq!(
            bare,
            json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad"})
        );
        let full = CniError::new(11, "later")
            .with_details("why")
            .to_json("0.4.0");
        assert_eq!(full["details"], "why");
        assert_eq!(full["cniVersion"], "0.4.0");
    }

    #[test]
    fn agent_errors_keep_code_msg_and_details() {
        let mut agent = AgentError::new(999, "no PortRange selects ns/web1");
        agent.details = "uplink eth1".into();
        let err = CniError::from(agent);
        assert_eq!(
            err,
            CniError::new(999, "no PortRange selects ns/web1").with_details("uplink eth1")
        );
    }
}
