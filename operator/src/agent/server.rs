//! The agent's unix socket: one JSON request per connection, answered in turn; and the poll
//! that re-reads rangesDir.

use super::Agent;
use portiso_agent_api::{code, AgentError, Request, Response};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
    tracing::info!(socket = %socket.display(), "agent ready");
    let agent = Arc::new(Mutex::new(agent));
    tokio::spawn(poll_ranges(agent.clone()));
    loop {
        let (stream, _) = listener.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, agent).await {
                tracing::warn!(error = %e, "CNI request failed");
            }
        });
    }
}

async fn answer(stream: UnixStream, agent: Arc<Mutex<Agent>>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            tracing::debug!(?request, "request");
            // OVS and netlink work blocks: keep it off the async workers.
            if let Request::Add(add) = &request {
                wait_until_ready_for(&agent, add).await;
            }
            tokio::task::spawn_blocking(move || lock(&agent).handle(request)).await?
        }
        Err(e) => Response::Error(AgentError::new(
            code::INTERNAL,
            format!("the agent could not read the request ({e}): are the plugin and agent the same version?"),
        )),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

fn lock(agent: &Mutex<Agent>) -> std::sync::MutexGuard<'_, Agent> {
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
            let mut a = lock(&agent_ref);
            if a.refresh() {
                if let Err(e) = a.apply_refresh() {
                    tracing::error!(error = %e, "could not update flows");
                }
            }
            !a.should_wait_for(&add_ref)
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
            let mut a = lock(&agent);
            a.collect_gone();
            if a.refresh() {
                a.apply_refresh()
            } else {
                // Nothing changed on our side: make sure nothing changed on OVS's either.
                a.resync()
            }
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e, "could not bring OVS in line (retried every second)");
        }
    }
}
