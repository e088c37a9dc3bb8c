//! Fuzzing the agent config: `AgentConfig::parse` (what `portiso agent --config` reads) and
//! `apply_overrides` (the cluster's per-node uplinks).
//!
//! Properties: no panic and an answer within the hang bound for any text; a valid config is
//! read back exactly as written; a valid config with one field mutated (wrong type, out of
//! range, missing, huge, unicode, NUL, unknown key) is refused with an error that names that
//! field, e.g. `uplinks[1].address` or `datapath.fastPath`.
//!
//! Bounded by default; `PORTISO_FUZZ_CASES=N` runs longer (see `docs/reliability.md`).

mod fuzzing;

use fuzzing::{apply, fuzz, key, nasty_string, nested, Op, Seg};
use portiso::config::{AgentConfig, DatapathChoice, FastPathChoice, PortTypeChoice};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/fuzz_config.txt"
);

const SOURCE: &str = "fuzz-agent.yaml";

// ------------------------------------------------------------------ unstructured inputs

fn yaml_soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "uplinks:",
        "- name: eth1",
        "  address: 198.51.100.1/24",
        "  gateway: 198.51.100.254",
        "  bridge: br0",
        "reservedHostPorts: [\"0-9999\", \"22\"]",
        "rangesDir: /x",
        "socket: /s",
        "datapath: netdev",
        "datapath: {type: netdev, fastPath: off}",
        "gcGraceSeconds: 5",
        "overrides:",
        "- nodeSelector: {a: b}",
        "  uplinks: []",
        "\n",
        "  ",
        "{",
        "}",
        "[",
        "]",
        ", ",
        ": ",
        "- ",
        "&a ",
        "*a",
        "!!str ",
        "'",
        "\"",
        "#",
        "~",
        "\0",
        "é",
        "---\n",
        "\t",
    ]);
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

fn special_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..20_000).prop_map(|d| format!("uplinks: {}", nested(d))),
        (1usize..20_000).prop_map(|d| format!("datapath: {}", "{a: ".repeat(d))),
        (1usize..12).prop_map(|levels| {
            let mut t =
                String::from("a0: &a0 [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\"]\n");
            for i in 1..=levels {
                t += &format!(
                    "a{i}: &a{i} [{}]\n",
                    vec![format!("*a{}", i - 1); 8].join(", ")
                );
            }
            t += &format!("reservedHostPorts: *a{levels}\n");
            t
        }),
        (1usize..2_000).prop_map(|n| {
            let mut t = String::from("uplinks:\n");
            for i in 0..n {
                t += &format!("  - {{name: e{i}, address: 198.51.100.1/24}}\n");
            }
            t
        }),
        (1usize..100_000)
            .prop_map(|n| format!("uplinks: [{{name: eth1}}]\nsocket: /{}\n", "s".repeat(n))),
    ]
}

#[test]
fn random_text() {
    fuzz(
        "config random text",
        REGRESSIONS,
        1000,
        prop_oneof![any::<String>(), yaml_soup(), special_text()],
        |text| {
            if let Err(e) = AgentConfig::parse(text, SOURCE) {
                let shown = e.to_string();
                if !shown.contains(SOURCE) {
                    return Err(format!("error without the file: {shown}"));
                }
            }
            if let Ok(mut c) = AgentConfig::parse("uplinks: [{name: eth1}]", SOURCE) {
                let labels = BTreeMap::from([("a".to_string(), "b".to_string())]);
                let _ = c.apply_overrides(text, SOURCE, &labels);
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------------- structure-aware mutations

#[derive(Debug, Clone)]
struct Uplink {
    name: String,
    bridge: Option<String>,
    address: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
enum Datapath {
    Bare(&'static str),
    Full(BTreeMap<&'static str, String>),
}

#[derive(Debug, Clone)]
struct Conf {
    uplinks: Vec<Uplink>,
    reserved: Vec<(u16, u16)>,
    ranges_dir: Option<String>,
    socket: Option<String>,
    datapath: Option<Datapath>,
    gc_grace: Option<u64>,
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

fn conf() -> impl Strategy<Value = Conf> {
    let uplink = (
        "[a-z]{0,6}",
        proptest::option::of("[a-z.]{0,6}"),
        proptest::option::of((ipv4(), 1u8..=32)),
        proptest::option::of(ipv4()),
    );
    let datapath = prop_oneof![
        prop::sample::select(vec!["auto", "system", "netdev"]).prop_map(Datapath::Bare),
        (
            proptest::option::of(prop::sample::select(vec!["auto", "system", "netdev"])),
            proptest::option::of(prop::sample::select(vec![
                "auto",
                "system",
                "afxdp",
                "afxdp-nonpmd"
            ])),
            proptest::option::of(prop::sample::select(vec!["auto", "on", "off"])),
            proptest::option::of("/[a-z0-9/]{1,20}"),
        )
            .prop_map(|(t, u, f, b)| {
                let mut m = BTreeMap::new();
                for (k, v) in [
                    ("type", t.map(String::from)),
                    ("userspacePorts", u.map(String::from)),
                    ("fastPath", f.map(String::from)),
                    ("bpfDir", b),
                ] {
                    if let Some(v) = v {
                        m.insert(k, v);
                    }
                }
                Datapath::Full(m)
            }),
    ];
    (
        prop::collection::vec(uplink, 1..4),
        prop::collection::vec((any::<u16>(), any::<u16>()), 0..4),
        proptest::option::of("/[a-z0-9/._-]{0,30}"),
        proptest::option::of("/[a-z0-9/._-]{0,30}"),
        proptest::option::of(datapath),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(uplinks, reserved, ranges_dir, socket, datapath, gc_grace)| Conf {
                // Names `n…<i>` and bridges `k…<i>` (or the default `br-n…<i>`) never clash.
                uplinks: uplinks
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, bridge, address, gateway))| Uplink {
                        name: format!("n{name}{i}"),
                        bridge: bridge.map(|b| format!("k{b}{i}")),
                        address,
                        gateway,
                    })
                    .collect(),
                reserved: reserved
                    .into_iter()
                    .map(|(a, b)| (a.min(b), a.max(b)))
                    .collect(),
                ranges_dir,
                socket,
                datapath,
                gc_grace,
            },
        )
}

fn to_json(c: &Conf) -> Value {
    let uplinks: Vec<Value> = c
        .uplinks
        .iter()
        .map(|u| {
            let mut v = json!({"name": u.name});
            if let Some(b) = &u.bridge {
                v["bridge"] = json!(b);
            }
            if let Some((a, p)) = u.address {
                v["address"] = json!(format!("{a}/{p}"));
            }
            if let Some(g) = u.gateway {
                v["gateway"] = json!(g.to_string());
            }
            v
        })
        .collect();
    let mut v = json!({"uplinks": uplinks});
    if !c.reserved.is_empty() {
        v["reservedHostPorts"] = c
            .reserved
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    json!(a.to_string())
                } else {
                    json!(format!("{a}-{b}"))
                }
            })
            .collect();
    }
    if let Some(r) = &c.ranges_dir {
        v["rangesDir"] = json!(r);
    }
    if let Some(s) = &c.socket {
        v["socket"] = json!(s);
    }
    match &c.datapath {
        None => {}
        Some(Datapath::Bare(d)) => v["datapath"] = json!(d),
        Some(Datapath::Full(m)) => v["datapath"] = json!(m),
    }
    if let Some(g) = c.gc_grace {
        v["gcGraceSeconds"] = json!(g);
    }
    v
}

fn render(v: &Value, json_style: bool) -> String {
    if json_style {
        v.to_string()
    } else {
        serde_yaml::to_string(v).expect("render YAML")
    }
}

/// Whether the parsed config is the one generated.
fn same(p: &AgentConfig, c: &Conf) -> Result<(), String> {
    let diff = |what: &str| Err(format!("{what} differs: {p:?} vs {c:?}"));
    if p.uplinks.len() != c.uplinks.len() {
        return diff("uplinks");
    }
    for (pu, cu) in p.uplinks.iter().zip(&c.uplinks) {
        let bridge = cu.bridge.clone().unwrap_or_else(|| {
            let b = format!("br-{}", cu.name);
            // The longest prefix of at most 15 bytes that ends between characters.
            let end = (0..=b.len().min(15))
                .rev()
                .find(|&i| b.is_char_boundary(i))
                .unwrap_or(0);
            b[..end].to_string()
        });
        let address = cu.address.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        if pu.name != cu.name
            || pu.bridge != bridge
            || (pu.address, pu.prefix_len) != address
            || pu.gateway != cu.gateway
            || pu.address_from_nic != cu.address.is_none()
        {
            return diff("an uplink");
        }
    }
    if p.reserved_host_ports != c.reserved {
        return diff("reservedHostPorts");
    }
    let ranges_dir = c.ranges_dir.as_deref().unwrap_or("/etc/portiso/ranges");
    let socket = c
        .socket
        .as_deref()
        .unwrap_or(portiso_agent_api::DEFAULT_SOCKET);
    if p.ranges_dir.as_path() != Path::new(ranges_dir) || p.socket.as_path() != Path::new(socket) {
        return diff("rangesDir or socket");
    }
    if p.gc_grace.as_secs() != c.gc_grace.unwrap_or(30) {
        return diff("gcGraceSeconds");
    }
    let (kind, ports, fast, bpf) = match &c.datapath {
        None => ("auto", "auto", "auto", None),
        Some(Datapath::Bare(d)) => (*d, "auto", "auto", None),
        Some(Datapath::Full(m)) => (
            m.get("type").map_or("auto", String::as_str),
            m.get("userspacePorts").map_or("auto", String::as_str),
            m.get("fastPath").map_or("auto", String::as_str),
            m.get("bpfDir"),
        ),
    };
    let kind_ok = matches!(
        (kind, p.datapath.kind),
        ("auto", DatapathChoice::Auto)
            | ("system", DatapathChoice::System)
            | ("netdev", DatapathChoice::Netdev)
    );
    let ports_ok = matches!(
        (ports, p.datapath.userspace_ports),
        ("auto", PortTypeChoice::Auto)
            | ("system", PortTypeChoice::System)
            | ("afxdp", PortTypeChoice::Afxdp)
            | ("afxdp-nonpmd", PortTypeChoice::AfxdpNonpmd)
    );
    let fast_ok = matches!(
        (fast, p.datapath.fast_path),
        ("auto", FastPathChoice::Auto) | ("on", FastPathChoice::On) | ("off", FastPathChoice::Off)
    );
    let bpf_ok = p.datapath.bpf_dir.as_path()
        == Path::new(bpf.map_or(portiso::config::DEFAULT_BPF_DIR, String::as_str));
    if !(kind_ok && ports_ok && fast_ok && bpf_ok) {
        return diff("datapath");
    }
    Ok(())
}

#[test]
fn valid_configs_round_trip() {
    fuzz(
        "config valid",
        REGRESSIONS,
        500,
        (conf(), any::<bool>()),
        |(c, json_style)| {
            let text = render(&to_json(c), *json_style);
            let parsed = AgentConfig::parse(&text, SOURCE)
                .map_err(|e| format!("valid config refused: {e}\n{text}"))?;
            same(&parsed, c)
        },
    );
}

#[derive(Debug, Clone)]
struct Mutation {
    path: Vec<Seg>,
    op: Op,
    /// The field an error must name.
    field: String,
    /// YAML may read the value as a string that is valid (e.g. `22` for "22").
    may_pass: bool,
}

fn wrong_kind() -> Vec<Value> {
    vec![
        json!(true),
        json!([]),
        json!({}),
        json!(["a"]),
        json!({"a": 1}),
        json!(1.5),
    ]
}

fn bad_interface_names() -> Vec<Value> {
    let mut v = fuzzing::bad_interface_names();
    v.extend(wrong_kind());
    v
}

fn mutations(c: &Conf) -> Vec<Mutation> {
    let mut out = Vec::new();
    let mut push = |path: Vec<Seg>, op: Op, field: &str, may_pass: bool| {
        out.push(Mutation {
            path,
            op,
            field: field.to_string(),
            may_pass,
        })
    };
    push(vec![key("uplinks")], Op::Remove, "uplinks", false);
    for v in [
        json!([]),
        json!("eth1"),
        json!(5),
        json!({"name": "eth1"}),
        json!(null),
    ] {
        push(vec![key("uplinks")], Op::Set(v), "uplinks", false);
    }
    let n = c.uplinks.len();
    for i in 0..n {
        let at = |leaf: &str| vec![key("uplinks"), Seg::Index(i), key(leaf)];
        let field = |leaf: &str| format!("uplinks[{i}].{leaf}");
        for v in [json!("eth1"), json!(5), json!([])] {
            push(
                vec![key("uplinks"), Seg::Index(i)],
                Op::Set(v),
                &format!("uplinks[{i}]"),
                false,
            );
        }
        for v in bad_interface_names() {
            // serde_yaml reads any scalar where a string goes (`true` is the name "true").
            let scalar = !(v.is_string() || v.is_array() || v.is_object());
            push(at("name"), Op::Set(v.clone()), &field("name"), scalar);
            push(at("bridge"), Op::Set(v), &field("bridge"), scalar);
        }
        push(at("name"), Op::Remove, &field("name"), false);
        for v in [json!(null), json!(5)] {
            push(at("name"), Op::Set(v), &field("name"), true);
        }
        // A bridge named like a NIC (its own or another's) is a second device of that name.
        for j in 0..n {
            push(
                at("bridge"),
                Op::Set(json!(c.uplinks[j].name)),
                &format!("uplinks[{}]", i.max(j)),
                false,
            );
        }
        for v in [
            "198.51.100.1",
            "198.51.100.1/0",
            "198.51.100.1/33",
            "198.51.100.1/-1",
            "1.2.3/24",
            "198.51.100.300/24",
            "::1/64",
            "",
            "/24",
            " 198.51.100.1/24",
            "198.51.100.1/24 ",
            "a/b",
            "198.51.100.1/2\u{0}4",
            "198.51.100.1/99999999999999999999",
            "1.2.3.4/8/8",
            "١٩٨.51.100.1/24",
        ]
        .into_iter()
        .map(Value::from)
        .chain(wrong_kind())
        .chain([json!(5), json!(1e30)])
        {
            push(at("address"), Op::Set(v), &field("address"), false);
        }
        for v in ["x", "198.51.100.1/24", "", "256.1.1.1", "1.2.3", "\0"]
            .into_iter()
            .map(Value::from)
            .chain(wrong_kind())
        {
            push(at("gateway"), Op::Set(v), &field("gateway"), false);
        }
        push(
            at("adress"),
            Op::Set(json!("198.51.100.1/24")),
            &field("adress"),
            false,
        );
    }
    // The same uplink twice.
    push(
        vec![key("uplinks"), Seg::Index(n)],
        Op::Set(to_json(c)["uplinks"][0].clone()),
        &format!("uplinks[{n}]"),
        false,
    );
    for v in [json!("0-9999"), json!({}), json!(22)] {
        push(
            vec![key("reservedHostPorts")],
            Op::Set(v),
            "reservedHostPorts",
            false,
        );
    }
    let r = c.reserved.len();
    for bad in [
        "9-1", "70000", "-", "1-2-3", "", "a", "0-65536", "-5", "5-", "٣", "1\u{0}2", "0x10",
    ]
    .into_iter()
    .map(Value::from)
    .chain(wrong_kind())
    {
        let mut list: Vec<Value> = to_json(c)["reservedHostPorts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        list.push(bad);
        push(
            vec![key("reservedHostPorts")],
            Op::Set(json!(list)),
            &format!("reservedHostPorts[{r}]"),
            false,
        );
    }
    push(
        vec![key("reservedHostPorts")],
        Op::Set(json!([22])),
        "reservedHostPorts[0]",
        true,
    );
    for f in ["rangesDir", "socket", "gcGraceSeconds"] {
        for v in [json!([]), json!({}), json!(["/x"])] {
            push(vec![key(f)], Op::Set(v), f, false);
        }
    }
    for v in [
        json!(-1),
        json!("x"),
        json!(1.5),
        json!(1e30),
        json!("18446744073709551616"),
        json!(true),
    ] {
        push(
            vec![key("gcGraceSeconds")],
            Op::Set(v),
            "gcGraceSeconds",
            false,
        );
    }
    for v in [
        json!("dpdk"),
        json!(""),
        json!("Auto"),
        json!(5),
        json!([]),
        json!(true),
    ] {
        push(vec![key("datapath")], Op::Set(v), "datapath", false);
    }
    let full = |k: &str, v: Value| json!({ k: v });
    for (k, bad) in [
        (
            "type",
            vec![json!("dpdk"), json!("Netdev"), json!(5), json!([])],
        ),
        (
            "userspacePorts",
            vec![json!("afxdp_nonpmd"), json!("dpdk"), json!(1), json!({})],
        ),
        (
            "fastPath",
            vec![json!("maybe"), json!(true), json!("ON"), json!([])],
        ),
        ("bpfDir", vec![json!([]), json!({}), json!(["/x"])]),
    ] {
        for v in bad {
            push(
                vec![key("datapath")],
                Op::Set(full(k, v)),
                &format!("datapath.{k}"),
                false,
            );
        }
    }
    push(
        vec![key("datapath")],
        Op::Set(json!({"fastpath": "on"})),
        "datapath.fastpath",
        false,
    );
    push(
        vec![key("reservedHostPort")],
        Op::Set(json!(["22"])),
        "reservedHostPort",
        false,
    );
    out
}

/// Whether `msg` names `field`: its whole path, or (missing and unknown fields, as serde puts
/// them) its parent's path and the field's name in backquotes.
fn names(msg: &str, field: &str) -> bool {
    if msg.contains(field) {
        return true;
    }
    let leaf_start = field.rfind(['.', '[']).unwrap_or(0);
    let (parent, leaf) = field.split_at(leaf_start);
    let leaf = leaf.trim_start_matches('.');
    msg.contains(parent) && msg.contains(&format!("`{leaf}`"))
}

fn check_mutation(c: &Conf, m: &Mutation, json_style: bool) -> Result<(), String> {
    let mut v = to_json(c);
    apply(&mut v, &m.path, &m.op);
    let text = render(&v, json_style);
    match AgentConfig::parse(&text, SOURCE) {
        Ok(_) if m.may_pass => Ok(()),
        Ok(p) => Err(format!(
            "accepted after mutating {}: {p:?}\n{text}",
            m.field
        )),
        Err(e) => {
            let shown = e.to_string();
            if !shown.contains(SOURCE) {
                Err(format!("the error does not name the file: {shown}"))
            } else if !names(&shown, &m.field) {
                Err(format!(
                    "the error does not name {}: {shown}\n{text}",
                    m.field
                ))
            } else {
                Ok(())
            }
        }
    }
}

#[test]
fn one_mutated_field_is_named_in_the_error() {
    let case = conf().prop_flat_map(|c| {
        let all = mutations(&c);
        (Just(c), prop::sample::select(all), any::<bool>())
    });
    fuzz(
        "config mutated field",
        REGRESSIONS,
        2000,
        case,
        |(c, m, json_style)| check_mutation(c, m, *json_style),
    );
}

#[test]
fn any_string_in_a_string_field_is_named_when_refused() {
    // Huge, unicode and NUL strings in every string field: read back as written, or refused
    // naming the field.
    let fields = prop::sample::select(vec![
        "uplinks[0].name",
        "uplinks[0].bridge",
        "uplinks[0].address",
        "uplinks[0].gateway",
        "reservedHostPorts[0]",
        "datapath",
        "datapath.bpfDir",
    ]);
    fuzz(
        "config nasty strings",
        REGRESSIONS,
        500,
        (conf(), fields, nasty_string()),
        |(c, field, s)| {
            let mut v = to_json(c);
            match *field {
                "uplinks[0].name" => v["uplinks"][0]["name"] = json!(s),
                "uplinks[0].bridge" => v["uplinks"][0]["bridge"] = json!(s),
                "uplinks[0].address" => v["uplinks"][0]["address"] = json!(s),
                "uplinks[0].gateway" => v["uplinks"][0]["gateway"] = json!(s),
                "reservedHostPorts[0]" => v["reservedHostPorts"] = json!([s]),
                "datapath" => v["datapath"] = json!(s),
                _ => v["datapath"] = json!({"bpfDir": s}),
            }
            // Block style: the emitter escapes what YAML cannot hold raw.
            let text = render(&v, false);
            match AgentConfig::parse(&text, SOURCE) {
                Ok(_) => Ok(()),
                Err(e) if names(&e.to_string(), field) => Ok(()),
                Err(e) => Err(format!("the error does not name {field}: {e}")),
            }
        },
    );
}

#[test]
fn overrides_name_the_override_and_field() {
    fuzz(
        "config overrides",
        REGRESSIONS,
        300,
        (
            conf(),
            prop::sample::select(vec!["name", "address", "gateway", "bridge"]),
            0usize..3,
        ),
        |(c, leaf, at)| {
            let mut base =
                AgentConfig::parse("uplinks: [{name: eth1}]", SOURCE).map_err(|e| e.to_string())?;
            let mut uplinks = to_json(c)["uplinks"].clone();
            let i = at % c.uplinks.len();
            uplinks[i][*leaf] = json!("a/b:c");
            let text = serde_yaml::to_string(&json!({
                "overrides": [
                    {"nodeSelector": {"rack": "x"}, "uplinks": [{"name": "other0"}]},
                    {"nodeSelector": {}, "uplinks": uplinks},
                ]
            }))
            .map_err(|e| e.to_string())?;
            let labels = BTreeMap::new();
            match base.apply_overrides(&text, SOURCE, &labels) {
                Ok(_) => Err(format!("override with a bad {leaf} accepted")),
                Err(e) => {
                    let field = format!("overrides[1].uplinks[{i}].{leaf}");
                    names(&e.to_string(), &field)
                        .then_some(())
                        .ok_or(format!("the error does not name {field}: {e}"))
                }
            }
        },
    );
}

// ------------------------------------------------------- regressions found by these targets

fn refusal(text: &str) -> String {
    AgentConfig::parse(text, SOURCE)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("accepted: {text}"))
}

/// Found by `one_mutated_field_is_named_in_the_error` (`datapath: {type: dpdk}`): errors in the
/// full form of `datapath` named only `datapath`.
#[test]
fn regression_datapath_errors_name_the_key() {
    for (text, field) in [
        ("{type: dpdk}", "datapath.type"),
        ("{fastPath: maybe}", "datapath.fastPath"),
        (
            "{type: netdev, userspacePorts: 1}",
            "datapath.userspacePorts",
        ),
        ("{bpfDir: [a]}", "datapath.bpfDir"),
        ("{fastpath: on}", "datapath.fastpath"),
    ] {
        let e = refusal(&format!("uplinks: [{{name: eth1}}]\ndatapath: {text}"));
        assert!(e.contains(&format!("{field}: ")), "{field}: {e}");
    }
}

/// Found by `one_mutated_field_is_named_in_the_error`: uplink and bridge names the kernel
/// refuses (':', NUL, \r, \v, \f) were accepted, and so were a bridge named like its own NIC
/// or like another uplink's NIC.
#[test]
fn regression_interface_names_follow_the_kernel() {
    for name in [
        "\"eth0:1\"",
        "\"a\\0b\"",
        "\"a\\rb\"",
        "\"a\\vb\"",
        "\"a\\fb\"",
    ] {
        let e = refusal(&format!("uplinks: [{{name: {name}}}]"));
        assert!(e.contains("uplinks[0].name"), "{name}: {e}");
        let e = refusal(&format!("uplinks: [{{name: eth1, bridge: {name}}}]"));
        assert!(e.contains("uplinks[0].bridge"), "{name}: {e}");
    }
    let e = refusal("uplinks: [{name: eth1, bridge: eth1}]");
    assert!(e.contains("uplinks[0].bridge"), "{e}");
    let e = refusal("uplinks: [{name: eth1, bridge: eth2}, {name: eth2}]");
    assert!(e.contains("uplinks[1]") && e.contains("uplinks[0]"), "{e}");
}

/// Found by `random_text`: flow collections nested 200k deep held the YAML parser for minutes
/// (its time grows with the square of the depth), and 7000 uplinks took seconds to check for
/// repeats (pairwise). Both now take milliseconds.
#[test]
fn regression_deep_nesting_and_many_uplinks_are_quick() {
    let started = std::time::Instant::now();
    let e = refusal(&format!("uplinks: {}", nested(200_000)));
    assert!(e.contains("line 1") && e.contains("nested deeper"), "{e}");
    let mut labels = BTreeMap::new();
    labels.insert("a".to_string(), "b".to_string());
    let mut c = AgentConfig::parse("uplinks: [{name: eth1}]", SOURCE).unwrap();
    assert!(c
        .apply_overrides(&format!("overrides: {}", nested(200_000)), SOURCE, &labels)
        .is_err());
    let mut t = String::from("uplinks:\n");
    for i in 0..7000 {
        t += &format!("  - {{name: e{i}}}\n");
    }
    assert_eq!(AgentConfig::parse(&t, SOURCE).unwrap().uplinks.len(), 7000);
    assert!(
        started.elapsed() < fuzzing::HANG_BOUND,
        "took {:?}",
        started.elapsed()
    );
}

/// Found by `any_string_in_a_string_field_is_named_when_refused` (20000 cases, release): an
/// uplink name with multi-byte characters and no `bridge` panicked the agent while it made up
/// the bridge name `br-<name>` (cut at 15 bytes, inside a character).
#[test]
fn regression_a_default_bridge_name_is_cut_between_characters() {
    let c = AgentConfig::parse("uplinks: [{name: aéééééé}]", SOURCE).unwrap();
    // "br-aéééééé" is 16 bytes; the 15th is inside the last "é".
    assert_eq!(c.uplinks[0].bridge, "br-aééééé");
}
