//! The verbs themselves: each is one request to the agent and a translation of its answer.

use crate::config::{NetConf, VALID_ATTACHMENTS};
use crate::error::{code, CniError};
use crate::result::add_result;
use crate::skel::{CmdEnv, Command};
use portiso_agent_api::{
    call, AttachRequest, AttachmentKey, CallError, DetachRequest, Request, Response,
};
use serde_json::Value;

/// Runs one verb (never VERSION, which the skel answers itself). `Ok(None)` means success
/// with nothing to print, which is what DEL, CHECK, STATUS and GC print on success.
pub fn execute(command: Command, conf: &NetConf, env: &CmdEnv) -> Result<Option<Value>, CniError> {
    let request = build_request(command, conf, env)?;
    let response = match call(&conf.agent_socket, &request, conf.timeout) {
        Ok(r) => r,
        Err(e) => return Err(call_error(command, e)),
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

fn call_error(command: Command, err: CallError) -> CniError {
    match err {
        CallError::Unreachable { socket, source } => {
            // STATUS has its own code for "cannot add sandboxes now"; for the other verbs
            // "try again later" makes runtimes retry (DEL in particular must eventually run).
            let code = if command == Command::Status {
                code::PLUGIN_NOT_AVAILABLE
            } else {
                code::TRY_AGAIN_LATER
            };
            CniError::new(
                code,
                format!(
                    "cannot reach the portiso agent at {socket}: the agent may be down or still \
                     starting (is `portiso agent` running on this node, and does `agentSocket` \
                     point at its socket?)"
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
