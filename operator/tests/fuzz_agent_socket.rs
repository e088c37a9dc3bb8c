//! Fuzzing the agent socket's messages: one JSON line per connection, as `portiso-cni` and
//! `portiso status` send them.
//!
//! - Without root: any bytes given to `agent::request::decode` (what the agent's socket server
//!   runs on every line) give a `Request` or an error, never a panic or a hang; valid requests
//!   round trip; a valid request with one field mutated is refused naming that field.
//! - With root and Open vSwitch: a real agent in a testbed is sent random and mutated lines on
//!   its unix socket. Every line gets exactly one answer, a well-formed JSON `Response` (an
//!   error naming the problem where the line is not a request); the agent stays up, and
//!   attaches a sandbox through the real CNI plugin afterwards.
//!
//! Bounded by default; `PORTISO_FUZZ_CASES=N` runs longer (see `docs/reliability.md`).

mod common;
mod fuzzing;

use fuzzing::{fuzz, nasty_string, nested};
use portiso::agent::request::{decode, MAX_REQUEST_BYTES};
use portiso_agent_api::{AttachRequest, AttachmentKey, DetachRequest, Request, Response};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/fuzz_agent_socket.txt"
);

/// The fields requests have, so that random objects often look like requests.
const FIELDS: [&str; 12] = [
    "op",
    "containerId",
    "ifname",
    "netns",
    "uplink",
    "sandboxName",
    "sandboxNamespace",
    "sandboxUid",
    "valid",
    "from",
    "protocol",
    "dstPort",
];

const OPS: [&str; 8] = [
    "add", "check", "del", "status", "gc", "describe", "trace", "ADD",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(&OPS[..]).prop_map(Value::from),
        Just(json!("up1")),
        nasty_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(&FIELDS[..]).prop_map(String::from),
                    nasty_string()
                ],
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Sandbox and netns values that can never attach anything: no PortRange selects the
/// sandbox `fz-none`, and the netns does not exist.
fn attach(key: AttachmentKey, uplink: String, netns: String) -> AttachRequest {
    AttachRequest {
        key,
        netns,
        uplink,
        sandbox_name: "fz-none".into(),
        sandbox_namespace: "default".into(),
        sandbox_uid: None,
    }
}

fn request() -> impl Strategy<Value = Request> {
    let key = (nasty_string(), nasty_string()).prop_map(|(container_id, ifname)| AttachmentKey {
        container_id,
        ifname,
    });
    let uplink = prop_oneof![
        Just("up1".to_string()),
        Just("up2".to_string()),
        nasty_string()
    ];
    let netns = nasty_string().prop_map(|n| format!("/nonexistent/fz/{n}"));
    prop_oneof![
        (key.clone(), uplink.clone(), netns.clone())
            .prop_map(|(k, u, n)| Request::Add(attach(k, u, n))),
        (key.clone(), uplink.clone(), netns.clone())
            .prop_map(|(k, u, n)| Request::Check(attach(k, u, n))),
        (key.clone(), uplink.clone(), proptest::option::of(netns))
            .prop_map(|(key, uplink, netns)| Request::Del(DetachRequest { key, netns, uplink })),
        uplink.clone().prop_map(|uplink| Request::Status { uplink }),
        // Every attachment a fuzz line could have made is valid: GC removes nothing real.
        uplink.prop_map(|uplink| Request::Gc {
            uplink,
            valid: vec![]
        }),
        Just(Request::Describe),
    ]
}

/// A valid request's JSON with one field replaced by a value of the wrong kind, or removed.
#[derive(Debug, Clone)]
struct Mutated {
    line: Value,
    /// The field the error must name, in backquotes.
    field: String,
}

fn mutated() -> impl Strategy<Value = Mutated> {
    let wrong = prop::sample::select(vec![
        json!(5),
        json!(true),
        json!([]),
        json!({}),
        json!(1.5),
        json!([1]),
        json!({"a": "b"}),
    ]);
    (
        request(),
        any::<prop::sample::Index>(),
        wrong,
        any::<bool>(),
    )
        .prop_filter_map("requests with fields", |(r, at, wrong, remove)| {
            let mut line = serde_json::to_value(&r).ok()?;
            let gc = matches!(r, Request::Gc { .. });
            let obj = line.as_object_mut()?;
            let keys: Vec<String> = obj.keys().filter(|k| *k != "op").cloned().collect();
            if gc && !remove {
                // Into the list: one entry with a field of the wrong kind.
                let field = ["containerId", "ifname"][at.index(2)];
                let mut entry = json!({"containerId": "c", "ifname": "eth0"});
                entry[field] = wrong;
                obj.insert(
                    "valid".into(),
                    json!([{"containerId": "a", "ifname": "b"}, entry]),
                );
                return Some(Mutated {
                    line,
                    field: format!("valid[1].{field}"),
                });
            }
            if keys.is_empty() {
                return None;
            }
            let key = keys[at.index(keys.len())].clone();
            // Options may be left out (and may be null); a string may not be.
            let optional = key == "sandboxUid" || (key == "netns" && matches!(r, Request::Del(_)));
            if remove {
                if optional {
                    return None;
                }
                obj.remove(&key);
            } else {
                obj.insert(key.clone(), wrong);
            }
            Some(Mutated { line, field: key })
        })
}

#[test]
fn any_line_decodes_or_is_refused_without_panic() {
    fuzz(
        "agent socket decode random",
        REGRESSIONS,
        2000,
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            any::<String>().prop_map(String::into_bytes),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            (1usize..300_000).prop_map(|d| nested(d).into_bytes()),
            (1usize..100_000).prop_map(|d| "{\"op\":".repeat(d).into_bytes()),
        ],
        |line| {
            match decode(line) {
                Ok(request) => {
                    // Whatever decodes is what serde makes of the line.
                    let direct: Request = serde_json::from_slice(line)
                        .map_err(|e| format!("decode accepted what serde refuses ({e})"))?;
                    if direct != request {
                        return Err(format!("decode made {request:?}, serde {direct:?}"));
                    }
                }
                Err(e) => {
                    if e.code != 999 || !e.msg.contains("could not read the request") {
                        return Err(format!("not a request error: {e:?}"));
                    }
                }
            }
            Ok(())
        },
    );
}

#[test]
fn valid_requests_round_trip() {
    fuzz(
        "agent socket decode valid",
        REGRESSIONS,
        1000,
        request(),
        |r| {
            let mut line = serde_json::to_vec(r).map_err(|e| e.to_string())?;
            line.push(b'\n');
            match decode(&line) {
                Ok(back) if &back == r => Ok(()),
                other => Err(format!("{r:?} came back as {other:?}")),
            }
        },
    );
}

#[test]
fn one_mutated_field_is_named_in_the_error() {
    fuzz(
        "agent socket decode mutated",
        REGRESSIONS,
        1000,
        mutated(),
        |m| {
            let line = m.line.to_string();
            match decode(line.as_bytes()) {
                Ok(r) => Err(format!("accepted after mutating {}: {r:?}", m.field)),
                Err(e) if e.msg.contains(&format!("`{}`", m.field)) => Ok(()),
                Err(e) => Err(format!(
                    "the error does not name `{}`: {}\n{line}",
                    m.field, e.msg
                )),
            }
        },
    );
}

// ---------------------------------------------------------------- a real agent, with root

/// One connection to the agent: `line` as given (a newline added unless `raw`), then its
/// answer line. Ok(answer) or why there was none.
fn ask(socket: &Path, line: &[u8], raw: bool) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(4)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(4)))
        .map_err(|e| e.to_string())?;
    // The agent may answer (an over-long line) before it read everything: a failed write is
    // fine as long as the answer comes.
    let _ = stream.write_all(line);
    if !raw {
        let _ = stream.write_all(b"\n");
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer: {e}"))?;
    Ok(answer)
}

#[derive(Debug, Clone)]
enum Line {
    Bytes(Vec<u8>, bool),
    Mutated(Mutated),
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        3 => (prop::collection::vec(any::<u8>(), 0..300), any::<bool>()).prop_map(|(b, raw)| Line::Bytes(b, raw)),
        3 => json_value().prop_map(|v| Line::Bytes(v.to_string().into_bytes(), false)),
        3 => request().prop_map(|r| Line::Bytes(serde_json::to_vec(&r).unwrap_or_default(), false)),
        3 => mutated().prop_map(Line::Mutated),
        1 => (1usize..200_000).prop_map(|d| Line::Bytes(nested(d).into_bytes(), false)),
        1 => Just(Line::Bytes(vec![b'x'; MAX_REQUEST_BYTES + 10], false)),
        1 => Just(Line::Bytes(b"{\"op\":\"status\",\"uplink\":\"up1\"}\n{\"op\":\"describe\"}".to_vec(), true)),
    ]
}

fn check_answer(socket: &Path, l: &Line) -> Result<(), String> {
    let (bytes, raw) = match l {
        Line::Bytes(b, raw) => (b.clone(), *raw),
        Line::Mutated(m) => (m.line.to_string().into_bytes(), false),
    };
    let answer = ask(socket, &bytes, raw)?;
    if !answer.ends_with('\n') {
        return Err(format!("the answer is not one whole line: {answer:?}"));
    }
    let response: Response = serde_json::from_str(&answer)
        .map_err(|e| format!("the answer is not a Response ({e}): {answer:?}"))?;
    // What the agent read: the line up to its first newline.
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let is_request =
        first.len() <= MAX_REQUEST_BYTES && serde_json::from_slice::<Request>(first).is_ok();
    match (&response, is_request) {
        (_, true) => Ok(()),
        (Response::Error(e), false) => {
            if !e.msg.contains("could not read the request") {
                return Err(format!(
                    "a refusal must say the request was unreadable: {e:?}"
                ));
            }
            if let Line::Mutated(m) = l {
                if !e.msg.contains(&format!("`{}`", m.field)) {
                    return Err(format!(
                        "the refusal does not name `{}`: {}",
                        m.field, e.msg
                    ));
                }
            }
            Ok(())
        }
        (other, false) => Err(format!("a line that is no request was answered {other:?}")),
    }
}

#[test]
fn a_real_agent_answers_every_line_and_still_attaches() {
    let mut tb = common::testbed(
        "fzsock",
        &common::portrange("fzweb", "fzweb", &[("TCP", 20000, 20099)], &[]),
    );
    let socket: PathBuf = tb.socket();
    // Regressions: a line that was not UTF-8 got no answer at all (the connection was closed),
    // and a line was read without bound.
    for l in [
        Line::Bytes(vec![0xff], false),
        Line::Bytes(b"{\"op\":\"status\",\"uplink\":\"\xff\"}".to_vec(), false),
        Line::Bytes(vec![b' '; MAX_REQUEST_BYTES + 10], false),
    ] {
        check_answer(&socket, &l).unwrap_or_else(|e| panic!("{e}"));
    }
    let probe = socket.clone();
    fuzz(
        "agent socket real agent",
        REGRESSIONS,
        1000,
        line(),
        move |l| check_answer(&probe, l),
    );
    // Still up, and still doing its job.
    let status = portiso_agent_api::call(
        &socket,
        &Request::Status {
            uplink: "up1".into(),
        },
        Duration::from_secs(5),
    );
    assert!(
        matches!(status, Ok(Response::Done)),
        "agent not ready after fuzzing: {status:?}\n{}",
        tb.agent_log()
    );
    let result = tb
        .attach("fzweb", "up1")
        .unwrap_or_else(|e| panic!("attach after fuzzing: {e}"));
    assert_eq!(result["ips"][0]["address"], "198.51.100.1/24", "{result}");
}
