//! Arbitration between `PortRange`s: first come, first served, independent of input order.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use portiso::model::{
    arbitrate, expand_entries, parse_portranges_yaml, validate, PortRange, PortRangeSpec, PortSpan,
    Protocol, Verdict,
};
use proptest::prelude::*;

fn range(
    namespace: &str,
    name: &str,
    created: Option<i64>,
    ports: &[(Protocol, u32, u32)],
    uplinks: &[&str],
) -> PortRange {
    let mut range = PortRange::new(
        name,
        PortRangeSpec {
            selector: LabelSelector::default(),
            ports: ports
                .iter()
                .map(|&(protocol, start, end)| PortSpan::ports(protocol, start, end))
                .collect(),
            uplinks: uplinks.iter().map(|u| u.to_string()).collect(),
        },
    );
    range.metadata.namespace = Some(namespace.to_string());
    range.metadata.creation_timestamp =
        created.map(|seconds| Time(Timestamp::from_second(seconds).expect("timestamp in range")));
    range
}

fn uplinks(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn reason(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Accepted => panic!("expected a refusal"),
        Verdict::Refused { reason } => reason,
    }
}

use Protocol::{Tcp, Udp};

#[test]
fn older_range_wins_and_the_newer_is_told_why() {
    let older = range("team-a", "web", Some(100), &[(Tcp, 10000, 10015)], &[]);
    let newer = range(
        "team-b",
        "api",
        Some(200),
        &[(Tcp, 10010, 10020), (Udp, 10010, 10020)],
        &[],
    );
    let verdicts = arbitrate(&[newer, older], &uplinks(&["eth0"]), &[]);
    assert_eq!(verdicts[0].key.to_string(), "team-b/api");
    assert_eq!(verdicts[1].verdict, Verdict::Accepted);
    assert_eq!(
        reason(&verdicts[0].verdict),
        "spec.ports[0] (TCP 10010-10020) overlaps team-a/web spec.ports[0] (TCP 10000-10015) on uplink eth0: \
         team-a/web, accepted earlier, already owns TCP ports 10010-10015; pick other ports"
    );
}

#[test]
fn ties_on_creation_time_go_by_namespace_and_name_and_untimed_ranges_come_last() {
    let b = range("ns", "b", Some(5), &[(Tcp, 80, 80)], &[]);
    let a = range("ns", "a", Some(5), &[(Tcp, 80, 80)], &[]);
    let from_file = range("aaa", "first-by-name", None, &[(Tcp, 80, 80)], &[]);
    let verdicts = arbitrate(&[from_file, b, a], &uplinks(&["eth0"]), &[]);
    assert!(reason(&verdicts[0].verdict).contains("ns/a"));
    assert!(
        reason(&verdicts[1].verdict).contains("ns/a, accepted earlier, already owns TCP port 80")
    );
    assert_eq!(verdicts[2].verdict, Verdict::Accepted);
}

#[test]
fn same_ports_on_other_uplink_or_protocol_do_not_conflict() {
    let on_eth0 = range("ns", "a", Some(1), &[(Tcp, 80, 90)], &["eth0"]);
    let on_eth1 = range("ns", "b", Some(2), &[(Tcp, 80, 90)], &["eth1"]);
    let udp = range("ns", "c", Some(3), &[(Udp, 80, 90)], &[]);
    let everywhere = range("ns", "d", Some(4), &[(Tcp, 85, 85)], &[]);
    let verdicts = arbitrate(
        &[on_eth0, on_eth1, udp, everywhere],
        &uplinks(&["eth0", "eth1"]),
        &[],
    );
    for verdict in &verdicts[..3] {
        assert_eq!(verdict.verdict, Verdict::Accepted, "{verdict}");
    }
    let why = reason(&verdicts[3].verdict);
    assert!(
        why.contains("overlaps ns/a spec.ports[0] (TCP 80-90) on uplink eth0"),
        "{why}"
    );
    assert!(
        why.contains("overlaps ns/b spec.ports[0] (TCP 80-90) on uplink eth1"),
        "{why}"
    );
}

#[test]
fn one_clash_on_several_uplinks_is_told_once() {
    let a = range("ns", "a", Some(1), &[(Tcp, 80, 90)], &[]);
    let b = range("ns", "b", Some(2), &[(Tcp, 90, 95)], &[]);
    let verdicts = arbitrate(&[a, b], &uplinks(&["eth1", "eth0"]), &[]);
    let why = reason(&verdicts[1].verdict);
    assert!(
        why.contains("on uplinks eth0, eth1: ns/a, accepted earlier, already owns TCP port 90;"),
        "{why}"
    );
    assert_eq!(why.matches("overlaps").count(), 1, "{why}");
}

#[test]
fn a_refused_range_does_not_block_later_ones() {
    let invalid = range("ns", "a", Some(1), &[(Tcp, 80, 90), (Tcp, 0, 5)], &[]);
    let reserved = range("ns", "b", Some(2), &[(Tcp, 20, 100)], &[]);
    let later = range("ns", "c", Some(3), &[(Tcp, 85, 85)], &[]);
    let verdicts = arbitrate(
        &[invalid, reserved, later],
        &uplinks(&["eth0"]),
        &[(22, 22), (6443, 6443)],
    );
    assert_eq!(
        reason(&verdicts[0].verdict),
        "PortRange ns/a is invalid: spec.ports[1].start: port 0 is not a valid port: use 1-65535"
    );
    assert_eq!(
        reason(&verdicts[1].verdict),
        "spec.ports[0] (TCP 20-100) touches the host's reserved port 22: use ports outside them"
    );
    assert_eq!(verdicts[2].verdict, Verdict::Accepted);
}

#[test]
fn reserved_ports_hold_for_udp_and_named_uplinks_too() {
    let dns = range("ns", "dns", None, &[(Udp, 50, 60)], &["eth9"]);
    let verdicts = arbitrate(&[dns], &uplinks(&["eth0"]), &[(1, 1023)]);
    assert!(reason(&verdicts[0].verdict).contains("reserved ports 1-1023"));
}

#[test]
fn duplicate_names_are_all_refused() {
    let one = range("ns", "x", Some(1), &[(Tcp, 80, 80)], &[]);
    let two = range("ns", "x", Some(2), &[(Tcp, 90, 90)], &[]);
    let verdicts = arbitrate(&[one, two], &uplinks(&["eth0"]), &[]);
    for verdict in &verdicts {
        assert_eq!(
            reason(&verdict.verdict),
            "2 PortRanges in the input are named ns/x: keep one, or rename the others"
        );
    }
}

#[test]
fn ranges_from_a_file_arbitrate() {
    let text = "\
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  ports: [{protocol: TCP, start: 10000, end: 10099}]
---
apiVersion: portiso.io/v1alpha1
kind: PortRange
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  ports: [{protocol: TCP, start: 10050, end: 10060}]
";
    let ranges = parse_portranges_yaml(text, "demo.yaml").expect("parses");
    let verdicts = arbitrate(&ranges, &uplinks(&["eth0"]), &[]);
    // Neither has a creation time, so default/api comes before default/web by name.
    assert_eq!(verdicts[1].verdict, Verdict::Accepted);
    assert!(reason(&verdicts[0].verdict)
        .contains("default/api, accepted earlier, already owns TCP ports 10050-10060"));
}

fn span() -> impl Strategy<Value = (Protocol, u32, u32)> {
    prop_oneof![
        // Mostly valid spans in a small port space, so that overlaps are common...
        8 => (prop::bool::ANY, 1u32..120, 0u32..20).prop_map(|(tcp, start, len)| (if tcp { Tcp } else { Udp }, start, start + len)),
        // ...some invalid ones.
        1 => (prop::bool::ANY, 0u32..70000, 0u32..70000).prop_map(|(tcp, start, end)| (if tcp { Tcp } else { Udp }, start, end)),
    ]
}

fn any_range() -> impl Strategy<Value = PortRange> {
    (
        0usize..3,
        0usize..6,
        prop::option::of(0i64..4),
        prop::collection::vec(span(), 0..4),
        prop::sample::subsequence(vec!["eth0", "eth1", "eth2"], 0..=2),
    )
        .prop_map(|(namespace, name, created, ports, named_uplinks)| {
            range(
                &format!("ns{namespace}"),
                &format!("r{name}"),
                created,
                &ports,
                &named_uplinks,
            )
        })
}

fn shares_port(a: &PortSpan, b: &PortSpan) -> bool {
    a.protocol == b.protocol && a.start <= b.end && b.start <= a.end
}

fn uplinks_of(range: &PortRange, node_uplinks: &[String]) -> Vec<String> {
    if range.spec.uplinks.is_empty() {
        node_uplinks.to_vec()
    } else {
        range.spec.uplinks.clone()
    }
}

proptest! {
    #[test]
    fn verdicts_do_not_depend_on_input_order(
        (ranges, shuffled) in prop::collection::vec(any_range(), 0..12)
            .prop_flat_map(|ranges| {
                let indices: Vec<usize> = (0..ranges.len()).collect();
                (Just(ranges), Just(indices).prop_shuffle())
            }),
        reserved in prop::collection::vec((1u16..130, 0u16..5), 0..3),
    ) {
        let reserved: Vec<(u16, u16)> = reserved.into_iter().map(|(start, len)| (start, start + len)).collect();
        let node = uplinks(&["eth0", "eth1"]);
        let verdicts = arbitrate(&ranges, &node, &reserved);
        let permuted: Vec<PortRange> = shuffled.iter().map(|&i| ranges[i].clone()).collect();
        let permuted_verdicts = arbitrate(&permuted, &node, &reserved);
        for (position, &original) in shuffled.iter().enumerate() {
            prop_assert_eq!(&permuted_verdicts[position], &verdicts[original]);
        }
    }

    #[test]
    fn accepted_ranges_are_valid_disjoint_and_maximal(
        ranges in prop::collection::vec(any_range(), 0..12),
        reserved in prop::collection::vec((1u16..130, 0u16..5), 0..3),
    ) {
        let reserved: Vec<(u16, u16)> = reserved.into_iter().map(|(start, len)| (start, start + len)).collect();
        let node = uplinks(&["eth0", "eth1"]);
        let verdicts = arbitrate(&ranges, &node, &reserved);
        prop_assert_eq!(verdicts.len(), ranges.len());
        let accepted: Vec<usize> = (0..ranges.len()).filter(|&i| verdicts[i].verdict == Verdict::Accepted).collect();

        let touches_reserved = |range: &PortRange| {
            range.spec.ports.iter().any(|p| reserved.iter().any(|&(a, b)| p.start.unwrap_or(0) <= u32::from(b) && u32::from(a) <= p.end.unwrap_or(0)))
        };
        let clash = |a: &PortRange, b: &PortRange| {
            let (ua, ub) = (uplinks_of(a, &node), uplinks_of(b, &node));
            ua.iter().any(|u| ub.contains(u))
                && a.spec.ports.iter().any(|p| b.spec.ports.iter().any(|q| shares_port(p, q)))
        };
        // Brute force, O(n²): nothing accepted is invalid, reserved, or clashing with another.
        for &i in &accepted {
            prop_assert!(validate(&ranges[i]).is_ok());
            prop_assert!(!touches_reserved(&ranges[i]));
            for &j in &accepted {
                prop_assert!(i == j || !clash(&ranges[i], &ranges[j]), "{} and {} both accepted", verdicts[i].key, verdicts[j].key);
            }
        }
        // Nothing was refused without cause: a valid, uniquely named range clear of the
        // reserved ports was refused only because it clashes with an accepted one.
        for i in 0..ranges.len() {
            let unique = ranges.iter().filter(|r| portiso::model::ObjectKey::of(r) == verdicts[i].key).count() == 1;
            if verdicts[i].verdict != Verdict::Accepted && validate(&ranges[i]).is_ok() && unique && !touches_reserved(&ranges[i]) {
                prop_assert!(accepted.iter().any(|&j| clash(&ranges[i], &ranges[j])), "{} refused without cause", verdicts[i]);
            }
        }
        // Expansion gives each accepted range one entry per (span, uplink).
        let entries = expand_entries(&ranges, &node);
        for &i in &accepted {
            let count = entries.iter().filter(|e| e.owner == i).count();
            prop_assert_eq!(count, ranges[i].spec.ports.len() * uplinks_of(&ranges[i], &node).len());
        }
    }
}
