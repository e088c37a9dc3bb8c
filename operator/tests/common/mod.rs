//! Shared by the root tests: a testbed with the real binaries, and PortRange documents.

#![allow(dead_code)]

pub mod dataplane;
pub mod kube;
pub mod node;

use portiso::testbed::Testbed;
use std::path::Path;

/// A testbed named `tag` with the agent started and `ranges` in rangesDir.
pub fn testbed(tag: &str, ranges: &str) -> Testbed {
    testbed_with(tag, ranges, None, |_| {})
}

/// [`testbed`] with the agent config's `datapath:` set to `datapath` (None: the one from
/// `PORTISO_TESTBED_DATAPATH`, if any), and `prepare` run (e.g. on the private OVS) before the
/// agent starts.
pub fn testbed_with(
    tag: &str,
    ranges: &str,
    datapath: Option<&str>,
    prepare: impl FnOnce(&Testbed),
) -> Testbed {
    let mut tb = Testbed::new(tag, Path::new(env!("CARGO_BIN_EXE_portiso"))).expect("testbed");
    if let Some(d) = datapath {
        tb.datapath = Some(d.to_string());
    }
    tb.write_ranges("ranges.yaml", ranges)
        .expect("write ranges");
    prepare(&tb);
    tb.start_agent().expect("agent starts");
    tb
}

/// A PortRange selecting the standalone sandbox `sandbox`.
pub fn portrange(
    name: &str,
    sandbox: &str,
    ports: &[(&str, u16, u16)],
    uplinks: &[&str],
) -> String {
    let mut y = format!(
        "---\napiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata:\n  name: {name}\nspec:\n  selector:\n    matchLabels:\n      portiso.io/sandbox: {sandbox}\n  ports:\n"
    );
    for (p, s, e) in ports {
        y += &format!("    - {{protocol: {p}, start: {s}, end: {e}}}\n");
    }
    if !uplinks.is_empty() {
        y += &format!("  uplinks: [{}]\n", uplinks.join(", "));
    }
    y
}

/// The flows without their counters and ages: what must be equal after a restart.
pub fn canonical_flows(tb: &Testbed) -> Vec<String> {
    let dump = tb.dump_flows("br-up1").unwrap_or_default();
    let mut flows: Vec<String> = dump
        .lines()
        .filter(|l| l.contains("cookie="))
        .map(|l| {
            l.split(", ")
                .filter(|f| {
                    ![
                        "duration=",
                        "n_packets=",
                        "n_bytes=",
                        "idle_age=",
                        "hard_age=",
                    ]
                    .iter()
                    .any(|p| f.trim_start().starts_with(p))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    flows.sort();
    flows
}
