//! Helpers of the tests that run a real kube-apiserver (see `portiso::testbed::kube`).

#![allow(dead_code)]

use portiso::testbed::kube::KubeTestServer;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Applies crds/portrange.yaml and waits until the API server serves it.
pub fn install_crd(s: &KubeTestServer) {
    let crd = workspace().join("crds/portrange.yaml");
    s.kubectl(&["apply", "-f", crd.to_str().unwrap()]).unwrap();
    wait_for_crd(s);
}

/// Waits until the PortRange CRD (installed by whoever) is Established.
pub fn wait_for_crd(s: &KubeTestServer) {
    s.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/portranges.portiso.io",
    ])
    .unwrap();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn eventually<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    eventually_or(what, secs, f, String::new)
}

/// Like `eventually`, with `context` (e.g. a log) in the failure message.
pub fn eventually_or<T>(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn apply(s: &KubeTestServer, yaml: &str) -> anyhow::Result<String> {
    let f = s.dir.join(format!("obj-{}.yaml", free_port()));
    std::fs::write(&f, yaml).unwrap();
    s.kubectl(&["apply", "-f", f.to_str().unwrap()])
}

pub fn pr(name: &str, ports: &str) -> String {
    format!("apiVersion: portiso.io/v1alpha1\nkind: PortRange\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  ports: {ports}\n")
}

/// `portiso operator` as a child process; killed on drop.
pub struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// Runs `portiso <args>` with `env` on top of the server's kubeconfig.
    pub fn spawn(
        s: &KubeTestServer,
        identity: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Self {
        let log = s.dir.join(format!("operator-{identity}.log"));
        let mut cmd = s.command(Path::new(env!("CARGO_BIN_EXE_portiso")));
        cmd.args(args).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Operator { child, log }
    }

    /// A replica for the Lease and Secret in `default`, its webhook on 127.0.0.1:`webhook_port`
    /// (any free port if 0).
    pub fn start(s: &KubeTestServer, identity: &str, webhook_port: u16, extra: &[&str]) -> Self {
        let webhook_port = if webhook_port == 0 {
            free_port()
        } else {
            webhook_port
        };
        let mut args: Vec<String> = [
            "operator",
            "--webhook-addr",
            &format!("127.0.0.1:{webhook_port}"),
            "--namespace",
            "default",
            "--identity",
            identity,
            "--lease-duration",
            "6",
            "--reserved-host-ports",
            "0-9999",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(s, identity, &args, &[])
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last lines, for failure messages.
    pub fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
