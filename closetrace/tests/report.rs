//! `closetrace report`: the binary, run on a file (no root needed), and its
//! HTML opened in headless Chromium to check the charts really render.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CLOSETRACE: &str = env!("CARGO_BIN_EXE_closetrace");
const REQUIRE_ENV: &str = "CLOSETRACE_REQUIRE_KERNEL_TESTS";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("closetrace-report-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A run as closetrace writes it: a leaking server whose leaks pile up and
/// end when it exits, and a client driving one destination into TIME_WAIT
/// pressure until connect() fails. Plus two lines a broken pipe could leave.
fn events() -> String {
    let mut lines = vec![
        r#"{"type":"ready","version":1,"closetrace":"0.1.0","hooks":[],"pids":[],"mode":"findings"}"#
            .to_string(),
    ];
    let ts = |s: u32| format!("2026-11-23T10:00:{s:02}.000000Z");
    for i in 0..6u32 {
        lines.push(format!(
            r#"{{"type":"close_wait_leak","ts":"{}","pid":4242,"comm":"swoole-server","family":"ipv4","saddr":"127.0.0.1","sport":9501,"daddr":"127.0.0.1","dport":{},"sock":{},"close_wait_ms":1000.0,"since":"transition","recv_q":0,"holders":[],"report":1,"netns":1,"cgroup":0}}"#,
            ts(2 + 3 * i),
            40000 + i,
            100 + i
        ));
    }
    for t in 0..6u32 {
        lines.push(format!(
            r#"{{"type":"time_wait_top","ts":"{}","top":[{{"saddr":"127.0.0.1","daddr":"10.1.2.3","dport":80,"time_wait":{},"ratio":{}}}]}}"#,
            ts(5 + 5 * t),
            30 * (t + 1),
            0.15 * f64::from(t + 1)
        ));
    }
    lines.push("{\"type\":\"close_wait_leak\",\"ts\":".into());
    lines.push(format!(
        r#"{{"type":"connect_error","ts":"{}","pid":5151,"comm":"php-fpm","errno":"EADDRNOTAVAIL","family":"ipv4","daddr":"10.1.2.3","dport":80,"time_wait":180,"suppressed":9}}"#,
        ts(34)
    ));
    for i in 0..6u32 {
        lines.push(format!(
            r#"{{"type":"close_wait_resolved","ts":"{}","pid":4242,"comm":"swoole-server","family":"ipv4","saddr":"127.0.0.1","sport":9501,"daddr":"127.0.0.1","dport":{},"sock":{},"close_wait_ms":2000.0,"how":"process_exit","by_pid":4242}}"#,
            ts(40 + i),
            40000 + i,
            100 + i
        ));
    }
    lines.push("\u{1b}[31m not json".into());
    lines.join("\n") + "\n"
}

fn report(dir: &Path) -> (Output, PathBuf) {
    let input = dir.join("events.jsonl");
    std::fs::write(&input, events()).expect("write events");
    let html = dir.join("report.html");
    let out = Command::new(CLOSETRACE)
        .arg("report")
        .arg(&input)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("run closetrace report");
    (out, html)
}

#[test]
fn report_tables_and_malformed_lines() {
    let dir = scratch("text");
    let (out, html) = report(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for needle in [
        "swoole-server",
        "process_exit 6",
        "10.1.2.3:80",
        "180",
        "EADDRNOTAVAIL 10",
        "php-fpm(5151) 10",
        "2 malformed lines skipped",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // Malformed lines by number, on stderr, without their escape sequences.
    assert!(
        err.contains("line 14:") && err.contains("line 22:"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(html.exists());
    // Bad input: a clear error, exit 2.
    let missing = Command::new(CLOSETRACE)
        .args(["report", "/no/such/events.jsonl"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        let msg = "headless Chromium is not installed (scripts/bootstrap --test-deps installs it)";
        if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED html_report_renders_in_chromium: {msg}");
    }
    found
}

/// Chromium with the flags that keep it off the network and quiet, killed
/// if it hangs.
fn headless(browser: &str, profile: &Path, args: &[String]) -> Output {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("chromium output")
}

#[test]
fn html_report_renders_in_chromium() {
    let Some(browser) = chromium() else {
        return;
    };
    let dir = scratch("html");
    let (out, html) = report(&dir);
    assert!(out.status.success());
    let url = format!("file://{}", html.display());

    // The DOM Chromium built: both charts, with their lines and labels.
    let dom = headless(
        browser,
        &dir.join("profile-dom"),
        &["--dump-dom".into(), url.clone()],
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<svg").count(), 2, "two charts:\n{dom}");
    assert!(dom.matches("<polyline").count() >= 2, "a line per chart");
    assert!(
        dom.contains("swoole-server (4242)"),
        "the leak series is labelled"
    );
    assert!(
        dom.contains("10.1.2.3:80"),
        "the TIME_WAIT series is labelled"
    );

    // What it painted: not blank, and the series' colours are on the page.
    let png = dir.join("shot.png");
    headless(
        browser,
        &dir.join("profile-shot"),
        &[
            "--window-size=1100,1500".into(),
            format!("--screenshot={}", png.display()),
            url,
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png).expect("chromium wrote a screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let px = info.color_type.samples();
    assert!(px >= 3, "colour screenshot");
    let pixels = &buf[..info.buffer_size()];
    let (mut ink, mut colour) = (0usize, 0usize);
    for p in pixels.chunks(px) {
        let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
        if r.min(g).min(b) < 200 {
            ink += 1;
        }
        if r.max(g).max(b) - r.min(g).min(b) > 80 {
            colour += 1;
        }
    }
    let total = pixels.len() / px;
    assert!(
        ink > total / 200,
        "the page is blank: {ink} of {total} pixels inked"
    );
    assert!(
        colour > 500,
        "no coloured chart lines painted: {colour} pixels"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
