//! Every shell script of the repository passes `shellcheck`: `e2e/*.sh`, `scripts/*.sh` and
//! `.ci/run`. Some of them (`e2e/kind.sh`) cannot run in CI at all, so this is their only check.
//!
//! shellcheck comes from `bash scripts/install-deps.sh` (Debian package `shellcheck`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// The scripts, relative to the workspace root, sorted.
fn scripts(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["e2e", "scripts"] {
        let entries = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("read {}: {e}", root.join(dir).display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_file() && path.extension().is_some_and(|x| x == "sh") {
                found.push(path.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    let ci = PathBuf::from(".ci/run");
    assert!(root.join(&ci).is_file(), "{} is missing", ci.display());
    found.push(ci);
    found.sort();
    found
}

#[test]
fn every_shell_script_passes_shellcheck() {
    let root = root();
    let scripts = scripts(&root);
    for must in [
        "e2e/kind.sh",
        "e2e/k8s-bin.sh",
        "scripts/install-deps.sh",
        "scripts/test.sh",
        "scripts/setup.sh",
        ".ci/run",
    ] {
        assert!(
            scripts.iter().any(|s| s == Path::new(must)),
            "{must} was not found among {scripts:?}"
        );
    }

    let out = match Command::new("shellcheck")
        .arg("--format=gcc")
        .args(&scripts)
        .current_dir(&root)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "shellcheck is not installed (not on PATH): run `bash scripts/install-deps.sh` \
             (as root; it installs the Debian package shellcheck) or `apt-get install -y shellcheck`"
        ),
        Err(e) => panic!("could not run shellcheck: {e}"),
    };
    let list = scripts
        .iter()
        .map(|s| s.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        out.status.success(),
        "shellcheck found problems ({}) in: {list}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
