//! Runs the built `portiso-cni` binary the way a runtime does: env, config on stdin, result
//! or error on stdout, and the exit status.

mod common;

use common::FakeAgent;
use portiso_agent_api::{Attached, Request, Response};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

fn run_binary(env: &[(&str, &str)], stdin: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portiso-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portiso-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for portiso-cni");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
    )
}

fn parse(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"))
}

#[test]
fn add_then_del_through_the_binary() {
    let agent = FakeAgent::start(vec![
        Response::Attached(Attached {
            ifname: "eth0".into(),
            mac: "52:54:00:aa:bb:cc".into(),
            sandbox: "/run/netns/cni-9".into(),
            address: "198.51.100.7/24".into(),
            gateway: Some("198.51.100.1".into()),
            ports: vec!["tcp 10000-10099".into()],
        }),
        Response::Done,
    ]);
    let conf = json!({
        "cniVersion": "0.4.0",
        "name": "portiso",
        "type": "portiso-cni",
        "uplink": "eth1",
        "agentSocket": agent.socket,
    })
    .to_string();
    let env = |command| {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", "/run/netns/cni-9"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web1"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    };

    let (exit, stdout) = run_binary(&env("ADD"), &conf);
    assert_eq!(exit, 0, "{stdout}");
    assert_eq!(
        parse(&stdout),
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "mac": "52:54:00:aa:bb:cc", "sandbox": "/run/netns/cni-9"}],
            "ips": [{"version": "4", "address": "198.51.100.7/24", "gateway": "198.51.100.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "198.51.100.1"}],
            "dns": {},
        })
    );

    let (exit, stdout) = run_binary(&env("DEL"), &conf);
    assert_eq!((exit, stdout.as_str()), (0, ""));

    let requests = agent.requests();
    assert!(
        matches!(&requests[..], [Request::Add(a), Request::Del(_)]
            if a.sandbox_name == "web1" && a.sandbox_namespace == "default"),
        "{requests:?}"
    );

    // With the agent gone, DEL removes the sandbox's veth itself (none here) and succeeds, so
    // that pods can be removed from a node whose agent is down; ADD waits agentWaitSeconds,
    // then asks the runtime to try again later (code 11), naming the socket.
    let dead = agent.dir.join("no-such-dir").join("agent.sock");
    let mut dead_conf = parse(&conf);
    dead_conf["agentSocket"] = json!(dead);
    dead_conf["agentWaitSeconds"] = json!(1);
    let (exit, stdout) = run_binary(&env("DEL"), &dead_conf.to_string());
    assert_eq!((exit, stdout.as_str()), (0, ""));
    let (exit, stdout) = run_binary(&env("ADD"), &dead_conf.to_string());
    assert_eq!(exit, 1);
    let err = parse(&stdout);
    assert_eq!(err["code"], 11, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains(&dead.display().to_string()),
        "{err}"
    );
    assert_eq!(err["cniVersion"], "0.4.0");
}

#[test]
fn malformed_config_through_the_binary() {
    let (exit, stdout) = run_binary(&[("CNI_COMMAND", "ADD")], "{\"cniVersion\": ");
    assert_eq!(exit, 1);
    let err = parse(&stdout);
    assert_eq!(err["code"], 6, "{err}");
    assert!(
        err["msg"].as_str().unwrap_or_default().contains("line 1"),
        "{err}"
    );
}

#[test]
fn version_through_the_binary() {
    let (exit, stdout) = run_binary(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(exit, 0);
    assert_eq!(
        parse(&stdout),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}
