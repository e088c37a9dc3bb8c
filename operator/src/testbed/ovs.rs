//! A private Open vSwitch (ovsdb-server + ovs-vswitchd) inside a network namespace, with its
//! database, sockets, pidfiles and logs in one directory. OVS's own test suite runs one per test
//! this way; the testbed and the benchmark's plain-OVS system do too. The tools find it through
//! OVS_RUNDIR and friends in their environment.

use crate::exec::{run, run_with_env, ExecError};
use std::path::Path;
use std::time::Duration;

/// The environment that points ovs-vsctl/ovs-ofctl (and the daemons) at the instance in `dir`.
pub fn env(dir: &Path) -> Vec<(&'static str, String)> {
    let d = dir.display().to_string();
    ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"]
        .into_iter()
        .map(|k| (k, d.clone()))
        .collect()
}

/// Runs `program args...` in namespace `ns` against the instance in `dir`.
pub fn cmd(ns: &str, dir: &Path, program: &str, args: &[&str]) -> Result<String, ExecError> {
    let mut argv = vec!["netns", "exec", ns, program];
    argv.extend_from_slice(args);
    let env = env(dir);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_with_env("ip", &argv, &env)
}

/// Creates the database in `dir` (which must exist) and starts both daemons in `ns`.
pub fn start(ns: &str, dir: &Path) -> anyhow::Result<()> {
    let d = dir.display().to_string();
    run(
        "ovsdb-tool",
        &[
            "create",
            &format!("{d}/conf.db"),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ],
    )?;
    start_daemon(ns, dir, "ovsdb-server")?;
    cmd(ns, dir, "ovs-vsctl", &["--no-wait", "init"])?;
    start_daemon(ns, dir, "ovs-vswitchd")
}

/// Starts one of [`DAEMONS`] on the database in `dir` (also to restart it after [`stop`]).
pub fn start_daemon(ns: &str, dir: &Path, name: &str) -> anyhow::Result<()> {
    let d = dir.display().to_string();
    let target = match name {
        "ovsdb-server" => format!("{d}/conf.db"),
        "ovs-vswitchd" => format!("unix:{d}/db.sock"),
        other => anyhow::bail!("{other} is not an OVS daemon"),
    };
    let mut args = vec![target];
    if name == "ovsdb-server" {
        args.push(format!("--remote=punix:{d}/db.sock"));
    }
    args.extend([
        format!("--pidfile={d}/{name}.pid"),
        format!("--unixctl={d}/{name}.ctl"),
        format!("--log-file={d}/{name}.log"),
        "--detach".to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cmd(ns, dir, name, &args)?;
    Ok(())
}

/// Stops whatever the pidfiles `<name>.pid` in `dir` name (the OVS daemons and any others).
pub fn stop(dir: &Path, names: &[&str]) {
    for name in names {
        let pidfile = dir.join(format!("{name}.pid"));
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            stop_pid(pid);
        }
    }
}

/// The OVS daemons' pidfile names.
pub const DAEMONS: [&str; 2] = ["ovs-vswitchd", "ovsdb-server"];

/// SIGTERM, then SIGKILL after a bounded wait.
pub fn stop_pid(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..50 {
        if kill(pid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
}
