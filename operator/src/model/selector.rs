//! Kubernetes label selector semantics, as the API server applies them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Whether `labels` satisfy `sel`: every `matchLabels` pair and every `matchExpressions`
/// requirement must hold (they are ANDed); an empty selector matches everything.
///
/// A requirement with an unknown operator matches nothing, so a malformed selector selects
/// fewer sandboxes rather than more; [`selector_problems`] reports it.
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_hold = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    labels_hold
        && sel
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| requirement_holds(requirement, labels))
}

fn requirement_holds(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let label = labels.get(&requirement.key);
    let listed = |value: &String| requirement.values.iter().flatten().any(|v| v == value);
    match requirement.operator.as_str() {
        "In" => label.is_some_and(listed),
        // As in Kubernetes, NotIn also matches objects that lack the label altogether.
        "NotIn" => !label.is_some_and(listed),
        "Exists" => label.is_some(),
        "DoesNotExist" => label.is_none(),
        _ => false,
    }
}

/// What is wrong with `sel`, as `(path relative to the selector, message with the fix)`:
/// the checks the API server makes on a `LabelSelector` in a built-in object.
pub fn selector_problems(sel: &LabelSelector) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (index, requirement) in sel.match_expressions.iter().flatten().enumerate() {
        let path = format!("matchExpressions[{index}]");
        if requirement.key.is_empty() {
            problems.push((
                format!("{path}.key"),
                "the key is empty: name the label to test".to_string(),
            ));
        }
        let value_count = requirement.values.as_ref().map_or(0, Vec::len);
        match requirement.operator.as_str() {
            "In" | "NotIn" if value_count == 0 => problems.push((
                format!("{path}.values"),
                format!(
                    "operator {} needs at least one value: list the values, or use Exists/DoesNotExist",
                    requirement.operator
                ),
            )),
            "Exists" | "DoesNotExist" if value_count > 0 => problems.push((
                format!("{path}.values"),
                format!(
                    "operator {} takes no values: remove them, or use In/NotIn",
                    requirement.operator
                ),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => problems.push((
                format!("{path}.operator"),
                format!("unknown operator {other:?}: use In, NotIn, Exists or DoesNotExist"),
            )),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_string(),
            operator: operator.to_string(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| v.to_string()).collect())
            },
        }
    }

    fn expressions(requirements: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(requirements),
            match_labels: None,
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let sel = LabelSelector::default();
        assert!(matches(&sel, &labels(&[])));
        assert!(matches(&sel, &labels(&[("app", "web")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web"), ("tier", "front")])),
            match_expressions: None,
        };
        assert!(matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
        ));
        assert!(!matches(&sel, &labels(&[("app", "web")])));
        assert!(!matches(&sel, &labels(&[("app", "web"), ("tier", "back")])));
    }

    #[test]
    fn in_needs_the_label_with_a_listed_value() {
        let sel = expressions(vec![requirement("env", "In", &["prod", "staging"])]);
        assert!(matches(&sel, &labels(&[("env", "prod")])));
        assert!(matches(&sel, &labels(&[("env", "staging")])));
        assert!(!matches(&sel, &labels(&[("env", "dev")])));
        assert!(!matches(&sel, &labels(&[])));
    }

    #[test]
    fn not_in_matches_absent_label() {
        let sel = expressions(vec![requirement("env", "NotIn", &["prod"])]);
        assert!(matches(&sel, &labels(&[])));
        assert!(matches(&sel, &labels(&[("env", "dev")])));
        assert!(!matches(&sel, &labels(&[("env", "prod")])));
    }

    #[test]
    fn exists_and_does_not_exist_ignore_the_value() {
        let exists = expressions(vec![requirement("gpu", "Exists", &[])]);
        let absent = expressions(vec![requirement("gpu", "DoesNotExist", &[])]);
        assert!(matches(&exists, &labels(&[("gpu", "")])));
        assert!(!matches(&exists, &labels(&[("cpu", "x")])));
        assert!(matches(&absent, &labels(&[("cpu", "x")])));
        assert!(!matches(&absent, &labels(&[("gpu", "a100")])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![requirement("env", "NotIn", &["prod"])]),
        };
        assert!(matches(&sel, &labels(&[("app", "web"), ("env", "dev")])));
        assert!(!matches(&sel, &labels(&[("app", "web"), ("env", "prod")])));
        assert!(!matches(&sel, &labels(&[("app", "db"), ("env", "dev")])));
    }

    #[test]
    fn unknown_operator_matches_nothing_and_is_reported() {
        let sel = expressions(vec![requirement("env", "Equals", &["prod"])]);
        assert!(!matches(&sel, &labels(&[("env", "prod")])));
        let problems = selector_problems(&sel);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "matchExpressions[0].operator");
        assert!(problems[0]
            .1
            .contains("use In, NotIn, Exists or DoesNotExist"));
    }

    #[test]
    fn value_count_problems_are_reported() {
        let sel = expressions(vec![
            requirement("a", "In", &[]),
            requirement("b", "Exists", &["x"]),
            requirement("", "DoesNotExist", &[]),
            requirement("d", "NotIn", &["y"]),
        ]);
        let paths: Vec<String> = selector_problems(&sel)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            paths,
            [
                "matchExpressions[0].values",
                "matchExpressions[1].values",
                "matchExpressions[2].key"
            ]
        );
    }
}
