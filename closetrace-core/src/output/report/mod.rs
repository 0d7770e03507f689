//! `closetrace report FILE`: reads JSON lines closetrace wrote (no root
//! needed) and sums them up: leaks per process, the busiest TIME_WAIT
//! destinations, errors, losses and the time range; `--html` adds charts.
//!
//! Input is untrusted: a line that is not JSON, or a known record missing
//! a field it needs, is reported with its line number and skipped. Record
//! types this version does not know are counted and ignored, so newer
//! output still reads.
mod html;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead};
use std::time::SystemTime;

use crate::output::records::{BindError, Caller, ConnectError, LeakStats, Record, Ts};
use crate::output::verdict::{exhaustion_text, verdict};

pub use html::render as render_html;

/// Longest line read whole; longer ones are skipped as malformed (a
/// closetrace record is well under a kilobyte).
const MAX_LINE: usize = 1 << 20;

/// A TIME_WAIT destination's peak.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Destination {
    pub peak: u32,
    pub peak_ratio: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    /// Records of types this version does not summarise.
    pub other: u64,
    /// (line number, why), in order.
    pub malformed: Vec<(u64, String)>,
    pub first: Option<SystemTime>,
    pub last: Option<SystemTime>,
    /// Leaks per process (`pid_start` null in older files).
    pub processes: BTreeMap<Process, LeakStats>,
    /// How each process's leaks ended (`closed`, `process_exit`, ...).
    pub ended: BTreeMap<Process, BTreeMap<String, u64>>,
    pub destinations: BTreeMap<String, Destination>,
    /// (syscall, errno) -> failures, suppressed ones included.
    pub errors: BTreeMap<(String, String), u64>,
    /// (pid, comm, errno) -> failures.
    pub errors_by_process: BTreeMap<(u32, String, String), u64>,
    pub lost: u64,
    /// Open leaks per process over time: (when, open now), at each change.
    pub leak_series: BTreeMap<(Process, String), Vec<(SystemTime, u64)>>,
    /// TIME_WAIT sockets per destination over time.
    pub tw_series: BTreeMap<String, Vec<(SystemTime, u32)>>,
    /// The latest diagnosis verdict of each leaking process.
    pub diagnoses: BTreeMap<Process, String>,
    /// The latest fd_exhaustion line of each process.
    pub fd_exhaustion: BTreeMap<Process, String>,
    /// Leaks being tracked: socket -> (process, comm).
    leak_owner: HashMap<u64, (Process, String)>,
}

/// A process as records name it: (pid, pid_start). A pid that two
/// processes had in turn is two processes. Pid 0: not known.
pub type Process = (u32, Option<u64>);

fn dest_name(daddr: std::net::IpAddr, dport: u16) -> String {
    crate::output::text::endpoint(daddr, dport)
}

impl Report {
    /// Read every line of `input`; only I/O errors fail.
    pub fn read(input: impl BufRead) -> io::Result<Report> {
        let mut r = Report::default();
        let mut input = input;
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            buf.clear();
            let got =
                io::Read::take(&mut input, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
            if got == 0 {
                break;
            }
            n += 1;
            if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
                r.malformed
                    .push((n, format!("longer than {MAX_LINE} bytes")));
                // Skip the rest of the line.
                let mut rest = Vec::new();
                input.read_until(b'\n', &mut rest)?;
                continue;
            }
            r.line(n, &buf);
        }
        r.finish();
        Ok(r)
    }

    fn line(&mut self, n: u64, raw: &[u8]) {
        let Ok(text) = std::str::from_utf8(raw) else {
            self.malformed.push((n, "not UTF-8".into()));
            return;
        };
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        match serde_json::from_str::<Record>(text) {
            Ok(rec) => {
                self.records += 1;
                self.apply(rec);
            }
            Err(e) => self.malformed.push((n, e.to_string())),
        }
    }

    fn when(&mut self, ts: Ts) -> SystemTime {
        let t = ts.0;
        self.first = Some(self.first.map_or(t, |f| f.min(t)));
        self.last = Some(self.last.map_or(t, |l| l.max(t)));
        t
    }

    fn apply(&mut self, rec: Record<'_>) {
        match rec {
            Record::CloseWaitLeak(r) => {
                let t = self.when(r.ts);
                let who = (r.pid.unwrap_or(0), r.pid_start);
                let comm = r.comm.map_or_else(|| "?".to_string(), |c| c.into_owned());
                let p = self.processes.entry(who).or_insert_with(|| LeakStats {
                    pid: who.0,
                    pid_start: who.1,
                    ..LeakStats::default()
                });
                p.comm.clone_from(&comm);
                p.oldest_ms = p.oldest_ms.max(r.close_wait_ms);
                if let Some(v) = r.diagnosis.as_ref().and_then(verdict) {
                    self.diagnoses.insert(who, v.trim().to_string());
                }
                if self
                    .leak_owner
                    .insert(r.sock.sock, (who, comm.clone()))
                    .is_none()
                {
                    p.leaks += 1;
                    p.open += 1;
                    let open = p.open;
                    self.open_leaks_at(t, who, comm, open);
                }
            }
            Record::CloseWaitResolved(r) => {
                let t = self.when(r.ts);
                if let Some((who, comm)) = self.leak_owner.remove(&r.sock.sock)
                    && let Some(p) = self.processes.get_mut(&who)
                {
                    p.open = p.open.saturating_sub(1);
                    p.oldest_ms = p.oldest_ms.max(r.close_wait_ms);
                    let ended = self.ended.entry(who).or_default();
                    *ended.entry(r.how.name().to_string()).or_default() += 1;
                    let open = p.open;
                    self.open_leaks_at(t, who, comm, open);
                }
            }
            Record::TimeWaitPressure(r) => {
                let t = self.when(r.ts);
                self.destination(t, dest_name(r.daddr, r.dport), r.time_wait, Some(r.ratio));
            }
            Record::TimeWaitTop(r) => {
                let t = self.when(r.ts);
                for d in r.top {
                    self.destination(t, dest_name(d.daddr, d.dport), d.time_wait, d.ratio);
                }
            }
            Record::ConnectError(ConnectError {
                caller, suppressed, ..
            }) => self.error("connect", &caller, suppressed),
            Record::BindError(BindError {
                caller, suppressed, ..
            }) => self.error("bind", &caller, suppressed),
            Record::Lost(l) => self.lost += l.count,
            Record::FdExhaustion(r) => {
                self.when(r.ts);
                let line = exhaustion_text(&r);
                let line = line.trim_start_matches("!! ").to_string();
                self.fd_exhaustion.insert((r.pid, r.pid_start), line);
            }
            // What the report does not sum: counted, as are types this
            // version does not know.
            Record::Ready(_)
            | Record::State(_)
            | Record::Close(_)
            | Record::ListenOverflow(_)
            | Record::Summary(_)
            | Record::Unknown => self.other += 1,
        }
    }

    fn destination(&mut self, t: SystemTime, name: String, n: u32, ratio: Option<f64>) {
        let d = self.destinations.entry(name.clone()).or_default();
        if n >= d.peak {
            d.peak = n;
            d.peak_ratio = ratio.or(d.peak_ratio);
        }
        self.tw_series.entry(name).or_default().push((t, n));
    }

    /// A failure and the identical ones suppressed after it.
    fn error(&mut self, call: &str, c: &Caller<'_>, suppressed: u64) {
        self.when(c.ts);
        let (pid, comm) = (c.pid, &c.comm);
        let n = 1 + suppressed;
        let errno = c.errno.name().to_string();
        *self
            .errors
            .entry((call.to_string(), errno.clone()))
            .or_default() += n;
        *self
            .errors_by_process
            .entry((pid, comm.to_string(), errno))
            .or_default() += n;
    }

    /// A point of the open-leaks chart: `open` leaks of this process now.
    fn open_leaks_at(&mut self, t: SystemTime, who: Process, comm: String, open: u64) {
        self.leak_series
            .entry((who, comm))
            .or_default()
            .push((t, open));
    }

    /// Series points arrive in file order; charts want time order.
    fn finish(&mut self) {
        for s in self.leak_series.values_mut() {
            s.sort_by_key(|p| p.0);
        }
        for s in self.tw_series.values_mut() {
            s.sort_by_key(|p| p.0);
        }
    }

    /// Seconds from the first record to `t`.
    pub fn offset(&self, t: SystemTime) -> f64 {
        self.first
            .and_then(|f| t.duration_since(f).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }

    pub fn span_s(&self) -> f64 {
        self.last.map_or(0.0, |l| self.offset(l))
    }

    /// Processes by leaks reported, most first.
    pub fn leak_table(&self) -> Vec<(Process, &LeakStats)> {
        let mut v: Vec<_> = self.processes.iter().map(|(p, l)| (*p, l)).collect();
        v.sort_by(|a, b| LeakStats::by_leaks(a.1, b.1));
        v
    }

    /// How a process's leaks ended, as `closed 2, process_exit 1`; empty
    /// when none did.
    pub fn ended_text(&self, who: Process) -> String {
        let Some(ended) = self.ended.get(&who) else {
            return String::new();
        };
        let parts: Vec<String> = ended.iter().map(|(h, n)| format!("{h} {n}")).collect();
        parts.join(", ")
    }

    /// How tables and charts name a process: its pid, "?" when unknown,
    /// and pid@start when processes had that pid in turn.
    pub fn process_name(&self, who: Process) -> String {
        let (pid, start) = who;
        if pid == 0 {
            return "?".into();
        }
        let reused = self.processes.keys().filter(|k| k.0 == pid).count() > 1;
        match start {
            Some(t) if reused => format!("{pid}@{t}"),
            _ => pid.to_string(),
        }
    }

    /// Destinations by peak TIME_WAIT, most first.
    pub fn destination_table(&self) -> Vec<(&str, &Destination)> {
        let mut v: Vec<_> = self
            .destinations
            .iter()
            .map(|(n, d)| (n.as_str(), d))
            .collect();
        v.sort_by(|a, b| b.1.peak.cmp(&a.1.peak).then(a.0.cmp(b.0)));
        v
    }

    /// The plain-text summary.
    pub fn to_text(&self, source: &str) -> String {
        let mut s = String::new();
        let stamp = |t: Option<SystemTime>| {
            t.map(|t| humantime::format_rfc3339_millis(t).to_string())
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            s,
            "closetrace report: {}",
            crate::output::text::printable(source)
        );
        let _ = writeln!(
            s,
            "  {} .. {} ({:.1} s), {} records, {} malformed lines skipped",
            stamp(self.first),
            stamp(self.last),
            self.span_s(),
            self.records,
            self.malformed.len()
        );
        let _ = writeln!(s, "\nCLOSE_WAIT leaks by process");
        if self.processes.is_empty() {
            let _ = writeln!(s, "  none");
        } else {
            let _ = writeln!(
                s,
                "  {:<8} {:<16} {:>6} {:>6} {:>12}  ENDED",
                "PID", "COMM", "LEAKS", "OPEN", "OLDEST"
            );
            for (who, p) in self.leak_table() {
                let ended = self.ended_text(who);
                let _ = writeln!(
                    s,
                    "  {:<8} {:<16} {:>6} {:>6} {:>10.1} s  {}",
                    self.process_name(who),
                    crate::output::text::printable(&p.comm),
                    p.leaks,
                    p.open,
                    p.oldest_ms / 1000.0,
                    if ended.is_empty() { "-" } else { &ended }
                );
            }
        }
        if !self.diagnoses.is_empty() || !self.fd_exhaustion.is_empty() {
            let _ = writeln!(s, "\nWhat the leaking processes were doing (latest)");
            for (who, v) in &self.diagnoses {
                let _ = writeln!(s, "  {:<8} {v}", self.process_name(*who));
            }
            for (who, v) in &self.fd_exhaustion {
                let _ = writeln!(s, "  {:<8} {v}", self.process_name(*who));
            }
        }
        let _ = writeln!(s, "\nTop TIME_WAIT destinations");
        if self.destinations.is_empty() {
            let _ = writeln!(s, "  none");
        } else {
            let _ = writeln!(
                s,
                "  {:<28} {:>8} {:>10}",
                "DESTINATION", "PEAK", "PEAK RATIO"
            );
            for (name, d) in self.destination_table().into_iter().take(10) {
                let ratio = d.peak_ratio.map_or("-".into(), |r| format!("{r:.2}"));
                let _ = writeln!(
                    s,
                    "  {:<28} {:>8} {:>10}",
                    crate::output::text::printable(name),
                    d.peak,
                    ratio
                );
            }
        }
        let _ = writeln!(s, "\nconnect()/bind() errors");
        if self.errors.is_empty() {
            let _ = writeln!(s, "  none");
        }
        for ((call, errno), n) in &self.errors {
            let who: Vec<String> = self
                .errors_by_process
                .iter()
                .filter(|((_, _, e), _)| e == errno)
                .map(|((pid, comm, _), n)| {
                    format!("{}({pid}) {n}", crate::output::text::printable(comm))
                })
                .collect();
            let _ = writeln!(
                s,
                "  {call} {} {n}: {}",
                crate::output::text::printable(errno),
                who.join(", ")
            );
        }
        let _ = writeln!(s, "\nEvents lost in the kernel: {}", self.lost);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"type":"ready","version":1,"hooks":[]}
{"type":"close_wait_leak","ts":"2026-11-23T10:00:01Z","pid":10,"comm":"swoole","sock":1,"close_wait_ms":1000.0,"report":1}
{"type":"close_wait_leak","ts":"2026-11-23T10:00:02Z","pid":10,"comm":"swoole","sock":2,"close_wait_ms":1000.0,"report":1}
{"type":"close_wait_leak","ts":"2026-11-23T10:00:04Z","pid":10,"comm":"swoole","sock":1,"close_wait_ms":3000.0,"report":2}
not json at all
{"type":"close_wait_resolved","ts":"2026-11-23T10:00:05Z","pid":10,"comm":"swoole","sock":1,"close_wait_ms":4500.5,"how":"process_exit"}
{"type":"time_wait_top","ts":"2026-11-23T10:00:03Z","top":[{"saddr":"10.0.0.2","daddr":"10.0.0.1","dport":80,"time_wait":50,"ratio":0.25}]}
{"type":"time_wait_pressure","ts":"2026-11-23T10:00:06Z","level":"warn","daddr":"10.0.0.1","dport":80,"time_wait":120,"ratio":0.6}
{"type":"connect_error","ts":"2026-11-23T10:00:07Z","pid":20,"comm":"php-fpm","errno":"EADDRNOTAVAIL","suppressed":4}
{"type":"close_wait_leak","ts":"2026-11-23T10:00:08Z","pid":10}
{"type":"lost","count":3,"total":3}
{"type":"some_future_record","x":1}
"#;

    #[test]
    fn sums_up_a_run() {
        let r = Report::read(LOG.as_bytes()).unwrap();
        let lines: Vec<u64> = r.malformed.iter().map(|m| m.0).collect();
        assert_eq!(lines, vec![5, 10], "{:?}", r.malformed);
        let p = &r.processes[&(10, None)];
        assert_eq!((p.leaks, p.open), (2, 1));
        assert_eq!(p.oldest_ms, 4500.5);
        assert_eq!(r.ended[&(10, None)]["process_exit"], 1);
        let d = &r.destinations["10.0.0.1:80"];
        assert_eq!((d.peak, d.peak_ratio), (120, Some(0.6)));
        assert_eq!(r.errors[&("connect".into(), "EADDRNOTAVAIL".into())], 5);
        assert_eq!(r.lost, 3);
        assert_eq!(r.other, 2, "ready and the unknown type");
        assert_eq!(r.span_s(), 6.0);
        // Open leaks over time: 1, 2, then 1 after the resolution.
        let series: Vec<u64> = r.leak_series[&((10, None), "swoole".into())]
            .iter()
            .map(|p| p.1)
            .collect();
        assert_eq!(series, vec![1, 2, 1]);
        assert_eq!(r.tw_series["10.0.0.1:80"].len(), 2);
        let text = r.to_text("run.jsonl");
        for needle in [
            "swoole",
            "10.0.0.1:80",
            "EADDRNOTAVAIL 5",
            "php-fpm(20) 5",
            "2 malformed",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }

    #[test]
    fn hostile_input_is_skipped_not_fatal() {
        let mut input = Vec::new();
        input.extend_from_slice(b"\xff\xfe binary\n");
        input.extend_from_slice(&vec![b'x'; MAX_LINE + 10]);
        input.extend_from_slice(b"\n{\"type\":\"lost\",\"count\":1}\n");
        input.extend_from_slice(
            b"{\"type\":\"close_wait_leak\",\"ts\":\"yesterday\",\"sock\":1,\"close_wait_ms\":1}\n",
        );
        input.extend_from_slice(b"{\"type\":\"lost\",\"count\":-1}\n[1,2]\n\"str\"\nnull\n");
        let r = Report::read(input.as_slice()).unwrap();
        let lines: Vec<u64> = r.malformed.iter().map(|m| m.0).collect();
        assert_eq!(lines, vec![1, 2, 4, 5, 6, 7, 8], "{:?}", r.malformed);
        assert!(r.malformed[1].1.contains("longer than"));
        assert_eq!(r.lost, 1);
        // A comm that tries to forge lines or colour the terminal is shown inert.
        let log = "{\"type\":\"close_wait_leak\",\"ts\":\"2026-11-23T10:00:01Z\",\"pid\":1,\
                   \"comm\":\"a\\nb\\u001b[31m\",\"sock\":9,\"close_wait_ms\":1}\n";
        let text = Report::read(log.as_bytes()).unwrap().to_text("x");
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(!text.contains("a\nb"), "{text:?}");
    }

    #[test]
    fn a_reused_pid_is_two_processes() {
        let leak = |sock, start| {
            format!(
                "{{\"type\":\"close_wait_leak\",\"ts\":\"2026-11-23T10:00:0{sock}Z\",\"pid\":7,\
                 \"pid_start\":{start},\"comm\":\"srv\",\"sock\":{sock},\"close_wait_ms\":1000}}\n"
            )
        };
        let log = leak(1, 500) + &leak(2, 500) + &leak(3, 9000);
        let r = Report::read(log.as_bytes()).unwrap();
        let rows: Vec<_> = r
            .leak_table()
            .iter()
            .map(|(who, p)| (r.process_name(*who), p.leaks))
            .collect();
        assert_eq!(rows, [("7@500".to_string(), 2), ("7@9000".to_string(), 1)]);
        assert_eq!(r.leak_series.len(), 2);
        // Without a start (older logs), the pid alone names it.
        let old = "{\"type\":\"close_wait_leak\",\"ts\":\"2026-11-23T10:00:01Z\",\"pid\":7,\
                   \"comm\":\"srv\",\"sock\":1,\"close_wait_ms\":1}\n";
        let r = Report::read(old.as_bytes()).unwrap();
        assert_eq!(r.process_name((7, None)), "7");
    }

    /// The latest diagnosis of each leaking process, and its fd
    /// exhaustion, are in the text and the HTML page.
    #[test]
    fn diagnoses_are_shown_per_process() {
        let diag = serde_json::to_string(&crate::output::diagnosis::sample()).unwrap();
        let log = format!(
            "{{\"type\":\"close_wait_leak\",\"ts\":\"2026-11-23T10:00:01Z\",\"pid\":23308,\
             \"comm\":\"php\",\"sock\":1,\"close_wait_ms\":1000.0,\"diagnosis\":{diag}}}\n\
             {{\"type\":\"fd_exhaustion\",\"ts\":\"2026-11-23T10:00:02Z\",\"pid\":23308,\
             \"pid_start\":null,\"comm\":\"php\",\"state\":\"exhausted\",\"cause\":\"emfile\",\
             \"fds\":1024,\"limit\":1024,\"leak_rate_per_min\":3.0,\"eta_s\":0.0,\"open_leaks\":9}}\n"
        );
        let r = Report::read(log.as_bytes()).unwrap();
        assert!(r.malformed.is_empty(), "{:?}", r.malformed);
        let text = r.to_text("x");
        assert!(
            text.contains("thread 23311 (php) in recvfrom(fd 9"),
            "{text}"
        );
        assert!(text.contains("OUT OF FDS php(23308)"), "{text}");
        let page = render_html(&r, "x");
        assert!(
            page.contains("What the leaking processes were doing"),
            "{page}"
        );
        assert!(page.contains("127.0.0.1:6379 ESTABLISHED"), "{page}");
    }

    #[test]
    fn an_empty_file_reports_nothing() {
        let r = Report::read(&b""[..]).unwrap();
        assert_eq!((r.records, r.malformed.len()), (0, 0));
        assert!(r.to_text("empty").contains("none"));
    }
}
