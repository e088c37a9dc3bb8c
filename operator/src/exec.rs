//! Running a child process: arguments as a vector, never through a shell, and an error that
//! keeps the argv, the exit status and stderr so that a failure explains itself.

use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("`{argv}` failed ({status}): {stderr}")]
pub struct ExecError {
    pub argv: String,
    pub status: String,
    pub stderr: String,
}

/// Runs `program args...` and returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String, ExecError> {
    run_with_env(program, args, &[])
}

/// Like [`run`], with extra environment variables (e.g. OVS_RUNDIR for a private OVS).
pub fn run_with_env(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<String, ExecError> {
    let argv = || {
        std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ")
    };
    tracing::debug!(cmd = %argv(), "run");
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| ExecError {
            argv: argv(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ExecError {
            argv: argv(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Like [`run`], feeding `input` to the child's stdin (e.g. a flow bundle for ovs-ofctl).
pub fn run_with_stdin(program: &str, args: &[&str], input: &str) -> Result<String, ExecError> {
    use std::io::Write;
    use std::process::Stdio;
    let argv = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let fail = |status: String, stderr: String| ExecError {
        argv: argv.clone(),
        status,
        stderr,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail("not started".into(), e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| fail("stdin".into(), e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail("wait".into(), e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(
            out.status.to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}
