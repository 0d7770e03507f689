//! The shipped Prometheus rules (deploy/prometheus): promtool accepts
//! them, and their unit tests (every alert fires on the series it is for
//! and stays silent otherwise) pass. tests/metrics.rs loads them into a
//! real Prometheus scraping closetrace.
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// promtool with `args` in deploy/prometheus; None when it is not
/// installed (a failure in CI, where the test command installs it).
fn promtool(args: &[&str]) -> Option<(bool, String)> {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            let msg = format!("promtool: {e} (scripts/bootstrap --test-deps installs prometheus)");
            assert!(
                std::env::var_os("CLOSETRACE_REQUIRE_KERNEL_TESTS").is_none_or(|v| v != "1"),
                "{msg}"
            );
            eprintln!("SKIPPED {msg}");
            return None;
        }
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

#[test]
fn the_rules_check() {
    let Some((ok, out)) = promtool(&["check", "rules", "closetrace.rules.yml"]) else {
        return;
    };
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
}

#[test]
fn every_alert_is_unit_tested_and_passes() {
    let Some((ok, out)) = promtool(&["test", "rules", "closetrace.rules.test.yml"]) else {
        return;
    };
    assert!(ok, "{out}");
    // Every alert the rules define has a test that expects it to fire.
    let rules = std::fs::read_to_string(dir().join("closetrace.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir().join("closetrace.rules.test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(line) && t.contains("exp_labels"));
        assert!(fires, "no test expects {line} to fire");
    }
}
