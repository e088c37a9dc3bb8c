//! `crds/portrange.yaml` must be exactly what the `PortRange` type renders.

use std::path::PathBuf;

use kube::CustomResourceExt;
use portiso::model::{crd_yaml, PortRange};

fn crd_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/portrange.yaml")
}

#[test]
fn crd_file_matches_the_type() {
    let rendered = crd_yaml().expect("the CRD renders as YAML");
    let path = crd_file();
    if std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).expect("write crds/portrange.yaml");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "{} is out of date with the PortRange type; regenerate it with\n  \
         cargo run -p portiso -- crd > crds/portrange.yaml\nor\n  \
         UPDATE_CRDS=1 cargo test -p portiso --test model_crd",
        path.display()
    );
}

#[test]
fn crd_names_and_schema_are_as_documented() {
    let crd = PortRange::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("portranges.portiso.io"));
    assert_eq!(crd.spec.group, "portiso.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "PortRange");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["pr".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some(),
        "status subresource"
    );

    let schema = serde_json::to_value(
        version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref()),
    )
    .expect("schema as JSON");
    let spec = &schema["properties"]["spec"];
    let required: Vec<&str> = spec["required"]
        .as_array()
        .expect("spec.required")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        required.contains(&"selector") && required.contains(&"ports"),
        "{required:?}"
    );
    assert!(!required.contains(&"uplinks"), "{required:?}");
    assert_eq!(spec["properties"]["ports"]["minItems"], 1);
    let span = &spec["properties"]["ports"]["items"];
    // The CRD type keeps bounds as f64, so they come out as 1.0 and 65535.0.
    for bound in ["start", "end"] {
        let port = &span["properties"][bound];
        assert_eq!(
            (port["minimum"].as_f64(), port["maximum"].as_f64()),
            (Some(1.0), Some(65535.0)),
            "{bound}"
        );
        assert_eq!(port["type"], "integer", "{bound}");
        assert!(
            port.get("format").is_none(),
            "{bound}: Kubernetes knows no uint32 format"
        );
    }
    assert_eq!(
        span["properties"]["protocol"]["enum"],
        serde_json::json!(["TCP", "UDP"])
    );
    assert!(spec["properties"]["selector"]["properties"]["matchExpressions"].is_object());
}
