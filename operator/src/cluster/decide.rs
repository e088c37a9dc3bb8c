//! The operator's decision over every PortRange in the cluster.

use super::alloc::{allocate, Pool};
use crate::model::overlap::owned_spans;
use crate::model::{
    arbitrate, validate, Allocation, ObjectKey, PortRange, PortRangeStatus, Verdict,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Cluster-wide, a range without `uplinks` claims its ports on every uplink of every node, named
/// or not: this stands for the uplinks no range names, so that two such ranges still collide.
pub const CLUSTER_WIDE_UPLINK: &str = "*";

/// The condition type the operator owns.
pub const ACCEPTED: &str = "Accepted";

/// What the operator decided for one PortRange.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub key: ObjectKey,
    /// Allocations for its `size` spans (kept from the status where still valid).
    pub allocations: Vec<Allocation>,
    pub verdict: Verdict,
    /// Its ports in words, e.g. "TCP 10000-10099, UDP 20032-20095".
    pub ports: String,
}

/// Decides every range: allocations first (oldest first, so an older range keeps its block),
/// then the same arbitration the agent runs, over all uplinks any range names.
pub fn decide(ranges: &[PortRange], pool: Pool, reserved: &[(u16, u16)]) -> Vec<Decision> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| {
        let r = &ranges[i];
        (
            r.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .is_none(),
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            ObjectKey::of(r),
        )
    });
    let mut work: Vec<PortRange> = ranges.to_vec();
    let mut alloc_errors: Vec<Option<String>> = vec![None; ranges.len()];
    for &i in &order {
        if validate(&work[i]).is_err() {
            continue;
        }
        let mut kept = Vec::new();
        let old = work[i]
            .status
            .as_ref()
            .map(|s| s.allocations.clone())
            .unwrap_or_default();
        let spec_ports = work[i].spec.ports.clone();
        for (index, span) in spec_ports.iter().enumerate() {
            let Some(size) = span.size else { continue };
            let index = index as u32;
            if let Some(a) = old
                .iter()
                .find(|a| a.index == index && a.end + 1 - a.start == size)
            {
                kept.push(*a);
                continue;
            }
            let mut taken: Vec<(u16, u16)> = reserved.to_vec();
            for (j, other) in work.iter().enumerate() {
                for (k, protocol, s, e) in owned_spans(other) {
                    if protocol == span.protocol && !(j == i && k as u32 == index) {
                        taken.push((s, e));
                    }
                }
            }
            taken.extend(kept.iter().map(|a| (a.start as u16, a.end as u16)));
            match allocate(size, pool, &taken) {
                Some((s, e)) => kept.push(Allocation { index, start: s.into(), end: e.into() }),
                None => {
                    alloc_errors[i] = Some(format!(
                        "spec.ports[{index}]: no free aligned block of {size} {} ports is left in the pool {}-{}: free some or ask for fewer",
                        span.protocol, pool.start, pool.end
                    ))
                }
            }
        }
        work[i]
            .status
            .get_or_insert_with(Default::default)
            .allocations = kept;
    }

    let mut uplinks: Vec<String> = ranges
        .iter()
        .flat_map(|r| r.spec.uplinks.iter().cloned())
        .collect();
    uplinks.push(CLUSTER_WIDE_UPLINK.into());
    uplinks.sort();
    uplinks.dedup();
    let verdicts = arbitrate(&work, &uplinks, reserved);
    work.iter()
        .zip(verdicts)
        .zip(alloc_errors)
        .map(|((r, v), alloc_error)| Decision {
            key: v.key,
            allocations: r
                .status
                .as_ref()
                .map(|s| s.allocations.clone())
                .unwrap_or_default(),
            verdict: match alloc_error {
                Some(reason) => Verdict::Refused { reason },
                None => v.verdict,
            },
            ports: owned_spans(r)
                .iter()
                .map(|&(_, p, s, e)| {
                    if s == e {
                        format!("{p} {s}")
                    } else {
                        format!("{p} {s}-{e}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect()
}

/// Where a range is programmed, summed over the nodes' reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Programmed {
    pub nodes: u32,
    pub sandboxes: u32,
}

/// The condition type the agents' reports become.
pub const PROGRAMMED: &str = "Programmed";

fn condition(
    old: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    let previous = old.iter().find(|c| c.type_ == type_);
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        // The transition time moves only when the status does.
        last_transition_time: match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.clone(),
        },
    }
}

/// The status the operator wants on `range` after `decision`, given where the agents report it
/// programmed.
pub fn status_for(
    range: &PortRange,
    decision: &Decision,
    programmed: Programmed,
    now: Time,
) -> PortRangeStatus {
    let old = range.status.clone().unwrap_or_default();
    let generation = range.metadata.generation.unwrap_or(0);
    let owns = if decision.ports.is_empty() {
        "no ports yet"
    } else {
        &decision.ports
    };
    let (status, reason, message) = match &decision.verdict {
        Verdict::Accepted => ("True", "Accepted", format!("owns {owns}")),
        Verdict::Refused { reason } if validate(range).is_err() => {
            ("False", "Invalid", reason.clone())
        }
        Verdict::Refused { reason } => ("False", "Conflict", reason.clone()),
    };
    let accepted = condition(
        &old.conditions,
        ACCEPTED,
        status,
        reason,
        message,
        generation,
        &now,
    );
    let programmed_condition = match (&decision.verdict, programmed.sandboxes) {
        (Verdict::Refused { .. }, _) => condition(
            &old.conditions,
            PROGRAMMED,
            "False",
            "NotAccepted",
            "not accepted, so programmed nowhere".into(),
            generation,
            &now,
        ),
        (Verdict::Accepted, 0) => condition(
            &old.conditions,
            PROGRAMMED,
            "False",
            "NoSandboxes",
            "no sandbox it selects is attached on any node".into(),
            generation,
            &now,
        ),
        (Verdict::Accepted, n) => condition(
            &old.conditions,
            PROGRAMMED,
            "True",
            "Programmed",
            format!(
                "programmed on {} node(s) for {n} sandbox(es)",
                programmed.nodes
            ),
            generation,
            &now,
        ),
    };
    PortRangeStatus {
        conditions: vec![accepted, programmed_condition],
        allocations: decision.allocations.clone(),
        ports: (!decision.ports.is_empty()).then(|| decision.ports.clone()),
        sandboxes: Some(programmed.sandboxes),
        observed_generation: Some(generation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortRangeSpec, PortSpan, Protocol};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::jiff::Timestamp;

    const POOL: Pool = Pool {
        start: 20000,
        end: 29999,
    };

    fn range(name: &str, age: i64, ports: Vec<PortSpan>) -> PortRange {
        let mut r = PortRange::new(
            name,
            PortRangeSpec {
                selector: LabelSelector::default(),
                ports,
                uplinks: vec![],
            },
        );
        r.metadata.namespace = Some("default".into());
        r.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(1_700_000_000 - age).unwrap()));
        r
    }

    #[test]
    fn sizes_get_aligned_blocks_and_keep_them() {
        let a = range("a", 100, vec![PortSpan::sized(Protocol::Udp, 64)]);
        let b = range(
            "b",
            50,
            vec![
                PortSpan::sized(Protocol::Udp, 64),
                PortSpan::ports(Protocol::Tcp, 20000, 20010),
            ],
        );
        let d = decide(&[a.clone(), b.clone()], POOL, &[]);
        assert_eq!(
            d[0].allocations,
            vec![Allocation {
                index: 0,
                start: 20032,
                end: 20095
            }]
        );
        assert_eq!(
            d[1].allocations,
            vec![Allocation {
                index: 0,
                start: 20096,
                end: 20159
            }]
        );
        assert_eq!(d[1].ports, "UDP 20096-20159, TCP 20000-20010");
        assert!(d.iter().all(|x| x.verdict == Verdict::Accepted));
        // With its status written, b keeps its block even when a goes away.
        let mut b2 = b.clone();
        b2.status = Some(status_for(
            &b,
            &d[1],
            Programmed::default(),
            Time(Timestamp::UNIX_EPOCH),
        ));
        let d2 = decide(&[b2], POOL, &[]);
        assert_eq!(d2[0].allocations, d[1].allocations);
    }

    #[test]
    fn older_wins_and_the_loser_is_told_why() {
        let old = range(
            "old",
            100,
            vec![PortSpan::ports(Protocol::Tcp, 10000, 10099)],
        );
        let new = range(
            "new",
            10,
            vec![PortSpan::ports(Protocol::Tcp, 10050, 10060)],
        );
        let d = decide(&[new.clone(), old], POOL, &[]);
        let Verdict::Refused { reason } = &d[0].verdict else {
            panic!("{d:?}")
        };
        assert!(reason.contains("default/old"), "{reason}");
        assert_eq!(d[1].verdict, Verdict::Accepted);
        let s = status_for(
            &new,
            &d[0],
            Programmed::default(),
            Time(Timestamp::UNIX_EPOCH),
        );
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.conditions[0].reason, "Conflict");
    }

    #[test]
    fn an_exhausted_pool_refuses_with_a_reason() {
        let small = Pool {
            start: 19968,
            end: 20031,
        }; // exactly one aligned block of 64
        let a = range("a", 100, vec![PortSpan::sized(Protocol::Tcp, 64)]);
        let b = range("b", 10, vec![PortSpan::sized(Protocol::Tcp, 64)]);
        let d = decide(&[a, b], small, &[]);
        assert_eq!(d[0].verdict, Verdict::Accepted);
        let Verdict::Refused { reason } = &d[1].verdict else {
            panic!()
        };
        assert!(
            reason.contains("no free aligned block of 64 TCP ports"),
            "{reason}"
        );
    }

    #[test]
    fn ranges_without_uplinks_collide_cluster_wide() {
        let a = range("a", 100, vec![PortSpan::ports(Protocol::Udp, 5060, 5060)]);
        let mut b = range("b", 10, vec![PortSpan::ports(Protocol::Udp, 5060, 5060)]);
        assert!(matches!(
            decide(&[a.clone(), b.clone()], POOL, &[])[1].verdict,
            Verdict::Refused { .. }
        ));
        b.spec.uplinks = vec!["eth1".into()];
        assert!(
            matches!(
                decide(&[a, b], POOL, &[])[1].verdict,
                Verdict::Refused { .. }
            ),
            "all uplinks include eth1"
        );
    }
}
