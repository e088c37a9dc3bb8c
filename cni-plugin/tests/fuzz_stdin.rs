//! Fuzzing the plugin's inputs: the network config on stdin, the CNI_* environment, and the
//! agent's answer on its socket. The plugin's whole protocol layer runs in-process through
//! `skel::Skel` (environment, stdin and stdout injected), exactly as `main` runs it.
//!
//! Properties, for every input: no panic, an answer within the hang bound, exit status 0 or 1,
//! and on failure exactly one CNI error object (`cniVersion`, numeric `code`, non-empty `msg`)
//! on stdout. For a valid config and environment with one field mutated, the error names that
//! field; valid ones go on to the agent (here a fake one that answers every request with an
//! error of its own, code 150).
//!
//! Bounded by default; `PORTISO_FUZZ_CASES=N` runs longer (see `docs/reliability.md`).

#[path = "../../operator/tests/fuzzing/mod.rs"]
mod fuzzing;

use fuzzing::{fuzz, nasty_string, nested};
use portiso_cni::config::{VALID_ATTACHMENTS, VALID_ATTACHMENTS_OLD};
use portiso_cni::version::CniVersion;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::OnceLock;

const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/fuzz_stdin.txt"
);

/// What one plugin run printed and returned.
#[derive(Debug)]
struct Outcome {
    exit: i32,
    stdout: String,
    stderr: String,
}

fn run(env: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    let getenv = |name: &str| env.get(name).cloned();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let exit = portiso_cni::skel::Skel {
        getenv: &getenv,
        stdin: &mut &stdin[..],
        stdout: &mut stdout,
        stderr: &mut stderr,
    }
    .run();
    Outcome {
        exit,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The CNI error object on stdout, checked for the shape the spec prescribes.
fn error_object(out: &Outcome) -> Result<(u64, String), String> {
    if out.exit != 1 {
        return Err(format!("a failure must exit 1: {out:?}"));
    }
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("stdout of a failure is not one JSON document ({e}): {out:?}"))?;
    let code = v["code"]
        .as_u64()
        .ok_or_else(|| format!("error without a numeric code: {v}"))?;
    let msg = v["msg"]
        .as_str()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| format!("error without a msg: {v}"))?;
    let stamp = v["cniVersion"].as_str().unwrap_or_default();
    if CniVersion::parse(stamp).is_none() {
        return Err(format!("error stamped with an unknown cniVersion: {v}"));
    }
    Ok((code, msg.to_string()))
}

/// What any input may lead to: nothing else than these.
fn well_formed(env: &BTreeMap<String, String>, out: &Outcome) -> Result<(), String> {
    let command = env.get("CNI_COMMAND").filter(|c| !c.is_empty());
    if command.is_none() {
        // Run by hand: the about text on stderr, nothing on stdout.
        return if out.exit == 0 && out.stdout.is_empty() && out.stderr.contains("portiso-cni") {
            Ok(())
        } else {
            Err(format!(
                "without CNI_COMMAND the about text is expected: {out:?}"
            ))
        };
    }
    if !out.stderr.is_empty() {
        return Err(format!("the protocol never writes stderr: {out:?}"));
    }
    match out.exit {
        0 if command.map(String::as_str) == Some("VERSION") => {
            let v: Value = serde_json::from_str(&out.stdout)
                .map_err(|e| format!("VERSION printed no JSON ({e}): {out:?}"))?;
            if v["supportedVersions"].as_array().is_none_or(Vec::is_empty) {
                return Err(format!("VERSION without supportedVersions: {v}"));
            }
            Ok(())
        }
        // The fake agent refuses everything; only a DEL without any agent can succeed (the
        // plugin removes the sandbox's veth itself), and prints nothing.
        0 if command.map(String::as_str) == Some("DEL") && out.stdout.is_empty() => Ok(()),
        0 => Err(format!("success although the agent refused: {out:?}")),
        _ => error_object(out).map(|_| ()),
    }
}

// ------------------------------------------------------------------ unstructured inputs

const VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

const KEYS: [&str; 12] = [
    "cniVersion",
    "name",
    "type",
    "uplink",
    "agentSocket",
    "timeoutSeconds",
    "ipam",
    "runtimeConfig",
    "prevResult",
    VALID_ATTACHMENTS,
    VALID_ATTACHMENTS_OLD,
    "mac",
];

/// Any JSON value, with object keys often the ones the plugin reads, so that random documents
/// reach its checks and not only the JSON decoder.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just("1.1.0".to_string()),
            Just("0.3.0".to_string()),
            Just("portiso-cni".to_string()),
            Just("/nonexistent/fuzz/agent.sock".to_string()),
            nasty_string(),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(&KEYS[..]).prop_map(String::from),
                    nasty_string()
                ],
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn stdin_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        // Text cut at a random place, or with a byte flipped: almost-JSON.
        (json_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut bytes = v.to_string().into_bytes();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                if b % 2 == 0 {
                    bytes.truncate(i);
                } else {
                    bytes[i] = b;
                }
            }
            bytes
        }),
        (1usize..400).prop_map(|d| nested(d).into_bytes()),
    ]
}

fn env_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["ADD", "CHECK", "DEL", "STATUS", "GC", "VERSION"])
            .prop_map(String::from),
        Just("c0ffee".to_string()),
        Just("eth0".to_string()),
        Just("/run/netns/fuzz-none".to_string()),
        Just("K8S_POD_NAME=web1;K8S_POD_NAMESPACE=ns".to_string()),
        // The process environment cannot hold NUL.
        nasty_string().prop_map(|s| s.replace('\0', "")),
    ]
}

fn env_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::vec(proptest::option::of(env_string()), VARS.len()).prop_map(|values| {
        VARS.iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect()
    })
}

#[test]
fn random_stdin_and_environment() {
    fuzz(
        "cni random stdin+env",
        REGRESSIONS,
        1000,
        (stdin_bytes(), env_map()),
        |(stdin, env)| {
            // A config object that names no socket gets the fake agent's, and no wait: the
            // default socket may have a real agent, and ADD waits for an absent one.
            let stdin = match serde_json::from_slice::<Value>(stdin) {
                Ok(Value::Object(mut m)) => {
                    m.entry("agentSocket")
                        .or_insert_with(|| json!(fake_agent()));
                    m.entry("agentWaitSeconds").or_insert(json!(0));
                    Value::Object(m).to_string().into_bytes()
                }
                _ => stdin.clone(),
            };
            let out = run(env, &stdin);
            well_formed(env, &out)
        },
    );
}

// ------------------------------------------------------------- structure-aware mutations

const VERBS: [&str; 5] = ["ADD", "CHECK", "DEL", "STATUS", "GC"];

/// The code the fake agent refuses every request with.
const FAKE_AGENT_CODE: u64 = 150;

/// A fake agent for the whole test binary: every connection gets an error answer, so any
/// invocation the plugin finds valid ends in code 150 ("fuzz agent: <op>"), which proves it
/// reached the agent. A request it cannot read gets code 151.
fn fake_agent() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portiso-fuzz-cni-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = dir.join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake agent");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let answer = match serde_json::from_str::<portiso_agent_api::Request>(&line) {
                        Ok(r) => {
                            let op = serde_json::to_value(&r).ok().and_then(|v| v["op"].as_str().map(String::from));
                            json!({"result": "error", "code": FAKE_AGENT_CODE, "msg": format!("fuzz agent: {}", op.unwrap_or_default())})
                        }
                        Err(e) => json!({"result": "error", "code": 151, "msg": format!("fuzz agent cannot read {line:?}: {e}")}),
                    };
                    let _ = writeln!(reader.get_mut(), "{answer}");
                });
            }
        });
        socket
    })
}

fn base_config(verb: &str) -> Map<String, Value> {
    let mut v = json!({
        "cniVersion": "1.1.0",
        "name": "portiso",
        "type": "portiso-cni",
        "uplink": "eth1",
        "agentSocket": fake_agent(),
        "agentWaitSeconds": 0,
        "timeoutSeconds": 5,
    });
    if verb == "GC" {
        v[VALID_ATTACHMENTS] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn base_env(verb: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", verb),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/fuzz-none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web1"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One field of a valid invocation, replaced (`Some`) or removed (`None`).
#[derive(Debug, Clone)]
enum Mutation {
    Config(&'static str, Option<Value>),
    Env(&'static str, Option<String>),
}

/// Values of the wrong kind or out of range for any config field, and some right ones.
fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => json_value(),
        1 => Just(json!("")),
        1 => Just(json!(0)),
        1 => Just(json!(-1)),
        1 => Just(json!(1.5)),
        1 => Just(json!(1e300)),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!({})),
        1 => Just(json!([])),
        1 => Just(json!({"type": "host-local"})),
        1 => Just(json!({"mac": "02:00:00:00:00:01"})),
        1 => Just(json!("/tmp")),
        1 => Just(json!("relative/agent.sock")),
        1 => Just(json!(format!("/{}", "a".repeat(200)))),
        1 => Just(json!("/run/a\0b.sock")),
        1 => Just(json!([{"containerID": "a", "ifname": "eth0"}, {"ifname": "eth0"}])),
        1 => Just(json!([{"containerID": "a", "ifname": 3}])),
        1 => Just(json!([{"containerID": "", "ifname": "eth0"}])),
        1 => Just(json!(["eth0"])),
        1 => (1usize..100).prop_map(|d| serde_json::from_str(&nested(d)).unwrap_or(Value::Null)),
        1 => Just(json!("0.2.0")),
        1 => Just(json!("0.3.1")),
        1 => Just(json!("1.0.0")),
        1 => Just(json!("1.1.0")),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let config_keys = prop::sample::select(vec![
        "cniVersion",
        "name",
        "type",
        "uplink",
        "agentSocket",
        "timeoutSeconds",
        "agentWaitSeconds",
        "ipam",
        "runtimeConfig",
        VALID_ATTACHMENTS,
        "someUnknownKey",
    ]);
    let env_vars = prop::sample::select(vec![
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
    ]);
    let env_value = prop_oneof![
        nasty_string().prop_map(|s| s.replace('\0', "")),
        Just("a".repeat(16)),
        Just("eth0:1".to_string()),
        Just("..".to_string()),
        Just("_leading".to_string()),
        Just("K8S_POD_NAME".to_string()),
        Just("=v".to_string()),
        Just("a=1;;b=2;".to_string()),
        Just("ADD ".to_string()),
    ];
    prop_oneof![
        (config_keys, proptest::option::weighted(0.85, field_value()),)
            .prop_map(|(k, v)| Mutation::Config(k, v)),
        (env_vars, proptest::option::weighted(0.85, env_value))
            .prop_map(|(k, v)| Mutation::Env(k, v)),
    ]
}

/// What the plugin must do with a valid invocation mutated: go on to the (absent) agent, or
/// fail with `code` (when known) and a msg containing every one of `words`.
#[derive(Debug, PartialEq)]
enum Expect {
    ReachesAgent,
    /// Valid, with a socket where nobody listens: 11 (50 for STATUS); DEL may succeed.
    NoAgent,
    Fails(Option<u64>, Vec<String>),
    /// An empty or absent CNI_COMMAND: the about text.
    About,
}

fn fails(code: u64, words: &[&str]) -> Expect {
    Expect::Fails(Some(code), words.iter().map(|w| w.to_string()).collect())
}

/// The oracle: the CNI spec and the plugin's documented rules, written independently of its
/// code. `None` of a field means "absent"; JSON null counts as absent, as in every CNI plugin.
fn expect(verb: &str, m: &Mutation) -> Expect {
    let per_container = matches!(verb, "ADD" | "CHECK" | "DEL");
    match m {
        Mutation::Config(key, value) => {
            let v = value.as_ref().filter(|v| !v.is_null());
            let nonempty_string = v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
            match *key {
                "cniVersion" => match value {
                    None => fails(1, &["`cniVersion`"]),
                    Some(Value::String(s)) => match CniVersion::parse(s) {
                        None => fails(1, &["cniVersion", &format!("{s:?}")]),
                        Some(v) if verb == "CHECK" && !v.has_check() => {
                            fails(1, &["CHECK", "cniVersion"])
                        }
                        Some(v) if matches!(verb, "STATUS" | "GC") && !v.has_status_and_gc() => {
                            fails(1, &[verb, "cniVersion"])
                        }
                        Some(_) => Expect::ReachesAgent,
                    },
                    Some(_) => fails(7, &["`cniVersion`"]),
                },
                "name" | "uplink" if !nonempty_string => fails(7, &[&format!("`{key}`")]),
                "type" if v.and_then(Value::as_str) != Some("portiso-cni") => fails(7, &["`type`"]),
                "agentSocket" => match v {
                    None => unreachable!("never removed: it would reach a real agent"),
                    // A unix socket's address: absolute, at most 107 bytes, no NUL.
                    Some(Value::String(s))
                        if s.starts_with('/') && !s.contains('\0') && s.len() < 108 =>
                    {
                        Expect::NoAgent
                    }
                    Some(_) => fails(7, &["`agentSocket`"]),
                },
                "agentWaitSeconds" => match v {
                    None => Expect::ReachesAgent,
                    Some(t) if t.as_u64().is_some_and(|t| t <= 300) => Expect::ReachesAgent,
                    Some(_) => fails(7, &["`agentWaitSeconds`"]),
                },
                "timeoutSeconds" => match v {
                    None => Expect::ReachesAgent,
                    Some(t) if t.as_u64().is_some_and(|t| t > 0) => Expect::ReachesAgent,
                    Some(_) => fails(7, &["`timeoutSeconds`"]),
                },
                "ipam" => match v {
                    None => Expect::ReachesAgent,
                    Some(Value::Object(o)) if o.is_empty() => Expect::ReachesAgent,
                    Some(_) => fails(2, &["`ipam`"]),
                },
                "runtimeConfig" => match value.as_ref().and_then(|r| r.get("mac")) {
                    Some(_) if verb == "ADD" => fails(2, &["runtimeConfig.mac"]),
                    _ => Expect::ReachesAgent,
                },
                k if k == VALID_ATTACHMENTS => match v {
                    None if verb == "GC" => fails(7, &[VALID_ATTACHMENTS]),
                    None => Expect::ReachesAgent,
                    Some(Value::Array(list)) => {
                        let bad = list.iter().enumerate().find_map(|(i, e)| {
                            ["containerID", "ifname"].into_iter().find_map(|f| {
                                let ok = e
                                    .get(f)
                                    .and_then(Value::as_str)
                                    .is_some_and(|s| !s.is_empty());
                                (!ok).then_some((i, f))
                            })
                        });
                        match bad {
                            None => Expect::ReachesAgent,
                            Some((i, f)) => fails(
                                7,
                                &[VALID_ATTACHMENTS, &format!("entry {i}"), &format!("`{f}`")],
                            ),
                        }
                    }
                    Some(_) => fails(7, &[VALID_ATTACHMENTS]),
                },
                _ => Expect::ReachesAgent,
            }
        }
        Mutation::Env(var, value) => {
            let v = value.as_deref().filter(|v| !v.is_empty());
            match *var {
                "CNI_COMMAND" => match v {
                    None => Expect::About,
                    Some(c) if VERBS.contains(&c) || c == "VERSION" => {
                        unreachable!("generated values are never a verb")
                    }
                    Some(_) => fails(4, &["CNI_COMMAND"]),
                },
                _ if !per_container => Expect::ReachesAgent,
                "CNI_CONTAINERID" => {
                    let ok = v.is_some_and(|id| {
                        let mut c = id.chars();
                        c.next().is_some_and(|f| f.is_ascii_alphanumeric())
                            && c.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    });
                    if ok {
                        Expect::ReachesAgent
                    } else {
                        fails(4, &["CNI_CONTAINERID"])
                    }
                }
                "CNI_IFNAME" => {
                    // The kernel's dev_valid_name, with Unicode whitespace refused too.
                    let ok = v.is_some_and(|n| {
                        n.len() <= 15
                            && n != "."
                            && n != ".."
                            && !n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
                    });
                    if ok {
                        Expect::ReachesAgent
                    } else {
                        fails(4, &["CNI_IFNAME"])
                    }
                }
                "CNI_NETNS" if v.is_none() && verb != "DEL" => fails(4, &["CNI_NETNS"]),
                "CNI_ARGS" if verb != "DEL" => {
                    let ok = v
                        .unwrap_or("")
                        .split(';')
                        .filter(|p| !p.trim().is_empty())
                        .all(|p| p.split_once('=').is_some_and(|(k, _)| !k.trim().is_empty()));
                    if ok {
                        Expect::ReachesAgent
                    } else {
                        fails(4, &["CNI_ARGS"])
                    }
                }
                _ => Expect::ReachesAgent,
            }
        }
    }
}

fn apply(verb: &str, m: &Mutation) -> (BTreeMap<String, String>, Vec<u8>) {
    let mut config = base_config(verb);
    let mut env = base_env(verb);
    match m {
        Mutation::Config(k, Some(v)) => {
            config.insert(k.to_string(), v.clone());
        }
        Mutation::Config(k, None) => {
            config.remove(*k);
        }
        Mutation::Env(k, Some(v)) => {
            env.insert(k.to_string(), v.clone());
        }
        Mutation::Env(k, None) => {
            env.remove(*k);
        }
    }
    (env, Value::Object(config).to_string().into_bytes())
}

fn check_mutated(verb: &str, m: &Mutation) -> Result<(), String> {
    let (env, stdin) = apply(verb, m);
    let out = run(&env, &stdin);
    well_formed(&env, &out)?;
    match expect(verb, m) {
        Expect::About => Ok(()),
        Expect::ReachesAgent => {
            let (code, msg) = error_object(&out)?;
            let op = verb.to_lowercase();
            if code == FAKE_AGENT_CODE && msg == format!("fuzz agent: {op}") {
                Ok(())
            } else {
                Err(format!("a valid invocation must reach the agent: {out:?}"))
            }
        }
        Expect::NoAgent if verb == "DEL" && out.exit == 0 => Ok(()),
        Expect::NoAgent => {
            let (code, msg) = error_object(&out)?;
            let want = if verb == "STATUS" { 50 } else { 11 };
            if code == want && msg.contains("portiso agent") {
                Ok(())
            } else {
                Err(format!(
                    "a valid invocation without agent must be code {want}: {out:?}"
                ))
            }
        }
        Expect::Fails(code, words) => {
            let (got, msg) = error_object(&out)?;
            if code.is_some_and(|c| c != got) {
                return Err(format!("expected code {code:?}, got {got}: {msg}"));
            }
            match words.iter().find(|w| !msg.contains(w.as_str())) {
                Some(w) => Err(format!("the error does not name {w:?}: {msg}")),
                None => Ok(()),
            }
        }
    }
}

#[test]
fn one_mutated_field_is_named_in_the_error() {
    fuzz(
        "cni mutated field",
        REGRESSIONS,
        1500,
        (prop::sample::select(&VERBS[..]), mutation())
            .prop_filter("agentSocket is never removed", |(_, m)| {
                !matches!(m, Mutation::Config("agentSocket", None | Some(Value::Null)))
            })
            .prop_filter("CNI_COMMAND is mutated to a non-verb", |(_, m)| match m {
                Mutation::Env("CNI_COMMAND", Some(c)) => {
                    !VERBS.contains(&c.as_str()) && c != "VERSION"
                }
                _ => true,
            }),
        |(verb, m)| check_mutated(verb, m),
    );
}

#[test]
fn unmutated_invocations_reach_the_agent() {
    for verb in VERBS {
        let m = Mutation::Config("someUnknownKey", Some(json!(1)));
        check_mutated(verb, &m).unwrap_or_else(|e| panic!("{verb}: {e}"));
    }
}

// ---------------------------------------------------------------- the agent's answer

/// Lines an agent (or something else listening at the socket) might answer with.
fn answer_line() -> impl Strategy<Value = Vec<u8>> {
    let attached = json!({
        "result": "attached", "ifname": "eth0", "mac": "52:54:00:aa:bb:cc",
        "sandbox": "/run/netns/x", "address": "198.51.100.7/24",
        "gateway": "198.51.100.1", "ports": ["tcp 10000-10099"],
    });
    let known = prop::sample::select(vec![
        attached.clone(),
        json!({"result": "done"}),
        json!({"result": "error", "code": 11, "msg": "later"}),
        json!({"result": "error", "code": 999, "msg": "no", "details": "why"}),
        json!({"result": "node", "datapath": "system"}),
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        known.clone().prop_map(|v| v.to_string().into_bytes()),
        // A known answer with one field replaced or removed.
        (known, nasty_string(), proptest::option::of(json_value())).prop_map(|(mut v, k, x)| {
            let key = [
                "result", "code", "msg", "ifname", "address", "ports", "gateway",
            ][k.len() % 7];
            match x {
                Some(x) => v[key] = x,
                None => {
                    v.as_object_mut().map(|o| o.remove(key));
                }
            }
            v.to_string().into_bytes()
        }),
    ]
}

/// A one-shot agent at a fresh socket that answers `line` (and a newline) to whatever it is
/// asked, then hangs up.
fn one_shot_agent(line: Vec<u8>) -> (PathBuf, std::thread::JoinHandle<()>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portiso-fuzz-cni-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("a.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let handle = std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut stream = reader.into_inner();
            let _ = stream.write_all(&line);
            let _ = stream.write_all(b"\n");
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
    (socket, handle)
}

#[test]
fn any_agent_answer_becomes_a_result_or_a_cni_error() {
    fuzz(
        "cni agent answer",
        REGRESSIONS,
        400,
        (prop::sample::select(&VERBS[..]), answer_line()),
        |(verb, line)| {
            let (socket, agent) = one_shot_agent(line.clone());
            let mut config = base_config(verb);
            config.insert("agentSocket".into(), json!(socket));
            // No retries: the one-shot agent answers once.
            config.insert("agentWaitSeconds".into(), json!(0));
            let env = base_env(verb);
            let out = run(&env, Value::Object(config).to_string().as_bytes());
            let _ = agent.join();
            // The plugin reads one line: what it saw ends at the first newline.
            let first = line.split(|b| *b == b'\n').next().unwrap_or_default();
            let answer = serde_json::from_slice::<portiso_agent_api::Response>(first);
            match (out.exit, &answer) {
                (0, Ok(_)) if *verb == "ADD" => {
                    let v: Value = serde_json::from_str(&out.stdout)
                        .map_err(|e| format!("ADD result is not JSON ({e}): {out:?}"))?;
                    if v["interfaces"][0]["name"].is_string() && v["cniVersion"] == "1.1.0" {
                        Ok(())
                    } else {
                        Err(format!("ADD result is not a CNI result: {v}"))
                    }
                }
                (0, Ok(_)) if out.stdout.is_empty() => Ok(()),
                (0, _) => Err(format!("success from an unreadable answer: {out:?}")),
                (_, Err(_)) => {
                    let (code, msg) = error_object(&out)?;
                    if code == 999 && msg.contains("cannot read") {
                        Ok(())
                    } else {
                        Err(format!("an unreadable answer must be error 999: {out:?}"))
                    }
                }
                (_, Ok(_)) => error_object(&out).map(|_| ()),
            }
        },
    );
}

// ------------------------------------------------------- regressions found by these targets

/// Found by `any_agent_answer_becomes_a_result_or_a_cni_error` (minimal input: the byte 0x80):
/// an answer that is not UTF-8 was reported as an unreachable agent, code 11, which runtimes
/// retry forever; it is an unreadable answer, code 999.
#[test]
fn regression_an_answer_that_is_not_utf8_is_unreadable_not_unreachable() {
    let (socket, agent) = one_shot_agent(vec![0x80]);
    let mut config = base_config("ADD");
    config.insert("agentSocket".into(), json!(socket));
    let out = run(
        &base_env("ADD"),
        Value::Object(config).to_string().as_bytes(),
    );
    let _ = agent.join();
    let (code, msg) = error_object(&out).unwrap();
    assert_eq!(code, 999, "{out:?}");
    assert!(msg.contains("cannot read"), "{msg}");
}

/// Found by `one_mutated_field_is_named_in_the_error`: an `agentSocket` that cannot be a unix
/// socket's address (over 107 bytes, or with NUL) failed every connect as "cannot reach the
/// agent", code 11 (try again later, forever); it is an invalid config, code 7, naming it.
#[test]
fn regression_an_agent_socket_that_cannot_be_an_address_is_invalid_config() {
    for socket in [
        format!("/{}", "a".repeat(107)),
        "/run/a\0b.sock".to_string(),
    ] {
        let mut config = base_config("ADD");
        config.insert("agentSocket".into(), json!(socket));
        let out = run(
            &base_env("ADD"),
            Value::Object(config).to_string().as_bytes(),
        );
        let (code, msg) = error_object(&out).unwrap();
        assert_eq!(code, 7, "{socket:?}: {out:?}");
        assert!(msg.contains("`agentSocket`"), "{msg}");
    }
    // 107 bytes is still an address.
    let mut config = base_config("ADD");
    config.insert("agentSocket".into(), json!(format!("/{}", "a".repeat(106))));
    let out = run(
        &base_env("ADD"),
        Value::Object(config).to_string().as_bytes(),
    );
    assert_eq!(error_object(&out).unwrap().0, 11, "{out:?}");
}

/// Found by `any_agent_answer_becomes_a_result_or_a_cni_error` (20000 cases, release): an agent
/// error with an empty msg was passed on as a CNI error without one, which the spec forbids.
#[test]
fn regression_an_agent_error_without_msg_still_has_one() {
    let (socket, agent) = one_shot_agent(br#"{"result":"error","code":11,"msg":""}"#.to_vec());
    let mut config = base_config("ADD");
    config.insert("agentSocket".into(), json!(socket));
    let out = run(
        &base_env("ADD"),
        Value::Object(config).to_string().as_bytes(),
    );
    let _ = agent.join();
    let (code, msg) = error_object(&out).unwrap();
    assert_eq!(code, 11, "{out:?}");
    assert!(msg.contains("without a message"), "{msg}");
}
