//! The PortRange API, the operator and its admission webhook against a real kube-apiserver
//! (etcd + kube-apiserver of a pinned release on loopback, see `portiso::testbed::kube`).

mod common;

use common::kube::*;
use portiso::testbed::kube::KubeTestServer;
use std::path::Path;
use std::time::{Duration, Instant};

fn server(name: &str) -> KubeTestServer {
    let s = KubeTestServer::start(name, &workspace()).expect("kube-apiserver starts");
    install_crd(&s);
    s
}

fn jsonpath(s: &KubeTestServer, name: &str, path: &str) -> String {
    s.kubectl(&["get", "pr", name, "-o", &format!("jsonpath={path}")])
        .unwrap_or_default()
}

fn accepted(s: &KubeTestServer, name: &str) -> String {
    jsonpath(
        s,
        name,
        "{.status.conditions[?(@.type==\"Accepted\")].status}",
    )
}

#[test]
fn the_api_server_itself_rejects_invalid_portranges() {
    let s = server("crd");
    let cases = [
        (
            "[{protocol: TCP, start: 2000, end: 1000}]",
            "start is greater than end",
        ),
        (
            "[{protocol: TCP, start: 0, end: 10}]",
            "should be greater than or equal to 1",
        ),
        (
            "[{protocol: UDP, start: 10, end: 70000}]",
            "should be less than or equal to 65535",
        ),
        (
            "[{protocol: SCTP, start: 10, end: 20}]",
            "supported values: \"TCP\", \"UDP\"",
        ),
        (
            "[{protocol: TCP, start: 10, end: 20, size: 16}]",
            "give either start and end, or size",
        ),
        ("[{protocol: TCP, start: 10}]", "give both start and end"),
        ("[{protocol: TCP, size: 3}]", "supported values"),
        (
            "[{protocol: TCP, start: 10, end: 20}, {protocol: TCP, start: 15, end: 30}]",
            "overlap or repeat",
        ),
        ("[]", "should have at least 1 items"),
    ];
    for (ports, why) in cases {
        let err = apply(&s, &pr("bad", ports)).expect_err(ports).to_string();
        assert!(err.contains(why), "{ports}: expected {why:?} in: {err}");
    }
    apply(&s, &pr("good", "[{protocol: TCP, start: 10, end: 20}, {protocol: UDP, start: 15, end: 30}, {protocol: TCP, size: 64}]")).unwrap();
    let cols = s.kubectl(&["get", "pr"]).unwrap();
    for col in [
        "NAME",
        "PORTS",
        "UPLINKS",
        "ACCEPTED",
        "PROGRAMMED",
        "SANDBOXES",
        "AGE",
    ] {
        assert!(cols.contains(col), "printer column {col}: {cols}");
    }
}

#[test]
fn the_operator_decides_allocates_and_keeps_allocations_across_restarts() {
    let s = server("oper");
    apply(
        &s,
        &pr("first", "[{protocol: TCP, start: 10000, end: 10099}]"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // creationTimestamp has one-second resolution
    apply(
        &s,
        &pr("second", "[{protocol: TCP, start: 10050, end: 10150}]"),
    )
    .unwrap();
    apply(
        &s,
        &pr(
            "sized",
            "[{protocol: UDP, size: 64}, {protocol: TCP, start: 11000, end: 11000}]",
        ),
    )
    .unwrap();
    let op = Operator::start(&s, "solo", 0, &[]);
    eventually("first accepted", 30, || {
        (accepted(&s, "first") == "True").then_some(())
    });
    eventually("second refused", 30, || {
        (accepted(&s, "second") == "False").then_some(())
    });
    let msg = jsonpath(
        &s,
        "second",
        "{.status.conditions[?(@.type==\"Accepted\")].message}",
    );
    assert!(
        msg.contains("default/first") && msg.contains("10050-10099"),
        "{msg}\n{}",
        op.log()
    );
    assert_eq!(
        jsonpath(&s, "second", "{.status.conditions[0].reason}"),
        "Conflict"
    );
    let alloc = eventually("allocation", 30, || {
        let a = jsonpath(
            &s,
            "sized",
            "{.status.allocations[0].start}-{.status.allocations[0].end}",
        );
        (a.len() > 2).then_some(a)
    });
    assert_eq!(
        alloc, "20032-20095",
        "the first aligned 64-port block of the default pool 20000-29999"
    );
    assert_eq!(
        jsonpath(&s, "sized", "{.status.ports}"),
        "UDP 20032-20095, TCP 11000"
    );
    assert_eq!(
        jsonpath(&s, "sized", "{.metadata.finalizers[0]}"),
        "portiso.io/allocation"
    );
    assert_eq!(jsonpath(&s, "first", "{.status.observedGeneration}"), "1");

    // Restart: allocations are kept, nothing is rewritten.
    drop(op);
    apply(&s, &pr("sized2", "[{protocol: UDP, size: 64}]")).unwrap();
    let op = Operator::start(&s, "solo", 0, &[]);
    let alloc2 = eventually("second allocation", 30, || {
        let a = jsonpath(&s, "sized2", "{.status.allocations[0].start}");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(
        jsonpath(&s, "sized", "{.status.allocations[0].start}"),
        "20032",
        "kept across the restart"
    );
    assert_eq!(alloc2, "20096", "the next free block");

    // The status follows edits; deleting frees the block (the finalizer is removed).
    apply(
        &s,
        &pr("first", "[{protocol: TCP, start: 10000, end: 10010}]"),
    )
    .unwrap();
    eventually("second accepted once first shrank", 30, || {
        (accepted(&s, "second") == "True").then_some(())
    });
    s.kubectl(&["delete", "pr", "sized", "--wait=true", "--timeout=30s"])
        .unwrap();
    apply(&s, &pr("sized3", "[{protocol: UDP, size: 64}]")).unwrap();
    let alloc3 = eventually("third allocation", 30, || {
        let a = jsonpath(&s, "sized3", "{.status.allocations[0].start}");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(
        alloc3,
        "20032",
        "the freed block is handed out again\n{}",
        op.log()
    );
}

fn webhook_config(s: &KubeTestServer, port: u16) {
    let vwc = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {{name: portiso-test}}\nwebhooks:\n- name: portranges.portiso.io\n  clientConfig: {{url: \"https://127.0.0.1:{port}/validate\"}}\n  rules: [{{apiGroups: [portiso.io], apiVersions: [v1alpha1], operations: [CREATE, UPDATE], resources: [portranges]}}]\n  failurePolicy: Fail\n  sideEffects: None\n  timeoutSeconds: 5\n  admissionReviewVersions: [v1]\n"
    );
    apply(s, &vwc).unwrap();
}

#[test]
fn the_webhook_is_called_over_tls_and_refuses_overlaps_naming_the_other() {
    let s = server("hook");
    let port = free_port();
    webhook_config(&s, port);
    let op = Operator::start(&s, "hook", port, &["--webhook-config-name", "portiso-test"]);
    let ca = eventually_or(
        "caBundle patched",
        30,
        || {
            let b = s
                .kubectl(&[
                    "get",
                    "validatingwebhookconfiguration",
                    "portiso-test",
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ])
                .ok()?;
            (!b.is_empty()).then_some(b)
        },
        || op.log(),
    );
    assert!(ca.len() > 100);
    // The webhook is called for every create (failurePolicy Fail): wait until it answers.
    eventually("webhook answers", 30, || {
        apply(
            &s,
            &pr("web", "[{protocol: TCP, start: 10000, end: 10099}]"),
        )
        .ok()
    });
    eventually("web accepted", 30, || {
        (accepted(&s, "web") == "True").then_some(())
    });

    let err = apply(
        &s,
        &pr("thief", "[{protocol: TCP, start: 10090, end: 10200}]"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("denied the request")
            && err.contains("default/web")
            && err.contains("10090-10099"),
        "{err}\n{}",
        op.log()
    );
    let err = apply(&s, &pr("lowly", "[{protocol: UDP, start: 53, end: 53}]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("reserved"), "{err}");
    apply(
        &s,
        &pr("other", "[{protocol: TCP, start: 10100, end: 10199}]"),
    )
    .unwrap();
    eventually("other accepted", 30, || {
        (accepted(&s, "other") == "True").then_some(())
    });
    // An update that moves a range onto another's ports is refused; shrinking is fine.
    let err = apply(
        &s,
        &pr("other", "[{protocol: TCP, start: 10050, end: 10199}]"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("default/web"), "{err}");
    apply(
        &s,
        &pr("other", "[{protocol: TCP, start: 10100, end: 10149}]"),
    )
    .unwrap();
    // Different protocol, same ports: fine.
    apply(
        &s,
        &pr("udp", "[{protocol: UDP, start: 10000, end: 10099}]"),
    )
    .unwrap();
}

#[test]
fn two_replicas_elect_one_leader_and_the_other_takes_over() {
    let s = server("lease");
    let a = Operator::start(&s, "replica-a", 0, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let b = Operator::start(&s, "replica-b", 0, &[]);
    let holder = || {
        s.kubectl(&[
            "get",
            "lease",
            "portiso-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_default()
    };
    eventually("a holds the lease", 30, || {
        (holder() == "replica-a").then_some(())
    });
    apply(
        &s,
        &pr("one", "[{protocol: TCP, start: 12000, end: 12009}]"),
    )
    .unwrap();
    eventually("one accepted", 30, || {
        (accepted(&s, "one") == "True").then_some(())
    });
    assert!(a.log().contains("status written"), "the leader writes");
    assert!(
        !b.log().contains("status written"),
        "the follower does not write:\n{}",
        b.log()
    );

    let killed = Instant::now();
    drop(a);
    eventually("b takes over", 30, || {
        (holder() == "replica-b").then_some(())
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(6 + 3),
        "handover within the lease duration (6 s) plus a renewal: {took:?}"
    );
    apply(
        &s,
        &pr("two", "[{protocol: TCP, start: 12005, end: 12019}]"),
    )
    .unwrap();
    eventually("two refused by the new leader", 30, || {
        (accepted(&s, "two") == "False").then_some(())
    });
    assert!(b.log().contains("status written"));
}

fn pod(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\nspec:\n  nodeName: node1\n  containers: [{{name: c, image: none}}]\n"
    )
}

/// The agent in cluster mode on a testbed node, with the API server, operator and agent all in
/// the node's namespace; pods are API objects (no kubelet), sandboxes attached by CNI ADD.
#[test]
fn the_agent_in_cluster_mode_follows_pods_and_portranges() {
    use portiso::testbed::Testbed;
    let mut tb = Testbed::new("kagent", Path::new(env!("CARGO_BIN_EXE_portiso"))).unwrap();
    let s = KubeTestServer::start_in("kagent", &workspace(), Some(&tb.node)).unwrap();
    install_crd(&s);
    let _op = Operator::start(&s, "kagent", 0, &[]);
    apply(
        &s,
        &pr("web", "[{protocol: TCP, start: 10000, end: 10099}]"),
    )
    .unwrap();
    eventually("web accepted", 30, || {
        (accepted(&s, "web") == "True").then_some(())
    });
    apply(&s, &pod("web-0", "web")).unwrap();
    apply(&s, &pod("web-1", "web")).unwrap();
    // Per-node uplinks: this node (label rack=a) gets only up1, its address read from the NIC.
    apply(
        &s,
        "apiVersion: v1\nkind: Node\nmetadata: {name: node1, labels: {rack: a}}\n",
    )
    .unwrap();
    let overrides = s.dir.join("overrides.yaml");
    std::fs::write(
        &overrides,
        "overrides:\n  - nodeSelector: {rack: b}\n    uplinks: [{name: up2}]\n  - nodeSelector: {rack: a}\n    uplinks: [{name: up1, bridge: br-up1}]\n",
    )
    .unwrap();
    tb.start_agent_with(
        &[
            "--kubernetes",
            "--node-name",
            "node1",
            "--overrides",
            overrides.to_str().unwrap(),
        ],
        &[("KUBECONFIG", &s.kubeconfig)],
    )
    .unwrap();
    assert!(
        tb.agent_log().contains("per-node uplinks applied"),
        "{}",
        tb.agent_log()
    );

    // The pod's labels select the PortRange: attached, and traffic lands there.
    tb.attach("web-0", "up1").unwrap();
    assert_eq!(
        tb.probe(false, 0, 10000, &["web-0"]).unwrap().landed,
        ["web-0"]
    );
    // The agent reports where the range is programmed; the operator sums it up.
    eventually_or(
        "web programmed for one sandbox",
        30,
        || (jsonpath(&s, "web", "{.status.sandboxes}") == "1").then_some(()),
        || tb.agent_log(),
    );
    let programmed = jsonpath(
        &s,
        "web",
        "{.status.conditions[?(@.type==\"Programmed\")].message}",
    );
    assert_eq!(programmed, "programmed on 1 node(s) for 1 sandbox(es)");
    // up2 is not this node's uplink (the override left it out).
    let err = tb.attach("web-1", "up2").unwrap_err().to_string();
    assert!(err.contains("not served by this node"), "{err}");
    // A second pod on this node selected by the same PortRange is refused, naming both.
    let err = tb.attach("web-1", "up1").unwrap_err().to_string();
    assert!(
        err.contains("default/web") && err.contains("default/web-0"),
        "{err}"
    );

    // A PortRange edit reaches the running sandbox: flows and ip_local_port_range.
    apply(
        &s,
        &pr("web", "[{protocol: TCP, start: 10500, end: 10599}]"),
    )
    .unwrap();
    let ns = tb.sandbox_ns("web-0");
    eventually_or(
        "the new range in web-0",
        30,
        || {
            let r = portiso::testbed::netns::run_in(&ns, || {
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            })
            .ok()?
            .ok()?;
            (r.split_whitespace().collect::<Vec<_>>() == ["10500", "10599"]).then_some(())
        },
        || tb.agent_log(),
    );
    assert_eq!(
        tb.probe(false, 0, 10500, &["web-0"]).unwrap().landed,
        ["web-0"],
        "{}",
        tb.agent_log()
    );
    assert_eq!(
        tb.probe(false, 0, 10000, &["web-0"]).unwrap().landed,
        ["host"]
    );

    // ADD waits for a PortRange that is being created.
    apply(&s, &pod("late-0", "late")).unwrap();
    let adder = {
        let ranges = pr("late", "[{protocol: UDP, start: 11000, end: 11009}]");
        let s_kubeconfig = s.kubeconfig.clone();
        let netns = tb.node.clone();
        let kubectl = s.bin.join("kubectl");
        let file = s.dir.join("late.yaml");
        std::fs::write(&file, ranges).unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            std::process::Command::new("ip")
                .args(["netns", "exec", &netns])
                .arg(kubectl)
                .args(["apply", "-f"])
                .arg(file)
                .env("KUBECONFIG", s_kubeconfig)
                .status()
                .unwrap()
        })
    };
    tb.attach("late-0", "up1")
        .expect("ADD waits for the PortRange and then succeeds");
    assert!(adder.join().unwrap().success());
    assert_eq!(
        tb.probe(true, 0, 11005, &["late-0"]).unwrap().landed,
        ["late-0"]
    );

    // A deleted pod's port and flows are removed by the agent itself (no DEL from Multus).
    // No kubelet runs to confirm the deletion: the pod stays Terminating, and is gone for the
    // agent once its grace period (1 s) is over.
    s.kubectl(&["delete", "pod", "web-0", "--grace-period=1", "--wait=false"])
        .unwrap();
    let host_if = portiso::link::host_if_name("ctr-web-0", "eth0");
    eventually_or(
        "web-0's port removed",
        30,
        || {
            (!tb.node_cmd("ovs-vsctl", &["list-ports", "br-up1"])
                .unwrap()
                .contains(&host_if))
            .then_some(())
        },
        || {
            format!(
                "{}\n{:?}",
                tb.agent_log(),
                s.kubectl(&["get", "pod", "web-0", "-o", "yaml"])
            )
        },
    );
    assert_eq!(
        tb.probe(false, 0, 10500, &["late-0"]).unwrap().landed,
        ["host"]
    );
    eventually("web programmed nowhere", 30, || {
        (jsonpath(
            &s,
            "web",
            "{.status.conditions[?(@.type==\"Programmed\")].reason}",
        ) == "NoSandboxes")
            .then_some(())
    });
    assert_eq!(
        tb.probe(true, 0, 11006, &["late-0"]).unwrap().landed,
        ["late-0"],
        "the live pod is untouched"
    );
}

/// Cluster mode under faults, with a steady stream to a pod: the agent killed outright and
/// restarted, then the API server frozen for 3 s (as behind a partition). Nothing is lost, the
/// flows are exactly what they were, and after the freeze the agent still follows an edit.
#[test]
fn in_cluster_mode_traffic_rides_out_a_killed_agent_and_a_frozen_api_server() {
    use common::dataplane::arrivals_at_web1_during;
    use portiso::testbed::Testbed;
    let mut tb = Testbed::new("kfault", Path::new(env!("CARGO_BIN_EXE_portiso"))).unwrap();
    let s = KubeTestServer::start_in("kfault", &workspace(), Some(&tb.node)).unwrap();
    install_crd(&s);
    let _op = Operator::start(&s, "kfault", 0, &[]);
    apply(
        &s,
        &pr("web", "[{protocol: UDP, start: 10000, end: 10099}]"),
    )
    .unwrap();
    eventually("web accepted", 30, || {
        (accepted(&s, "web") == "True").then_some(())
    });
    apply(&s, &pod("web1", "web")).unwrap();
    let args = ["--kubernetes", "--node-name", "node1"];
    let env = [("KUBECONFIG", s.kubeconfig.as_path())];
    tb.start_agent_with(&args, &env).unwrap();
    tb.attach("web1", "up1").unwrap();
    let before = common::canonical_flows(&tb);

    let got = arrivals_at_web1_during(&mut tb, 4000, |tb| {
        std::thread::sleep(Duration::from_millis(300));
        tb.kill_agent();
        tb.start_agent_with(&args, &env).unwrap();
    });
    assert_eq!(got, 4000, "{}", tb.agent_log());
    assert_eq!(
        common::canonical_flows(&tb),
        before,
        "flows after the restart"
    );

    let got = arrivals_at_web1_during(&mut tb, 6000, |_| {
        std::thread::sleep(Duration::from_millis(300));
        s.freeze_apiserver(true).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        s.freeze_apiserver(false).unwrap();
    });
    assert_eq!(got, 6000, "{}", tb.agent_log());
    assert_eq!(
        common::canonical_flows(&tb),
        before,
        "flows after the freeze"
    );

    apply(
        &s,
        &pr("web", "[{protocol: UDP, start: 10500, end: 10599}]"),
    )
    .unwrap();
    eventually_or(
        "the edit after the freeze reaches web1",
        60,
        || (tb.probe(true, 0, 10505, &["web1"]).ok()?.landed == ["web1"]).then_some(()),
        || tb.agent_log(),
    );
}
