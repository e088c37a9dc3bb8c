//! Fuzzing PortRange documents: `parse_portranges_yaml`, then `validate` and `arbitrate` on
//! whatever parsed, as the agent does with a rangesDir file.
//!
//! Properties: no panic and an answer within the hang bound for any text; valid documents are
//! read back exactly as written and validate; a valid file with one field of one document
//! mutated (wrong type, out of range, missing, huge, unicode, NUL, unknown field) is refused
//! with an error that names that document and field, e.g. `document 2: spec.ports[0].end`.
//!
//! Bounded by default; `PORTISO_FUZZ_CASES=N` runs longer (see `docs/reliability.md`).

mod fuzzing;

use fuzzing::{apply, fuzz, key, nasty_string, nested, Op, Seg};
use portiso::model::{
    arbitrate, expand_entries, overlapping_pairs, parse_portranges_yaml, validate, PortRange,
    ALLOCATABLE_SIZES,
};
use proptest::prelude::*;
use serde_json::{json, Value};

const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/fuzz_portrange.txt"
);

const SOURCE: &str = "fuzz.yaml";

/// Everything the agent does with a file's ranges; none of it may panic.
fn use_ranges(ranges: &[PortRange]) {
    for r in ranges {
        let _ = validate(r).map_err(|e| e.to_string());
    }
    let uplinks = vec!["up1".to_string(), "eth0".to_string()];
    let _ = arbitrate(ranges, &uplinks, &[(0, 9999)]);
    let _ = overlapping_pairs(&expand_entries(ranges, &uplinks));
}

// ------------------------------------------------------------------ unstructured inputs

/// Texts of YAML's own syntax in random order, so that the parser's corners are reached.
fn yaml_soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "---\n",
        "...\n",
        "apiVersion: portiso.io/v1alpha1\n",
        "kind: PortRange\n",
        "metadata:",
        "spec:",
        "ports:",
        "  - ",
        "{",
        "}",
        "[",
        "]",
        ", ",
        ": ",
        "\n",
        "  ",
        "&a ",
        "*a",
        "!!str ",
        "!!binary ",
        "!PortRange ",
        "|\n",
        ">-\n",
        "'",
        "\"",
        "#",
        "? ",
        "protocol: TCP",
        "start: 80",
        "end: 70000",
        "size: 64",
        "selector: {}",
        "uplinks: [eth0]",
        "<<: *a",
        "~",
        "null",
        "0x10",
        "1e9",
        "-1",
        ".inf",
        "\t",
        "\u{feff}",
        "\0",
        "é",
    ]);
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

fn special_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..20_000).prop_map(|d| format!("spec: {}", nested(d))),
        (1usize..20_000).prop_map(|d| "- ".repeat(d) + "x"),
        (1usize..20_000).prop_map(|d| "{a: ".repeat(d)),
        (1usize..5_000).prop_map(|n| "---\n".repeat(n)),
        (1usize..300).prop_map(valid_doc_text),
        // Alias expansion ("billion laughs").
        (1usize..12).prop_map(|levels| {
            let mut t = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..=levels {
                t += &format!(
                    "a{i}: &a{i} [{}]\n",
                    vec![format!("*a{}", i - 1); 10].join(", ")
                );
            }
            t += &format!("spec: {{ports: *a{levels}}}\n");
            t
        }),
        (1usize..100_000).prop_map(|n| format!(
            "apiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {{name: {}}}\n",
            "x".repeat(n)
        )),
    ]
}

/// `n` valid ranges in one file.
fn valid_doc_text(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "---\napiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {{name: r{i}}}\nspec:\n  selector: {{}}\n  ports: [{{protocol: TCP, start: {p}, end: {p}}}]\n",
                p = 10000 + i % 50000
            )
        })
        .collect()
}

#[test]
fn random_text() {
    fuzz(
        "portrange random text",
        REGRESSIONS,
        1000,
        prop_oneof![any::<String>(), yaml_soup(), special_text()],
        |text| {
            match parse_portranges_yaml(text, SOURCE) {
                Ok(ranges) => use_ranges(&ranges),
                Err(e) => {
                    let shown = e.to_string();
                    if !shown.starts_with(&format!("{SOURCE}: document {}: ", e.document)) {
                        return Err(format!("error without file and document: {shown}"));
                    }
                }
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------------- structure-aware mutations

#[derive(Debug, Clone)]
struct Span {
    tcp: bool,
    /// `(start, end)` or a size.
    ports: Result<(u32, u32), u32>,
}

#[derive(Debug, Clone)]
struct Doc {
    name: String,
    namespace: Option<String>,
    labels: Vec<(String, String)>,
    /// `(key, In with these values | Exists)`.
    expressions: Vec<(String, Option<Vec<String>>)>,
    spans: Vec<Span>,
    uplinks: Vec<String>,
}

fn doc() -> impl Strategy<Value = Doc> {
    // Files hold explicit spans only: `size` spans are the operator's to allocate, and
    // parse_portranges_yaml refuses them (a mutation below adds one).
    let span = (any::<bool>(), Just(false), 0u32..500, 0u32..400, 0usize..16);
    (
        "[a-z][a-z0-9-]{0,20}",
        proptest::option::of("[a-z][a-z0-9-]{0,10}"),
        prop::collection::vec(("[a-z][a-z0-9./-]{0,8}", "[a-z0-9]{0,6}"), 0..3),
        prop::collection::vec(
            (
                "[a-z][a-z0-9]{0,6}",
                proptest::option::of(prop::collection::vec("[a-z0-9]{1,5}", 1..3)),
            ),
            0..3,
        ),
        prop::collection::vec(span, 1..5),
        prop::collection::vec("[a-z][a-z0-9.]{0,5}", 0..3),
    )
        .prop_map(
            |(name, namespace, labels, expressions, spans, uplinks)| Doc {
                name,
                namespace,
                labels,
                expressions,
                // Span i lives in [1000(i+1), 1000(i+1)+899]: spans never overlap.
                spans: spans
                    .into_iter()
                    .enumerate()
                    .map(|(i, (tcp, sized, a, b, size))| Span {
                        tcp,
                        ports: if sized {
                            Err(ALLOCATABLE_SIZES[size])
                        } else {
                            let start = 1000 * (i as u32 + 1) + a;
                            Ok((start, start + b))
                        },
                    })
                    .collect(),
                // Distinct by their index suffix.
                uplinks: uplinks
                    .into_iter()
                    .enumerate()
                    .map(|(i, u)| format!("{u}{i}"))
                    .collect(),
            },
        )
}

fn to_json(d: &Doc) -> Value {
    let mut metadata = json!({"name": d.name});
    if let Some(ns) = &d.namespace {
        metadata["namespace"] = json!(ns);
    }
    let mut selector = json!({});
    if !d.labels.is_empty() {
        selector["matchLabels"] = d
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if !d.expressions.is_empty() {
        selector["matchExpressions"] = d
            .expressions
            .iter()
            .map(|(key, values)| match values {
                Some(v) => json!({"key": key, "operator": "In", "values": v}),
                None => json!({"key": key, "operator": "Exists"}),
            })
            .collect();
    }
    let ports: Vec<Value> = d
        .spans
        .iter()
        .map(|s| {
            let protocol = if s.tcp { "TCP" } else { "UDP" };
            match s.ports {
                Ok((start, end)) => json!({"protocol": protocol, "start": start, "end": end}),
                Err(size) => json!({"protocol": protocol, "size": size}),
            }
        })
        .collect();
    let mut spec = json!({"selector": selector, "ports": ports});
    if !d.uplinks.is_empty() {
        spec["uplinks"] = json!(d.uplinks);
    }
    json!({
        "apiVersion": "portiso.io/v1alpha1",
        "kind": "PortRange",
        "metadata": metadata,
        "spec": spec,
    })
}

/// The file: block-style YAML, or JSON (which is YAML too), documents separated by `---`.
fn render(docs: &[Value], json_style: bool) -> String {
    docs.iter()
        .map(|d| {
            let body = if json_style {
                d.to_string()
            } else {
                serde_yaml::to_string(d).expect("render YAML")
            };
            format!("---\n{body}\n")
        })
        .collect()
}

/// Whether the parsed ranges are the documents as generated.
fn same(parsed: &PortRange, d: &Doc) -> Result<(), String> {
    let diff = |what: &str| Err(format!("{what} differs: {parsed:?} vs {d:?}"));
    if parsed.metadata.name.as_deref() != Some(d.name.as_str()) {
        return diff("name");
    }
    if parsed.metadata.namespace.as_deref() != Some(d.namespace.as_deref().unwrap_or("default")) {
        return diff("namespace");
    }
    if parsed.spec.uplinks != d.uplinks {
        return diff("uplinks");
    }
    let labels = parsed
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    if labels.len()
        != d.labels
            .iter()
            .map(|(k, _)| k)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
        || d.labels.iter().any(|(k, _)| !labels.contains_key(k))
    {
        return diff("matchLabels");
    }
    if parsed
        .spec
        .selector
        .match_expressions
        .as_ref()
        .map_or(0, Vec::len)
        != d.expressions.len()
    {
        return diff("matchExpressions");
    }
    if parsed.spec.ports.len() != d.spans.len() {
        return diff("ports");
    }
    for (p, s) in parsed.spec.ports.iter().zip(&d.spans) {
        let want = match s.ports {
            Ok((a, b)) => (Some(a), Some(b), None),
            Err(size) => (None, None, Some(size)),
        };
        if (p.start, p.end, p.size) != want || (p.protocol.to_string() == "TCP") != s.tcp {
            return diff("a port span");
        }
    }
    Ok(())
}

#[test]
fn valid_documents_round_trip() {
    fuzz(
        "portrange valid",
        REGRESSIONS,
        500,
        (prop::collection::vec(doc(), 1..4), any::<bool>()),
        |(docs, json_style)| {
            let text = render(&docs.iter().map(to_json).collect::<Vec<_>>(), *json_style);
            let ranges = parse_portranges_yaml(&text, SOURCE)
                .map_err(|e| format!("valid file refused: {e}\n{text}"))?;
            if ranges.len() != docs.len() {
                return Err(format!(
                    "{} ranges from {} documents",
                    ranges.len(),
                    docs.len()
                ));
            }
            for (r, d) in ranges.iter().zip(docs) {
                same(r, d)?;
                validate(r).map_err(|e| format!("valid range refused: {e}\n{text}"))?;
            }
            use_ranges(&ranges);
            Ok(())
        },
    );
}

/// The field a mutation changes, and what it must lead to.
#[derive(Debug, Clone)]
struct Mutation {
    doc: usize,
    path: Vec<Seg>,
    op: Op,
    /// The field path an error must name, e.g. `spec.ports[0].end`.
    field: String,
    /// The mutation may leave a valid document (e.g. `5` where a string goes: YAML may read
    /// it as the string "5"); if it is refused, the error must still name the field.
    may_pass: bool,
}

/// Wrong in any field: the wrong kind of value.
fn wrong_kind() -> Vec<Value> {
    vec![
        json!(true),
        json!([]),
        json!({}),
        json!([1, 2]),
        json!({"a": 1}),
        json!(1.5),
    ]
}

/// Port numbers that are not ports, or not numbers.
fn bad_ports() -> Vec<Value> {
    let mut v = vec![
        json!(0),
        json!(65536),
        json!(70000),
        json!(u32::MAX),
        json!(u64::from(u32::MAX) + 1),
        json!(-1),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1e30),
        json!("80"),
        json!("abc"),
        json!(""),
        json!("\0"),
    ];
    v.extend(wrong_kind());
    v
}

/// Interface names Linux refuses (see `dev_valid_name`), and non-strings.
fn bad_interface_names() -> Vec<Value> {
    let mut v = fuzzing::bad_interface_names();
    v.extend([json!([]), json!({}), json!(["eth0"])]);
    v
}

fn mutations(docs: &[Doc]) -> Vec<Mutation> {
    let mut out = Vec::new();
    let mut push = |doc: usize, path: Vec<Seg>, op: Op, field: &str, may_pass: bool| {
        out.push(Mutation {
            doc,
            path,
            op,
            field: field.to_string(),
            may_pass,
        })
    };
    for (d, doc) in docs.iter().enumerate() {
        for top in ["apiVersion", "kind"] {
            for v in [
                json!("v1"),
                json!("portrange"),
                json!(""),
                json!(1),
                json!(null),
                json!([]),
            ] {
                push(d, vec![key(top)], Op::Set(v), top, false);
            }
            push(d, vec![key(top)], Op::Remove, top, false);
        }
        for v in [json!(""), json!(null), json!([]), json!({})] {
            push(
                d,
                vec![key("metadata"), key("name")],
                Op::Set(v),
                "metadata.name",
                false,
            );
        }
        push(
            d,
            vec![key("metadata"), key("name")],
            Op::Remove,
            "metadata.name",
            false,
        );
        push(
            d,
            vec![key("metadata"), key("name")],
            Op::Set(json!(5)),
            "metadata.name",
            true,
        );
        for v in [json!([]), json!({"a": 1})] {
            push(
                d,
                vec![key("metadata"), key("namespace")],
                Op::Set(v),
                "metadata.namespace",
                false,
            );
        }
        for v in [json!("x"), json!(5), json!([])] {
            push(
                d,
                vec![key("metadata")],
                Op::Set(v.clone()),
                "metadata",
                false,
            );
            push(d, vec![key("spec")], Op::Set(v.clone()), "spec", false);
            push(
                d,
                vec![key("spec"), key("ports")],
                Op::Set(v.clone()),
                "spec.ports",
                false,
            );
            push(
                d,
                vec![key("spec"), key("selector")],
                Op::Set(v.clone()),
                "spec.selector",
                false,
            );
            push(
                d,
                vec![key("spec"), key("uplinks")],
                Op::Set(json!({"a": v})),
                "spec.uplinks",
                false,
            );
        }
        push(d, vec![key("spec")], Op::Remove, "spec", false);
        push(
            d,
            vec![key("spec"), key("ports")],
            Op::Remove,
            "spec.ports",
            false,
        );
        push(
            d,
            vec![key("spec"), key("ports")],
            Op::Set(json!([])),
            "spec.ports",
            false,
        );
        push(
            d,
            vec![key("spec"), key("selector")],
            Op::Remove,
            "spec.selector",
            false,
        );
        push(
            d,
            vec![key("spec"), key("uplink")],
            Op::Set(json!(["eth0"])),
            "spec.uplink",
            false,
        );
        push(
            d,
            vec![key("spec"), key("selector"), key("matchLabels")],
            Op::Set(json!("app=web")),
            "spec.selector.matchLabels",
            false,
        );
        push(
            d,
            vec![key("spec"), key("selector"), key("matchLabels")],
            Op::Set(json!({"a": []})),
            "spec.selector.matchLabels",
            false,
        );
        for (e, (_, values)) in doc.expressions.iter().enumerate() {
            let at = |leaf: &str| {
                vec![
                    key("spec"),
                    key("selector"),
                    key("matchExpressions"),
                    Seg::Index(e),
                    key(leaf),
                ]
            };
            let field = |leaf: &str| format!("spec.selector.matchExpressions[{e}].{leaf}");
            for op in ["Is", "", "in", "exists", "NotIn ", "\0"] {
                push(
                    d,
                    at("operator"),
                    Op::Set(json!(op)),
                    &field("operator"),
                    false,
                );
            }
            push(d, at("operator"), Op::Remove, &field("operator"), false);
            push(d, at("key"), Op::Set(json!("")), &field("key"), false);
            push(d, at("key"), Op::Remove, &field("key"), false);
            match values {
                Some(_) => {
                    push(d, at("values"), Op::Set(json!([])), &field("values"), false);
                    push(d, at("values"), Op::Remove, &field("values"), false);
                }
                None => push(
                    d,
                    at("values"),
                    Op::Set(json!(["x"])),
                    &field("values"),
                    false,
                ),
            }
            push(
                d,
                at("values"),
                Op::Set(json!("x")),
                &field("values"),
                false,
            );
        }
        for (i, span) in doc.spans.iter().enumerate() {
            let at = |leaf: &str| vec![key("spec"), key("ports"), Seg::Index(i), key(leaf)];
            let field = |leaf: &str| format!("spec.ports[{i}].{leaf}");
            for v in [
                json!("tcp"),
                json!("SCTP"),
                json!(""),
                json!(6),
                json!(null),
            ]
            .into_iter()
            .chain(wrong_kind())
            {
                push(d, at("protocol"), Op::Set(v), &field("protocol"), false);
            }
            push(d, at("protocol"), Op::Remove, &field("protocol"), false);
            push(d, at("last"), Op::Set(json!(80)), &field("last"), false);
            match span.ports {
                Ok(_) => {
                    for leaf in ["start", "end"] {
                        for v in bad_ports() {
                            push(d, at(leaf), Op::Set(v), &field(leaf), false);
                        }
                        push(d, at(leaf), Op::Remove, &field(leaf), false);
                        push(d, at(leaf), Op::Set(json!(null)), &field(leaf), false);
                    }
                    // Start past end.
                    push(
                        d,
                        at("start"),
                        Op::Set(json!(65535)),
                        &field("start"),
                        false,
                    );
                    for v in [json!(64), json!(3), json!(null)] {
                        if !v.is_null() {
                            push(d, at("size"), Op::Set(v), &field("size"), false);
                        }
                    }
                }
                Err(_) => {
                    for v in bad_ports()
                        .into_iter()
                        .chain([json!(3), json!(100), json!(65536)])
                    {
                        push(d, at("size"), Op::Set(v), &field("size"), false);
                    }
                    push(d, at("size"), Op::Remove, &field("size"), false);
                    push(d, at("start"), Op::Set(json!(1)), &field("start"), false);
                    push(d, at("end"), Op::Set(json!(2)), &field("end"), false);
                }
            }
        }
        let uplinks = doc.uplinks.len();
        for i in 0..=uplinks {
            let at = vec![key("spec"), key("uplinks"), Seg::Index(i)];
            let field = format!("spec.uplinks[{i}]");
            if uplinks == 0 {
                // No list yet: make one with the bad name.
                for v in bad_interface_names() {
                    push(
                        d,
                        vec![key("spec"), key("uplinks")],
                        Op::Set(json!([v])),
                        "spec.uplinks[0]",
                        false,
                    );
                }
                break;
            }
            for v in bad_interface_names() {
                push(d, at.clone(), Op::Set(v), &field, false);
            }
            push(d, at.clone(), Op::Set(json!(5)), &field, true);
            if i == uplinks {
                push(d, at.clone(), Op::Set(json!(doc.uplinks[0])), &field, false);
            }
        }
    }
    out
}

/// Whether `msg` names `field`: the whole path, or (for a field that is missing, or at odds
/// with a sibling: "spec.ports[0]: missing field `protocol`", "spec.ports[0]: start 9 is
/// greater than end 8") its parent's path and its own name.
fn names(msg: &str, field: &str) -> bool {
    if msg.contains(field) {
        return true;
    }
    let leaf_start = field.rfind(['.', '[']).unwrap_or(0);
    let (parent, leaf) = field.split_at(leaf_start);
    let leaf = leaf.trim_start_matches('.');
    !parent.is_empty() && msg.contains(parent) && msg.contains(leaf)
}

fn check_mutation(docs: &[Doc], m: &Mutation, json_style: bool) -> Result<(), String> {
    let mut values: Vec<Value> = docs.iter().map(to_json).collect();
    apply(&mut values[m.doc], &m.path, &m.op);
    let text = render(&values, json_style);
    let refusal = match parse_portranges_yaml(&text, SOURCE) {
        Err(e) => {
            if e.document != m.doc + 1 {
                return Err(format!(
                    "error blames document {} instead of {}: {e}\n{text}",
                    e.document,
                    m.doc + 1
                ));
            }
            e.to_string()
        }
        Ok(ranges) => {
            use_ranges(&ranges);
            if ranges.len() != docs.len() {
                return Err(format!(
                    "{} ranges from {} documents\n{text}",
                    ranges.len(),
                    docs.len()
                ));
            }
            for (i, r) in ranges.iter().enumerate() {
                if i != m.doc {
                    validate(r).map_err(|e| format!("an untouched range is refused: {e}"))?;
                }
            }
            match validate(&ranges[m.doc]) {
                Ok(()) if m.may_pass => return Ok(()),
                Ok(()) => {
                    return Err(format!(
                        "{} accepted after mutating {}:\n{text}",
                        SOURCE, m.field
                    ))
                }
                Err(e) => e.to_string(),
            }
        }
    };
    if names(&refusal, &m.field) {
        Ok(())
    } else {
        Err(format!("the error does not name {}: {refusal}", m.field))
    }
}

#[test]
fn one_mutated_field_is_named_in_the_error() {
    let case = prop::collection::vec(doc(), 1..4).prop_flat_map(|docs| {
        let all = mutations(&docs);
        (Just(docs), prop::sample::select(all), any::<bool>())
    });
    fuzz(
        "portrange mutated field",
        REGRESSIONS,
        2000,
        case,
        |(docs, m, json_style)| check_mutation(docs, m, *json_style),
    );
}

#[test]
fn huge_and_unicode_names_are_only_names() {
    // Names are not checked beyond "present": any string is read back as written.
    fuzz(
        "portrange nasty names",
        REGRESSIONS,
        200,
        (doc(), nasty_string()),
        |(d, name)| {
            let mut v = to_json(d);
            v["metadata"]["name"] = json!(name);
            // Block style: the YAML emitter escapes what YAML cannot hold raw (JSON would not).
            let text = render(&[v], false);
            match parse_portranges_yaml(&text, SOURCE) {
                Ok(ranges) if name.is_empty() => {
                    let e = validate(&ranges[0])
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    names(&e, "metadata.name")
                        .then_some(())
                        .ok_or(format!("{e:?}"))
                }
                Ok(ranges) if ranges[0].metadata.name.as_deref() == Some(name.as_str()) => Ok(()),
                Ok(ranges) => Err(format!("name read back as {:?}", ranges[0].metadata.name)),
                Err(e) => Err(format!("a string name refused: {e}")),
            }
        },
    );
}

// ------------------------------------------------------- regressions found by these targets

const ONE: &str = "apiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {name: web}\nspec:\n  selector: {}\n";

/// Found by `valid_documents_round_trip`: a `size` span in a file was refused as an "unknown
/// field" with the list of fields that leaves it out; it is refused because nobody allocates
/// its ports outside a cluster, and the error says so.
#[test]
fn regression_a_size_span_in_a_file_is_refused_for_what_it_is() {
    let text = format!("{ONE}  ports: [{{protocol: TCP, size: 64}}]\n");
    let e = parse_portranges_yaml(&text, SOURCE)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.ports[0].size: size spans are allocated by the portiso operator"),
        "{e}"
    );
}

/// Found by `one_mutated_field_is_named_in_the_error`: an uplink name with a NUL passed
/// validation (the kernel would read it as a C string, cut at the NUL).
#[test]
fn regression_an_uplink_name_with_nul_is_refused() {
    let text =
        format!("{ONE}  ports: [{{protocol: TCP, start: 80, end: 80}}]\n  uplinks: [\"a\\0b\"]\n");
    let ranges = parse_portranges_yaml(&text, SOURCE).unwrap();
    let e = validate(&ranges[0]).unwrap_err().to_string();
    assert!(e.contains("spec.uplinks[0]") && e.contains("NUL"), "{e}");
}

/// Found by `random_text`: flow collections nested 200k deep held the YAML parser for minutes
/// (quadratic in the depth); such text is refused before parsing, naming the line.
#[test]
fn regression_deep_nesting_is_refused_quickly() {
    let started = std::time::Instant::now();
    let text = format!("{ONE}  ports: {}\n", nested(200_000));
    let e = parse_portranges_yaml(&text, SOURCE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 6") && e.contains("nested deeper"), "{e}");
    assert!(
        started.elapsed() < fuzzing::HANG_BOUND,
        "{:?}",
        started.elapsed()
    );
    // Brackets inside quotes and comments do not count.
    let quoted = format!(
        "{ONE}  ports: [{{protocol: TCP, start: 80, end: 80}}]\n  uplinks: [eth0] # {}\nx: '{}'\n",
        "[".repeat(2000),
        "[".repeat(2000)
    );
    assert!(parse_portranges_yaml(&quoted, SOURCE).is_ok());
}
