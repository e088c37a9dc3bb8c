//! Checks on one `PortRange` on its own, each problem named by field path with its fix.

use std::collections::BTreeMap;
use std::fmt;

use super::overlap::overlapping_interval_pairs;
use super::portrange::{ObjectKey, PortRange, PortSpan, Protocol, ALLOCATABLE_SIZES};
use super::selector::selector_problems;

/// One problem in one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.ports[1].start`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one `PortRange`, in field order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub object: ObjectKey,
    /// Never empty.
    pub problems: Vec<Problem>,
}

/// One line, so that it fits a status condition's message: `PortRange ns/name is invalid:
/// spec.ports[0].start: ...; spec.ports[1]: ...`.
impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortRange {} is invalid: ", self.object)?;
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Longest Linux interface name (IFNAMSIZ less the terminating NUL).
const MAX_INTERFACE_NAME: usize = 15;

/// Checks `range` on its own (conflicts with other ranges are [`arbitrate`](super::arbitrate::arbitrate)'s
/// business): a name, a well-formed selector, at least one port span, spans within 1-65535
/// and in order, no span overlapping or repeating another of the same protocol, and uplink
/// names that Linux would accept, each listed once.
pub fn validate(range: &PortRange) -> Result<(), ValidationError> {
    let mut problems = Vec::new();
    let mut problem = |path: String, message: String| problems.push(Problem { path, message });

    if range.metadata.name.as_deref().unwrap_or("").is_empty() {
        problem(
            "metadata.name".into(),
            "missing: give the PortRange a name".into(),
        );
    }
    for (path, message) in selector_problems(&range.spec.selector) {
        problem(format!("spec.selector.{path}"), message);
    }

    let ports = &range.spec.ports;
    if ports.is_empty() {
        problem(
            "spec.ports".into(),
            "the list is empty: list at least one port span".into(),
        );
    }
    for (index, span) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{index}]{f}");
        match (span.start, span.end, span.size) {
            (Some(_), _, Some(size)) | (_, Some(_), Some(size)) => problem(
                at(""),
                format!("has both start/end and size {size}: give either start and end, or size"),
            ),
            (None, None, Some(size)) => {
                if !ALLOCATABLE_SIZES.contains(&size) {
                    problem(
                        at(".size"),
                        format!(
                            "{size} is not a power of two from 1 to 32768: round it up, e.g. to {}",
                            ALLOCATABLE_SIZES
                                .iter()
                                .find(|&&s| s >= size)
                                .unwrap_or(&32768)
                        ),
                    );
                }
            }
            (Some(start), Some(end), None) => {
                let start_ok = port_problem(start)
                    .map(|m| problem(at(".start"), m))
                    .is_none();
                let end_ok = port_problem(end).map(|m| problem(at(".end"), m)).is_none();
                if start_ok && end_ok && start > end {
                    problem(
                        at(""),
                        format!("start {start} is greater than end {end}: swap them"),
                    );
                }
            }
            (None, _, None) => problem(at(".start"), "missing: give start and end, or size".into()),
            (_, None, None) => problem(
                at(".end"),
                "missing: give end (equal to start for one port)".into(),
            ),
        }
    }
    for (earlier, later) in conflicting_spans(ports) {
        let (a, b) = (&ports[later], &ports[earlier]);
        let message = if a == b {
            format!(
                "duplicates spec.ports[{earlier}] ({}): remove one",
                describe(a)
            )
        } else {
            format!(
                "overlaps spec.ports[{earlier}] ({} vs {}): merge or split them",
                describe(a),
                describe(b)
                    .split_once(' ')
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default()
            )
        };
        problem(format!("spec.ports[{later}]"), message);
    }

    let mut first_index_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, uplink) in range.spec.uplinks.iter().enumerate() {
        if let Some(message) = interface_name_problem(uplink) {
            problem(format!("spec.uplinks[{index}]"), message);
        } else if let Some(first) = first_index_of.get(uplink.as_str()) {
            problem(
                format!("spec.uplinks[{index}]"),
                format!("duplicates spec.uplinks[{first}] ({uplink:?}): remove one"),
            );
        } else {
            first_index_of.insert(uplink, index);
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationError {
            object: ObjectKey::of(range),
            problems,
        })
    }
}

/// `TCP 10000-10015`, `TCP 80` for a single port, or `TCP size 64`.
pub(crate) fn describe(span: &PortSpan) -> String {
    match (span.start, span.end, span.size) {
        (Some(s), Some(e), _) if s == e => format!("{} {s}", span.protocol),
        (Some(s), Some(e), _) => format!("{} {s}-{e}", span.protocol),
        (_, _, Some(size)) => format!("{} size {size}", span.protocol),
        _ => format!("{} (incomplete)", span.protocol),
    }
}

fn port_problem(port: u32) -> Option<String> {
    (port == 0 || port > u32::from(u16::MAX))
        .then(|| format!("port {port} is not a valid port: use 1-65535"))
}

/// Pairs `(earlier, later)` of indices of valid spans of one protocol that share a port,
/// sorted so that problems come out in field order.
fn conflicting_spans(ports: &[PortSpan]) -> Vec<(usize, usize)> {
    let mut conflicts = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let (indices, intervals): (Vec<usize>, Vec<(u16, u16)>) = ports
            .iter()
            .enumerate()
            .filter(|(_, span)| span.protocol == protocol)
            .filter_map(|(index, span)| {
                super::overlap::valid_ports(span).map(|ports| (index, ports))
            })
            .unzip();
        conflicts.extend(
            overlapping_interval_pairs(&intervals)
                .into_iter()
                .map(|(a, b)| {
                    let (a, b) = (indices[a], indices[b]);
                    (a.min(b), a.max(b))
                }),
        );
    }
    conflicts.sort_by_key(|&(earlier, later)| (later, earlier));
    conflicts
}

/// What the kernel would refuse in an interface name (see `dev_valid_name`).
fn interface_name_problem(name: &str) -> Option<String> {
    let fix = "use 1-15 characters, none of them '/', ':' or whitespace";
    if name.is_empty() || name == "." || name == ".." {
        Some(format!("{name:?} is not an interface name: {fix}"))
    } else if name.len() > MAX_INTERFACE_NAME {
        Some(format!("{name:?} is longer than 15 bytes: {fix}"))
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some(format!("{name:?} contains '/', ':' or whitespace: {fix}"))
    } else if name.contains('\0') {
        // The kernel reads the name as a C string: it would stop at the NUL.
        Some(format!("{name:?} contains a NUL byte: {fix}"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::portrange::PortRangeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn span(protocol: Protocol, start: u32, end: u32) -> PortSpan {
        PortSpan::ports(protocol, start, end)
    }

    fn range(ports: Vec<PortSpan>, uplinks: &[&str]) -> PortRange {
        let mut range = PortRange::new(
            "web",
            PortRangeSpec {
                selector: LabelSelector::default(),
                ports,
                uplinks: uplinks.iter().map(|u| u.to_string()).collect(),
            },
        );
        range.metadata.namespace = Some("team-a".into());
        range
    }

    fn problems(range: &PortRange) -> Vec<String> {
        match validate(range) {
            Ok(()) => vec![],
            Err(error) => error.problems.iter().map(Problem::to_string).collect(),
        }
    }

    #[test]
    fn a_sound_range_passes() {
        let ok = range(
            vec![
                span(Protocol::Tcp, 10000, 10015),
                span(Protocol::Udp, 10000, 10015),
                span(Protocol::Tcp, 80, 80),
            ],
            &["eth0", "bond0.100"],
        );
        assert_eq!(validate(&ok), Ok(()));
    }

    #[test]
    fn every_port_problem_is_listed_with_its_fix() {
        let bad = range(
            vec![
                span(Protocol::Tcp, 0, 10015),
                span(Protocol::Tcp, 2000, 1000),
                span(Protocol::Tcp, 10010, 10020),
                span(Protocol::Udp, 5, 70000),
                span(Protocol::Tcp, 10000, 10015),
                span(Protocol::Tcp, 10000, 10015),
            ],
            &[],
        );
        assert_eq!(
            problems(&bad),
            [
                "spec.ports[0].start: port 0 is not a valid port: use 1-65535",
                "spec.ports[1]: start 2000 is greater than end 1000: swap them",
                "spec.ports[3].end: port 70000 is not a valid port: use 1-65535",
                "spec.ports[4]: overlaps spec.ports[2] (TCP 10000-10015 vs 10010-10020): merge or split them",
                "spec.ports[5]: overlaps spec.ports[2] (TCP 10000-10015 vs 10010-10020): merge or split them",
                "spec.ports[5]: duplicates spec.ports[4] (TCP 10000-10015): remove one",
            ]
        );
    }

    #[test]
    fn same_ports_on_other_protocol_are_fine() {
        let ok = range(
            vec![span(Protocol::Tcp, 53, 53), span(Protocol::Udp, 53, 53)],
            &[],
        );
        assert_eq!(problems(&ok), Vec::<String>::new());
    }

    #[test]
    fn empty_ports_and_bad_uplinks_are_refused() {
        let bad = range(
            vec![],
            &["eth0", "", "eth0", "a-very-long-interface", "br/0"],
        );
        assert_eq!(
            problems(&bad),
            [
                "spec.ports: the list is empty: list at least one port span",
                "spec.uplinks[1]: \"\" is not an interface name: use 1-15 characters, none of them '/', ':' or whitespace",
                "spec.uplinks[2]: duplicates spec.uplinks[0] (\"eth0\"): remove one",
                "spec.uplinks[3]: \"a-very-long-interface\" is longer than 15 bytes: use 1-15 characters, none of them '/', ':' or whitespace",
                "spec.uplinks[4]: \"br/0\" contains '/', ':' or whitespace: use 1-15 characters, none of them '/', ':' or whitespace",
            ]
        );
    }

    #[test]
    fn error_display_names_the_object_on_one_line() {
        let bad = range(vec![span(Protocol::Tcp, 0, 1)], &[]);
        let text = validate(&bad).unwrap_err().to_string();
        assert_eq!(
            text,
            "PortRange team-a/web is invalid: spec.ports[0].start: port 0 is not a valid port: use 1-65535"
        );
    }

    #[test]
    fn selector_and_name_problems_are_included() {
        let mut bad = range(vec![span(Protocol::Tcp, 1, 1)], &[]);
        bad.metadata.name = None;
        bad.spec.selector.match_expressions = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                key: "app".into(),
                operator: "Is".into(),
                values: None,
            },
        ]);
        let found = problems(&bad);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("metadata.name: missing"));
        assert!(found[1]
            .starts_with("spec.selector.matchExpressions[0].operator: unknown operator \"Is\""));
    }
}
