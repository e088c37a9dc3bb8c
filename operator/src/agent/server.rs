//! The agent's unix socket: one JSON request per connection, answered concurrently (each
//! holds the agent's lock while it changes the state; see `add` for ADD); and the poll
//! that re-reads rangesDir.

use super::metrics::AgentMetrics;
use super::Agent;
use portiso_agent_api::{code, AgentError, Request, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// How often rangesDir is checked for changes, and OVS for having lost flows, ports or the
/// bridge address (a restarted ovs-vswitchd): the worst-case outage of such a restart.
const RANGES_POLL: Duration = Duration::from_millis(500);

/// Serves the socket until the process is stopped.
pub async fn serve(agent: Agent) -> anyhow::Result<()> {
    let socket = agent.config.socket.clone();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a previous agent would make bind fail.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", socket.display()))?;
    agent
        .start_icmp_relay()
        .map_err(|e| anyhow::anyhow!("cannot start the ICMP error relay: {e}"))?;
    let metrics_address = agent.config.metrics_address;
    let metrics = agent.metrics.clone();
    let agent = Arc::new(Mutex::new(agent));
    if let Some(addr) = metrics_address {
        super::metrics::serve(addr, agent.clone(), metrics.clone()).await?;
    }
    tracing::info!(socket = %socket.display(), "agent ready");
    tokio::spawn(poll_ranges(agent.clone()));
    loop {
        let (stream, _) = listener.accept().await?;
        let (agent, metrics) = (agent.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, agent, &metrics).await {
                tracing::warn!(error = %e, "CNI request failed");
            }
        });
    }
}

async fn answer(
    stream: UnixStream,
    agent: Arc<Mutex<Agent>>,
    metrics: &AgentMetrics,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    // Bytes, not a String: a line that is not UTF-8 gets an answer too. One byte past the
    // limit tells an over-long line without buffering all of it.
    let mut line = Vec::new();
    BufReader::new(read.take(super::request::MAX_REQUEST_BYTES as u64 + 1))
        .read_until(b'\n', &mut line)
        .await?;
    let response = match super::request::decode(&line) {
        Ok(request) => {
            tracing::debug!(?request, "request");
            let started = Instant::now();
            let add = match &request {
                Request::Add(add) => Some(add.clone()),
                _ => None,
            };
            let about = About::of(&request);
            // OVS and netlink work blocks: keep it off the async workers.
            if let Some(add) = &add {
                wait_until_ready_for(&agent, add).await;
            }
            let response = tokio::task::spawn_blocking(move || {
                super::uninstall::unless_stopping(|| match request {
                    // Not under the lock throughout: see `add`.
                    Request::Add(r) => super::add::add_unlocked(&agent, &r)
                        .map_or_else(Response::Error, Response::Attached),
                    // Answered as if the ADD of the same attachment in flight had held the
                    // lock throughout.
                    Request::Del(r) => {
                        let key = r.key.clone();
                        super::add::when_settled(&agent, &key, |a| a.handle(Request::Del(r)))
                    }
                    Request::Check(r) => {
                        let key = r.key.clone();
                        super::add::when_settled(&agent, &key, |a| a.handle(Request::Check(r)))
                    }
                    other => lock(&agent).handle(other),
                })
                .unwrap_or_else(|| {
                    Response::Error(AgentError::new(
                        code::TRY_AGAIN_LATER,
                        "the agent is stopping",
                    ))
                })
            })
            .await?;
            if add.is_some() {
                let attached = matches!(response, Response::Attached(_));
                metrics.attach_done(started.elapsed(), attached);
            }
            if let (Response::Error(e), Some(about)) = (&response, about) {
                about.log_failure(e);
            }
            response
        }
        Err(e) => Response::Error(e),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// Who a CNI request is about, for the line that logs its failure (the plugin reports the
/// error to the runtime; the agent's log must show it too, with the sandbox).
enum About {
    Sandbox {
        verb: &'static str,
        sandbox: String,
    },
    Container {
        verb: &'static str,
        container: String,
    },
}

impl About {
    fn of(request: &Request) -> Option<Self> {
        let sandbox = |verb, r| About::Sandbox {
            verb,
            sandbox: sandbox_of(r),
        };
        match request {
            Request::Add(r) => Some(sandbox("ADD", r)),
            Request::Check(r) => Some(sandbox("CHECK", r)),
            // DEL names no sandbox; its container is how the runtime knows it.
            Request::Del(r) => Some(About::Container {
                verb: "DEL",
                container: r.key.container_id.clone(),
            }),
            _ => None,
        }
    }

    fn log_failure(&self, e: &AgentError) {
        match self {
            About::Sandbox { verb, sandbox } => {
                tracing::warn!(%sandbox, verb = %verb, code = e.code, error = %e, "CNI request failed")
            }
            About::Container { verb, container } => {
                tracing::warn!(%container, verb = %verb, code = e.code, error = %e, "CNI request failed")
            }
        }
    }
}

/// `namespace/name`, as every log line names a sandbox.
fn sandbox_of(r: &portiso_agent_api::AttachRequest) -> String {
    format!("{}/{}", r.sandbox_namespace, r.sandbox_name)
}

pub(super) fn lock(agent: &Mutex<Agent>) -> std::sync::MutexGuard<'_, Agent> {
    // A panic while holding the lock leaves state that OVS still describes; carry on.
    agent.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long an ADD waits for the pod's labels or a PortRange that is still being created
/// (cluster mode) before it fails with the reason.
const ADD_WAIT: Duration = Duration::from_secs(10);

async fn wait_until_ready_for(agent: &Arc<Mutex<Agent>>, add: &portiso_agent_api::AttachRequest) {
    let deadline = tokio::time::Instant::now() + ADD_WAIT;
    loop {
        // Sources may block (a GET to the API server): off the async workers, like all agent work.
        let (agent_ref, add_ref) = (agent.clone(), add.clone());
        let ready = tokio::task::spawn_blocking(move || {
            super::uninstall::unless_stopping(|| {
                let mut a = lock(&agent_ref);
                if a.refresh() {
                    if let Err(e) = a.apply_refresh() {
                        let sandbox = sandbox_of(&add_ref);
                        tracing::error!(%sandbox, error = %e, "could not update flows");
                    }
                }
                !a.should_wait_for(&add_ref)
            })
            .unwrap_or(true)
        })
        .await
        .unwrap_or(true);
        if ready || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn poll_ranges(agent: Arc<Mutex<Agent>>) {
    loop {
        tokio::time::sleep(RANGES_POLL).await;
        let agent = agent.clone();
        let result = tokio::task::spawn_blocking(move || {
            super::uninstall::unless_stopping(|| {
                let mut a = lock(&agent);
                let started = Instant::now();
                a.collect_gone();
                let result = if a.refresh() {
                    a.apply_refresh()
                } else {
                    // Nothing changed on our side: make sure nothing changed on OVS's either.
                    a.resync()
                };
                a.metrics.resync.observe(started.elapsed());
                result
            })
            .unwrap_or(Ok(()))
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e, "could not bring OVS in line (retried every second)");
        }
    }
}
