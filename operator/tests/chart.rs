//! The Helm chart `charts/portiso`: `helm lint --strict` is clean, and every document that
//! `helm template` renders with each values file of `charts/portiso/ci/` deserializes into its
//! k8s-openapi type without losing a field; the facts the binaries rely on (agent privileges and
//! mounts, operator flags, webhook wiring, RBAC, the agent's config) hold.
//!
//! helm comes from `bash e2e/k8s-bin.sh` (cached; built with Go the first time).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PodSpec, Secret, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portiso::config::{
    AgentConfig, DatapathChoice, DatapathConfig, FastPathChoice, PortTypeChoice,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

const RELEASE: &str = "portiso";
const NAMESPACE: &str = "portiso-system";
/// The agent's capabilities: exactly these, nothing else. (It runs privileged: see the chart.)
const AGENT_CAPABILITIES: [&str; 3] = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

fn chart() -> PathBuf {
    root().join("charts/portiso")
}

fn ci_values(name: &str) -> PathBuf {
    let path = chart().join("ci").join(name);
    assert!(path.is_file(), "missing values file {}", path.display());
    path
}

/// The helm binary from `bash e2e/k8s-bin.sh` (its last stdout line is the directory).
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new("bash")
            .arg("e2e/k8s-bin.sh")
            .current_dir(root())
            .output()
            .expect("run bash e2e/k8s-bin.sh");
        assert!(
            out.status.success(),
            "bash e2e/k8s-bin.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("k8s-bin.sh prints UTF-8");
        let dir = stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .expect("k8s-bin.sh prints the binaries' directory last");
        let helm = Path::new(dir).join("helm");
        assert!(helm.is_file(), "{} is not there", helm.display());
        helm
    })
}

/// Runs helm; Ok(stdout) on success, Err(stdout + stderr) on failure.
fn run_helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run helm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {} failed ({}):\n{stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One rendered document.
#[derive(Debug, Clone)]
struct Doc {
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
    value: Value,
}

impl Doc {
    fn id(&self) -> String {
        format!("{} {}/{}", self.api_version, self.kind, self.name)
    }

    /// The document as `T`, asserting that nothing was lost on the way: k8s-openapi ignores
    /// unknown fields, so a misspelt or misplaced field would otherwise vanish silently.
    fn typed<T: DeserializeOwned + Serialize>(&self) -> T {
        let typed: T = serde_yaml::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: does not deserialize: {e}", self.id()));
        let back = serde_json::to_value(&typed).expect("serialize back");
        let orig = serde_json::to_value(&self.value).expect("YAML as JSON");
        if let Some(diff) = first_difference(&orig, &back, String::new()) {
            panic!(
                "{}: the rendered document and its typed form differ at {diff} (unknown, misspelt or mistyped field?)",
                self.id()
            );
        }
        typed
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.value
            .get("metadata")?
            .get("labels")?
            .get(key)?
            .as_str()
    }
}

/// Where two JSON values first differ, as a path, or None when they are equal.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value as J;
    match (a, b) {
        (J::Object(x), J::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, format!("{at}.{k}")),
                (p, q) => Some(format!("{at}.{k} (rendered {p:?}, typed {q:?})")),
            })
        }
        (J::Array(x), J::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{at} (rendered {a}, typed {b})")),
    }
}

/// Everything `helm template` rendered for one set of values.
struct Rendered {
    release: String,
    docs: Vec<Doc>,
}

impl Rendered {
    fn fullname(&self) -> String {
        if self.release.contains("portiso") {
            self.release.clone()
        } else {
            format!("{}-portiso", self.release)
        }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Doc> {
        self.docs.iter().filter(|d| d.kind == kind).collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Doc> {
        self.docs.iter().find(|d| d.kind == kind && d.name == name)
    }

    fn get<T: DeserializeOwned + Serialize>(&self, kind: &str, name: &str) -> T {
        self.find(kind, name)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} {name:?} rendered; have: {:?}",
                    self.docs.iter().map(Doc::id).collect::<Vec<_>>()
                )
            })
            .typed()
    }

    fn agent(&self) -> DaemonSet {
        self.get("DaemonSet", &format!("{}-agent", self.fullname()))
    }

    fn operator(&self) -> Deployment {
        self.get("Deployment", &format!("{}-operator", self.fullname()))
    }

    fn webhook(&self) -> ValidatingWebhookConfiguration {
        self.get("ValidatingWebhookConfiguration", &self.fullname())
    }

    fn agent_config(&self) -> ConfigMap {
        self.get("ConfigMap", &format!("{}-agent", self.fullname()))
    }
}

/// `helm template` the chart with these values files and `--set`s (release `portiso`).
fn render(values: &[&str], sets: &[&str]) -> Rendered {
    render_release(RELEASE, values, sets).unwrap_or_else(|e| panic!("{e}"))
}

fn render_release(release: &str, values: &[&str], sets: &[&str]) -> Result<Rendered, String> {
    let chart = chart();
    let paths: Vec<PathBuf> = values.iter().map(|v| ci_values(v)).collect();
    let mut args: Vec<&str> = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    for p in &paths {
        args.extend(["--values", p.to_str().unwrap()]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    let text = run_helm(&args)?;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(de).map_err(|e| format!("rendered YAML: {e}\n{text}"))?;
        if value.is_null() {
            continue;
        }
        let field = |v: Option<&Value>, what: &str| -> Result<String, String> {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("a rendered document has no {what}: {value:?}"))
        };
        let api_version = field(value.get("apiVersion"), "apiVersion")?;
        let kind = field(value.get("kind"), "kind")?;
        let metadata = value.get("metadata");
        let name = field(metadata.and_then(|m| m.get("name")), "metadata.name")?;
        let namespace = metadata
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        docs.push(Doc {
            api_version,
            kind,
            name,
            namespace,
            value,
        });
    }
    Ok(Rendered {
        release: release.into(),
        docs,
    })
}

/// Every values file under charts/portiso/ci/.
fn all_ci_values() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/portiso/ci")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

fn drop_typed<T: DeserializeOwned + Serialize>(doc: &Doc) {
    let _: T = doc.typed();
}

/// Deserializes a document into its k8s-openapi type by kind (with the no-lost-field check);
/// kinds without one in k8s-openapi get their identity checked only.
fn check_typed(doc: &Doc) {
    match (doc.api_version.as_str(), doc.kind.as_str()) {
        ("apps/v1", "Deployment") => drop_typed::<Deployment>(doc),
        ("apps/v1", "DaemonSet") => drop_typed::<DaemonSet>(doc),
        ("batch/v1", "Job") => drop_typed::<Job>(doc),
        ("v1", "Service") => drop_typed::<Service>(doc),
        ("v1", "ServiceAccount") => drop_typed::<ServiceAccount>(doc),
        ("v1", "ConfigMap") => drop_typed::<ConfigMap>(doc),
        ("v1", "Secret") => drop_typed::<Secret>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop_typed::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            drop_typed::<ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => drop_typed::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop_typed::<RoleBinding>(doc),
        ("policy/v1", "PodDisruptionBudget") => drop_typed::<PodDisruptionBudget>(doc),
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            drop_typed::<ValidatingWebhookConfiguration>(doc)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            drop_typed::<CustomResourceDefinition>(doc)
        }
        // No k8s-openapi type: identity (apiVersion, kind, metadata.name) was checked on render.
        ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition")
        | ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            assert!(
                doc.value.get("spec").is_some_and(Value::is_mapping),
                "{}: no spec",
                doc.id()
            );
        }
        _ => panic!(
            "{}: a kind this test does not know; add its k8s-openapi type to check_typed",
            doc.id()
        ),
    }
}

const CLUSTER_SCOPED: [&str; 4] = [
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingWebhookConfiguration",
    "CustomResourceDefinition",
];

#[test]
fn chart_lints_strict_with_every_values_file() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let out = run_helm(&["lint", "--strict", chart]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ERROR]"),
        "helm lint --strict:\n{out}"
    );
    for file in all_ci_values() {
        let path = ci_values(&file);
        let out = run_helm(&[
            "lint",
            "--strict",
            chart,
            "--values",
            path.to_str().unwrap(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint --strict --values ci/{file}:\n{out}"
        );
    }
}

#[test]
fn every_rendered_document_is_a_valid_typed_object() {
    let files = all_ci_values();
    for expected in [
        "default-values.yaml",
        "own-certificate-values.yaml",
        "ovs-container-values.yaml",
        "node-overrides-values.yaml",
    ] {
        assert!(files.iter().any(|f| f == expected), "ci/{expected} is gone");
    }
    for file in &files {
        let r = render(&[file], &[]);
        let mut seen = BTreeSet::new();
        for doc in &r.docs {
            check_typed(doc);
            assert!(
                seen.insert((doc.kind.clone(), doc.namespace.clone(), doc.name.clone())),
                "ci/{file}: {} rendered twice",
                doc.id()
            );
            if CLUSTER_SCOPED.contains(&doc.kind.as_str()) {
                assert_eq!(
                    doc.namespace,
                    None,
                    "ci/{file}: {} is cluster-scoped",
                    doc.id()
                );
            } else {
                assert!(
                    doc.namespace.is_some(),
                    "ci/{file}: {} has no namespace",
                    doc.id()
                );
            }
            assert!(
                doc.name.len() <= 63,
                "ci/{file}: {} name too long",
                doc.id()
            );
            if doc.kind == "CustomResourceDefinition" {
                continue; // crds/ is copied verbatim, without templating
            }
            for (key, want) in [
                ("app.kubernetes.io/name", Some("portiso")),
                ("app.kubernetes.io/instance", Some(RELEASE)),
                ("app.kubernetes.io/managed-by", Some("Helm")),
                ("app.kubernetes.io/version", None),
                ("app.kubernetes.io/component", None),
                ("helm.sh/chart", None),
            ] {
                let got = doc.label(key);
                assert!(got.is_some(), "ci/{file}: {} lacks label {key}", doc.id());
                if let Some(want) = want {
                    assert_eq!(got, Some(want), "ci/{file}: {} label {key}", doc.id());
                }
            }
        }
        let kinds: BTreeSet<&str> = r.docs.iter().map(|d| d.kind.as_str()).collect();
        for kind in [
            "CustomResourceDefinition",
            "Deployment",
            "DaemonSet",
            "Service",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "ValidatingWebhookConfiguration",
        ] {
            assert!(kinds.contains(kind), "ci/{file}: no {kind} rendered");
        }
    }
}

#[test]
fn chart_crd_is_the_generated_crd_byte_for_byte() {
    let generated = root().join("crds/portrange.yaml");
    let copy = chart().join("crds/portrange.yaml");
    let want = std::fs::read(&generated).expect("crds/portrange.yaml");
    if std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1") {
        std::fs::write(&copy, &want).expect("write charts/portiso/crds/portrange.yaml");
    }
    let have = std::fs::read(&copy).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from {}; copy it:\n  cp crds/portrange.yaml charts/portiso/crds/portrange.yaml\n\
         or UPDATE_CRDS=1 cargo test -p portiso --test chart",
        copy.display(),
        generated.display()
    );
    // ...and helm installs exactly that CRD.
    let r = render(&["default-values.yaml"], &[]);
    let crds = r.of_kind("CustomResourceDefinition");
    assert_eq!(crds.len(), 1, "one CRD");
    let rendered: CustomResourceDefinition = crds[0].typed();
    let file: CustomResourceDefinition =
        serde_yaml::from_slice(&want).expect("crds/portrange.yaml parses");
    assert_eq!(rendered, file);
    assert_eq!(
        rendered.metadata.name.as_deref(),
        Some("portranges.portiso.io")
    );
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name:?}"))
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name:?}"))
}

/// The host path behind the container's mount at `mount_path`, with its mount propagation.
fn host_mount(spec: &PodSpec, c: &Container, mount_path: &str) -> (String, Option<String>) {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == mount_path)
        .unwrap_or_else(|| panic!("container {} does not mount {mount_path}", c.name));
    let host = volume(spec, &m.name)
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("volume {} is not a hostPath", m.name));
    (host.path.clone(), m.mount_propagation.clone())
}

fn env_field_ref(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value_from
        .as_ref()?
        .field_ref
        .as_ref()
        .map(|f| f.field_path.clone())
}

/// The value after `--flag` in `args` (each flag at most once).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at: Vec<usize> = (0..args.len()).filter(|&i| args[i] == name).collect();
    assert!(at.len() <= 1, "{name} given {} times: {args:?}", at.len());
    at.first()
        .map(|&i| args.get(i + 1).expect("flag value").as_str())
}

#[test]
fn agent_daemonset_has_exactly_the_privileges_and_mounts_it_needs() {
    let r = render(&["default-values.yaml"], &[]);
    let ds = r.agent();
    let spec = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_ne!(spec.host_pid, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = spec.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "the agent tolerates every taint: {tolerations:?}"
    );
    let sa = spec
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    r.get::<ServiceAccount>("ServiceAccount", sa);

    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["agent"], "no OVS container unless ovs.deploy");
    let agent = container(spec, "agent");
    assert_eq!(
        agent.image.as_deref(),
        Some("ghcr.io/portiso/portiso:0.1.0")
    );
    assert_eq!(agent.command.as_deref(), Some(&["portiso".to_string()][..]));
    let args = agent.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("agent"));
    assert!(args.iter().any(|a| a == "--kubernetes"), "{args:?}");
    assert_eq!(flag(&args, "--config"), Some("/etc/portiso/agent.yaml"));
    assert_eq!(flag(&args, "--node-name"), Some("$(NODE_NAME)"));
    assert_eq!(
        env_field_ref(agent, "NODE_NAME").as_deref(),
        Some("spec.nodeName")
    );

    let sc = agent.security_context.as_ref().expect("securityContext");
    // Privileged for read-write /proc/sys in pods' namespaces (see the template's comment).
    assert_eq!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(AGENT_CAPABILITIES));
    assert_eq!(
        caps.add.as_ref().map(Vec::len),
        Some(AGENT_CAPABILITIES.len())
    );
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "the runtime's default capabilities are dropped"
    );

    for (path, propagation) in [
        ("/run/openvswitch", None),
        ("/var/run/netns", Some("HostToContainer")),
        ("/run/netns", Some("HostToContainer")),
        ("/opt/cni/bin", None),
        ("/etc/cni/net.d", None),
        ("/run/portiso", None),
        // The fast path's pins live on the host's bpffs; what the agent mounts there, too.
        ("/sys/fs/bpf", Some("Bidirectional")),
    ] {
        let (host, prop) = host_mount(spec, agent, path);
        assert_eq!(host, path, "{path} is the host's {path}");
        assert_eq!(prop.as_deref(), propagation, "mountPropagation of {path}");
    }
    let bpffs = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .expect("/sys/fs/bpf mounted");
    assert_ne!(bpffs.read_only, Some(true), "the agent pins into the bpffs");
    assert_eq!(
        volume(spec, &bpffs.name)
            .host_path
            .as_ref()
            .and_then(|h| h.type_.as_deref()),
        Some("DirectoryOrCreate")
    );
    // ...and the pins go there: the configured bpfDir lies under that mount.
    assert!(
        parsed_agent_config(&r)
            .datapath
            .bpf_dir
            .starts_with("/sys/fs/bpf/"),
        "bpfDir under the host's bpffs"
    );
    // Only other containers of the pod (OVS) would need it: they do not get it.
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        if c.name != agent.name {
            assert!(
                !c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.mount_propagation.as_deref() == Some("Bidirectional")),
                "{} has a Bidirectional mount",
                c.name
            );
        }
    }
    // The config: agent.yaml from the agent ConfigMap, at the path --config names.
    let config_mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/portiso")
        .expect("/etc/portiso mounted");
    let cm = volume(spec, &config_mount.name)
        .config_map
        .as_ref()
        .expect("a ConfigMap volume");
    assert_eq!(cm.name, format!("{}-agent", r.fullname()));
    r.agent_config();

    // The init container puts portiso-cni on the host's CNI bin dir.
    let install = container(spec, "install-cni");
    assert!(spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == "install-cni"));
    let script = install
        .command
        .iter()
        .chain(install.args.iter())
        .flatten()
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        script.contains("/usr/local/bin/portiso-cni")
            && script.contains("/opt/cni/bin/portiso-cni"),
        "{script}"
    );
    assert_eq!(host_mount(spec, install, "/opt/cni/bin").0, "/opt/cni/bin");
    // No privilege anywhere else in the pod unless the OVS container asks for it.
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name != agent.name)
    {
        assert_ne!(
            c.security_context.as_ref().and_then(|s| s.privileged),
            Some(true),
            "{} is privileged",
            c.name
        );
    }

    // Another CNI bin dir (e.g. k3s) is the host side of the same mounts.
    let r = render(
        &["default-values.yaml"],
        &["cni.binDir=/var/lib/rancher/k3s/data/cni"],
    );
    let ds = r.agent();
    let spec = ds.spec.template.spec.as_ref().unwrap();
    let (host, _) = host_mount(spec, container(spec, "install-cni"), "/opt/cni/bin");
    assert_eq!(host, "/var/lib/rancher/k3s/data/cni");
}

#[test]
fn operator_deployment_runs_two_replicas_with_the_contracts_flags() {
    let r = render(&["default-values.yaml"], &[]);
    let full = r.fullname();
    let dep = r.operator();
    let dspec = &dep.spec;
    assert_eq!(dspec.replicas, Some(2));
    let spec = dspec.template.spec.as_ref().unwrap();
    let op = container(spec, "operator");
    assert_eq!(op.command.as_deref(), Some(&["portiso".to_string()][..]));
    let args = op.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("operator"));
    let lease = format!("{full}-operator");
    let service = format!("{full}-webhook");
    for (name, value) in [
        ("--webhook-addr", "0.0.0.0:8443"),
        ("--webhook-config-name", full.as_str()),
        ("--webhook-service", service.as_str()),
        ("--pool", "20000-29999"),
        ("--reserved-host-ports", "0-9999"),
        ("--lease-name", lease.as_str()),
        ("--metrics-addr", "0.0.0.0:9090"),
    ] {
        assert_eq!(flag(&args, name), Some(value), "{name} in {args:?}");
    }
    assert_eq!(flag(&args, "--tls-cert"), None, "self-signed by default");
    assert_eq!(flag(&args, "--tls-key"), None);
    assert_eq!(
        env_field_ref(op, "POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        env_field_ref(op, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    let sa = spec
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    r.get::<ServiceAccount>("ServiceAccount", sa);
    assert_eq!(sa, format!("{full}-operator"));
    // Runs unprivileged.
    let sc = op.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        spec.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    // The webhook Service: 443 → the container's 8443.
    let svc: Service = r.get("Service", &service);
    let sspec = svc.spec.as_ref().unwrap();
    let port = &sspec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 443);
    let target = match port.target_port.as_ref().expect("targetPort") {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => {
            op.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    };
    assert_eq!(target, 8443);
    let selector = sspec.selector.as_ref().expect("selector");
    let pod_labels = dspec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "the Service selects the operator pods"
        );
    }
    // The agent pods are not behind it.
    let agent = r.agent();
    let agent_labels = agent.spec.template.metadata.unwrap().labels.unwrap();
    assert!(selector.iter().any(|(k, v)| agent_labels.get(k) != Some(v)));

    let pdb: PodDisruptionBudget = r.get("PodDisruptionBudget", &format!("{full}-operator"));
    assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));

    // Replicas, pool and reserved ports are values.
    let r = render(
        &["default-values.yaml"],
        &["operator.replicas=1", "operator.pool=40000-40999"],
    );
    let dep = r.operator();
    assert_eq!(dep.spec.replicas, Some(1));
    let args = container(dep.spec.template.spec.as_ref().unwrap(), "operator")
        .args
        .clone()
        .unwrap();
    assert_eq!(flag(&args, "--pool"), Some("40000-40999"));
    assert!(
        r.of_kind("PodDisruptionBudget").is_empty(),
        "no PDB for one replica"
    );
}

#[test]
fn webhook_configuration_points_at_the_service_path_validate() {
    let r = render(&["default-values.yaml"], &[]);
    let full = r.fullname();
    let vwc = r.webhook();
    let hooks = vwc.webhooks.as_ref().expect("webhooks");
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    let svc = h
        .client_config
        .service
        .as_ref()
        .expect("a Service reference");
    assert_eq!(svc.name, format!("{full}-webhook"));
    assert_eq!(svc.namespace, NAMESPACE);
    assert_eq!(svc.path.as_deref(), Some("/validate"));
    assert_eq!(svc.port, Some(443));
    assert!(h.client_config.url.is_none());
    r.get::<Service>("Service", &svc.name);
    assert!(
        h.client_config.ca_bundle.is_none(),
        "no caBundle: the operator patches in its own"
    );
    assert_eq!(h.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(h.timeout_seconds, Some(5));
    assert_eq!(h.side_effects, "None");
    assert_eq!(h.admission_review_versions, ["v1"]);
    let rules = h.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&["portiso.io".to_string()][..])
    );
    assert_eq!(
        rule.api_versions.as_deref(),
        Some(&["v1alpha1".to_string()][..])
    );
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["portranges".to_string()][..])
    );
    let ops: BTreeSet<&str> = rule
        .operations
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(ops, BTreeSet::from(["CREATE", "UPDATE"]));

    // The operator may get and patch this one webhook configuration, no other.
    let role: ClusterRole = r.get("ClusterRole", &format!("{full}-operator"));
    let rules = role.rules.unwrap_or_default();
    assert!(allows(
        &rules,
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "get",
        Some(&full)
    ));
    assert!(allows(
        &rules,
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "patch",
        Some(&full)
    ));
    assert!(!allows(
        &rules,
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "patch",
        Some("someone-elses")
    ));

    let r = render(&["default-values.yaml"], &["webhook.failurePolicy=Ignore"]);
    assert_eq!(
        r.webhook().webhooks.unwrap()[0].failure_policy.as_deref(),
        Some("Ignore")
    );

    // Names follow the release.
    let r = render_release("edge", &["default-values.yaml"], &[]).unwrap();
    assert_eq!(r.fullname(), "edge-portiso");
    let vwc = r.webhook();
    let svc = vwc.webhooks.unwrap()[0]
        .client_config
        .service
        .clone()
        .unwrap();
    assert_eq!(svc.name, "edge-portiso-webhook");
    let dep = r.operator();
    let args = container(dep.spec.template.spec.as_ref().unwrap(), "operator")
        .args
        .clone()
        .unwrap();
    assert_eq!(flag(&args, "--webhook-config-name"), Some("edge-portiso"));
    assert_eq!(flag(&args, "--lease-name"), Some("edge-portiso-operator"));
}

#[test]
fn own_certificate_is_mounted_and_its_ca_bundle_set() {
    let r = render(&["own-certificate-values.yaml"], &[]);
    let dep = r.operator();
    let dspec = &dep.spec;
    assert_eq!(dspec.replicas, Some(3));
    let spec = dspec.template.spec.as_ref().unwrap();
    let op = container(spec, "operator");
    let args = op.args.clone().unwrap();
    assert_eq!(flag(&args, "--tls-cert"), Some("/tls/tls.crt"));
    assert_eq!(flag(&args, "--tls-key"), Some("/tls/tls.key"));
    assert_eq!(flag(&args, "--pool"), Some("30000-39999"));
    assert_eq!(flag(&args, "--reserved-host-ports"), Some("0-9999,10250"));
    let mount = op
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/tls")
        .expect("/tls mounted");
    assert_eq!(mount.read_only, Some(true));
    let secret = volume(spec, &mount.name)
        .secret
        .as_ref()
        .expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("portiso-webhook-tls"));
    // Locally imported images.
    assert_eq!(op.image.as_deref(), Some("localhost/portiso:dev"));
    assert_eq!(op.image_pull_policy.as_deref(), Some("Never"));
    assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    let agent = r.agent();
    let aspec = agent.spec.template.spec.as_ref().unwrap();
    for c in aspec
        .containers
        .iter()
        .chain(aspec.init_containers.iter().flatten())
    {
        assert_eq!(
            c.image.as_deref(),
            Some("localhost/portiso:dev"),
            "{}",
            c.name
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"), "{}", c.name);
    }

    let vwc = r.webhook();
    let h = &vwc.webhooks.unwrap()[0];
    let ca = h.client_config.ca_bundle.as_ref().expect("caBundle");
    assert!(
        String::from_utf8_lossy(&ca.0).starts_with("-----BEGIN CERTIFICATE-----"),
        "caBundle is the base64 of a PEM"
    );
    assert_eq!(h.failure_policy.as_deref(), Some("Ignore"));

    // Metrics: a Service and the ServiceMonitor selecting it.
    let sm = r
        .find("ServiceMonitor", &format!("{}-operator", r.fullname()))
        .expect("ServiceMonitor");
    assert_eq!(sm.api_version, "monitoring.coreos.com/v1");
    assert_eq!(sm.label("release"), Some("prometheus"));
    let svc: Service = r.get("Service", &format!("{}-metrics", r.fullname()));
    let wanted = sm.value["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    let svc_labels = svc.metadata.labels.unwrap();
    for (k, v) in wanted {
        assert_eq!(
            svc_labels.get(k.as_str().unwrap()).map(String::as_str),
            v.as_str(),
            "the ServiceMonitor selects the metrics Service"
        );
    }
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 9090);
    assert!(
        render(&["default-values.yaml"], &[])
            .of_kind("ServiceMonitor")
            .is_empty(),
        "no ServiceMonitor by default"
    );
}

/// Whether `rules` allow `verb` on `group`/`resource` (named `name`, if given).
fn allows(
    rules: &[PolicyRule],
    group: &str,
    resource: &str,
    verb: &str,
    name: Option<&str>,
) -> bool {
    rules.iter().any(|r| {
        let has =
            |list: &Option<Vec<String>>, x: &str| list.iter().flatten().any(|i| i == x || i == "*");
        has(&r.api_groups, group)
            && has(&r.resources, resource)
            && r.verbs.iter().any(|v| v == verb || v == "*")
            && match (&r.resource_names, name) {
                (None, _) => true,
                (Some(names), Some(n)) => names.iter().any(|x| x == n),
                (Some(names), None) => names.is_empty(),
            }
    })
}

#[test]
fn rbac_grants_what_the_binaries_use_and_no_more() {
    let r = render(&["default-values.yaml"], &[]);
    let full = r.fullname();
    let op: ClusterRole = r.get("ClusterRole", &format!("{full}-operator"));
    let op = op.rules.unwrap_or_default();
    let mut wanted: Vec<(&str, &str, &str)> = Vec::new();
    for v in ["get", "list", "watch", "update", "patch"] {
        wanted.push(("portiso.io", "portranges", v));
    }
    for v in ["get", "update", "patch"] {
        wanted.push(("portiso.io", "portranges/status", v));
    }
    wanted.push(("portiso.io", "portranges/finalizers", "update"));
    for v in ["get", "list", "watch"] {
        wanted.push(("", "pods", v));
        wanted.push(("", "nodes", v));
    }
    for v in ["create", "patch"] {
        wanted.push(("", "events", v));
    }
    for (g, res, v) in wanted {
        assert!(
            allows(&op, g, res, v, None),
            "operator may not {v} {g}/{res}"
        );
    }
    assert!(!allows(&op, "", "pods", "delete", None));
    assert!(!allows(&op, "", "secrets", "get", None));
    assert!(!op.iter().any(|r| r.verbs.iter().any(|v| v == "*")));

    let lease = format!("{full}-operator");
    let role: Role = r.get("Role", &format!("{full}-operator"));
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let rules = role.rules.unwrap_or_default();
    // kube-lease-manager gets, creates and patches the Lease.
    for v in ["get", "create", "update", "patch"] {
        assert!(
            allows(&rules, "coordination.k8s.io", "leases", v, Some(&lease)),
            "operator may not {v} its Lease"
        );
    }
    assert!(!allows(
        &rules,
        "coordination.k8s.io",
        "leases",
        "patch",
        Some("another")
    ));
    // The self-signed certificate is shared through Secret <webhook service>-tls.
    let tls = format!("{full}-webhook-tls");
    assert!(allows(&rules, "", "secrets", "create", Some(&tls)));
    assert!(allows(&rules, "", "secrets", "get", Some(&tls)));
    assert!(!allows(&rules, "", "secrets", "get", Some("another")));
    assert!(!allows(&rules, "", "secrets", "list", None));
    let own = render(&["own-certificate-values.yaml"], &[]);
    let own_role: Role = own.get("Role", &format!("{}-operator", own.fullname()));
    assert!(
        !allows(
            &own_role.rules.unwrap_or_default(),
            "",
            "secrets",
            "create",
            None
        ),
        "no Secret access with an own certificate"
    );

    let agent: ClusterRole = r.get("ClusterRole", &format!("{full}-agent"));
    let agent = agent.rules.unwrap_or_default();
    for v in ["get", "list", "watch"] {
        assert!(allows(&agent, "portiso.io", "portranges", v, None));
        assert!(allows(&agent, "", "pods", v, None));
    }
    // Its Node: read, and patched for the programmed annotation; nothing else written.
    assert!(allows(&agent, "", "nodes", "get", None));
    assert!(allows(&agent, "", "nodes", "patch", None));
    for (g, res) in [("portiso.io", "portranges"), ("", "pods"), ("", "nodes")] {
        for v in ["create", "update", "patch", "delete"] {
            if (res, v) == ("nodes", "patch") {
                continue;
            }
            assert!(!allows(&agent, g, res, v, None), "agent may {v} {res}");
        }
    }

    // Its own DaemonSet, read (and watched) to tell `helm uninstall` from a restart on SIGTERM:
    // that one object in the release namespace, read only; no cluster-wide access to any.
    let agent_ds = r.agent().metadata.name.clone().expect("DaemonSet name");
    assert_eq!(agent_ds, format!("{full}-agent"));
    let role: Role = r.get("Role", &format!("{full}-agent"));
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let rules = role.rules.unwrap_or_default();
    for v in ["get", "list", "watch"] {
        assert!(
            allows(&rules, "apps", "daemonsets", v, Some(&agent_ds)),
            "agent may not {v} its DaemonSet"
        );
        assert!(!allows(&rules, "apps", "daemonsets", v, Some("another")));
        assert!(!allows(&rules, "apps", "daemonsets", v, None));
        assert!(!allows(&agent, "apps", "daemonsets", v, None));
    }
    for v in ["create", "update", "patch", "delete"] {
        assert!(
            !allows(&rules, "apps", "daemonsets", v, Some(&agent_ds)),
            "agent may {v} its DaemonSet"
        );
    }
    assert_eq!(rules.len(), 1, "{rules:?}");

    // Bindings tie each role to the right ServiceAccount in the release namespace.
    for (kind, name, sa) in [
        (
            "ClusterRoleBinding",
            format!("{full}-operator"),
            format!("{full}-operator"),
        ),
        (
            "ClusterRoleBinding",
            format!("{full}-agent"),
            format!("{full}-agent"),
        ),
        (
            "RoleBinding",
            format!("{full}-operator"),
            format!("{full}-operator"),
        ),
        (
            "RoleBinding",
            format!("{full}-agent"),
            format!("{full}-agent"),
        ),
    ] {
        let (role_ref, subjects) = if kind == "RoleBinding" {
            let b: RoleBinding = r.get(kind, &name);
            (b.role_ref, b.subjects.unwrap_or_default())
        } else {
            let b: ClusterRoleBinding = r.get(kind, &name);
            (b.role_ref, b.subjects.unwrap_or_default())
        };
        let role_kind = if kind == "RoleBinding" {
            "Role"
        } else {
            "ClusterRole"
        };
        assert_eq!(role_ref.kind, role_kind);
        assert!(
            r.find(role_kind, &role_ref.name).is_some(),
            "{kind} {name}: no {role_kind} {}",
            role_ref.name
        );
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa);
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
        r.get::<ServiceAccount>("ServiceAccount", &sa);
    }
}

/// `helm uninstall` marks the agent DaemonSet first (a pre-delete hook Job running `portiso
/// uninstall-mark`, with a ServiceAccount and Role that may only get and patch that one
/// DaemonSet); the agents uninstall only after that mark. Every hook object is deleted before a
/// new one is created and once the hook succeeded, and the ServiceAccount, Role and binding
/// come before the Job.
#[test]
fn uninstall_hook_marks_the_agent_daemonset_and_may_do_nothing_else() {
    let r = render(&["default-values.yaml"], &[]);
    let full = r.fullname();
    let hook = format!("{full}-uninstall-mark");
    let agent_ds = format!("{full}-agent");
    let annotations = |kind: &str| -> BTreeMap<String, String> {
        let doc = r
            .find(kind, &hook)
            .unwrap_or_else(|| panic!("no {kind} {hook} rendered"));
        serde_yaml::from_value(doc.value["metadata"]["annotations"].clone())
            .unwrap_or_else(|e| panic!("{kind} {hook}: annotations: {e}"))
    };
    for (kind, weight) in [
        ("ServiceAccount", "-10"),
        ("Role", "-10"),
        ("RoleBinding", "-10"),
        ("Job", "0"),
    ] {
        let a = annotations(kind);
        assert_eq!(a["helm.sh/hook"], "pre-delete", "{kind}");
        assert_eq!(a["helm.sh/hook-weight"], weight, "{kind}");
        assert_eq!(
            a["helm.sh/hook-delete-policy"], "before-hook-creation,hook-succeeded",
            "{kind}"
        );
    }

    let job: Job = r.get("Job", &hook);
    assert_eq!(job.metadata.namespace.as_deref(), Some(NAMESPACE));
    let pod = job.spec.expect("Job spec").template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(hook.as_str()));
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.host_network, Some(true));
    let c = container(&pod, "uninstall-mark");
    assert_eq!(c.command.as_deref(), Some(&["portiso".to_string()][..]));
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args[0], "uninstall-mark");
    assert_eq!(
        flag(&args, "--daemonset"),
        Some(format!("{NAMESPACE}/{agent_ds}").as_str())
    );
    assert_eq!(
        c.image,
        r.agent().spec.template.spec.unwrap().containers[0].image
    );
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );

    let role: Role = r.get("Role", &hook);
    let rules = role.rules.unwrap_or_default();
    for v in ["get", "patch"] {
        assert!(allows(&rules, "apps", "daemonsets", v, Some(&agent_ds)));
        assert!(!allows(&rules, "apps", "daemonsets", v, Some("another")));
    }
    for v in ["list", "watch", "update", "delete", "create"] {
        assert!(
            !allows(&rules, "apps", "daemonsets", v, Some(&agent_ds)),
            "{v}"
        );
    }
    assert_eq!(rules.len(), 1, "{rules:?}");
    let b: RoleBinding = r.get("RoleBinding", &hook);
    assert_eq!(
        (b.role_ref.kind.as_str(), b.role_ref.name.as_str()),
        ("Role", hook.as_str())
    );
    let subjects = b.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, hook);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    r.get::<ServiceAccount>("ServiceAccount", &hook);

    // Turned off: no hook, and the agents never uninstall on their own.
    let off = render(&["default-values.yaml"], &["uninstallHook.enabled=false"]);
    assert!(
        off.docs.iter().all(|d| d.name != hook),
        "hook rendered while disabled"
    );
}

/// A ConfigMap key parsed as YAML.
fn config_key(cm: &ConfigMap, key: &str) -> Value {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("ConfigMap has no {key}"));
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{key} is not YAML: {e}\n{text}"))
}

fn uplink_names(uplinks: &Value) -> Vec<String> {
    uplinks
        .as_sequence()
        .expect("uplinks is a list")
        .iter()
        .map(|u| u["name"].as_str().expect("uplink name").to_owned())
        .collect()
}

#[test]
fn agent_config_map_holds_agent_yaml_and_overrides_yaml() {
    let r = render(&["default-values.yaml"], &[]);
    let cm = r.agent_config();
    let agent = config_key(&cm, "agent.yaml");
    assert_eq!(uplink_names(&agent["uplinks"]), ["eth1"]);
    assert!(
        agent["uplinks"][0].get("address").is_none(),
        "address read from the node"
    );
    assert_eq!(
        agent["reservedHostPorts"],
        serde_yaml::from_str::<Value>("['0-9999']").unwrap()
    );
    assert_eq!(agent["socket"].as_str(), Some("/run/portiso/agent.sock"));
    // The full form of the datapath section, every key spelt out.
    let datapath: BTreeMap<String, String> =
        serde_yaml::from_value(agent["datapath"].clone()).expect("datapath is a map of strings");
    assert_eq!(
        datapath,
        BTreeMap::from(
            [
                ("type", "auto"),
                ("userspacePorts", "auto"),
                ("fastPath", "auto"),
                ("bpfDir", "/sys/fs/bpf/portiso"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        )
    );
    assert_eq!(parsed_agent_config(&r).datapath, DatapathConfig::default());
    let overrides = config_key(&cm, "overrides.yaml");
    assert_eq!(overrides["overrides"].as_sequence().map(Vec::len), Some(0));

    // With addresses, the agent's own parser (unknown keys refused) takes the rendered config.
    let r = render(&["ovs-container-values.yaml"], &[]);
    let text = r.agent_config().data.unwrap().remove("agent.yaml").unwrap();
    let config = AgentConfig::parse(&text, "agent.yaml")
        .unwrap_or_else(|e| panic!("the agent refuses the chart's config: {e}\n{text}"));
    assert_eq!(config.uplinks.len(), 1);
    assert_eq!(config.uplinks[0].name, "eth1");
    assert_eq!(config.uplinks[0].bridge, "br-public");
    assert_eq!(config.uplinks[0].cidr(), "198.51.100.1/24");
    assert_eq!(config.reserved_host_ports, [(0, 9999)]);
    assert_eq!(config.socket, Path::new("/run/portiso/agent.sock"));
    assert_eq!(
        config.datapath,
        DatapathConfig {
            kind: DatapathChoice::Netdev,
            userspace_ports: PortTypeChoice::Afxdp,
            // `fastPath: off` unquoted in the values file: a YAML boolean to helm.
            fast_path: FastPathChoice::Off,
            bpf_dir: PathBuf::from("/sys/fs/bpf/portiso-ovs"),
        }
    );

    // Each datapath value reaches the agent's config.
    for (sets, want) in [
        (
            vec!["agent.fastPath=off,agent.userspacePorts=afxdp-nonpmd"],
            DatapathConfig {
                userspace_ports: PortTypeChoice::AfxdpNonpmd,
                fast_path: FastPathChoice::Off,
                ..DatapathConfig::default()
            },
        ),
        (
            vec!["agent.datapath=system", "agent.fastPath=on"],
            DatapathConfig {
                kind: DatapathChoice::System,
                fast_path: FastPathChoice::On,
                ..DatapathConfig::default()
            },
        ),
        (
            vec!["agent.fastPath=true", "agent.userspacePorts=system"],
            DatapathConfig {
                userspace_ports: PortTypeChoice::System,
                fast_path: FastPathChoice::On,
                ..DatapathConfig::default()
            },
        ),
        (
            vec![
                "agent.fastPath=false",
                "agent.bpfDir=/sys/fs/bpf/edge/portiso",
            ],
            DatapathConfig {
                fast_path: FastPathChoice::Off,
                bpf_dir: PathBuf::from("/sys/fs/bpf/edge/portiso"),
                ..DatapathConfig::default()
            },
        ),
    ] {
        let r = render(&["default-values.yaml"], &sets);
        assert_eq!(parsed_agent_config(&r).datapath, want, "{sets:?}");
    }

    // A config change rolls the DaemonSet.
    let checksum = |r: &Rendered| {
        r.agent()
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["checksum/config"]
            .clone()
    };
    let default = checksum(&render(&["default-values.yaml"], &[]));
    for set in [
        "agent.datapath=system",
        "agent.userspacePorts=afxdp",
        "agent.fastPath=off",
        "agent.bpfDir=/sys/fs/bpf/other",
    ] {
        assert_ne!(
            default,
            checksum(&render(&["default-values.yaml"], &[set])),
            "{set} rolls the agents"
        );
    }
}

/// The rendered agent.yaml, through the agent's own parser (unknown keys refused).
fn parsed_agent_config(r: &Rendered) -> AgentConfig {
    let text = r
        .agent_config()
        .data
        .and_then(|mut d| d.remove("agent.yaml"))
        .expect("agent.yaml");
    AgentConfig::parse(&text, "agent.yaml")
        .unwrap_or_else(|e| panic!("the agent refuses the chart's config: {e}\n{text}"))
}

#[test]
fn node_overrides_and_network_attachment_definitions() {
    let r = render(&["node-overrides-values.yaml"], &[]);
    let cm = r.agent_config();
    let agent = config_key(&cm, "agent.yaml");
    assert_eq!(uplink_names(&agent["uplinks"]), ["eth1", "eth2"]);
    assert_eq!(agent["uplinks"][1]["bridge"].as_str(), Some("br-second"));
    let overrides = config_key(&cm, "overrides.yaml");
    let list = overrides["overrides"]
        .as_sequence()
        .expect("overrides list");
    assert_eq!(list.len(), 2);
    let selector: BTreeMap<String, String> =
        serde_yaml::from_value(list[0]["nodeSelector"].clone()).expect("nodeSelector map");
    assert_eq!(
        selector,
        BTreeMap::from([("kubernetes.io/hostname".into(), "node-a".into())])
    );
    assert_eq!(uplink_names(&list[0]["uplinks"]), ["ens5"]);
    assert_eq!(
        list[0]["uplinks"][0]["address"].as_str(),
        Some("203.0.113.10/24")
    );
    assert_eq!(
        list[0]["uplinks"][0]["gateway"].as_str(),
        Some("203.0.113.1")
    );
    let selector: BTreeMap<String, String> =
        serde_yaml::from_value(list[1]["nodeSelector"].clone()).expect("nodeSelector map");
    assert_eq!(
        selector["topology.kubernetes.io/zone"], "1",
        "label values stay strings"
    );
    assert_eq!(uplink_names(&list[1]["uplinks"]), ["bond0"]);

    let nads = r.of_kind("NetworkAttachmentDefinition");
    assert_eq!(nads.len(), 2);
    let expect = [
        ("portiso-eth1", "default", "eth1", "0.3.1"),
        ("portiso-eth2", NAMESPACE, "eth2", "1.0.0"),
    ];
    for (doc, (name, ns, uplink, version)) in nads.iter().zip(expect) {
        assert_eq!(doc.api_version, "k8s.cni.cncf.io/v1");
        assert_eq!(doc.name, name);
        assert_eq!(doc.namespace.as_deref(), Some(ns));
        let config = doc.value["spec"]["config"]
            .as_str()
            .expect("spec.config string");
        let config: serde_json::Value =
            serde_json::from_str(config).unwrap_or_else(|e| panic!("{name}: config JSON: {e}"));
        assert_eq!(config["type"], "portiso-cni");
        assert_eq!(config["uplink"], uplink);
        assert_eq!(config["cniVersion"], version);
        assert_eq!(config["agentSocket"], "/run/portiso/agent.sock");
    }
    assert!(
        render(&["default-values.yaml"], &[])
            .of_kind("NetworkAttachmentDefinition")
            .is_empty(),
        "no NetworkAttachmentDefinition by default"
    );
}

#[test]
fn ovs_container_shares_the_run_directory_with_the_agent() {
    let r = render(&["ovs-container-values.yaml"], &[]);
    let ds = r.agent();
    let spec = ds.spec.template.spec.as_ref().unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["agent", "openvswitch"]);
    let ovs = container(spec, "openvswitch");
    let agent = container(spec, "agent");
    assert_eq!(ovs.image, agent.image, "OVS runs from the portiso image");
    let script = ovs.args.clone().unwrap_or_default().join("\n");
    for daemon in ["ovsdb-server", "ovs-vswitchd", "modprobe openvswitch"] {
        assert!(
            script.contains(daemon),
            "the OVS container runs {daemon}:\n{script}"
        );
    }
    let (ovs_run, _) = host_mount(spec, ovs, "/run/openvswitch");
    let (agent_run, _) = host_mount(spec, agent, "/run/openvswitch");
    assert_eq!(ovs_run, "/run/openvswitch");
    assert_eq!(ovs_run, agent_run);
    let (db, _) = host_mount(spec, ovs, "/etc/openvswitch");
    assert_eq!(
        db, "/var/lib/portiso/openvswitch",
        "the OVS database survives restarts"
    );
    assert_eq!(host_mount(spec, ovs, "/lib/modules").0, "/lib/modules");
    let sc = ovs.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let added: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert!(
        added.contains("NET_ADMIN") && added.contains("SYS_MODULE"),
        "{added:?}"
    );
    assert_eq!(
        agent
            .security_context
            .as_ref()
            .unwrap()
            .app_armor_profile
            .as_ref()
            .map(|p| p.type_.as_str()),
        Some("Unconfined")
    );
    // The agent's privileges do not grow with the OVS container.
    let caps: BTreeSet<&str> = agent
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(caps, BTreeSet::from(AGENT_CAPABILITIES));
}

#[test]
fn bad_values_are_refused_with_a_reason() {
    for (sets, reason) in [
        (vec!["operator.replicas=two"], "/operator/replicas"),
        (vec!["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (
            vec!["webhook.failurePolicy=Maybe"],
            "/webhook/failurePolicy",
        ),
        (vec!["agent.datapath=dpdk"], "/agent/datapath"),
        (vec!["agent.userspacePorts=dpdk"], "/agent/userspacePorts"),
        (
            vec!["agent.userspacePorts=afxdp_nonpmd"],
            "/agent/userspacePorts",
        ),
        (vec!["agent.fastPath=maybe"], "/agent/fastPath"),
        (vec!["agent.fastPath=1"], "/agent/fastPath"),
        // Pins outside the mounted host bpffs would die with the pod.
        (vec!["agent.bpfDir=/run/portiso/bpf"], "/agent/bpfDir"),
        (vec!["agent.bpfDir=/sys/fs/bpf"], "/agent/bpfDir"),
        (vec!["agent.bpfDir=/sys/fs/bpf/../portiso"], "/agent/bpfDir"),
        (vec!["agent.uplinks=null"], "uplinks"),
        (vec!["agent.uplinks[0].bridge=br0"], "name"),
        (
            vec!["agent.uplinks[0].name=eth1", "agent.uplinks[1].name=eth1"],
            "listed twice",
        ),
        (
            vec![
                "agent.uplinks[0].name=eth1",
                "agent.uplinks[0].address=198.51.100.1",
            ],
            "/agent/uplinks/0/address",
        ),
        (vec!["reservedHostPorts[0]=low"], "/reservedHostPorts/0"),
        (vec!["networkAttachmentDefinitions[0].name=x"], "uplink"),
        (vec!["operatr.replicas=2"], "operatr"),
    ] {
        let err = match render_release(RELEASE, &[], &sets) {
            Ok(_) => panic!("helm template accepted {sets:?}"),
            Err(e) => e,
        };
        assert!(
            err.contains(reason),
            "{sets:?}: the error does not name {reason:?}:\n{err}"
        );
    }
    // ...and good variations of the same keys render.
    for sets in [
        vec!["image.pullPolicy=Never"],
        vec!["image.pullPolicy=Always", "image.tag=1.2.3"],
        vec!["webhook.failurePolicy=Ignore"],
        vec!["agent.datapath=system"],
        vec!["agent.userspacePorts=afxdp-nonpmd", "agent.fastPath=off"],
        vec!["agent.userspacePorts=afxdp", "agent.fastPath=on"],
        vec!["agent.fastPath=false"],
        vec!["agent.bpfDir=/sys/fs/bpf/portiso-2/pins"],
    ] {
        render_release(RELEASE, &[], &sets).unwrap_or_else(|e| panic!("{sets:?}: {e}"));
    }
}

#[test]
fn values_schema_is_draft_07_and_describes_the_top_level_keys() {
    let text =
        std::fs::read_to_string(chart().join("values.schema.json")).expect("values.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&text).expect("values.schema.json is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .expect("values.yaml");
    let props = schema["properties"].as_object().expect("properties");
    for (key, _) in values.as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        let p = props
            .get(key)
            .unwrap_or_else(|| panic!("values.schema.json does not describe {key}"));
        assert!(
            p.get("type").is_some() || p.get("$ref").is_some(),
            "{key} has no type"
        );
    }
    assert_eq!(
        schema["additionalProperties"], false,
        "typos in top-level keys are refused"
    );
}

/// Whether a ServiceMonitor's `matchLabels` all hold on a Service.
fn monitor_selects(sm: &Doc, svc: &Service) -> bool {
    let wanted = sm.value["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    wanted
        .iter()
        .all(|(k, v)| labels.get(k.as_str().unwrap()).map(String::as_str) == v.as_str())
}

/// The agent container's port named `metrics`, if any.
fn agent_metrics_port(r: &Rendered) -> Option<i32> {
    let spec = r.agent().spec.template.spec.unwrap();
    container(&spec, "agent")
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .map(|p| p.container_port)
}

#[test]
fn agent_metrics_port_config_service_and_service_monitor() {
    let r = render(&["default-values.yaml"], &[]);
    let full = r.fullname();
    // The agent listens where its config says, on the port the pod declares.
    assert_eq!(agent_metrics_port(&r), Some(9465));
    assert_eq!(
        parsed_agent_config(&r).metrics_address,
        Some(([0, 0, 0, 0], 9465).into())
    );
    // A headless Service over the agents' pods: one target per node.
    let svc: Service = r.get("Service", &format!("{full}-agent"));
    let spec = svc.spec.clone().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let ports = spec.ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, 9465);
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("metrics".into()))
    );
    let pod_labels = r.agent().spec.template.metadata.unwrap().labels.unwrap();
    for (k, v) in spec.selector.unwrap() {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "the Service selects the agent pods"
        );
    }
    assert!(r.of_kind("ServiceMonitor").is_empty(), "none by default");

    // With ServiceMonitors: the agent's selects the agent Service only, the operator's the
    // operator's only.
    let r = render(&["own-certificate-values.yaml"], &[]);
    let full = r.fullname();
    let agent_sm = r
        .find("ServiceMonitor", &format!("{full}-agent"))
        .expect("the agent's ServiceMonitor");
    let operator_sm = r
        .find("ServiceMonitor", &format!("{full}-operator"))
        .expect("the operator's ServiceMonitor");
    let agent_svc: Service = r.get("Service", &format!("{full}-agent"));
    let operator_svc: Service = r.get("Service", &format!("{full}-metrics"));
    assert!(monitor_selects(agent_sm, &agent_svc));
    assert!(!monitor_selects(agent_sm, &operator_svc));
    assert!(monitor_selects(operator_sm, &operator_svc));
    assert!(!monitor_selects(operator_sm, &agent_svc));
    assert_eq!(agent_sm.label("release"), Some("prometheus"));
    let endpoint = &agent_sm.value["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("metrics"));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    assert_eq!(
        endpoint["relabelings"][0]["targetLabel"].as_str(),
        Some("node")
    );

    // Another port: everywhere at once.
    let r = render(&["default-values.yaml"], &["agent.metrics.port=9100"]);
    assert_eq!(agent_metrics_port(&r), Some(9100));
    assert_eq!(
        parsed_agent_config(&r).metrics_address,
        Some(([0, 0, 0, 0], 9100).into())
    );
    let svc: Service = r.get("Service", &format!("{}-agent", r.fullname()));
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 9100);

    // Off: no port, no address, no Service.
    let r = render(&["default-values.yaml"], &["agent.metrics.enabled=false"]);
    assert_eq!(agent_metrics_port(&r), None);
    assert_eq!(parsed_agent_config(&r).metrics_address, None);
    assert!(r
        .find("Service", &format!("{}-agent", r.fullname()))
        .is_none());
    r.get::<Service>("Service", &format!("{}-metrics", r.fullname()));

    // A port a PortRange could give to a sandbox is refused; so are nonsense values.
    for (sets, reason) in [
        (vec!["agent.metrics.port=20000"], "reservedHostPorts"),
        (vec!["agent.metrics.port=0"], "/agent/metrics/port"),
        (vec!["agent.metrics.enabled=yes"], "/agent/metrics/enabled"),
        (vec!["agent.metrics.prot=9100"], "prot"),
    ] {
        let err = match render_release(RELEASE, &[], &sets) {
            Ok(_) => panic!("helm template accepted {sets:?}"),
            Err(e) => e,
        };
        assert!(
            err.contains(reason),
            "{sets:?}: the error does not name {reason:?}:\n{err}"
        );
    }
    // ...and a reserved port in a span of its own renders.
    let r = render(
        &["default-values.yaml"],
        &["reservedHostPorts[0]=9100-9200", "agent.metrics.port=9200"],
    );
    assert_eq!(agent_metrics_port(&r), Some(9200));
}

#[test]
fn the_sandbox_egress_limit_reaches_the_agent_config_only_when_set() {
    assert_eq!(
        parsed_agent_config(&render(&[], &[])).sandbox_egress_limit,
        None
    );
    let r = render(
        &[],
        &[
            "agent.sandboxEgressLimit.packetsPerSecond=5000",
            "agent.sandboxEgressLimit.burst=700",
        ],
    );
    assert_eq!(
        parsed_agent_config(&r).sandbox_egress_limit,
        Some(portiso::config::EgressLimit {
            packets_per_second: 5000,
            burst: 700
        })
    );
    // The schema refuses a rate of zero before the agent would.
    let e = render_release(
        RELEASE,
        &[],
        &["agent.sandboxEgressLimit.packetsPerSecond=0"],
    )
    .err()
    .expect("a zero rate is refused");
    assert!(e.contains("packetsPerSecond"), "{e}");
}
