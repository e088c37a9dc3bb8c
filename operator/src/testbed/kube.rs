//! A real Kubernetes API server for tests, the way controller-runtime's envtest runs one: etcd
//! and kube-apiserver (built from pinned sources by e2e/k8s-bin.sh) on loopback, with
//! throwaway certificates, token and data directory, torn down on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct KubeTestServer {
    pub dir: PathBuf,
    /// Directory of etcd, kube-apiserver, kubectl and helm.
    pub bin: PathBuf,
    pub url: String,
    /// A kubeconfig for the admin user, for binaries under test and kubectl/helm.
    pub kubeconfig: PathBuf,
    /// The network namespace everything runs in (None: the caller's).
    pub netns: Option<String>,
    processes: Vec<Child>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Builds (or finds in the cache) the pinned Kubernetes binaries; returns their directory.
pub fn kube_binaries(workspace: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(workspace.join("e2e/k8s-bin.sh"))
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "e2e/k8s-bin.sh failed ({})",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or_default().trim();
    anyhow::ensure!(
        Path::new(dir).join("kube-apiserver").exists(),
        "e2e/k8s-bin.sh printed no binary directory: {stdout}"
    );
    Ok(PathBuf::from(dir))
}

const TOKEN: &str = "portiso-test-admin-token";

impl KubeTestServer {
    /// Starts etcd and kube-apiserver under a fresh directory named after `name`.
    pub fn start(name: &str, workspace: &Path) -> anyhow::Result<Self> {
        Self::start_in(name, workspace, None)
    }

    /// Like [`start`](Self::start), inside network namespace `netns` (so that processes in it,
    /// e.g. an agent on a testbed node, reach the API server on their loopback).
    pub fn start_in(name: &str, workspace: &Path, netns: Option<&str>) -> anyhow::Result<Self> {
        // The ports are found free and then let go before etcd and the API server bind them;
        // meanwhile any connection on the machine may take one as its source port (the same
        // ephemeral range). Then start again on other ports (the failed start is torn down).
        let mut attempt = 1;
        loop {
            match Self::start_once(name, workspace, netns) {
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(name: &str, workspace: &Path, netns: Option<&str>) -> anyhow::Result<Self> {
        let bin = kube_binaries(workspace)?;
        let dir = std::env::temp_dir().join(format!("portiso-kube-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut server = KubeTestServer {
            dir: dir.clone(),
            bin: bin.clone(),
            url: String::new(),
            kubeconfig: dir.join("kubeconfig"),
            netns: netns.map(str::to_string),
            processes: Vec::new(),
        };

        // Certificates: a CA, the API server's serving certificate, the service-account key.
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portiso-test-ca");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        let cert = params.signed_by(&key, &issuer)?;
        let sa = rcgen::KeyPair::generate()?;
        let write = |f: &str, s: &str| std::fs::write(dir.join(f), s);
        write("ca.crt", &ca.pem())?;
        write("apiserver.crt", &cert.pem())?;
        write("apiserver.key", &key.serialize_pem())?;
        write("sa.key", &sa.serialize_pem())?;
        write("sa.pub", &sa.public_key_pem())?;
        write(
            "tokens.csv",
            &format!("{TOKEN},admin,admin,system:masters\n"),
        )?;

        let (client_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let d = |f: &str| dir.join(f).display().to_string();
        let log = |f: &str| std::fs::File::create(dir.join(f));
        let mut etcd = server.command(&bin.join("etcd"));
        let mut apiserver = server.command(&bin.join("kube-apiserver"));
        server.processes.push(
            etcd.args([
                "--name=portiso-test",
                &format!("--data-dir={}", d("etcd")),
                &format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-cluster=portiso-test=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync",
            ])
            .stdout(Stdio::null())
            .stderr(log("etcd.log")?)
            .spawn()?,
        );
        server.processes.push(
            apiserver
                .args([
                    &format!("--etcd-servers=http://127.0.0.1:{client_port}"),
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    &format!("--secure-port={api_port}"),
                    &format!("--tls-cert-file={}", d("apiserver.crt")),
                    &format!("--tls-private-key-file={}", d("apiserver.key")),
                    &format!("--cert-dir={}", d("certs")),
                    &format!("--token-auth-file={}", d("tokens.csv")),
                    "--authorization-mode=RBAC",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    &format!("--service-account-key-file={}", d("sa.pub")),
                    &format!("--service-account-signing-key-file={}", d("sa.key")),
                    // Documentation addresses only: the range is bookkeeping, nothing is routed.
                    "--service-cluster-ip-range=203.0.113.0/24",
                    // No controller-manager runs: pods must not wait for service accounts.
                    "--disable-admission-plugins=ServiceAccount",
                    "--allow-privileged=true",
                    // Loopback cannot be the kubernetes Service endpoint; there is no cluster network.
                    "--endpoint-reconciler-type=none",
                ])
                .stdout(Stdio::null())
                .stderr(log("kube-apiserver.log")?)
                .spawn()?,
        );
        server.url = format!("https://127.0.0.1:{api_port}");
        std::fs::write(
            &server.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin, namespace: default}}\ncurrent-context: test\n",
                server.url,
                d("ca.crt")
            ),
        )?;
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self
                .kubectl(&["get", "--raw", "/readyz"])
                .map(|s| s.trim() == "ok")
                .unwrap_or(false)
            {
                // The default namespace is created by a post-start hook; wait for it too.
                if self.kubectl(&["get", "namespace", "default"]).is_ok() {
                    return Ok(());
                }
            }
            for (i, p) in self.processes.iter_mut().enumerate() {
                if let Some(status) = p.try_wait()? {
                    let log = if i == 0 {
                        "etcd.log"
                    } else {
                        "kube-apiserver.log"
                    };
                    anyhow::bail!("{log}: exited {status}:\n{}", self.tail(log));
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the API server was not ready within 90 s:\n{}",
                    self.tail("kube-apiserver.log")
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
        // Errors first (klog marks them with a leading E or F), then the last lines.
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with('E') || l.starts_with('F') || l.starts_with("Error"))
            .take(10)
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "{}\n...\n{}",
            errors.join("\n"),
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) kube-apiserver: an API server that stops answering
    /// without closing its connections, as one behind a partition would.
    pub fn freeze_apiserver(&self, frozen: bool) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        // etcd was started first, kube-apiserver second.
        let apiserver = self
            .processes
            .get(1)
            .ok_or_else(|| anyhow::anyhow!("kube-apiserver is not running"))?;
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(nix::unistd::Pid::from_raw(apiserver.id() as i32), signal)?;
        Ok(())
    }

    /// Runs kubectl against this server and returns stdout (or stderr as the error).
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.tool("kubectl", args)
    }

    /// Runs helm against this server.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        self.tool("helm", args)
    }

    fn tool(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(&self.bin.join(name))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            anyhow::bail!(
                "{name} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }

    /// A command for `program` that runs in this server's network namespace, with its
    /// kubeconfig in the environment.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
        };
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// A kube client for this server (from the caller's network namespace).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for KubeTestServer {
    fn drop(&mut self) {
        // The API server first, so that it does not log etcd's disappearance.
        for p in self.processes.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
