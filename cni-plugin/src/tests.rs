//! In-process tests of the whole protocol layer: the skel with injected env/stdin/stdout,
//! against a fake agent on a real unix socket where an agent is needed.

use crate::fake_agent::FakeAgent;
use crate::version::CniVersion;
use portiso_agent_api::{
    AgentError, AttachRequest, Attached, AttachmentKey, DetachRequest, Request, Response,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

struct Outcome {
    exit: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts a CNI error with `code` whose msg mentions every one of `words`.
    fn assert_error(&self, code: u32, words: &[&str]) -> Value {
        assert_eq!(self.exit, 1, "expected failure, stdout: {}", self.stdout);
        let err = self.json();
        assert_eq!(err["code"], code, "{err}");
        let msg = err["msg"].as_str().unwrap_or_default();
        for w in words {
            assert!(msg.contains(w), "msg {msg:?} lacks {w:?}");
        }
        err
    }

    fn assert_silent_success(&self) {
        assert_eq!(self.exit, 0, "stdout: {}", self.stdout);
        assert_eq!(self.stdout, "", "success of this verb prints nothing");
    }
}

fn run(env: &[(&str, &str)], stdin: &str) -> Outcome {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let getenv = move |name: &str| env.get(name).cloned();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let exit = crate::skel::Skel {
        getenv: &getenv,
        stdin: &mut stdin.as_bytes(),
        stdout: &mut stdout,
        stderr: &mut stderr,
    }
    .run();
    Outcome {
        exit,
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
    }
}

/// The env a runtime passes for a per-container verb.
fn env_for(command: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=web1;K8S_POD_NAMESPACE=ns",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn without(
    mut env: Vec<(&'static str, &'static str)>,
    name: &str,
) -> Vec<(&'static str, &'static str)> {
    env.retain(|(k, _)| *k != name);
    env
}

fn config(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "portiso",
        "type": "portiso-cni",
        "uplink": "eth1",
        "agentSocket": socket.to_str(),
        "timeoutSeconds": 5,
    })
}

/// A socket path where nobody listens (its directory does not even exist).
fn dead_socket() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("portiso-cni-no-agent-{}", std::process::id()))
        .join("agent.sock")
}

fn attached() -> Attached {
    Attached {
        ifname: "eth0".into(),
        mac: "52:54:00:aa:bb:cc".into(),
        sandbox: "/run/netns/cni-1".into(),
        address: "198.51.100.7/24".into(),
        gateway: Some("198.51.100.1".into()),
        ports: vec!["tcp 10000-10099".into()],
    }
}

const PER_CONTAINER: [&str; 3] = ["ADD", "CHECK", "DEL"];
const ALL_VERBS: [&str; 5] = ["ADD", "CHECK", "DEL", "STATUS", "GC"];

// ---------------------------------------------------------------- protocol, no agent needed

#[test]
fn version_reports_requested_version_and_all_supported() {
    let supported = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    let mut table: Vec<(String, &str)> = CniVersion::ALL
        .iter()
        .map(|v| (json!({"cniVersion": v.as_str()}).to_string(), v.as_str()))
        .collect();
    // A runtime asking with an unknown version, or not at all, still learns what we speak.
    table.push((json!({"cniVersion": "9.9.9"}).to_string(), "1.1.0"));
    table.push((String::new(), "1.1.0"));
    table.push(("not json".into(), "1.1.0"));
    for (stdin, want) in table {
        let out = run(&[("CNI_COMMAND", "VERSION")], &stdin);
        assert_eq!(out.exit, 0, "{stdin}");
        assert_eq!(
            out.json(),
            json!({"cniVersion": want, "supportedVersions": supported}),
            "{stdin}"
        );
    }
}

#[test]
fn malformed_stdin_is_code_6_with_position_for_every_verb() {
    for verb in ALL_VERBS {
        let out = run(
            &env_for(verb),
            "{\n  \"cniVersion\": \"1.1.0\",\n  \"name\": ,\n}",
        );
        let err = out.assert_error(6, &["line 3", "column"]);
        assert_eq!(err["cniVersion"], "1.1.0");
    }
}

#[test]
fn unknown_cni_version_is_code_1_naming_it() {
    for verb in ALL_VERBS {
        let conf = config("0.2.0", &dead_socket());
        let out = run(&env_for(verb), &conf.to_string());
        out.assert_error(1, &["\"0.2.0\"", "0.3.0", "1.1.0"]);
    }
}

#[test]
fn missing_uplink_is_code_7_naming_the_field_in_every_version() {
    for v in CniVersion::ALL {
        for verb in PER_CONTAINER {
            if verb == "CHECK" && !v.has_check() {
                continue;
            }
            let mut conf = config(v.as_str(), &dead_socket());
            conf.as_object_mut().map(|o| o.remove("uplink"));
            let out = run(&env_for(verb), &conf.to_string());
            let err = out.assert_error(7, &["`uplink`", "missing", "\"eth1\""]);
            // The error is in the version the runtime asked for, so it can decode it.
            assert_eq!(err["cniVersion"], v.as_str());
        }
    }
}

#[test]
fn wrong_type_is_code_7() {
    for v in CniVersion::ALL {
        let mut conf = config(v.as_str(), &dead_socket());
        conf["type"] = json!("bridge");
        let out = run(&env_for("ADD"), &conf.to_string());
        out.assert_error(7, &["`type`", "\"bridge\"", "portiso-cni"]);
    }
}

#[test]
fn missing_env_is_code_4_naming_the_variable() {
    // (verb, variable removed); DEL may lack CNI_NETNS, so it is not here.
    let table = [
        ("ADD", "CNI_NETNS"),
        ("ADD", "CNI_CONTAINERID"),
        ("ADD", "CNI_IFNAME"),
        ("CHECK", "CNI_NETNS"),
        ("DEL", "CNI_CONTAINERID"),
        ("DEL", "CNI_IFNAME"),
    ];
    for v in CniVersion::ALL {
        for (verb, var) in table {
            if verb == "CHECK" && !v.has_check() {
                continue;
            }
            let conf = config(v.as_str(), &dead_socket());
            let out = run(&without(env_for(verb), var), &conf.to_string());
            out.assert_error(4, &[var]);
        }
    }
}

#[test]
fn invalid_env_values_are_code_4() {
    let conf = config("1.1.0", &dead_socket()).to_string();
    let table = [
        ("CNI_CONTAINERID", "../etc", "CNI_CONTAINERID"),
        ("CNI_IFNAME", "a-very-long-ifname", "CNI_IFNAME"),
        ("CNI_IFNAME", "eth/0", "CNI_IFNAME"),
        ("CNI_ARGS", "K8S_POD_NAME", "CNI_ARGS"),
    ];
    for (var, value, word) in table {
        let mut env = without(env_for("ADD"), var);
        env.push((var, value));
        run(&env, &conf).assert_error(4, &[word]);
    }
}

#[test]
fn verbs_missing_from_older_versions_are_code_1() {
    for v in CniVersion::ALL {
        let conf = config(v.as_str(), &dead_socket()).to_string();
        for (verb, exists) in [
            ("CHECK", v.has_check()),
            ("STATUS", v.has_status_and_gc()),
            ("GC", v.has_status_and_gc()),
        ] {
            let out = run(&env_for(verb), &conf);
            if exists {
                // It got past the version gate and on to the (dead) agent.
                assert_ne!(out.json()["code"], 1, "{verb} {v:?}");
            } else {
                out.assert_error(1, &[verb, v.as_str()]);
            }
        }
    }
}

#[test]
fn unknown_command_is_code_4_and_no_command_prints_about() {
    let conf = config("1.1.0", &dead_socket()).to_string();
    run(&[("CNI_COMMAND", "FROB")], &conf).assert_error(4, &["FROB"]);
    let out = run(&[], "");
    assert_eq!(out.exit, 0);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr
            .contains("CNI protocol versions supported: 0.3.0"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------- against a fake agent

#[test]
fn add_result_shape_per_version() {
    for v in CniVersion::ALL {
        let agent = FakeAgent::start(vec![Response::Attached(attached())]);
        let out = run(
            &env_for("ADD"),
            &config(v.as_str(), &agent.socket).to_string(),
        );
        assert_eq!(out.exit, 0, "{v:?}: {}", out.stdout);
        let mut ip =
            json!({"address": "198.51.100.7/24", "gateway": "198.51.100.1", "interface": 0});
        if v < CniVersion::V1_0_0 {
            ip["version"] = json!("4");
        }
        assert_eq!(
            out.json(),
            json!({
                "cniVersion": v.as_str(),
                "interfaces": [{"name": "eth0", "mac": "52:54:00:aa:bb:cc", "sandbox": "/run/netns/cni-1"}],
                "ips": [ip],
                "routes": [{"dst": "0.0.0.0/0", "gw": "198.51.100.1"}],
                "dns": {},
            }),
            "{v:?}"
        );
        assert_eq!(
            agent.requests(),
            vec![Request::Add(AttachRequest {
                key: AttachmentKey {
                    container_id: "c0ffee".into(),
                    ifname: "eth0".into()
                },
                netns: "/run/netns/cni-1".into(),
                uplink: "eth1".into(),
                sandbox_name: "web1".into(),
                sandbox_namespace: "ns".into(),
                sandbox_uid: None,
            })]
        );
    }
}

#[test]
fn add_without_pod_name_uses_container_id_in_default_namespace() {
    let agent = FakeAgent::start(vec![Response::Attached(attached())]);
    let mut env = without(env_for("ADD"), "CNI_ARGS");
    env.push(("CNI_ARGS", "IgnoreUnknown=1"));
    let out = run(&env, &config("1.0.0", &agent.socket).to_string());
    assert_eq!(out.exit, 0, "{}", out.stdout);
    match agent.requests().as_slice() {
        [Request::Add(a)] => {
            assert_eq!(
                (a.sandbox_name.as_str(), a.sandbox_namespace.as_str()),
                ("c0ffee", "default")
            );
        }
        other => panic!("unexpected requests {other:?}"),
    }
}

#[test]
fn del_is_idempotent_and_works_without_netns() {
    for v in CniVersion::ALL {
        // The agent reports Done both times: the second DEL finds nothing and still succeeds.
        let agent = FakeAgent::start(vec![Response::Done, Response::Done]);
        let conf = config(v.as_str(), &agent.socket).to_string();
        run(&env_for("DEL"), &conf).assert_silent_success();
        run(&without(env_for("DEL"), "CNI_NETNS"), &conf).assert_silent_success();
        let key = AttachmentKey {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            agent.requests(),
            vec![
                Request::Del(DetachRequest {
                    key: key.clone(),
                    netns: Some("/run/netns/cni-1".into()),
                    uplink: "eth1".into()
                }),
                Request::Del(DetachRequest {
                    key,
                    netns: None,
                    uplink: "eth1".into()
                }),
            ],
            "{v:?}"
        );
    }
}

#[test]
fn del_tolerates_prev_result_and_malformed_cni_args() {
    let agent = FakeAgent::start(vec![Response::Done]);
    let mut conf = config("1.1.0", &agent.socket);
    conf["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0"}]});
    let mut env = without(env_for("DEL"), "CNI_ARGS");
    env.push(("CNI_ARGS", "garbage"));
    run(&env, &conf.to_string()).assert_silent_success();
    assert_eq!(agent.requests().len(), 1);
}

#[test]
fn check_sends_the_add_payload_and_prints_nothing() {
    let agent = FakeAgent::start(vec![Response::Done, Response::Attached(attached())]);
    let conf = config("1.0.0", &agent.socket).to_string();
    run(&env_for("CHECK"), &conf).assert_silent_success();
    run(&env_for("CHECK"), &conf).assert_silent_success();
    let requests = agent.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        matches!(&requests[0], Request::Check(a) if a.netns == "/run/netns/cni-1" && a.sandbox_name == "web1"),
        "{requests:?}"
    );
}

#[test]
fn agent_errors_pass_through_unchanged() {
    for verb in ALL_VERBS {
        let agent = FakeAgent::start(vec![Response::Error(AgentError {
            code: 999,
            msg: "no PortRange selects ns/web1".into(),
            details: "uplink eth1".into(),
        })]);
        let mut conf = config("1.1.0", &agent.socket);
        conf["cni.dev/valid-attachments"] = json!([]);
        let out = run(&env_for(verb), &conf.to_string());
        out.assert_error(999, &["no PortRange selects ns/web1"]);
        assert_eq!(out.json()["details"], "uplink eth1", "{verb}");
    }
}

#[test]
fn unreachable_agent_is_11_or_50_for_status_and_del_succeeds() {
    let socket = dead_socket();
    let mut conf = config("1.1.0", &socket);
    conf["cni.dev/valid-attachments"] = json!([]);
    conf["agentWaitSeconds"] = json!(1);
    for (verb, code) in [("ADD", 11), ("CHECK", 11), ("GC", 11), ("STATUS", 50)] {
        let started = std::time::Instant::now();
        let out = run(&env_for(verb), &conf.to_string());
        let took = started.elapsed();
        out.assert_error(code, &[socket.to_str().unwrap_or_default(), "may be down"]);
        // Only ADD waits for the agent, and no longer than agentWaitSeconds.
        if verb == "ADD" {
            assert!(
                took >= std::time::Duration::from_secs(1)
                    && took < std::time::Duration::from_secs(3),
                "{took:?}"
            );
            out.assert_error(code, &["waited 1 s", "agentWaitSeconds"]);
        } else {
            assert!(took < std::time::Duration::from_secs(1), "{verb}: {took:?}");
        }
    }
    // DEL with no agent removes the veth itself (there is none here) and succeeds.
    run(&env_for("DEL"), &conf.to_string()).assert_silent_success();
    run(&without(env_for("DEL"), "CNI_NETNS"), &conf.to_string()).assert_silent_success();
}

/// ADD keeps trying while the socket is missing or refuses (an agent restarting), and gets
/// through once the agent listens.
#[test]
fn add_waits_for_an_agent_that_comes_up() {
    let dir = crate::fake_agent::temp_dir("late-agent");
    let socket = dir.join("agent.sock");
    // A socket file nobody listens on, as a killed agent leaves it: connections are refused.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let late = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(700));
            let _ = std::fs::remove_file(&socket);
            let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
            let request: Request = serde_json::from_str(&line).expect("request");
            let mut answer = serde_json::to_vec(&Response::Attached(attached())).unwrap();
            answer.push(b'\n');
            std::io::Write::write_all(reader.get_mut(), &answer).expect("answer");
            request
        })
    };
    let mut conf = config("1.0.0", &socket);
    conf["agentWaitSeconds"] = json!(5);
    let started = std::time::Instant::now();
    let out = run(&env_for("ADD"), &conf.to_string());
    assert_eq!(out.exit, 0, "{}", out.stdout);
    assert!(started.elapsed() >= std::time::Duration::from_millis(700));
    assert!(matches!(late.join().unwrap(), Request::Add(_)));
    // Refused and agentWaitSeconds 0: fails at once.
    let mut conf = config("1.0.0", &socket);
    conf["agentWaitSeconds"] = json!(0);
    let started = std::time::Instant::now();
    run(&env_for("ADD"), &conf.to_string()).assert_error(11, &["may be down"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_ok_prints_nothing_and_asks_about_the_uplink() {
    let agent = FakeAgent::start(vec![Response::Done]);
    run(
        &[("CNI_COMMAND", "STATUS")],
        &config("1.1.0", &agent.socket).to_string(),
    )
    .assert_silent_success();
    assert_eq!(
        agent.requests(),
        vec![Request::Status {
            uplink: "eth1".into()
        }]
    );
}

#[test]
fn gc_sends_valid_attachments() {
    let agent = FakeAgent::start(vec![Response::Done]);
    let mut conf = config("1.1.0", &agent.socket);
    conf["cni.dev/valid-attachments"] = json!([
        {"containerID": "a1", "ifname": "eth0"},
        {"containerID": "b2", "ifname": "net1"},
    ]);
    run(&[("CNI_COMMAND", "GC")], &conf.to_string()).assert_silent_success();
    let key = |c: &str, i: &str| AttachmentKey {
        container_id: c.into(),
        ifname: i.into(),
    };
    assert_eq!(
        agent.requests(),
        vec![Request::Gc {
            uplink: "eth1".into(),
            valid: vec![key("a1", "eth0"), key("b2", "net1")],
        }]
    );
}

#[test]
fn gc_without_valid_attachments_refuses_and_does_not_ask_the_agent() {
    let agent = FakeAgent::start(vec![Response::Done]);
    let out = run(
        &[("CNI_COMMAND", "GC")],
        &config("1.1.0", &agent.socket).to_string(),
    );
    out.assert_error(7, &["cni.dev/valid-attachments"]);
    assert_eq!(agent.requests(), vec![]);
}

#[test]
fn unexpected_agent_answer_is_internal_error() {
    let agent = FakeAgent::start(vec![Response::Done]);
    let out = run(&env_for("ADD"), &config("1.1.0", &agent.socket).to_string());
    out.assert_error(999, &["unexpected answer", "Add"]);
}

#[test]
fn a_custom_mac_is_refused_on_add_but_del_still_works() {
    let agent = FakeAgent::start(vec![Response::Done]);
    let mut conf = config("1.0.0", &agent.socket);
    conf["runtimeConfig"] = json!({"mac": "02:00:00:00:00:42"});
    run(&env_for("ADD"), &conf.to_string()).assert_error(
        2,
        &[
            "runtimeConfig.mac",
            "02:00:00:00:00:42",
            "share the node's MAC",
        ],
    );
    assert!(agent.requests().is_empty(), "ADD never reached the agent");
    run(&env_for("DEL"), &conf.to_string()).assert_silent_success();
    assert_eq!(agent.requests().len(), 1);
}

#[test]
fn the_pod_uid_reaches_the_agent() {
    let agent = FakeAgent::start(vec![Response::Attached(attached())]);
    let mut env = without(env_for("ADD"), "CNI_ARGS");
    env.push((
        "CNI_ARGS",
        "K8S_POD_NAME=web1;K8S_POD_NAMESPACE=ns;K8S_POD_UID=1234-abcd",
    ));
    let out = run(&env, &config("0.3.1", &agent.socket).to_string());
    assert_eq!(out.exit, 0, "{}", out.stdout);
    let Request::Add(req) = &agent.requests()[0] else {
        panic!("not an ADD")
    };
    assert_eq!(req.sandbox_uid.as_deref(), Some("1234-abcd"));
}
