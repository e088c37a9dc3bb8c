//! The CNI protocol frame, after the reference `skel` package: read CNI_* variables and the
//! config, check them, dispatch the verb, print the result or the error object.
//!
//! The environment, stdin and stdout are injected (see [`Skel`]) so the whole protocol layer
//! runs in-process under test; only `main.rs` touches the real process.

use crate::args::CniArgs;
use crate::config::{self, NetConf};
use crate::error::{code, CniError};
use crate::plugin;
use crate::version::{supported_list, CniVersion};
use serde_json::{json, Value};
use std::io::{Read, Write};

/// The CNI verbs (CNI_COMMAND).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Check,
    Del,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(text: &str) -> Option<Command> {
        Some(match text {
            "ADD" => Command::Add,
            "CHECK" => Command::Check,
            "DEL" => Command::Del,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The per-invocation CNI_* variables, checked for the verb at hand.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdEnv {
    pub container_id: String,
    /// Empty for STATUS/GC; may be empty for DEL (the netns can already be gone).
    pub netns: String,
    pub ifname: String,
    pub args: CniArgs,
}

impl CmdEnv {
    /// Which variables a verb needs follows the spec's "Parameters" table: ADD and CHECK need
    /// all three, DEL may lack the netns, STATUS and GC are about the network, not a container.
    /// CNI_PATH is not required: this plugin never delegates to other plugins.
    pub fn from_env(
        command: Command,
        getenv: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CmdEnv, CniError> {
        let per_container = matches!(command, Command::Add | Command::Check | Command::Del);
        if !per_container {
            return Ok(CmdEnv::default());
        }
        let get = |name: &str| getenv(name).filter(|v| !v.is_empty());
        let require = |name: &str, what: &str| {
            get(name).ok_or_else(|| {
                CniError::env(format!(
                    "environment variable {name} is missing or empty: the runtime must set it to {what}"
                ))
            })
        };
        let container_id = require("CNI_CONTAINERID", "the container's id")?;
        validate_container_id(&container_id)?;
        let ifname = require("CNI_IFNAME", "the interface name to create in the sandbox")?;
        validate_ifname(&ifname)?;
        let netns = if command == Command::Del {
            get("CNI_NETNS").unwrap_or_default()
        } else {
            require("CNI_NETNS", "the path of the sandbox's network namespace")?
        };
        // DEL does not need the sandbox's name, and a malformed CNI_ARGS must not block cleanup.
        let args = if command == Command::Del {
            CniArgs::default()
        } else {
            CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?
        };
        Ok(CmdEnv {
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

/// The reference implementation's rule; the id ends up in names and paths on the agent side.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "CNI_CONTAINERID {id:?} has invalid characters: it must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )))
    }
}

/// Linux interface names: at most 15 bytes (IFNAMSIZ - 1), no '/', ':' or whitespace.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        Err(CniError::env(format!(
            "CNI_IFNAME {name:?} is not a valid Linux interface name \
             (at most 15 bytes, no '/', ':' or whitespace)"
        )))
    } else {
        Ok(())
    }
}

/// One plugin invocation with its process environment injected.
pub struct Skel<'a> {
    pub getenv: &'a dyn Fn(&str) -> Option<String>,
    pub stdin: &'a mut dyn Read,
    pub stdout: &'a mut dyn Write,
    /// Only for the human-facing "about" text when run without CNI_COMMAND.
    pub stderr: &'a mut dyn Write,
}

const ABOUT: &str =
    "portiso-cni: attaches sandboxes to a portiso uplink through the portiso node agent";

impl Skel<'_> {
    /// Runs the invocation and returns the process exit status.
    pub fn run(self) -> i32 {
        let Skel {
            getenv,
            stdin,
            stdout,
            stderr,
        } = self;
        let command = match getenv("CNI_COMMAND").filter(|c| !c.is_empty()) {
            Some(c) => c,
            None => {
                // Like the reference skel: someone ran the binary by hand; tell them what it
                // is instead of printing a protocol error.
                let ok = writeln!(
                    stderr,
                    "{ABOUT}\nCNI protocol versions supported: {}",
                    supported_list()
                );
                return if ok.is_ok() { 0 } else { 1 };
            }
        };
        let mut input = Vec::new();
        let outcome = match stdin.read_to_end(&mut input) {
            Err(e) => Err(CniError::new(
                code::IO_FAILURE,
                format!("cannot read the network config from stdin: {e}"),
            )),
            Ok(_) => match Command::parse(&command) {
                None => Err(CniError::env(format!(
                    "unknown CNI_COMMAND {command:?}: expected ADD, CHECK, DEL, STATUS, GC or VERSION"
                ))),
                Some(Command::Version) => Ok(Some(version_info(&input))),
                Some(cmd) => dispatch(cmd, &input, getenv),
            },
        };
        match outcome {
            Ok(None) => 0,
            Ok(Some(result)) => match print(stdout, &result) {
                Ok(()) => 0,
                Err(_) => 1,
            },
            Err(err) => {
                // Stamp the error with the version the runtime asked for when we can tell,
                // so it can decode it; otherwise with our newest.
                let stamp = config::decode(&input)
                    .ok()
                    .and_then(|m| config::version(&m).ok())
                    .unwrap_or(CniVersion::CURRENT);
                let _ = print(stdout, &err.to_json(stamp.as_str()));
                1
            }
        }
    }
}

/// VERSION must answer even for a version we do not speak — that is how runtimes find out
/// what we do speak — so an unreadable or unknown request falls back to our newest version.
fn version_info(input: &[u8]) -> Value {
    let requested = config::decode(input)
        .ok()
        .and_then(|m| config::version(&m).ok())
        .unwrap_or(CniVersion::CURRENT);
    json!({
        "cniVersion": requested.as_str(),
        "supportedVersions": CniVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

fn dispatch(
    command: Command,
    input: &[u8],
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Value>, CniError> {
    let map = config::decode(input)?;
    let version = config::version(&map)?;
    check_verb_exists(command, version)?;
    let env = CmdEnv::from_env(command, getenv)?;
    let conf: NetConf = config::parse(&map, version)?;
    plugin::execute(command, &conf, &env)
}

fn check_verb_exists(command: Command, version: CniVersion) -> Result<(), CniError> {
    let (exists, since, verb) = match command {
        Command::Check => (version.has_check(), "0.4.0", "CHECK"),
        Command::Status => (version.has_status_and_gc(), "1.1.0", "STATUS"),
        Command::Gc => (version.has_status_and_gc(), "1.1.0", "GC"),
        _ => return Ok(()),
    };
    if exists {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{verb} is not defined for cniVersion {}: it exists from cniVersion {since} on",
                version.as_str()
            ),
        ))
    }
}

fn print(out: &mut dyn Write, value: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")?;
    out.flush()
}

/// Runs against the real process environment; all `main` does.
pub fn run_process() -> i32 {
    let getenv = |name: &str| std::env::var(name).ok();
    Skel {
        getenv: &getenv,
        stdin: &mut std::io::stdin().lock(),
        stdout: &mut std::io::stdout().lock(),
        stderr: &mut std::io::stderr().lock(),
    }
    .run()
}
