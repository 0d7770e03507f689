//! The benchmark's results as the Markdown table committed to the README.
use std::fs;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// Write the Markdown table for a results file again (after the table's
/// layout changed, without measuring again).
pub fn render(results: &Path) -> anyhow::Result<()> {
    let text =
        fs::read_to_string(results).with_context(|| format!("reading {}", results.display()))?;
    let r: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a bench results file", results.display()))?;
    let table = markdown(&r);
    fs::write(results.with_extension("md"), &table)?;
    println!("{table}");
    Ok(())
}

/// The side-by-side table, as committed to the README.
pub fn markdown(r: &Value) -> String {
    let m = &r["machine"];
    let mut s = format!(
        "Measured {} on {} ({} CPUs, {} MiB, kernel {}); medians of {} rounds of {} s{}; \
         \"retained\" and \"of untraced\" are medians of each round's ratio to that round's untraced run.\n",
        r["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or("?"),
        m["cpus"],
        m["mem_mib"],
        m["kernel"].as_str().unwrap_or("?"),
        r["rounds"],
        r["seconds_per_trial"],
        if r["quick"] == true { " (quick)" } else { "" },
    );
    let opt = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    };
    for w in r["workloads"].as_array().into_iter().flatten() {
        s += &format!(
            "\n**{}** (untraced: {} connections/s)\n\n",
            w["workload"].as_str().unwrap_or(""),
            opt(&w["untraced_conn_per_s"])
        );
        s += "| tracer | conn/s | retained | events | lost | CPU s | CPU s / 100k events | BPF ns / run | runs / conn | peak RSS MiB | lost at half rate |\n";
        s += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for row in w["results"].as_array().into_iter().flatten() {
            let retained = row["retained"]
                .as_f64()
                .map_or("-".into(), |v| format!("{:.0} %", v * 100.0));
            // Per 100k events says nothing when a handful crossed over.
            let per_100k = if row["events"].as_f64().unwrap_or(0.0) < 10_000.0 {
                "-".to_string()
            } else {
                opt(&row["cpu_s_per_100k_events"])
            };
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row["tracer"].as_str().unwrap_or(""),
                opt(&row["conn_per_s"]),
                retained,
                opt(&row["events"]),
                opt(&row["lost"]),
                opt(&row["cpu_s"]),
                per_100k,
                opt(&row["bpf_ns_per_run"]),
                opt(&row["bpf_runs_per_conn"]),
                opt(&row["peak_rss_mib"]),
                opt(&row["half_rate"]["lost"]),
            );
        }
        s += &per_program(w, "conn");
    }
    for l in r["servers"].as_array().into_iter().flatten() {
        s += &format!(
            "\n**{}** (untraced: {} requests/s)\n\n",
            l["load"].as_str().unwrap_or(""),
            opt(&l["untraced_req_per_s"])
        );
        s += "| tracer | req/s | of untraced | BPF ns / run | BPF runs / request | CPU s |\n";
        s += "|---|---:|---:|---:|---:|---:|\n";
        for row in l["results"].as_array().into_iter().flatten() {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                row["tracer"].as_str().unwrap_or(""),
                opt(&row["req_per_s"]),
                row["ratio"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{:.0} %", v * 100.0)),
                opt(&row["bpf_ns_per_run"]),
                opt(&row["bpf_runs_per_req"]),
                opt(&row["cpu_s"]),
            );
        }
        s += &per_program(l, "request");
    }
    if r["syscalls"].is_object() {
        s += &crate::bench_syscalls::markdown(&r["syscalls"]);
    }
    let b = &r["bounded"];
    s += &format!(
        "\nBounded run: {} connections (client-close, 0.1% leaked) through closetrace: peak RSS {} MiB \
         (resident at the end: {} MiB), growth after the first quarter {} MiB, {} events, {} lost, \
         {} of {} leaks reported.\n",
        opt(&b["connections"]),
        opt(&b["peak_rss_mib"]),
        opt(&b["rss_at_end_mib"]),
        opt(&b["rss_growth_after_first_quarter_mib"]),
        opt(&b["events"]),
        opt(&b["lost"]),
        opt(&b["leaks_reported"]),
        opt(&b["leaks_created"]),
    );
    if r["scale"].is_object() {
        s += &crate::bench_scale::markdown(&r["scale"]);
    }
    s
}

fn num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |f| f.to_string())
}

/// One line per traced row: each BPF program's ns per run and runs per
/// `unit`, the busiest first.
fn per_program(load: &Value, unit: &str) -> String {
    let mut s = String::new();
    for row in load["results"].as_array().into_iter().flatten() {
        let Some(programs) = row["bpf_programs"].as_array().filter(|p| !p.is_empty()) else {
            continue;
        };
        let parts: Vec<String> = programs
            .iter()
            .map(|p| {
                format!(
                    "`{}` {} ns × {}",
                    p["program"].as_str().unwrap_or("?"),
                    num(&p["ns_per_run"]),
                    num(&p["runs_per_unit"])
                )
            })
            .collect();
        s += &format!(
            "\n{}, BPF ns per run × runs per {unit}: {}.\n",
            row["tracer"].as_str().unwrap_or(""),
            parts.join(", ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn table_rows_and_sparse_cells() {
        let r = json!({
            "date": "2026-11-23", "rounds": 5, "seconds_per_trial": 5, "quick": false,
            "machine": {"cpu": "X", "cpus": 2, "mem_mib": 1024, "kernel": "6.1"},
            "workloads": [{"workload": "rst", "untraced_conn_per_s": 50000.0, "results": [
                {"tracer": "untraced", "conn_per_s": 50000.0, "retained": 1.0},
                {"tracer": "closetrace (default)", "conn_per_s": 45000.0, "retained": 0.9,
                 "events": 4.0, "lost": 0.0, "cpu_s": 0.01, "cpu_s_per_100k_events": 250.0,
                 "bpf_ns_per_run": 233.0, "bpf_runs_per_conn": 10.0, "peak_rss_mib": 49.2,
                 "half_rate": {"lost": 0},
                 "bpf_programs": [{"program": "inet_sock_set_s", "ns_per_run": 90.0,
                                   "runs_per_unit": 7.0}]},
            ]}],
            "bounded": {"connections": 1000, "peak_rss_mib": 49.0,
                        "rss_growth_after_first_quarter_mib": 0.1, "events": 10,
                        "lost": 0, "leaks_reported": 1, "leaks_created": 1},
        });
        let t = markdown(&r);
        assert!(t.contains("**rst** (untraced: 50000 connections/s)"), "{t}");
        assert!(t.contains("| untraced | 50000 | 100 % | - |"), "{t}");
        // Four events: no per-100k figure.
        assert!(
            t.contains(
                "| closetrace (default) | 45000 | 90 % | 4 | 0 | 0.01 | - | 233 | 10 | 49.2 | 0 |"
            ),
            "{t}"
        );
        assert!(t.contains("1 of 1 leaks reported"), "{t}");
        assert!(
            t.contains(
                "closetrace (default), BPF ns per run × runs per conn: `inet_sock_set_s` 90 ns × 7."
            ),
            "{t}"
        );
    }
}
