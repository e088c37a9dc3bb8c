//! `OvsExec` by running the real tools.

use super::{parse_cookies, parse_flow_count, parse_flow_stats, OvsError, OvsExec};
use crate::exec::{run, run_with_stdin};
use crate::flows::FlowDiff;

/// Runs ovs-vsctl / ovs-ofctl; OpenFlow 1.4 because bundles need it.
#[derive(Debug, Default, Clone)]
pub struct OvsCli;

impl OvsExec for OvsCli {
    fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        let mut argv = vec!["--timeout=10"];
        argv.extend_from_slice(args);
        run("ovs-vsctl", &argv)
    }

    fn installed_cookies(&self, bridge: &str) -> Result<Vec<u64>, OvsError> {
        Ok(parse_cookies(&run(
            "ovs-ofctl",
            &["-O", "OpenFlow14", "dump-flows", bridge],
        )?))
    }

    fn flow_stats(&self, bridge: &str) -> Result<Vec<(u64, u64)>, OvsError> {
        Ok(parse_flow_stats(&run(
            "ovs-ofctl",
            &["-O", "OpenFlow14", "dump-flows", bridge],
        )?))
    }

    fn flow_count(&self, bridge: &str) -> Result<usize, OvsError> {
        let reply = run("ovs-ofctl", &["-O", "OpenFlow14", "dump-aggregate", bridge])?;
        parse_flow_count(&reply).ok_or_else(|| OvsError {
            argv: format!("ovs-ofctl -O OpenFlow14 dump-aggregate {bridge}"),
            status: "no flow_count in the reply".into(),
            stderr: reply,
        })
    }

    fn apply(&self, bridge: &str, diff: &FlowDiff) -> Result<(), OvsError> {
        if diff.is_empty() {
            return Ok(());
        }
        run_with_stdin(
            "ovs-ofctl",
            &["-O", "OpenFlow14", "--bundle", "add-flows", bridge, "-"],
            &diff.to_bundle(),
        )
        .map(|_| ())
    }
}
