//! Reading `PortRange`s from a YAML file, as `kubectl apply -f` would take it.

use serde::Deserialize;

use super::portrange::PortRange;

const API_VERSION: &str = "portiso.io/v1alpha1";
const KIND: &str = "PortRange";

/// Why a file of `PortRange`s could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: document {document}: {message}")]
pub struct ParseError {
    /// The file (or other source) as the caller named it.
    pub source_name: String,
    /// 1-based index of the YAML document in the file, counting empty ones.
    pub document: usize,
    /// What is wrong, with the field path and line where serde_yaml knows them.
    pub message: String,
}

/// Every `PortRange` in `text`, which may hold several YAML documents separated by `---`;
/// `source` names the text in errors (usually the file path). Empty documents are skipped;
/// any other document must be `apiVersion: portiso.io/v1alpha1`, `kind: PortRange`. An object
/// without `metadata.namespace` is put in `default`. Stops at the first bad document.
pub fn parse_portranges_yaml(text: &str, source: &str) -> Result<Vec<PortRange>, ParseError> {
    let error = |document: usize, message: String| ParseError {
        source_name: source.to_string(),
        document,
        message,
    };
    if let Some(message) = nesting_problem(text) {
        // Before the parser: it takes time quadratic in the nesting depth.
        return Err(error(1, message));
    }
    let mut ranges = Vec::new();
    // Two passes over the same documents: the first as untyped values to check apiVersion and
    // kind (which the typed struct ignores), the second typed, because only deserializing from
    // the text itself keeps the line and column in serde_yaml's errors.
    let values = serde_yaml::Deserializer::from_str(text);
    let typed = serde_yaml::Deserializer::from_str(text);
    for (index, (value_doc, typed_doc)) in values.zip(typed).enumerate() {
        let document = index + 1;
        let value = serde_yaml::Value::deserialize(value_doc)
            .map_err(|e| error(document, e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let Some(mapping) = value.as_mapping() else {
            return Err(error(
                document,
                "not a mapping: expected a PortRange object".to_string(),
            ));
        };
        let field = |name: &str| mapping.get(name).and_then(serde_yaml::Value::as_str);
        if field("apiVersion") != Some(API_VERSION) || field("kind") != Some(KIND) {
            return Err(error(
                document,
                format!(
                    "apiVersion {:?}, kind {:?}: expected apiVersion {API_VERSION}, kind {KIND}",
                    field("apiVersion").unwrap_or("(missing)"),
                    field("kind").unwrap_or("(missing)"),
                ),
            ));
        }
        if let Some(message) = unknown_field(mapping) {
            return Err(error(document, message));
        }
        let mut range =
            PortRange::deserialize(typed_doc).map_err(|e| error(document, e.to_string()))?;
        if range.metadata.namespace.is_none() {
            range.metadata.namespace = Some("default".to_string());
        }
        ranges.push(range);
    }
    Ok(ranges)
}

/// How deep YAML flow collections (`[`, `{`) may nest: far beyond any real document (and
/// serde_yaml refuses more than 128 levels of any kind anyway), low enough that the parser,
/// whose time grows with the square of the depth, stays in milliseconds.
const MAX_FLOW_DEPTH: usize = 1000;

/// Why `text` is not even given to the YAML parser: flow collections nested deeper than
/// [`MAX_FLOW_DEPTH`] (counted outside quotes and comments), with the line where they do.
/// Text that deep would hold the parser for minutes (200k `[` took longer than 5 minutes).
pub fn nesting_problem(text: &str) -> Option<String> {
    let (mut depth, mut line, mut prev) = (0usize, 1usize, '\n');
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '[' | '{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(format!(
                        "line {line}: [ and {{ nested deeper than {MAX_FLOW_DEPTH} levels"
                    ));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            // A quoted scalar starts after a blank or an indicator, not inside a word ("don't").
            '\'' | '"' if prev.is_whitespace() || "[{,:-?".contains(prev) => {
                let mut escaped = false;
                for q in chars.by_ref() {
                    if q == '\n' {
                        line += 1;
                    }
                    if q == c && !escaped {
                        break;
                    }
                    escaped = c == '"' && q == '\\' && !escaped;
                }
            }
            '#' if prev.is_whitespace() => {
                for q in chars.by_ref() {
                    if q == '\n' {
                        line += 1;
                        break;
                    }
                }
                prev = '\n';
                continue;
            }
            '\n' => line += 1,
            _ => {}
        }
        prev = c;
    }
    None
}

/// The first field of `spec` or of a port span that the types do not know. The API server
/// would prune it silently; in a file it is most likely a typo (`uplink:` would otherwise
/// quietly mean every uplink), so it is refused.
fn unknown_field(object: &serde_yaml::Mapping) -> Option<String> {
    const SPEC_FIELDS: [&str; 3] = ["selector", "ports", "uplinks"];
    const SPAN_FIELDS: [&str; 3] = ["protocol", "start", "end"];
    let spec = object.get("spec")?.as_mapping()?;
    let stray = |mapping: &serde_yaml::Mapping, known: &[&str]| {
        mapping
            .keys()
            .find(|key| !key.as_str().is_some_and(|key| known.contains(&key)))
            .map(|key| {
                serde_yaml::to_string(key)
                    .unwrap_or_default()
                    .trim_end()
                    .to_string()
            })
    };
    if let Some(key) = stray(spec, &SPEC_FIELDS) {
        return Some(format!(
            "spec.{key}: unknown field: expected one of {}",
            SPEC_FIELDS.join(", ")
        ));
    }
    let spans = spec.get("ports").and_then(serde_yaml::Value::as_sequence)?;
    spans.iter().enumerate().find_map(|(index, span)| {
        let key = stray(span.as_mapping()?, &SPAN_FIELDS)?;
        // A field of the type, but nobody allocates its ports outside a cluster: refused
        // rather than read as a span that silently owns nothing.
        if key == "size" {
            return Some(format!(
                "spec.ports[{index}].size: size spans are allocated by the portiso operator in a \
                 cluster; in a rangesDir file give start and end"
            ));
        }
        Some(format!(
            "spec.ports[{index}].{key}: unknown field: expected one of {}",
            SPAN_FIELDS.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::portrange::Protocol;

    const TWO: &str = "\
# leading comment
---
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app: web
  ports:
    - protocol: TCP
      start: 10000
      end: 10015
---
---
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata:
  name: dns
  namespace: infra
spec:
  selector: {}
  uplinks: [eth0]
  ports:
    - {protocol: UDP, start: 0, end: 70000}
";

    #[test]
    fn reads_every_document_and_defaults_namespace() {
        let ranges = parse_portranges_yaml(TWO, "ranges.yaml").unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(ranges[0].spec.ports[0].protocol, Protocol::Tcp);
        assert!(ranges[0].spec.uplinks.is_empty());
        assert_eq!(ranges[1].metadata.namespace.as_deref(), Some("infra"));
        assert_eq!(ranges[1].spec.uplinks, ["eth0"]);
        // Out-of-range ports are validate's to refuse, not the parser's.
        assert_eq!(
            (ranges[1].spec.ports[0].start, ranges[1].spec.ports[0].end),
            (Some(0), Some(70000))
        );
    }

    #[test]
    fn empty_text_is_no_ranges() {
        assert_eq!(parse_portranges_yaml("", "empty.yaml").unwrap(), vec![]);
        assert_eq!(
            parse_portranges_yaml("# nothing\n", "empty.yaml").unwrap(),
            vec![]
        );
    }

    #[test]
    fn field_errors_name_file_document_field_and_line() {
        let text = TWO.replace("protocol: TCP", "protocol: SCTP");
        let err = parse_portranges_yaml(&text, "ranges.yaml").unwrap_err();
        assert_eq!((err.source_name.as_str(), err.document), ("ranges.yaml", 1));
        let shown = err.to_string();
        assert!(
            shown.starts_with(
                "ranges.yaml: document 1: spec.ports[0].protocol: unknown variant `SCTP`"
            ),
            "{shown}"
        );
        assert!(shown.contains("line 12"), "{shown}");
    }

    #[test]
    fn missing_field_is_named() {
        let text = TWO.replace("  selector: {}\n", "");
        let err = parse_portranges_yaml(&text, "f.yaml").unwrap_err();
        assert_eq!(err.document, 3);
        assert!(
            err.message.contains("spec: missing field `selector`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse_portranges_yaml(&TWO.replace("uplinks:", "uplink:"), "f.yaml").unwrap_err();
        assert_eq!(err.to_string(), "f.yaml: document 3: spec.uplink: unknown field: expected one of selector, ports, uplinks");
        let err =
            parse_portranges_yaml(&TWO.replace("end: 10015", "last: 10015"), "f.yaml").unwrap_err();
        assert_eq!(err.to_string(), "f.yaml: document 1: spec.ports[0].last: unknown field: expected one of protocol, start, end");
    }

    #[test]
    fn wrong_kind_is_refused() {
        let text = TWO.replace(
            "kind: PortRange\nmetadata:\n  name: dns",
            "kind: Service\nmetadata:\n  name: dns",
        );
        let err = parse_portranges_yaml(&text, "f.yaml").unwrap_err();
        assert_eq!(err.document, 3);
        assert!(
            err.message.contains(
                "kind \"Service\": expected apiVersion portiso.io/v1alpha1, kind PortRange"
            ),
            "{}",
            err.message
        );
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = parse_portranges_yaml("a: [1, 2\n", "broken.yaml").unwrap_err();
        assert_eq!(err.document, 1);
        assert!(err.to_string().starts_with("broken.yaml: document 1: "));
    }
}
