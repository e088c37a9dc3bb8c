//! `OvsExec` by running the real tools.

use super::{
    parse_cookies, parse_flow_count, parse_flow_stats, parse_max_meters, parse_meters, OvsError,
    OvsExec,
};
use crate::exec::{run, run_with_stdin};
use crate::flows::{FlowDiff, Meter};

/// Runs ovs-vsctl / ovs-ofctl (OpenFlow 1.4, because bundles need it) / ovs-appctl.
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

    fn trace(&self, bridge: &str, flow: &str) -> Result<String, OvsError> {
        let target = vswitchd_control_socket();
        let mut argv = vec!["--timeout=10"];
        if let Some(t) = &target {
            argv.extend(["-t", t.as_str()]);
        }
        argv.extend(["ofproto/trace", bridge, flow]);
        run("ovs-appctl", &argv)
    }

    fn meters(&self, bridge: &str) -> Result<Vec<Meter>, OvsError> {
        Ok(parse_meters(&run(
            "ovs-ofctl",
            &["-O", "OpenFlow14", "dump-meters", bridge],
        )?))
    }

    fn set_meter(&self, bridge: &str, meter: &Meter, modify: bool) -> Result<(), OvsError> {
        let (id, rate) = (meter.id, meter.rate);
        let meter = format!(
            "meter={id},pktps,burst,stats,bands=type=drop,rate={},burst_size={}",
            rate.packets_per_second, rate.burst
        );
        let command = if modify { "mod-meter" } else { "add-meter" };
        run("ovs-ofctl", &["-O", "OpenFlow14", command, bridge, &meter]).map(|_| ())
    }

    fn del_meter(&self, bridge: &str, id: u32) -> Result<(), OvsError> {
        let meter = format!("meter={id}");
        run(
            "ovs-ofctl",
            &["-O", "OpenFlow14", "del-meter", bridge, &meter],
        )
        .map(|_| ())
    }

    fn max_meters(&self, bridge: &str) -> Result<u32, OvsError> {
        let argv = ["-O", "OpenFlow13", "meter-features", bridge];
        let reply = run("ovs-ofctl", &argv)?;
        parse_max_meters(&reply).ok_or_else(|| OvsError {
            argv: format!("ovs-ofctl {}", argv.join(" ")),
            status: "exit status: 0".into(),
            stderr: format!("no max_meter in the reply: {}", reply.trim()),
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

/// Where `ovs-appctl` must look for ovs-vswitchd, when not where it looks by default. By
/// default it reads the daemon's pidfile in the run directory (OVS_RUNDIR) and connects to
/// `ovs-vswitchd.PID.ctl` there; a daemon started with a fixed `--unixctl` path, as OVS's own
/// test suite and portiso's testbed start theirs, listens at `ovs-vswitchd.ctl` instead.
fn vswitchd_control_socket() -> Option<String> {
    let rundir = std::env::var_os("OVS_RUNDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/run/openvswitch".into());
    let fixed = rundir.join("ovs-vswitchd.ctl");
    fixed.exists().then(|| fixed.display().to_string())
}
