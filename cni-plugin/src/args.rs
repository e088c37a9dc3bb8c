//! CNI_ARGS: `KEY=VALUE` pairs separated by `;`, e.g.
//! `IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web1`.

use crate::error::CniError;

/// The parsed CNI_ARGS. Keys this plugin does not know are kept and ignored: runtimes pass
/// many (K8S_POD_INFRA_CONTAINER_ID, K8S_POD_UID, ...), so rejecting unknown keys as the
/// reference `LoadArgs` does without `IgnoreUnknown` would only break real runtimes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

/// The namespace a sandbox belongs to when the runtime does not say (podman, plain CNI).
pub const DEFAULT_NAMESPACE: &str = "default";

impl CniArgs {
    pub fn parse(text: &str) -> Result<CniArgs, CniError> {
        let mut pairs = Vec::new();
        // Empty segments (a trailing `;`, or an empty CNI_ARGS) carry nothing; tolerate them.
        for pair in text.split(';').filter(|p| !p.trim().is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                CniError::env(format!(
                    "CNI_ARGS entry {pair:?} is not of the form KEY=VALUE \
                     (entries are separated by ';')"
                ))
            })?;
            if key.trim().is_empty() {
                return Err(CniError::env(format!(
                    "CNI_ARGS entry {pair:?} has an empty key"
                )));
            }
            pairs.push((key.trim().to_string(), value.to_string()));
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key`; when a key repeats, the last one wins, like an env var override.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A non-empty value of `key`: runtimes sometimes pass `K8S_POD_NAME=` for non-pod sandboxes.
    fn get_nonempty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// The pod's UID, where the runtime passes one.
    pub fn uid(&self) -> Option<String> {
        self.get_nonempty("K8S_POD_UID").map(str::to_string)
    }

    /// The sandbox's name and namespace, which the agent matches PortRange selectors against.
    /// Kubernetes and podman pass the name as K8S_POD_NAME; without it the container id is
    /// the only stable name there is.
    pub fn sandbox(&self, container_id: &str) -> (String, String) {
        let name = self.get_nonempty("K8S_POD_NAME").unwrap_or(container_id);
        let namespace = self
            .get_nonempty("K8S_POD_NAMESPACE")
            .unwrap_or(DEFAULT_NAMESPACE);
        (name.to_string(), namespace.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    #[test]
    fn sandbox_name_and_namespace_table() {
        let table = [
            // CNI_ARGS, expected (name, namespace)
            (
                "IgnoreUnknown=1;K8S_POD_NAME=web1;K8S_POD_NAMESPACE=ns",
                ("web1", "ns"),
            ),
            ("K8S_POD_NAME=web1", ("web1", "default")),
            ("K8S_POD_NAMESPACE=ns", ("cid", "ns")),
            ("", ("cid", "default")),
            (";;", ("cid", "default")),
            ("K8S_POD_NAME=;K8S_POD_NAMESPACE=", ("cid", "default")),
            ("K8S_POD_NAME=a;K8S_POD_NAME=b;", ("b", "default")),
            (
                "K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_NAME=web1",
                ("web1", "default"),
            ),
            // Values may contain '=': only the first one separates key from value.
            ("K8S_POD_NAME=a=b", ("a=b", "default")),
        ];
        for (text, (name, ns)) in table {
            let args = CniArgs::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                args.sandbox("cid"),
                (name.to_string(), ns.to_string()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_entries_are_invalid_env() {
        for text in ["K8S_POD_NAME", "a=1;junk", "=value"] {
            let err = CniArgs::parse(text).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{text:?}");
            assert!(err.msg.contains("CNI_ARGS"), "{text:?}: {}", err.msg);
        }
    }
}
