//! The report as one self-contained HTML page: the tables, and two charts
//! drawn to inline SVG with plotters (CLOSE_WAIT leaks per process over
//! time, TIME_WAIT per destination over time). Nothing is fetched when it
//! is opened, so it reads offline and can be mailed as one file.
use std::fmt::Write as _;

use plotters::prelude::*;

use super::Report;

/// Series drawn per chart; the rest are summed up in the tables.
const MAX_SERIES: usize = 8;
const SIZE: (u32, u32) = (960, 380);

/// Text for HTML: process names and addresses come from the traced
/// machine and may hold markup.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

type Series = (String, Vec<(f64, f64)>);

/// A step chart: each value holds until the next point, and the last until
/// the end of the run.
fn chart(title: &str, y_desc: &str, series: &[Series], end_s: f64) -> Result<String, String> {
    let x_max = end_s.max(1.0) * 1.02;
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let e = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .x_desc("seconds since the first record")
            .y_desc(y_desc)
            .draw()
            .map_err(|x| e(&x))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut steps = Vec::with_capacity(pts.len() * 2 + 1);
            for (j, &(x, y)) in pts.iter().enumerate() {
                if j > 0 {
                    steps.push((x, pts[j - 1].1));
                }
                steps.push((x, y));
            }
            if let Some(&(_, y)) = pts.last() {
                steps.push((end_s, y));
            }
            c.draw_series(LineSeries::new(steps, color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

fn leak_series(r: &Report) -> Vec<Series> {
    let mut v: Vec<_> = r
        .leak_series
        .iter()
        .map(|((who, comm), pts)| {
            let peak = pts.iter().map(|p| p.1).max().unwrap_or(0);
            (peak, format!("{comm} ({})", r.process_name(*who)), pts)
        })
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    v.into_iter()
        .take(MAX_SERIES)
        .map(|(_, name, pts)| {
            (
                name,
                pts.iter().map(|&(t, n)| (r.offset(t), n as f64)).collect(),
            )
        })
        .collect()
}

fn tw_series(r: &Report) -> Vec<Series> {
    r.destination_table()
        .into_iter()
        .take(MAX_SERIES)
        .filter_map(|(name, _)| {
            let pts = r.tw_series.get(name)?;
            Some((
                name.to_string(),
                pts.iter()
                    .map(|&(t, n)| (r.offset(t), f64::from(n)))
                    .collect(),
            ))
        })
        .collect()
}

fn section(out: &mut String, title: &str, svg: Result<String, String>, empty: &str, has: bool) {
    let _ = writeln!(out, "<h2>{}</h2>", esc(title));
    match (has, svg) {
        (false, _) => {
            let _ = writeln!(out, "<p class=\"none\">{}</p>", esc(empty));
        }
        (true, Ok(svg)) => {
            let _ = writeln!(out, "<div class=\"chart\">{svg}</div>");
        }
        (true, Err(e)) => {
            let _ = writeln!(out, "<p class=\"none\">chart failed: {}</p>", esc(&e));
        }
    }
}

/// The whole page.
pub fn render(r: &Report, source: &str) -> String {
    let mut out = String::new();
    let end = r.span_s();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>closetrace report: {src}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}\
         th{{background:#f3f3f3}}.none{{color:#777}}\
         </style></head><body>\n<h1>closetrace report</h1>\n<p>{src}: {recs} records \
         over {end:.1} s, {bad} malformed lines skipped, {lost} events lost in the kernel.</p>\n",
        src = esc(source),
        recs = r.records,
        bad = r.malformed.len(),
        lost = r.lost,
    );
    let leaks = leak_series(r);
    section(
        &mut out,
        "CLOSE_WAIT leaks per process",
        chart("Open CLOSE_WAIT leaks", "leaked sockets", &leaks, end),
        "No CLOSE_WAIT leaks were reported.",
        !leaks.is_empty(),
    );
    if !r.processes.is_empty() {
        out.push_str(
            "<table><tr><th>pid</th><th>process</th><th>leaks</th><th>open at end</th>\
             <th>oldest (s)</th><th>ended</th></tr>\n",
        );
        for (who, p) in r.leak_table() {
            let ended = r.ended_text(who);
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
                r.process_name(who),
                esc(&p.comm),
                p.leaks,
                p.open,
                p.oldest_ms / 1000.0,
                esc(&ended)
            );
        }
        out.push_str("</table>\n");
    }
    if !r.diagnoses.is_empty() || !r.fd_exhaustion.is_empty() {
        out.push_str(
            "<h2>What the leaking processes were doing</h2>\n\
             <table><tr><th>pid</th><th>latest diagnosis</th></tr>\n",
        );
        for (who, v) in r.diagnoses.iter().chain(&r.fd_exhaustion) {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                r.process_name(*who),
                esc(v)
            );
        }
        out.push_str("</table>\n");
    }
    let tw = tw_series(r);
    section(
        &mut out,
        "TIME_WAIT per destination",
        chart("TIME_WAIT sockets", "sockets", &tw, end),
        "No TIME_WAIT pressure was recorded.",
        !tw.is_empty(),
    );
    if !r.destinations.is_empty() {
        out.push_str("<table><tr><th>destination</th><th>peak</th><th>peak ratio</th></tr>\n");
        for (name, d) in r.destination_table().into_iter().take(10) {
            let ratio = d.peak_ratio.map_or("-".into(), |x| format!("{x:.2}"));
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{ratio}</td></tr>",
                esc(name),
                d.peak
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>connect() and bind() errors</h2>\n");
    if r.errors_by_process.is_empty() {
        out.push_str("<p class=\"none\">None.</p>\n");
    } else {
        out.push_str("<table><tr><th>pid</th><th>process</th><th>errno</th><th>count</th></tr>\n");
        for ((pid, comm, errno), n) in &r.errors_by_process {
            let _ = writeln!(
                out,
                "<tr><td>{pid}</td><td>{}</td><td>{}</td><td>{n}</td></tr>",
                esc(comm),
                esc(errno)
            );
        }
        out.push_str("</table>\n");
    }
    if !r.malformed.is_empty() {
        out.push_str("<h2>Malformed lines (skipped)</h2>\n<ul>\n");
        for (n, why) in r.malformed.iter().take(50) {
            let _ = writeln!(out, "<li>line {n}: {}</li>", esc(why));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_both_charts_and_escapes_names() {
        let log = "{\"type\":\"close_wait_leak\",\"ts\":\"2026-11-23T10:00:01Z\",\"pid\":7,\
                   \"comm\":\"<script>x\",\"sock\":1,\"close_wait_ms\":1}\n\
                   {\"type\":\"time_wait_top\",\"ts\":\"2026-11-23T10:00:03Z\",\"top\":[{\"saddr\":\"10.0.0.2\",\
                   \"daddr\":\"10.0.0.1\",\"dport\":80,\"time_wait\":50,\"ratio\":0.25}]}\n";
        let r = Report::read(log.as_bytes()).unwrap();
        let page = render(&r, "run<1>.jsonl");
        assert_eq!(page.matches("<svg").count(), 2, "{page}");
        assert!(page.matches("<polyline").count() >= 2, "a line per series");
        assert!(!page.contains("<script>"), "names are escaped");
        assert!(page.contains("&lt;script&gt;x (7)"));
        assert!(page.contains("run&lt;1&gt;.jsonl"));
    }

    #[test]
    fn an_empty_report_says_so_instead_of_drawing() {
        let page = render(&Report::default(), "empty");
        assert!(!page.contains("<svg"));
        assert!(page.contains("No CLOSE_WAIT leaks"));
    }
}
