//! The Helm chart installed, upgraded and uninstalled against a real kube-apiserver, and the
//! operator's admission webhook with 10,000 PortRanges in its store (etcd + kube-apiserver of
//! a pinned release on loopback, see `portiso::testbed::kube`). No kubelet runs: the chart's pods
//! never start, which is expected; what is checked is what Helm and the API server make of it.

mod common;

use common::kube::*;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::api::{PostParams, ResourceExt};
use kube::Api;
use portiso::testbed::kube::KubeTestServer;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const RELEASE: &str = "portiso";
const NAMESPACE: &str = "portiso-system";

fn chart() -> String {
    workspace().join("charts/portiso").display().to_string()
}

// ---------------------------------------------------------------------------------------------
// helm install / upgrade / uninstall
// ---------------------------------------------------------------------------------------------

/// One document of a release's manifest, by identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Object {
    api_version: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

impl Object {
    /// As `kubectl get -o name` prints it: `<kind>.<group>/<name>`, kind in lower case.
    fn kubectl_name(&self) -> String {
        let kind = self.kind.to_lowercase();
        match self.api_version.split_once('/') {
            Some((group, _)) => format!("{kind}.{group}/{}", self.name),
            None => format!("{kind}/{}", self.name),
        }
    }

    /// `jsonpath` of the object, Ok("") when it does not exist (a kubectl failure is an Err).
    fn get(&self, s: &KubeTestServer, jsonpath: &str) -> anyhow::Result<String> {
        let ns = self.namespace.as_deref().unwrap_or(NAMESPACE);
        s.kubectl(&[
            "get",
            &self.kind,
            &self.name,
            "-n",
            ns,
            "--ignore-not-found",
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])
    }
}

/// The objects of a multi-document manifest (`helm get manifest`, `helm template`).
fn objects(manifest: &str) -> Vec<Object> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(manifest) {
        let v = serde_yaml::Value::deserialize(doc).expect("the manifest is YAML");
        if v.is_null() {
            continue;
        }
        let s = |v: Option<&serde_yaml::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
        let meta = v.get("metadata");
        out.push(Object {
            api_version: s(v.get("apiVersion")).expect("apiVersion"),
            kind: s(v.get("kind")).expect("kind"),
            name: s(meta.and_then(|m| m.get("name"))).expect("metadata.name"),
            namespace: s(meta.and_then(|m| m.get("namespace"))),
        });
    }
    out.sort();
    out
}

/// Every object labelled as part of the release, as `kubectl get -o name` prints them, over
/// the kinds of `manifest` and a few the chart must not create behind Helm's back.
fn labelled_objects(s: &KubeTestServer, manifest: &[Object]) -> BTreeSet<String> {
    let mut kinds: BTreeSet<String> = manifest.iter().map(|o| o.kind.to_lowercase()).collect();
    kinds.extend(["secret", "pod", "job"].map(String::from));
    let kinds: Vec<String> = kinds.into_iter().collect();
    s.kubectl(&[
        "get",
        &kinds.join(","),
        "-n",
        NAMESPACE,
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "name",
    ])
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

/// Asserts that exactly the manifest's objects exist, each annotated as the release's.
fn assert_release_objects(s: &KubeTestServer, manifest: &[Object]) {
    for o in manifest {
        let got = o
            .get(
                s,
                "{.metadata.uid} {.metadata.annotations.meta\\.helm\\.sh/release-name} {.metadata.annotations.meta\\.helm\\.sh/release-namespace}",
            )
            .unwrap_or_else(|e| panic!("{o:?}: {e}"));
        let fields: Vec<&str> = got.split(' ').collect();
        assert!(
            fields.len() == 3 && !fields[0].is_empty(),
            "{o:?} is not in the API server: {got:?}"
        );
        assert_eq!(fields[1..], [RELEASE, NAMESPACE], "{o:?}: Helm's ownership");
    }
    let want: BTreeSet<String> = manifest.iter().map(Object::kubectl_name).collect();
    assert_eq!(
        labelled_objects(s, manifest),
        want,
        "the objects labelled app.kubernetes.io/instance={RELEASE} are exactly the manifest's"
    );
}

fn helm_json(s: &KubeTestServer, args: &[&str]) -> serde_json::Value {
    let out = s.helm(args).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("helm {args:?}: {e}: {out}"))
}

fn agent_uplinks(s: &KubeTestServer) -> Vec<String> {
    let yaml = s
        .kubectl(&[
            "get",
            "configmap",
            "portiso-agent",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.data.agent\\.yaml}",
        ])
        .unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    v["uplinks"]
        .as_sequence()
        .unwrap_or_else(|| panic!("agent.yaml has no uplinks: {yaml}"))
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

fn get(s: &KubeTestServer, kind: &str, name: &str, jsonpath: &str) -> String {
    s.kubectl(&[
        "get",
        kind,
        name,
        "-n",
        NAMESPACE,
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
    .unwrap()
}

/// `portiso operator` with the installed Deployment's arguments (listening on loopback), as the
/// Deployment's ServiceAccount through impersonation.
fn chart_operator(s: &KubeTestServer) -> Operator {
    let spec = |path: &str| get(s, "deployment", "portiso-operator", path);
    let mut args: Vec<String> =
        serde_json::from_str(&spec("{.spec.template.spec.containers[0].args}")).unwrap();
    assert_eq!(args[0], "operator", "{args:?}");
    for flag in ["--webhook-addr", "--metrics-addr"] {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} in {args:?}"));
        args[i + 1] = format!("127.0.0.1:{}", free_port());
    }
    let account = spec("{.spec.template.spec.serviceAccountName}");
    let mut kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&s.kubeconfig).unwrap()).unwrap();
    kubeconfig["users"][0]["user"]["as"] =
        format!("system:serviceaccount:{NAMESPACE}:{account}").into();
    let path = s.dir.join("operator-sa.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    Operator::spawn(
        s,
        "chart",
        &args,
        &[
            ("KUBECONFIG", path.to_str().unwrap()),
            ("POD_NAME", "chart-operator"),
            ("POD_NAMESPACE", NAMESPACE),
        ],
    )
}

#[test]
fn helm_installs_upgrades_and_uninstalls_the_chart_on_a_real_api_server() {
    let s = KubeTestServer::start("helm", &workspace()).expect("kube-apiserver starts");
    let chart = chart();
    let base = ["--set", "image.pullPolicy=Never"];

    // ---- install ----
    let started = Instant::now();
    let mut args = vec![
        "install",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
    ];
    args.extend(base);
    s.helm(&args).unwrap();
    println!("helm install: {:?}", started.elapsed());
    let status = helm_json(&s, &["status", RELEASE, "-n", NAMESPACE, "-o", "json"]);
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    assert_eq!(status["version"], 1);

    let installed = objects(
        &s.helm(&["get", "manifest", RELEASE, "-n", NAMESPACE])
            .unwrap(),
    );
    // What the release holds is what the chart renders with these values, offline (hooks
    // apart: Helm keeps them aside).
    let mut template_args = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    template_args.extend(base);
    template_args.push("--no-hooks");
    assert_eq!(installed, objects(&s.helm(&template_args).unwrap()));
    // The only hook: `helm uninstall` marks the agent DaemonSet (pre-delete Job with its
    // ServiceAccount, Role and RoleBinding).
    let hooks = objects(&s.helm(&["get", "hooks", RELEASE, "-n", NAMESPACE]).unwrap());
    assert_eq!(
        hooks
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect::<BTreeSet<_>>(),
        ["Job", "Role", "RoleBinding", "ServiceAccount"]
            .map(|k| format!("{k}/{RELEASE}-uninstall-mark"))
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
    let kinds: BTreeSet<&str> = installed.iter().map(|o| o.kind.as_str()).collect();
    for kind in [
        "Deployment",
        "DaemonSet",
        "ConfigMap",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
    ] {
        assert!(kinds.contains(kind), "the release has a {kind}: {kinds:?}");
    }
    assert!(
        !kinds.contains("CustomResourceDefinition"),
        "the CRD comes from crds/, not from templates"
    );
    assert_release_objects(&s, &installed);

    // The CRD from the chart's crds/ directory, established, with its printer columns.
    wait_for_crd(&s);
    let columns = s
        .kubectl(&[
            "get",
            "crd",
            "portranges.portiso.io",
            "-o",
            "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
        ])
        .unwrap();
    assert_eq!(
        columns, "Ports Uplinks Accepted Programmed Sandboxes Age",
        "printer columns"
    );
    assert_eq!(
        get(&s, "deployment", "portiso-operator", "{.spec.replicas}"),
        "2"
    );
    assert_eq!(agent_uplinks(&s), ["eth1"]);
    let checksum = get(
        &s,
        "daemonset",
        "portiso-agent",
        "{.spec.template.metadata.annotations.checksum/config}",
    );
    assert_eq!(checksum.len(), 64, "{checksum}");

    // The chart's webhook is live (failurePolicy Fail) and nothing serves it: PortRanges are
    // refused until the operator runs.
    let started = Instant::now();
    let err = apply(
        &s,
        &pr("early", "[{protocol: TCP, start: 10000, end: 10009}]"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("failed calling webhook \"portranges.portiso.io\""),
        "{err}"
    );
    println!(
        "refused by the unreachable webhook in {:?}",
        started.elapsed()
    );

    // The operator as the chart deploys it: the Deployment's arguments, as its ServiceAccount
    // (impersonated), so that the chart's RBAC is what the API server enforces. It takes the
    // Lease, makes its certificate Secret and sets the webhook's caBundle.
    let op = chart_operator(&s);
    let vwc = |path: &str| {
        s.kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            RELEASE,
            "-o",
            &format!("jsonpath={path}"),
        ])
        .unwrap()
    };
    let ca = eventually_or(
        "the operator sets the caBundle",
        30,
        || {
            let ca = vwc("{.webhooks[0].clientConfig.caBundle}");
            (!ca.is_empty()).then_some(ca)
        },
        || op.tail(),
    );
    eventually_or(
        "the operator holds the Lease",
        30,
        || {
            (get(&s, "lease", "portiso-operator", "{.spec.holderIdentity}") == "chart-operator")
                .then_some(())
        },
        || op.tail(),
    );
    assert_eq!(
        get(&s, "secret", "portiso-webhook-tls", "{.type}"),
        "kubernetes.io/tls"
    );

    // ---- upgrade ----
    let values = s.dir.join("upgrade-values.yaml");
    std::fs::write(
        &values,
        "operator:\n  replicas: 3\nagent:\n  uplinks:\n    - name: eth7\n    - name: eth8\n      bridge: br-second\nwebhook:\n  failurePolicy: Ignore\n",
    )
    .unwrap();
    let values = values.display().to_string();
    let started = Instant::now();
    let mut args = vec!["upgrade", RELEASE, &chart, "--namespace", NAMESPACE];
    args.extend(base);
    args.extend(["-f", &values]);
    s.helm(&args).unwrap();
    println!("helm upgrade: {:?}", started.elapsed());
    let status = helm_json(&s, &["status", RELEASE, "-n", NAMESPACE, "-o", "json"]);
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    assert_eq!(status["version"], 2);
    assert_eq!(
        get(&s, "deployment", "portiso-operator", "{.spec.replicas}"),
        "3"
    );
    assert_eq!(agent_uplinks(&s), ["eth7", "eth8"]);
    let cm = get(&s, "configmap", "portiso-agent", "{.data.agent\\.yaml}");
    assert!(cm.contains("bridge: \"br-second\""), "{cm}");
    let new_checksum = get(
        &s,
        "daemonset",
        "portiso-agent",
        "{.spec.template.metadata.annotations.checksum/config}",
    );
    assert_ne!(
        new_checksum, checksum,
        "a config change rolls the agents (the pod template changes)"
    );
    assert_eq!(vwc("{.webhooks[0].failurePolicy}"), "Ignore");
    assert_eq!(
        vwc("{.webhooks[0].clientConfig.caBundle}"),
        ca,
        "the caBundle the operator wrote survives the upgrade"
    );
    // Server-side apply leaves a field it never owned alone anyway; an upgrade that replaces
    // the objects with the manifest keeps the caBundle only because the chart looks it up.
    s.helm(&[
        "upgrade",
        RELEASE,
        &chart,
        "--namespace",
        NAMESPACE,
        "--reuse-values",
        "--server-side=false",
        "--force-replace",
    ])
    .unwrap();
    assert_eq!(
        vwc("{.webhooks[0].clientConfig.caBundle}"),
        ca,
        "the caBundle survives an upgrade with --force-replace"
    );
    assert_eq!(
        get(&s, "deployment", "portiso-operator", "{.spec.replicas}"),
        "3",
        "--reuse-values"
    );
    let upgraded = objects(
        &s.helm(&["get", "manifest", RELEASE, "-n", NAMESPACE])
            .unwrap(),
    );
    assert_eq!(upgraded, installed, "the same objects, changed in place");
    assert_release_objects(&s, &upgraded);

    // With failurePolicy Ignore the unreachable webhook lets PortRanges through; the printer
    // columns of `kubectl get pr -A`.
    let started = Instant::now();
    eventually("a PortRange past the ignored webhook", 30, || {
        apply(
            &s,
            &pr("first", "[{protocol: TCP, start: 10000, end: 10009}]"),
        )
        .ok()
    });
    println!(
        "created past the ignored webhook in {:?}",
        started.elapsed()
    );
    eventually_or(
        "first accepted by the operator under the chart's RBAC",
        30,
        || {
            (s.kubectl(&[
                "get",
                "pr",
                "first",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Accepted\")].status}",
            ])
            .ok()?
                == "True")
                .then_some(())
        },
        || op.tail(),
    );
    let table = s.kubectl(&["get", "pr", "-A"]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "PORTS",
            "UPLINKS",
            "ACCEPTED",
            "PROGRAMMED",
            "SANDBOXES",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["default", "first", "TCP", "10000-10009", "True"],
        "{table}"
    );
    assert!(
        !op.log().contains("forbidden"),
        "the chart's RBAC lets the operator do its work:\n{}",
        op.log()
    );
    drop(op);

    // ---- uninstall ----
    let releases = || {
        s.kubectl(&[
            "get",
            "secrets",
            "-n",
            NAMESPACE,
            "-l",
            &format!("owner=helm,name={RELEASE}"),
            "-o",
            "name",
        ])
        .unwrap()
    };
    assert_eq!(releases().lines().count(), 3, "one Secret per revision");
    let started = Instant::now();
    // --no-hooks: no kubelet runs here, so the pre-delete hook Job (which marks the agent
    // DaemonSet for uninstall) would never finish; e2e/local-cluster.sh runs it for real.
    s.helm(&["uninstall", RELEASE, "--namespace", NAMESPACE, "--no-hooks"])
        .unwrap();
    println!("helm uninstall: {:?}", started.elapsed());
    for o in &upgraded {
        eventually(&format!("{o:?} deleted"), 30, || {
            o.get(&s, "{.metadata.uid}")
                .unwrap_or_else(|e| panic!("{o:?}: {e}"))
                .is_empty()
                .then_some(())
        });
    }
    assert!(
        labelled_objects(&s, &upgraded).is_empty(),
        "nothing of the release is left"
    );
    assert_eq!(releases(), "", "Helm's release Secrets are gone");
    let list = helm_json(
        &s,
        &[
            "list",
            "-A",
            "--deployed",
            "--failed",
            "--pending",
            "--superseded",
            "--uninstalled",
            "--uninstalling",
            "-o",
            "json",
        ],
    );
    assert_eq!(list, serde_json::json!([]), "no release left, in any state");
    let err = s
        .helm(&["status", RELEASE, "-n", NAMESPACE])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
    // Helm never deletes CRDs (https://helm.sh/docs/chart_best_practices/custom_resource_definitions/):
    // the CRD, and with it every PortRange, stays.
    s.kubectl(&["get", "crd", "portranges.portiso.io"]).unwrap();
    assert_eq!(
        s.kubectl(&["get", "pr", "first", "-o", "name"])
            .unwrap()
            .trim(),
        "portrange.portiso.io/first"
    );
    // The webhook is gone with the release: nothing is refused any more.
    apply(
        &s,
        &pr("second", "[{protocol: TCP, start: 10000, end: 10009}]"),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The webhook with 10,000 PortRanges
// ---------------------------------------------------------------------------------------------

const SCALE: usize = 10_000;
/// PortRange r-NNNNN owns TCP port BASE + NNNNN.
const BASE: usize = 10_000;
const CONCURRENCY: usize = 64;

fn portrange(name: &str, protocol: &str, start: usize, end: usize) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "portiso.io/v1alpha1",
        "kind": "PortRange",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "ports": [{"protocol": protocol, "start": start, "end": end}],
        },
    }))
    .unwrap()
}

fn is_accepted(o: &DynamicObject) -> bool {
    o.data["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Accepted" && c["status"] == "True")
    })
}

struct Timings(Vec<Duration>);

impl Timings {
    fn summary(&mut self) -> String {
        self.0.sort();
        let n = self.0.len();
        format!(
            "n={n} min={:?} median={:?} max={:?}",
            self.0[0],
            self.0[n / 2],
            self.0[n - 1]
        )
    }
}

#[test]
fn the_webhook_decides_against_ten_thousand_portranges_within_its_timeout() {
    let s = KubeTestServer::start("scale", &workspace()).expect("kube-apiserver starts");
    install_crd(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(s.client()).unwrap();
    let gvk = GroupVersionKind::gvk("portiso.io", "v1alpha1", "PortRange");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "portranges");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let name = |i: usize| format!("r-{i:05}");

    // 10,000 PortRanges, one TCP port each, created before any webhook exists.
    let started = Instant::now();
    let created = rt.block_on(async {
        futures::stream::iter(0..SCALE)
            .map(|i| {
                let api = api.clone();
                let obj = portrange(&name(i), "TCP", BASE + i, BASE + i);
                async move { api.create(&PostParams::default(), &obj).await }
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(|r| async move { r.err() })
            .collect::<Vec<_>>()
            .await
    });
    assert!(created.is_empty(), "create errors: {:?}", &created[..1]);
    let create_time = started.elapsed();
    println!("created {SCALE} PortRanges in {create_time:?} ({CONCURRENCY} concurrent creates)");

    // The operator's webhook configuration, then the operator (it sets the caBundle at start).
    let port = free_port();
    let vwc = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {{name: portiso-scale}}\nwebhooks:\n- name: portranges.portiso.io\n  clientConfig: {{url: \"https://127.0.0.1:{port}/validate\"}}\n  rules: [{{apiGroups: [portiso.io], apiVersions: [v1alpha1], operations: [CREATE, UPDATE], resources: [portranges]}}]\n  failurePolicy: Fail\n  sideEffects: None\n  timeoutSeconds: 5\n  admissionReviewVersions: [v1]\n"
    );
    apply(&s, &vwc).unwrap();
    let started = Instant::now();
    let op = Operator::start(
        &s,
        "scale",
        port,
        &["--webhook-config-name", "portiso-scale"],
    );
    eventually_or(
        "caBundle patched",
        60,
        || {
            let b = s
                .kubectl(&[
                    "get",
                    "validatingwebhookconfiguration",
                    "portiso-scale",
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ])
                .ok()?;
            (b.len() > 100).then_some(())
        },
        || op.tail(),
    );

    // Every one accepted: 10,000 status writes by the leader.
    eventually_or(
        "10,000 statuses written",
        240,
        || (op.log().matches("status written").count() >= SCALE).then_some(()),
        || {
            format!(
                "{} statuses written so far\n{}",
                op.log().matches("status written").count(),
                op.tail()
            )
        },
    );
    let accepted = std::cell::Cell::new(0);
    eventually_or(
        "every PortRange accepted",
        60,
        || {
            let all = rt.block_on(api.list(&ListParams::default())).ok()?;
            assert_eq!(all.items.len(), SCALE);
            accepted.set(all.items.iter().filter(|o| is_accepted(o)).count());
            (accepted.get() == SCALE).then_some(())
        },
        || format!("{} accepted\n{}", accepted.get(), op.tail()),
    );
    let accept_time = started.elapsed();
    // Then the operator is idle: nothing changes, nothing is written.
    let written = op.log().matches("status written").count();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        op.log().matches("status written").count(),
        written,
        "statuses rewritten with nothing changed\n{}",
        op.tail()
    );
    println!(
        "operator start to {SCALE} accepted: {accept_time:?} ({written} status writes, {:.0}/s)",
        written as f64 / accept_time.as_secs_f64()
    );

    // Admission round trips through the API server with the 10,000 in the webhook's store.
    let deny = |what: &str, r: Result<DynamicObject, kube::Error>, other: usize| {
        let msg = match r {
            Err(kube::Error::Api(e)) => e.message,
            other => panic!("{what}: expected a denial, got {other:?}"),
        };
        let port = BASE + other;
        assert!(
            msg.contains("denied the request")
                && msg.contains(&format!("default/{}", name(other)))
                && msg.contains(&format!("ports {port}-{port} are taken")),
            "{what}: {msg}"
        );
    };
    let timed = |times: &mut Vec<Duration>, f: &dyn Fn() -> Result<DynamicObject, kube::Error>| {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "an admission round trip took {took:?}: beyond the webhook's 5 s timeout"
        );
        times.push(took);
        r
    };
    let (mut denied, mut allowed) = (Vec::new(), Vec::new());
    for (k, other) in [0, 1234, 5000, 7777, SCALE - 1].into_iter().enumerate() {
        // Overlapping: one port of an accepted PortRange, with a free one around it.
        let thief = portrange(&format!("thief-{k}"), "TCP", BASE + other, BASE + other);
        let r = timed(&mut denied, &|| {
            rt.block_on(api.create(&PostParams::default(), &thief))
        });
        deny(&format!("thief-{k}"), r, other);
        // Not overlapping: ports nobody has, and the same ports on the other protocol.
        let free = portrange(&format!("free-{k}"), "TCP", 40000 + k, 40000 + k);
        let r = timed(&mut allowed, &|| {
            rt.block_on(api.create(&PostParams::default(), &free))
        });
        r.unwrap_or_else(|e| panic!("free-{k}: {e}\n{}", op.tail()));
        let udp = portrange(&format!("udp-{k}"), "UDP", BASE + other, BASE + other);
        let r = timed(&mut allowed, &|| {
            rt.block_on(api.create(&PostParams::default(), &udp))
        });
        r.unwrap_or_else(|e| panic!("udp-{k}: {e}\n{}", op.tail()));
    }
    // An UPDATE moving a range onto another's port is refused too.
    let patch = Patch::Merge(serde_json::json!({"spec": {"ports": [
        {"protocol": "TCP", "start": BASE + 2, "end": BASE + 2}
    ]}}));
    let r = timed(&mut denied, &|| {
        rt.block_on(api.patch(&name(1), &PatchParams::default(), &patch))
    });
    deny("moving r-00001 onto r-00002", r, 2);
    let r00001 = rt.block_on(api.get(&name(1))).unwrap();
    assert_eq!(
        r00001.data["spec"]["ports"][0]["start"],
        BASE + 1,
        "{} unchanged",
        r00001.name_any()
    );
    println!(
        "admission round trips with {SCALE} PortRanges: denied {}; allowed {}",
        Timings(denied).summary(),
        Timings(allowed).summary()
    );
}
