//! `cargo xtask soak --minutes N`: closetrace (default mode) beside steady
//! churn at a moderate rate, with a share of connections leaked in
//! CLOSE_WAIT and every client close leaving TIME_WAIT, for N minutes.
//! Fails unless nothing is lost, every leak the generator made is
//! reported, RSS stays bounded and flat, and the kernel's per-socket maps
//! are empty again once the churn is over.
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench::{Bins, Tracer, Trial, finish_tracer, run_churn, start_tracer};
use crate::measure::{Netns, RssSampler};

const RATE: u32 = 3000;
const LEAK_EVERY: u32 = 200;

pub fn run(root: &Path, minutes: u64) -> anyhow::Result<()> {
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let release = root.join("target/release");
    let bins = Bins {
        closetrace: release.join("closetrace"),
        churn: release.join("closetrace-churn"),
        tcpstates: None,
    };
    let scratch = root.join("target/soak");
    fs::create_dir_all(&scratch)?;
    let ns = Netns::new("closetrace-soak")?;
    eprintln!(
        "soak: {minutes} min of client-close churn at {RATE}/s, one connection in {LEAK_EVERY} \
         leaked, closetrace beside it"
    );
    let running = start_tracer(
        &ns,
        &bins,
        &scratch,
        Tracer::Default,
        &["--close-wait-threshold", "2s"],
    )?
    .context("closetrace")?;
    let sampler = RssSampler::start(running.child.id(), Duration::from_secs(1));
    let mut churn = ns.exec(&bins.churn.to_string_lossy());
    churn.args([
        "--mode",
        "client-close",
        "--rate",
        &RATE.to_string(),
        "--leak-every",
        &LEAK_EVERY.to_string(),
        "--duration",
        &format!("{minutes}m"),
        // Long enough for every leak to pass the threshold and be reported.
        "--hold-leaks",
        "5s",
    ]);
    let churned = run_churn(&mut churn)?;
    // The churn has exited: its leaks end (process exit); let closetrace
    // see them go before it stops.
    std::thread::sleep(Duration::from_secs(3));
    let samples = sampler.finish();
    let mut trial = Trial::default();
    finish_tracer(Tracer::Default, running, &mut trial)?;
    let summary = trial.summary.clone().unwrap_or_default();
    let checks = judge(&churned, &summary, &samples, trial.max_rss_kib);
    let failed: Vec<&(String, bool, String)> = checks.iter().filter(|c| !c.1).collect();
    for (what, ok, got) in &checks {
        eprintln!("soak: [{}] {what}: {got}", if *ok { "ok" } else { "FAIL" });
    }
    let result = json!({
        "minutes": minutes,
        "churn": churned,
        "summary": summary,
        "rss_kib": samples.iter().step_by(5).map(|(t, k)| json!([t.round(), k])).collect::<Vec<_>>(),
        "checks": checks.iter().map(|(w, ok, got)| json!({"check": w, "ok": ok, "got": got})).collect::<Vec<_>>(),
    });
    fs::write(
        scratch.join("result.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    if !failed.is_empty() {
        bail!("soak failed {} of {} checks", failed.len(), checks.len());
    }
    eprintln!("soak: all {} checks passed", checks.len());
    Ok(())
}

/// The soak's verdicts: (what, passed, what was measured).
fn judge(
    churned: &Value,
    summary: &Value,
    samples: &[(f64, u64)],
    peak_kib: Option<u64>,
) -> Vec<(String, bool, String)> {
    let mut checks = Vec::new();
    let lost = summary["lost"].as_u64().unwrap_or(u64::MAX);
    checks.push((
        "no event lost at a moderate rate".into(),
        lost == 0,
        format!("{lost} lost of {}", summary["events"]),
    ));
    let created = churned["leaks"].as_u64().unwrap_or(0);
    let churn_pid = churned["pid"].as_u64().unwrap_or(0);
    let leaks = summary["leaks"].as_array().cloned().unwrap_or_default();
    let reported: u64 = leaks
        .iter()
        .filter(|l| l["pid"].as_u64() == Some(churn_pid))
        .map(|l| l["leaks"].as_u64().unwrap_or(0))
        .sum();
    let still_open: u64 = leaks.iter().map(|l| l["open"].as_u64().unwrap_or(0)).sum();
    checks.push((
        "every leak the generator made is reported, once".into(),
        created > 0 && reported == created,
        format!("{reported} reported of {created} made"),
    ));
    checks.push((
        "every leak ends when its holder exits".into(),
        still_open == 0,
        format!("{still_open} still open at exit"),
    ));
    let peak_mib = peak_kib.unwrap_or(u64::MAX) as f64 / 1024.0;
    checks.push((
        "peak RSS <= 64 MiB".into(),
        peak_mib <= 64.0,
        format!("{peak_mib:.1} MiB"),
    ));
    // The tables fill to their caps early (the TIME_WAIT attribution table
    // within a minute at this rate, its last doubling included); after
    // that memory must hold still.
    let half = samples.len() / 2;
    let first = samples.get(half).map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let growth_mib = (last as f64 - first as f64) / 1024.0;
    checks.push((
        "RSS flat over the second half (<= 4 MiB growth)".into(),
        samples.len() >= 8 && growth_mib <= 4.0,
        format!("{growth_mib:+.1} MiB over {} samples", samples.len()),
    ));
    // Once the churn is over, the per-socket maps hold only the host's
    // few sockets: anything that piled up is a map leak.
    for map in ["SOCKS", "WATCH"] {
        let m = &summary["kernel_maps"][map];
        let (entries, capacity) = (m["entries"].as_u64(), m["capacity"].as_u64());
        checks.push((
            format!("kernel map {map} back under 1% full after the churn"),
            matches!((entries, capacity), (Some(e), Some(c)) if e * 100 <= c),
            format!("{entries:?} of {capacity:?}"),
        ));
    }
    let tw = summary["time_wait"]["top"].as_array().map_or(0, Vec::len);
    checks.push((
        "TIME_WAIT was tracked".into(),
        tw > 0,
        format!("{tw} destinations at exit"),
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(lost: u64, leaks: u64, open: u64, socks: u64) -> Value {
        json!({
            "events": 100, "lost": lost,
            "leaks": [{"pid": 7, "comm": "churn", "leaks": leaks, "open": open}],
            "kernel_maps": {"SOCKS": {"entries": socks, "capacity": 65536},
                            "WATCH": {"entries": 0, "capacity": 65536}},
            "time_wait": {"top": [{"dport": 1}]}
        })
    }

    fn flat() -> Vec<(f64, u64)> {
        (0..20u32).map(|i| (f64::from(i), 40_000)).collect()
    }

    #[test]
    fn a_clean_soak_passes_and_each_fault_fails_its_check() {
        let churn = json!({"pid": 7, "leaks": 50});
        let ok = judge(&churn, &summary(0, 50, 0, 3), &flat(), Some(45_000));
        assert!(ok.iter().all(|c| c.1), "{ok:?}");
        let failing = |s: &Value, samples: &[(f64, u64)]| -> Vec<String> {
            judge(&churn, s, samples, Some(45_000))
                .into_iter()
                .filter(|c| !c.1)
                .map(|c| c.0)
                .collect()
        };
        assert_eq!(failing(&summary(1, 50, 0, 3), &flat()).len(), 1);
        assert_eq!(failing(&summary(0, 49, 0, 3), &flat()).len(), 1);
        assert_eq!(failing(&summary(0, 50, 2, 3), &flat()).len(), 1);
        assert_eq!(failing(&summary(0, 50, 0, 5000), &flat()).len(), 1);
        let growing: Vec<(f64, u64)> = (0..20u32)
            .map(|i| (f64::from(i), 40_000 + u64::from(i) * 1024))
            .collect();
        assert_eq!(failing(&summary(0, 50, 0, 3), &growing).len(), 1);
    }
}
