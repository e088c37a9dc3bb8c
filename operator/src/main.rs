//! `portiso`: the node agent and the tools around it.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "portiso",
    version,
    about = "Many sandboxes, one IPv4 address and MAC, isolated by port range on Open vSwitch"
)]
struct Cli {
    /// Log lines as text, or as one JSON object each (for log collectors).
    #[arg(
        long,
        global = true,
        env = "PORTISO_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: own the uplink bridges and attach sandboxes for portiso-cni.
    Agent {
        /// The agent's YAML config.
        #[arg(long, default_value = "/etc/portiso/agent.yaml")]
        config: PathBuf,
        /// Cluster mode: PortRanges and pod labels come from the Kubernetes API.
        #[arg(long)]
        kubernetes: bool,
        /// Per-node uplinks (cluster mode): the first entry whose nodeSelector matches this
        /// node's labels replaces the config's uplinks.
        #[arg(long, default_value = "/etc/portiso/overrides.yaml")]
        overrides: PathBuf,
        /// This node's name (cluster mode): only its pods are watched.
        #[arg(long, env = "NODE_NAME", required_if_eq("kubernetes", "true"))]
        node_name: Option<String>,
        /// Serve Prometheus metrics here (plain HTTP), instead of the config's metricsAddress.
        #[arg(long, value_parser = portiso::config::parse_metrics_address)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Give the node back and exit: every uplink gets its address(es) and routes back;
        /// bridges, sandbox ports and veths, fast-path pins and nftables chains are removed.
        /// For nodes without Kubernetes (stop the agent first); idempotent.
        #[arg(long)]
        uninstall: bool,
        /// The agent's own DaemonSet, NAMESPACE/NAME (cluster mode): on SIGTERM the agent
        /// uninstalls (as --uninstall) only if it was marked for uninstall (`portiso
        /// uninstall-mark`, the chart's pre-delete hook) and is gone or being deleted.
        #[arg(long)]
        daemonset: Option<String>,
        /// A file written when the agent is done after SIGTERM (cleaned up, or decided not
        /// to); the chart's OVS container waits for it before stopping OVS.
        #[arg(long)]
        stop_marker: Option<PathBuf>,
    },
    /// Ask the running agent what it is doing: datapath, fast path, uplinks, sandboxes with
    /// their ports and drop counters, refused PortRanges.
    Status(portiso::status::StatusArgs),
    /// Ask the running agent who would receive a packet and why: the sandbox (and the
    /// PortRange that gives it the port), the host, the uplink or a drop, with the deciding
    /// flow from OVS's own trace and what the eBPF fast path would do.
    Trace(portiso::trace::TraceArgs),
    /// Build a throwaway node in network namespaces, attach two sandboxes through the real
    /// agent and CNI plugin, send real traffic and show where it landed.
    Demo,
    /// Measure portiso against the raw link, a plain OVS switch and Linux bridge + iptables
    /// DNAT, side by side in throwaway namespaces; a table and a JSON file.
    Bench(portiso::bench::BenchArgs),
    /// Run the cluster operator: decide and report every PortRange's status, allocate `size`
    /// spans, and serve the admission webhook.
    Operator(Box<portiso::k8s::operator::OperatorArgs>),
    /// Print the PortRange CustomResourceDefinition as YAML.
    Crd,
    /// Mark the agent DaemonSet for uninstall (annotation portiso.io/uninstall): its agents
    /// give their nodes back when it is deleted next. Run by the chart's pre-delete hook
    /// (`helm uninstall`); without the mark a deleted DaemonSet leaves the nodes as they are.
    UninstallMark {
        /// The agent DaemonSet, NAMESPACE/NAME.
        #[arg(long)]
        daemonset: String,
    },
}

/// How long an uninstall waits for agent work in flight (an `Agent::start` building bridges, a
/// reconcile) before it goes on anyway.
const STOP_WORK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Fields at the top level, beside the message, so that `sandbox` and `portrange` can be
        // queried like any other.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Agent {
            config,
            kubernetes,
            overrides,
            node_name,
            metrics_addr,
            uninstall,
            daemonset,
            stop_marker,
        } => {
            portiso::memory::limit_arenas();
            // SIGTERM is handled (below) from as early as possible: in a container the agent is
            // PID 1, and a SIGTERM that comes before it has a handler is lost (ignored), which
            // happens when a pod is deleted just as it starts.
            let rt = tokio::runtime::Runtime::new()?;
            let mut sigterm = {
                let _guard = rt.enter();
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?
            };
            if let Some(m) = &stop_marker {
                // A marker of an earlier container of this pod says nothing about this one.
                let _ = std::fs::remove_file(m);
            }
            let mut config = portiso::config::AgentConfig::load(&config)?;
            if metrics_addr.is_some() {
                config.metrics_address = metrics_addr;
            }
            let mut watch = None;
            let node = node_name.unwrap_or_default();
            let client = if kubernetes {
                Some(rt.block_on(async {
                    let client = kube::Client::try_default().await?;
                    if let Ok(text) = std::fs::read_to_string(&overrides) {
                        let labels = portiso::k8s::agent::node_labels(&client, &node).await?;
                        let path = overrides.display().to_string();
                        if let Some(i) = config.apply_overrides(&text, &path, &labels)? {
                            tracing::info!(%node, override_index = i, "per-node uplinks applied");
                        }
                    }
                    if let Some(ds) = daemonset.as_deref().filter(|_| !uninstall) {
                        watch = Some(portiso::agent::uninstall::DaemonSetWatch::start(
                            client.clone(),
                            ds,
                        )?);
                    }
                    anyhow::Ok(client)
                })?)
            } else {
                None
            };
            let ovs = portiso::ovs::OvsCli;
            let budget = portiso::agent::uninstall::UNINSTALL_BUDGET;
            if uninstall {
                let outcome = portiso::agent::uninstall::uninstall(&config, &ovs, budget);
                anyhow::ensure!(
                    outcome.is_clean(),
                    "uninstall left steps undone: {}",
                    outcome.failed.join("; ")
                );
                return Ok(());
            }
            // Start and serve; SIGTERM is heard from the start on (an uninstall may come while
            // the agent still waits for its watches or builds its bridges).
            let terminated = rt.block_on(async {
                let run = async {
                    let sources: Box<dyn portiso::agent::sources::Sources> = match client {
                        Some(client) => {
                            Box::new(portiso::k8s::agent::KubeSources::start(client, &node).await?)
                        }
                        None => Box::new(portiso::agent::sources::FileSources::new(
                            config.ranges_dir.clone(),
                        )),
                    };
                    let config = config.clone();
                    // Under the agent-work guard: an uninstall waits for it, and once one has
                    // begun the agent does not start at all.
                    let agent = tokio::task::spawn_blocking(move || {
                        portiso::agent::uninstall::unless_stopping(|| {
                            portiso::agent::Agent::start(
                                config,
                                Box::new(portiso::ovs::OvsCli),
                                sources,
                            )
                        })
                        .map(|started| started.map_err(anyhow::Error::from))
                        .unwrap_or_else(|| Err(anyhow::anyhow!("the agent is stopping")))
                    })
                    .await??;
                    portiso::agent::serve(agent).await
                };
                tokio::select! {
                    served = run => served.map(|()| false),
                    _ = sigterm.recv() => Ok(true),
                }
            })?;
            if !terminated {
                return Ok(());
            }
            let decision = match &watch {
                Some(w) => rt.block_on(w.decide()),
                None => portiso::agent::uninstall::Decision {
                    uninstall: false,
                    reason: "no --daemonset: SIGTERM only stops the agent".into(),
                },
            };
            tracing::info!(uninstall = decision.uninstall, reason = %decision.reason, "SIGTERM");
            if !decision.uninstall {
                if let Some(m) = &stop_marker {
                    portiso::agent::uninstall::mark_done(m, &format!("kept: {}", decision.reason));
                }
                // Exactly as a SIGTERM always stopped the agent: at once, nothing torn down
                // (no destructor runs: the fast path's programs and OVS's flows carry on).
                std::process::exit(0);
            }
            // Nothing of the agent may run on (its poll would put back what is taken away):
            // no new agent work starts, the work in flight (a start-up or a reconcile on a
            // blocking thread, which the runtime's shutdown does not stop) is waited for.
            let work = portiso::agent::uninstall::stop_agent_work(STOP_WORK_WAIT);
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            let outcome = portiso::agent::uninstall::uninstall(&config, &ovs, budget);
            drop(work);
            let marker = if outcome.is_clean() {
                "uninstalled".to_string()
            } else {
                format!("uninstalled, with failures: {}", outcome.failed.join("; "))
            };
            if let Some(m) = &stop_marker {
                portiso::agent::uninstall::mark_done(m, &marker);
            }
            Ok(())
        }
        Command::Status(args) => portiso::status::run(args),
        Command::Trace(args) => portiso::trace::run(args),
        Command::Demo => portiso::demo::run(),
        Command::Bench(args) => portiso::bench::run(args),
        Command::Operator(args) => {
            tokio::runtime::Runtime::new()?.block_on(portiso::k8s::operator::run(*args))
        }
        Command::UninstallMark { daemonset } => tokio::runtime::Runtime::new()?.block_on(async {
            let client = kube::Client::try_default().await?;
            portiso::agent::uninstall::mark_for_uninstall(client, &daemonset).await
        }),
        Command::Crd => {
            print!("{}", portiso::model::crd_yaml()?);
            Ok(())
        }
    }
}
