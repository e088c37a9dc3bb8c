//! The `PortRange` CustomResourceDefinition as YAML, the form `crds/portrange.yaml` holds.

use kube::CustomResourceExt;

use super::portrange::PortRange;

/// What heads the rendered CRD, so that nobody edits the generated file by hand.
const HEADER: &str = "\
# Generated from the PortRange type in operator/src/model/portrange.rs; do not edit.
# Regenerate: cargo run -p portiso -- crd > crds/portrange.yaml
";

/// The `PortRange` CRD rendered as one YAML document, header comment included.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "{HEADER}{}",
        serde_yaml::to_string(&PortRange::crd())?
    ))
}
