//! Reading one request line from the agent's socket, with an error that names what is wrong.
//!
//! serde decodes the tagged `Request` through a buffer, so its messages lose the field they
//! are about ("invalid type: integer `5`, expected a string"). When a line does not decode,
//! the field at fault is found by trying the request with each of its fields replaced by a
//! value of another kind or left out: the one whose change makes the request decode is named.

use portiso_agent_api::json_kind;
use portiso_agent_api::{code, AgentError, Request};
use serde_json::Value;

/// The longest request line the agent reads: a GC listing some ten thousand attachments fits
/// many times over; anything longer is refused rather than buffered without bound.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Requests with more values than this are not searched for the field at fault (the search
/// decodes the request a few times per value).
const MAX_BLAME_VALUES: usize = 256;

/// Decodes one request line (its trailing newline optional), or says what is wrong with it.
pub fn decode(line: &[u8]) -> Result<Request, AgentError> {
    let refuse = |what: String| {
        AgentError::new(
            code::INTERNAL,
            format!("the agent could not read the request: {what}; are the plugin and agent the same version?"),
        )
    };
    if line.len() > MAX_REQUEST_BYTES {
        return Err(refuse(format!(
            "it is longer than {MAX_REQUEST_BYTES} bytes"
        )));
    }
    let value: Value =
        serde_json::from_slice(line).map_err(|e| refuse(format!("not JSON: {e}")))?;
    let error = match serde_json::from_value::<Request>(value.clone()) {
        Ok(request) => return Ok(request),
        Err(e) => e.to_string(),
    };
    if !value.is_object() {
        return Err(refuse(format!(
            "it must be a JSON object, got {}",
            json_kind(&value)
        )));
    }
    match value.get("op") {
        None => return Err(refuse("field `op` is missing".into())),
        Some(op)
            if !op.is_string()
                || (error.contains("unknown variant") && error.contains("`add`")) =>
        {
            return Err(refuse(format!("field `op` ({op}): {error}")))
        }
        Some(_) => {}
    }
    Err(refuse(match blame(&value) {
        Some(field) => format!("field `{field}`: {error}"),
        None => error,
    }))
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// The path of the most specific value whose replacement (by another kind of value) or
/// removal makes `request` decode, e.g. `valid[1].ifname`.
fn blame(request: &Value) -> Option<String> {
    let mut paths = Vec::new();
    collect(request, &mut Vec::new(), &mut paths);
    if paths.len() > MAX_BLAME_VALUES {
        return None;
    }
    let substitutes = [
        None,
        Some(Value::from("x")),
        Some(Value::from(1)),
        Some(Value::Bool(true)),
        Some(Value::Null),
        Some(Value::Array(vec![])),
        Some(Value::Object(Default::default())),
    ];
    // Deepest first: a field inside a list entry is more telling than the entry.
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    paths.into_iter().find_map(|path| {
        substitutes
            .iter()
            .any(|s| {
                let mut candidate = request.clone();
                replace(&mut candidate, &path, s.clone());
                serde_json::from_value::<Request>(candidate).is_ok()
            })
            .then(|| show(&path))
    })
}

/// Every value's path below the root, except the tag.
fn collect(value: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    if out.len() > MAX_BLAME_VALUES {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if at.is_empty() && k == "op" {
                    continue;
                }
                at.push(Step::Key(k.clone()));
                out.push(at.clone());
                collect(v, at, out);
                at.pop();
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                at.push(Step::Index(i));
                out.push(at.clone());
                collect(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn replace(root: &mut Value, path: &[Step], with: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = root;
    for step in parents {
        at = match (step, at) {
            (Step::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(v) => v,
                None => return,
            },
            (Step::Index(i), Value::Array(l)) => match l.get_mut(*i) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    match (last, at, with) {
        (Step::Key(k), Value::Object(m), Some(v)) => {
            m.insert(k.clone(), v);
        }
        (Step::Key(k), Value::Object(m), None) => {
            m.remove(k);
        }
        (Step::Index(i), Value::Array(l), Some(v)) if *i < l.len() => l[*i] = v,
        (Step::Index(i), Value::Array(l), None) if *i < l.len() => {
            l.remove(*i);
        }
        _ => {}
    }
}

fn show(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k) if s.is_empty() => s += k,
            Step::Key(k) => {
                s.push('.');
                s += k;
            }
            Step::Index(i) => s += &format!("[{i}]"),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(line: &str) -> String {
        decode(line.as_bytes()).unwrap_err().msg
    }

    #[test]
    fn a_valid_line_decodes() {
        let line = r#"{"op":"status","uplink":"eth1"}"#;
        assert_eq!(
            decode(line.as_bytes()).unwrap(),
            Request::Status {
                uplink: "eth1".into()
            }
        );
        assert_eq!(
            decode(b"{\"op\":\"describe\"}\n").unwrap(),
            Request::Describe
        );
    }

    #[test]
    fn errors_name_the_field() {
        let add = r#"{"op":"add","containerId":5,"ifname":"eth0","netns":"/n","uplink":"u","sandboxName":"a","sandboxNamespace":"b"}"#;
        assert!(msg(add).contains("field `containerId`"), "{}", msg(add));
        let gc = r#"{"op":"gc","uplink":"u","valid":[{"containerId":"a","ifname":"e"},{"containerId":"b","ifname":[]}]}"#;
        assert!(msg(gc).contains("field `valid[1].ifname`"), "{}", msg(gc));
        let del = r#"{"op":"del","containerId":"a","ifname":"e","uplink":"u"}"#;
        assert!(
            decode(del.as_bytes()).is_ok(),
            "netns may be left out of DEL"
        );
        assert!(msg(r#"{"op":"status"}"#).contains("`uplink`"));
        assert!(msg(r#"{"op":"fly"}"#).contains("field `op`"));
        assert!(msg(r#"{"uplink":"u"}"#).contains("field `op` is missing"));
        assert!(msg("[1]").contains("JSON object, got an array"));
        assert!(msg("{\"op\":").contains("not JSON"));
    }

    #[test]
    fn bytes_that_are_not_utf8_or_too_long_are_refused() {
        assert!(decode(b"{\"op\":\"status\",\"uplink\":\"\xff\"}")
            .unwrap_err()
            .msg
            .contains("not JSON"));
        let long = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(decode(&long).unwrap_err().msg.contains("longer than"));
    }
}
