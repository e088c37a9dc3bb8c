//! The harness of the `fuzz_*` tests: proptest runs instead of cargo-fuzz (which needs a
//! nightly toolchain), each input checked in a thread of its own so that a hang is reported
//! as a failure instead of stalling the suite.
//!
//! - `PORTISO_FUZZ_CASES=N` runs every target with N cases instead of its bounded default
//!   ("longer on demand"); the number of inputs tried is printed (`--nocapture` shows it).
//! - A failing input's seed is saved in `tests/proptest-regressions/<target>.txt` of the crate
//!   and replayed first on every later run: check those files in.
//!
//! Shared by the operator's and the CNI plugin's fuzz tests (`#[path]` include).

#![allow(dead_code)]

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long one input may take before it counts as a hang. Generous: the suite runs beside
/// other builds on two cores and in debug mode, where the slowest input takes milliseconds.
pub const HANG_BOUND: Duration = Duration::from_secs(5);

/// The environment variable that overrides every target's case count.
pub const CASES_ENV: &str = "PORTISO_FUZZ_CASES";

/// `default`, or `PORTISO_FUZZ_CASES` when set.
pub fn cases(default: u32) -> u32 {
    match std::env::var(CASES_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{CASES_ENV}={v:?} is not a number of cases")),
        Err(_) => default,
    }
}

/// Runs `check` on `cases(default_cases)` inputs drawn from `strategy`, each within
/// [`HANG_BOUND`] and with panics caught; fails the test with the smallest failing input.
/// `regressions` is the file failing seeds are kept in (absolute path). Returns the number
/// of inputs tried (shrinking included) and prints it.
pub fn fuzz<S>(
    target: &str,
    regressions: &'static str,
    default_cases: u32,
    strategy: S,
    check: impl Fn(&S::Value) -> Result<(), String> + Send + Sync + 'static,
) -> u64
where
    S: Strategy,
    S::Value: Send + Clone + Debug + 'static,
{
    let cases = cases(default_cases);
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        source_file: Some(regressions),
        // Shrinking reruns inputs; keep a failure's report prompt.
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let check = Arc::new(check);
    let tried = AtomicU64::new(0);
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |input| {
        tried.fetch_add(1, Ordering::Relaxed);
        bounded(&check, input).map_err(TestCaseError::fail)
    });
    let tried = tried.into_inner();
    eprintln!(
        "fuzz {target}: {tried} inputs tried ({cases} cases) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => tried,
        Err(TestError::Fail(why, input)) => {
            panic!(
                "fuzz {target}: {}\nminimal failing input: {}",
                clip(why.to_string()),
                clip(format!("{input:#?}"))
            )
        }
        Err(TestError::Abort(why)) => panic!("fuzz {target}: aborted: {why}"),
    }
}

/// At most 3000 characters of `text`, so that a huge failing input does not drown the report
/// (the whole input is in the regression file's seed).
fn clip(text: String) -> String {
    match text.char_indices().nth(3000) {
        Some((at, _)) => format!("{} ... ({} bytes in all)", &text[..at], text.len()),
        None => text,
    }
}

/// Runs `check(input)` in its own thread: a panic becomes an error with its message, and an
/// input that takes longer than [`HANG_BOUND`] an error too (the thread is left behind).
pub fn bounded<T, F>(check: &Arc<F>, input: T) -> Result<(), String>
where
    T: Send + Debug + 'static,
    F: Fn(&T) -> Result<(), String> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel();
    let check = Arc::clone(check);
    std::thread::Builder::new()
        .name("fuzz-input".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)))
                .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(&panic))));
            let _ = tx.send(outcome);
        })
        .map_err(|e| format!("cannot start a checking thread: {e}"))?;
    match rx.recv_timeout(HANG_BOUND) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("no result within {HANG_BOUND:?}: a hang"))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the checking thread died".into()),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Strings that break naive code: empty, long, unicode, control characters, NUL.
pub fn nasty_string() -> proptest::strategy::BoxedStrategy<String> {
    use proptest::prelude::*;
    prop_oneof![
        Just(String::new()),
        Just("\0".to_string()),
        Just("a\0b".to_string()),
        Just("ünïcødé-😀".to_string()),
        Just("\u{202e}rtl\u{200b}".to_string()),
        Just(" \t\r\n".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999999".to_string()),
        "[a-z]{1,8}".prop_map(|s| s),
        any::<String>(),
        (1usize..200_000).prop_map(|n| "x".repeat(n)),
        (1usize..2_000).prop_map(|n| "é".repeat(n)),
    ]
    .boxed()
}

/// `depth` nested JSON/YAML flow sequences around a scalar: `[[[1]]]`.
pub fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// One step of a path into a JSON document.
#[derive(Debug, Clone)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// What a structure-aware mutation does at the end of its path.
#[derive(Debug, Clone)]
pub enum Op {
    Set(serde_json::Value),
    Remove,
}

pub fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// Applies `op` at `path` in `doc` (a list index past the end appends).
pub fn apply(doc: &mut serde_json::Value, path: &[Seg], op: &Op) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut at = doc;
    for seg in parents {
        at = match seg {
            Seg::Key(k) => &mut at[k.as_str()],
            Seg::Index(i) => &mut at[*i],
        };
    }
    match (last, op) {
        (Seg::Key(k), Op::Set(v)) => at[k.as_str()] = v.clone(),
        (Seg::Key(k), Op::Remove) => {
            at.as_object_mut().map(|o| o.remove(k));
        }
        (Seg::Index(i), Op::Set(v)) => {
            let list = at.as_array_mut().expect("a list");
            if *i < list.len() {
                list[*i] = v.clone();
            } else {
                list.push(v.clone());
            }
        }
        (Seg::Index(i), Op::Remove) => {
            at.as_array_mut().map(|l| l.remove(*i));
        }
    }
}

/// Names the kernel refuses for a network interface (empty, `.`/`..`, over 15 bytes, with `/`,
/// `:`, whitespace or NUL), for every document that names one.
pub fn bad_interface_names() -> Vec<serde_json::Value> {
    [
        "",
        ".",
        "..",
        "a-very-long-interface",
        "br/0",
        "eth0:1",
        "a b",
        "a\tb",
        "a\nb",
        "a\rb",
        "a\u{b}b",
        "a\u{c}b",
        "a\0b",
        "\0",
        "éééééééé",
    ]
    .into_iter()
    .map(serde_json::Value::from)
    .collect()
}
