//! The Python side of the tests: the interpreter (`EXECD_TEST_PYTHON`,
//! which scripts/test makes a venv from tests/python/requirements.txt, else
//! `python3`), whether it has what a test needs, and the scripts of
//! tests/python, which report what they saw as JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::skip;

/// The interpreter the tests run.
pub fn test_python() -> PathBuf {
    std::env::var_os("EXECD_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into())
}

/// Whether `python` runs `code` (say, imports what a test needs).
pub fn python_runs(python: &Path, code: &str) -> bool {
    std::process::Command::new(python)
        .args(["-c", code])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The tests' interpreter when it runs `probe`; else `None`, after
/// [`skip`]ping `test` because it has not `what`.
pub fn python_with(test: &str, probe: &str, what: &str) -> Option<PathBuf> {
    let python = test_python();
    if python_runs(&python, probe) {
        return Some(python);
    }
    let why = format!(
        "{} has no {what} (pip install -r tests/python/requirements.txt, then set EXECD_TEST_PYTHON)",
        python.display()
    );
    skip(test, &why);
    None
}

/// `python` on tests/python/`script`, writing no bytecode next to it and
/// killed with the test; the caller adds the arguments.
pub fn python_script(python: &Path, script: &str) -> tokio::process::Command {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut command = tokio::process::Command::new(python);
    command
        .arg(path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    command
}

/// Runs `command` (a [`python_script`]) for at most `within`, which only
/// stops a hang (the scripts bound their own calls), asserts it succeeded
/// and parses what it printed.
pub async fn json_of<T: serde::de::DeserializeOwned>(
    command: &mut tokio::process::Command,
    within: Duration,
) -> T {
    let out = tokio::time::timeout(within, command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} still runs after {within:?}"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{command:?}: not the expected JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
