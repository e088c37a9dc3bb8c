//! The CNI spec versions this plugin speaks, and what each of them allows.

use crate::error::{code, CniError};

/// A CNI spec version this plugin supports. Ordered oldest first, so `>=` comparisons
/// express "this verb or field exists from version X on".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first; VERSION reports exactly this list.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest version: used when the runtime did not (or could not validly) say which
    /// version it speaks, e.g. for VERSION itself or to stamp an error object.
    pub const CURRENT: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(text: &str) -> Option<CniVersion> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// Like `parse`, but the error is the CNI "incompatible version" error (code 1) that names
    /// the requested version and the supported ones, so the operator knows what to write.
    pub fn require(text: &str) -> Result<CniVersion, CniError> {
        Self::parse(text).ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "incompatible CNI version: the network config asks for cniVersion {text:?}, \
                     but portiso-cni supports only {}",
                    supported_list()
                ),
            )
        })
    }

    /// CHECK was introduced in spec 0.4.0.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC were introduced in spec 1.1.0.
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Before 1.0.0 every entry of a result's `ips` carried `"version": "4"|"6"`; 1.0.0 dropped
    /// it because the address itself says which family it is.
    pub fn ip_has_version_field(self) -> bool {
        self < CniVersion::V1_0_0
    }
}

/// "0.3.0, 0.3.1, ..." for human-readable messages.
pub fn supported_list() -> String {
    CniVersion::ALL
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_round_trips_through_its_text() {
        for v in CniVersion::ALL {
            assert_eq!(CniVersion::parse(v.as_str()), Some(v));
        }
        assert_eq!(CniVersion::parse("0.2.0"), None);
        assert_eq!(CniVersion::parse("1.1"), None);
    }

    #[test]
    fn verbs_and_fields_follow_the_spec_history() {
        let table = [
            // version, CHECK, STATUS/GC, ip "version"
            (CniVersion::V0_3_0, false, false, true),
            (CniVersion::V0_3_1, false, false, true),
            (CniVersion::V0_4_0, true, false, true),
            (CniVersion::V1_0_0, true, false, false),
            (CniVersion::V1_1_0, true, true, false),
        ];
        for (v, check, status_gc, ip_version) in table {
            assert_eq!(v.has_check(), check, "{v:?}");
            assert_eq!(v.has_status_and_gc(), status_gc, "{v:?}");
            assert_eq!(v.ip_has_version_field(), ip_version, "{v:?}");
        }
    }

    #[test]
    fn unknown_version_error_names_it_and_the_supported_ones() {
        let err = CniVersion::require("9.9.9").unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert!(err.msg.contains("\"9.9.9\""), "{}", err.msg);
        for v in CniVersion::ALL {
            assert!(err.msg.contains(v.as_str()), "{}", err.msg);
        }
    }
}
