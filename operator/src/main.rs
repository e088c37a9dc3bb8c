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
}

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
        } => {
            let mut config = portiso::config::AgentConfig::load(&config)?;
            if metrics_addr.is_some() {
                config.metrics_address = metrics_addr;
            }
            let rt = tokio::runtime::Runtime::new()?;
            let sources: Box<dyn portiso::agent::sources::Sources> = if kubernetes {
                let node = node_name.unwrap_or_default();
                Box::new(rt.block_on(async {
                    let client = kube::Client::try_default().await?;
                    if let Ok(text) = std::fs::read_to_string(&overrides) {
                        let labels = portiso::k8s::agent::node_labels(&client, &node).await?;
                        let path = overrides.display().to_string();
                        if let Some(i) = config.apply_overrides(&text, &path, &labels)? {
                            tracing::info!(%node, override_index = i, "per-node uplinks applied");
                        }
                    }
                    portiso::k8s::agent::KubeSources::start(client, &node).await
                })?)
            } else {
                Box::new(portiso::agent::sources::FileSources::new(
                    config.ranges_dir.clone(),
                ))
            };
            let agent =
                portiso::agent::Agent::start(config, Box::new(portiso::ovs::OvsCli), sources)?;
            rt.block_on(portiso::agent::serve(agent))
        }
        Command::Status(args) => portiso::status::run(args),
        Command::Trace(args) => portiso::trace::run(args),
        Command::Demo => portiso::demo::run(),
        Command::Bench(args) => portiso::bench::run(args),
        Command::Operator(args) => {
            tokio::runtime::Runtime::new()?.block_on(portiso::k8s::operator::run(*args))
        }
        Command::Crd => {
            print!("{}", portiso::model::crd_yaml()?);
            Ok(())
        }
    }
}
