//! The per-syscall tax: while any syscall tracepoint is attached, every
//! syscall of every process takes the kernel's slower path, whatever its
//! number. Measured as ns per getppid() (a syscall that does next to
//! nothing) in this process, under each tracer, rounds interleaved.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bench::{Bins, Tracer, start_tracer};
use crate::measure::{Netns, interrupt_and_reap, median};

const CALLS: u32 = 2_000_000;

/// The configurations compared: (label, tracer, extra flags).
const CONFIGS: &[(&str, Tracer, &[&str])] = &[
    ("untraced", Tracer::Untraced, &[]),
    ("closetrace (default)", Tracer::Default, &[]),
    (
        "closetrace --no-syscall-hooks",
        Tracer::Default,
        &["--no-syscall-hooks"],
    ),
    ("tcpstates (to file)", Tracer::Tcpstates, &[]),
];

pub fn run(bins: &Bins, scratch: &std::path::Path, rounds: usize) -> anyhow::Result<Value> {
    let ns = Netns::new("closetrace-bench-sys")?;
    let configs: Vec<_> = CONFIGS
        .iter()
        .filter(|(_, t, _)| *t != Tracer::Tcpstates || bins.tcpstates.is_some())
        .collect();
    let mut samples = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            let (_, tracer, extra) = configs[i];
            let running = start_tracer(&ns, bins, scratch, *tracer, extra)?;
            samples[i].push(ns_per_syscall());
            if let Some(r) = running {
                interrupt_and_reap(r.child, Duration::from_secs(60))?;
            }
        }
    }
    let untraced = median(samples[0].clone()).unwrap_or(0.0);
    let rows: Vec<Value> = configs
        .iter()
        .zip(samples)
        .map(|((label, _, _), s)| {
            let ns = median(s).unwrap_or(0.0);
            json!({
                "tracer": label,
                "ns_per_syscall": (ns * 10.0).round() / 10.0,
                "of_untraced": if untraced > 0.0 { (ns / untraced * 100.0).round() / 100.0 } else { 0.0 },
            })
        })
        .collect();
    Ok(json!({ "syscall": "getppid", "calls": CALLS, "rows": rows }))
}

/// The median of three timed loops of getppid().
fn ns_per_syscall() -> f64 {
    let once = || {
        let start = Instant::now();
        for _ in 0..CALLS {
            // SAFETY: getppid has no preconditions; the raw syscall keeps
            // libc from answering without entering the kernel.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        start.elapsed().as_nanos() as f64 / f64::from(CALLS)
    };
    median((0..3).map(|_| once()).collect()).unwrap_or(0.0)
}

/// The table for the results file and the README.
pub fn markdown(v: &Value) -> String {
    let mut s = String::from(
        "\n**Every syscall on the host** (ns per getppid(), whatever the tracer hooks)\n\n\
         | tracer | ns / syscall | of untraced |\n|---|---:|---:|\n",
    );
    for row in v["rows"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | {:.2} |\n",
            row["tracer"].as_str().unwrap_or(""),
            row["ns_per_syscall"],
            row["of_untraced"].as_f64().unwrap_or(0.0)
        );
    }
    s
}
