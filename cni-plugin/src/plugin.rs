//! The verbs themselves: each is one request to the agent and a translation of its answer.

use crate::config::{NetConf, VALID_ATTACHMENTS};
use crate::error::{code, CniError};
use crate::result::add_result;
use crate::skel::{CmdEnv, Command};
use portiso_agent_api::{
    call, host_if_name, AttachRequest, AttachmentKey, CallError, DetachRequest, Request, Response,
};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Runs one verb (never VERSION, which the skel answers itself). `Ok(None)` means success
/// with nothing to print, which is what DEL, CHECK, STATUS and GC print on success.
pub fn execute(command: Command, conf: &NetConf, env: &CmdEnv) -> Result<Option<Value>, CniError> {
    let request = build_request(command, conf, env)?;
    // Only ADD waits for an agent that is down or restarting: it cannot be done without one,
    // and it is idempotent (an ADD the agent carried out before it went away is found again).
    let wait = if command == Command::Add {
        conf.agent_wait
    } else {
        Duration::ZERO
    };
    let response = match call_waiting(conf, &request, wait) {
        Ok(r) => r,
        // DEL must be able to finish while no agent runs (a node whose agent is broken must
        // still be able to remove its pods): remove what the plugin can, the veth, which cuts
        // the sandbox off; the agent removes the port and flows left behind when it starts
        // (it finds a port whose interface is gone). Never when the agent may have the request:
        // only when nobody listens, so nothing the agent does can race this.
        Err(e) if command == Command::Del && e.never_connected() => {
            return del_without_agent(conf, env, e)
        }
        Err(e) => return Err(call_error(command, e, wait)),
    };
    match (command, response) {
        (_, Response::Error(e)) => Err(e.into()),
        (Command::Add, Response::Attached(a)) => Ok(Some(add_result(&a, conf.cni_version))),
        // CHECK: the agent verified the attachment; it may describe it, but CHECK prints nothing.
        (Command::Check, Response::Attached(_) | Response::Done) => Ok(None),
        (Command::Del | Command::Status | Command::Gc, Response::Done) => Ok(None),
        (command, other) => Err(CniError::new(
            code::INTERNAL,
            format!(
                "the portiso agent at {} gave an unexpected answer to {command:?}; \
                 are the agent and the plugin the same portiso version?",
                conf.agent_socket.display()
            ),
        )
        .with_details(format!("{other:?}"))),
    }
}

fn build_request(command: Command, conf: &NetConf, env: &CmdEnv) -> Result<Request, CniError> {
    let key = || AttachmentKey {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    let attach = || {
        let (sandbox_name, sandbox_namespace) = env.args.sandbox(&env.container_id);
        AttachRequest {
            key: key(),
            netns: env.netns.clone(),
            uplink: conf.uplink.clone(),
            sandbox_name,
            sandbox_namespace,
            sandbox_uid: env.args.uid(),
        }
    };
    Ok(match command {
        Command::Add => {
            if let Some(mac) = &conf.requested_mac {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!(
                        "runtimeConfig.mac {mac} is not supported: portiso sandboxes share the node's \
                         MAC address; remove the custom MAC (e.g. a VM interface's macAddress)"
                    ),
                ));
            }
            Request::Add(attach())
        }
        Command::Check => Request::Check(attach()),
        Command::Del => Request::Del(DetachRequest {
            key: key(),
            // The spec lets DEL come without a netns (it may be gone); the agent cleans up
            // what it can from the key alone.
            netns: Some(env.netns.clone()).filter(|n| !n.is_empty()),
            uplink: conf.uplink.clone(),
        }),
        Command::Status => Request::Status {
            uplink: conf.uplink.clone(),
        },
        Command::Gc => Request::Gc {
            uplink: conf.uplink.clone(),
            // Treating a missing list as "nothing is valid" would detach every sandbox on the
            // uplink, so refuse instead.
            valid: conf.valid_attachments.clone().ok_or_else(|| {
                CniError::config(format!(
                    "GC needs the network config field `{VALID_ATTACHMENTS}` (the runtime \
                     sets it); without it every attachment would look stale"
                ))
            })?,
        },
        Command::Version => {
            return Err(CniError::new(
                code::INTERNAL,
                "VERSION is answered by the skel, not sent to the agent",
            ))
        }
    })
}

/// Calls the agent; while nobody listens on its socket (the agent is down or restarting; the
/// request cannot have reached it), or when the agent went away without answering (only ADD
/// waits, and ADD may be sent again), tries again until `wait` has passed.
fn call_waiting(conf: &NetConf, request: &Request, wait: Duration) -> Result<Response, CallError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(50);
    loop {
        match call(&conf.agent_socket, request, conf.timeout) {
            Err(e) if (e.never_connected() || e.agent_went_away()) && Instant::now() < deadline => {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// DEL with no agent listening: removes the sandbox's host-side veth (which takes the sandbox
/// end with it) and succeeds; fails with "try again later" only if the veth is still there.
fn del_without_agent(
    conf: &NetConf,
    env: &CmdEnv,
    err: CallError,
) -> Result<Option<Value>, CniError> {
    let host_if = host_if_name(&env.container_id, &env.ifname);
    match remove_link(&host_if) {
        Ok(()) => Ok(None),
        Err(detail) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "cannot reach the portiso agent at {} and could not remove the sandbox's \
                 interface {host_if} without it: start `portiso agent` on this node (or point \
                 `agentSocket` at its socket); the runtime retries DEL",
                conf.agent_socket.display()
            ),
        )
        .with_details(format!("{detail}; agent: {err}"))),
    }
}

/// Deletes an interface of the plugin's network namespace (the node's); gone already is fine.
/// Runs `ip` like the agent does: the plugin has no netlink code of its own.
fn remove_link(name: &str) -> Result<(), String> {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip");
    let run = |args: &[&str]| std::process::Command::new(ip).args(args).output();
    let deleted =
        run(&["link", "del", "dev", name]).map_err(|e| format!("cannot run {ip}: {e}"))?;
    if deleted.status.success() {
        return Ok(());
    }
    // Failed: fine if it is not there (any more), whoever removed it.
    match run(&["link", "show", "dev", name]) {
        Ok(shown) if !shown.status.success() => Ok(()),
        _ => Err(format!(
            "{ip} link del dev {name}: {}",
            String::from_utf8_lossy(&deleted.stderr).trim()
        )),
    }
}

fn call_error(command: Command, err: CallError, waited: Duration) -> CniError {
    // The wait applies to an agent nobody could connect to, not to one that took the request.
    let waited = if err.never_connected() {
        waited
    } else {
        Duration::ZERO
    };
    match err {
        CallError::Unreachable { socket, source } => {
            // STATUS has its own code for "cannot add sandboxes now"; for the other verbs
            // "try again later" makes runtimes retry (DEL in particular must eventually run).
            let code = if command == Command::Status {
                code::PLUGIN_NOT_AVAILABLE
            } else {
                code::TRY_AGAIN_LATER
            };
            let waited = if waited.is_zero() {
                String::new()
            } else {
                format!(
                    " (waited {} s for it; `agentWaitSeconds` sets how long)",
                    waited.as_secs()
                )
            };
            CniError::new(
                code,
                format!(
                    "cannot reach the portiso agent at {socket}{waited}: the agent may be down or \
                     still starting (is `portiso agent` running on this node, and does \
                     `agentSocket` point at its socket?)"
                ),
            )
            .with_details(source.to_string())
        }
        CallError::BadAnswer { socket, detail } => CniError::new(
            code::INTERNAL,
            format!(
                "the portiso agent at {socket} sent an answer the plugin cannot read; \
                 are the agent and the plugin the same portiso version?"
            ),
        )
        .with_details(detail),
    }
}
