//! Prometheus exposition (`--metrics ADDR`), for fleets that watch
//! closetrace through Prometheus rather than its output.
//!
//! Label cardinality is bounded: transitions by (old, new) state (at most
//! 13 x 13), leaks by process (the `MAX_PROCESSES` with the most), TIME_WAIT
//! by destination (the `MAX_DESTINATIONS` busiest), errors by (syscall,
//! errno) (2 x 2), hooks by name. Gauges are replaced whole at each update,
//! so a process or destination that drops out of the top disappears rather
//! than going stale.
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::TcpState;
use crate::model::hooks::HookStatus;
use crate::model::threads::FdBudget;
use crate::output::records::{HookReport, LeakStats};

pub const MAX_PROCESSES: usize = 50;
pub const MAX_DESTINATIONS: usize = 10;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// What the state machines know now, for the gauges.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct View {
    /// Reported, still open leaks per process, most first.
    pub leaks: Vec<LeakStats>,
    /// TIME_WAIT per destination: (netns, daddr, dport, sockets, share of
    /// the ephemeral ports, if known).
    pub time_wait: Vec<(u32, String, u16, u32, Option<f64>)>,
    /// connect/bind failures so far, by (syscall, errno).
    pub errors: Vec<(&'static str, &'static str, u64)>,
    /// The fd budgets of leaking processes (pid, start, comm, budget), from
    /// their latest diagnosis.
    pub fd_budgets: Vec<(u32, Option<u64>, String, FdBudget)>,
}

pub struct Metrics {
    registry: Registry,
    transitions: Family<Labels, Counter>,
    leaks: Family<Labels, Gauge>,
    leak_age: Family<Labels, FloatGauge>,
    fds: Family<Labels, Gauge>,
    fd_limit: Family<Labels, Gauge>,
    fd_eta: Family<Labels, FloatGauge>,
    time_wait: Family<Labels, Gauge>,
    tw_ratio: Family<Labels, FloatGauge>,
    errors: Family<Labels, Counter>,
    lost: Counter,
    /// Kernel counters are totals; counters move by the difference.
    seen: HashMap<Labels, u64>,
    lost_seen: u64,
}

impl Metrics {
    pub fn new(hooks: &[HookReport]) -> Self {
        let mut registry = Registry::with_prefix("closetrace");
        let transitions = Family::<Labels, Counter>::default();
        registry.register(
            "state_transitions",
            "TCP state transitions seen, by old and new state",
            transitions.clone(),
        );
        let leaks = Family::<Labels, Gauge>::default();
        registry.register(
            "close_wait_leaks",
            "CLOSE_WAIT sockets reported as leaks and still open, by holding process",
            leaks.clone(),
        );
        let leak_age = Family::<Labels, FloatGauge>::default();
        registry.register(
            "close_wait_leak_oldest_seconds",
            "Age of the oldest open CLOSE_WAIT leak, by holding process",
            leak_age.clone(),
        );
        let fds = Family::<Labels, Gauge>::default();
        registry.register(
            "leaking_process_open_fds",
            "Open file descriptors of a process with CLOSE_WAIT leaks, at its latest diagnosis",
            fds.clone(),
        );
        let fd_limit = Family::<Labels, Gauge>::default();
        registry.register(
            "leaking_process_fd_limit",
            "RLIMIT_NOFILE (soft) of a process with CLOSE_WAIT leaks; absent when unlimited",
            fd_limit.clone(),
        );
        let fd_eta = Family::<Labels, FloatGauge>::default();
        registry.register(
            "leaking_process_fd_exhaustion_seconds",
            "Seconds until a leaking process reaches its fd limit at its leak rate",
            fd_eta.clone(),
        );
        let time_wait = Family::<Labels, Gauge>::default();
        registry.register(
            "time_wait_sockets",
            "TIME_WAIT sockets toward the busiest destinations",
            time_wait.clone(),
        );
        let tw_ratio = Family::<Labels, FloatGauge>::default();
        registry.register(
            "time_wait_pressure_ratio",
            "TIME_WAIT sockets toward a destination over the ephemeral ports available",
            tw_ratio.clone(),
        );
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "socket_errors",
            "connect() and bind() failures for want of an address or port, by errno",
            errors.clone(),
        );
        let lost = Counter::default();
        registry.register(
            "events_lost",
            "Kernel records dropped because the ring buffer was full",
            lost.clone(),
        );
        let attached = Family::<Labels, Gauge>::default();
        registry.register(
            "hook_attached",
            "1 when a kernel hook is attached (attach says how), 0 when unavailable",
            attached.clone(),
        );
        // A hook turned off by a flag is the operator's choice: no series,
        // so ClosetraceHookDegraded does not fire for it.
        for h in hooks.iter().filter(|h| h.status != HookStatus::Off) {
            attached
                .get_or_create(&vec![
                    ("hook", h.hook.clone()),
                    ("attach", h.attach.name().to_string()),
                ])
                .set(i64::from(h.attached()));
        }
        Metrics {
            registry,
            transitions,
            leaks,
            leak_age,
            fds,
            fd_limit,
            fd_eta,
            time_wait,
            tw_ratio,
            errors,
            lost,
            seen: HashMap::new(),
            lost_seen: 0,
        }
    }

    /// Advance a counter to the total `now` (totals never go down).
    fn advance(
        seen: &mut HashMap<Labels, u64>,
        family: &Family<Labels, Counter>,
        l: Labels,
        now: u64,
    ) {
        let before = seen.entry(l.clone()).or_default();
        if now > *before {
            family.get_or_create(&l).inc_by(now - *before);
            *before = now;
        }
    }

    /// Replace the gauges with what the state machines know now.
    pub fn update(&mut self, v: &View) {
        self.leaks.clear();
        self.leak_age.clear();
        for p in v.leaks.iter().take(MAX_PROCESSES) {
            let l = process_labels(p.pid, p.pid_start, &p.comm);
            self.leaks.get_or_create(&l).set(p.open as i64);
            self.leak_age.get_or_create(&l).set(p.oldest_ms / 1000.0);
        }
        self.fds.clear();
        self.fd_limit.clear();
        self.fd_eta.clear();
        for (pid, start, comm, b) in v.fd_budgets.iter().take(MAX_PROCESSES) {
            let l = process_labels(*pid, *start, comm);
            self.fds.get_or_create(&l).set(i64::from(b.fds));
            if let Some(limit) = b.limit {
                self.fd_limit
                    .get_or_create(&l)
                    .set(i64::try_from(limit).unwrap_or(i64::MAX));
            }
            if let Some(eta) = b.eta_s {
                self.fd_eta.get_or_create(&l).set(eta);
            }
        }
        self.time_wait.clear();
        self.tw_ratio.clear();
        // Local addresses are not a label: one series per namespace and
        // remote end, summed over them.
        let mut by_dest: BTreeMap<(u32, &str, u16), (u32, Option<f64>)> = BTreeMap::new();
        for (netns, daddr, dport, n, ratio) in v.time_wait.iter().take(MAX_DESTINATIONS) {
            let e = by_dest.entry((*netns, daddr, *dport)).or_default();
            e.0 += n;
            e.1 = match (e.1, *ratio) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        for ((netns, daddr, dport), (n, ratio)) in by_dest {
            let l = vec![
                ("netns", netns.to_string()),
                ("daddr", daddr.to_string()),
                ("dport", dport.to_string()),
            ];
            self.time_wait.get_or_create(&l).set(i64::from(n));
            if let Some(r) = ratio {
                self.tw_ratio.get_or_create(&l).set(r);
            }
        }
        for (call, errno, n) in &v.errors {
            let l = vec![("syscall", call.to_string()), ("errno", errno.to_string())];
            Self::advance(&mut self.seen, &self.errors, l, *n);
        }
    }

    /// The kernel's counters: transitions (old, new, total) and losses.
    pub fn update_kernel(&mut self, transitions: &[(u32, u32, u64)], lost: u64) {
        let name =
            |s: u32| TcpState::try_from(s).map_or_else(|n| n.to_string(), |s| s.name().into());
        for &(old, new, n) in transitions {
            let l = vec![("old", name(old)), ("new", name(new))];
            Self::advance(&mut self.seen, &self.transitions, l, n);
        }
        if lost > self.lost_seen {
            self.lost.inc_by(lost - self.lost_seen);
            self.lost_seen = lost;
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// A process's labels: pid, pid_start (empty when unknown, which
/// Prometheus reads as absent) and comm.
fn process_labels(pid: u32, start: Option<u64>, comm: &str) -> Labels {
    vec![
        ("pid", pid.to_string()),
        (
            "pid_start",
            start.map(|t| t.to_string()).unwrap_or_default(),
        ),
        ("comm", comm.to_string()),
    ]
}

/// Answer one scrape: GET /metrics gets the exposition (`body()` is asked
/// for it only then), anything else 404. One request per connection.
pub async fn serve_one(mut s: TcpStream, body: impl FnOnce() -> String) -> io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // The request head, bounded in size and time.
    let head = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let n = s.read(&mut buf[len..]).await?;
            len += n;
            if n == 0 || buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
                return io::Result::Ok(());
            }
        }
    })
    .await;
    if !matches!(head, Ok(Ok(()))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let target = line.split_whitespace().take(2).collect::<Vec<_>>();
    let (status, ctype, payload) = match target.as_slice() {
        ["GET", path] if *path == "/metrics" || path.starts_with("/metrics?") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body(),
        ),
        ["GET", "/"] => (
            "200 OK",
            "text/plain; charset=utf-8",
            "closetrace: metrics at /metrics\n".to_string(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hooks::Attach;

    fn leaks(pid: u32, start: Option<u64>, comm: &str, open: u64, oldest_s: f64) -> LeakStats {
        LeakStats {
            pid,
            pid_start: start,
            comm: comm.into(),
            leaks: open,
            open,
            oldest_ms: oldest_s * 1000.0,
        }
    }

    fn hooks() -> Vec<HookReport> {
        vec![
            HookReport::ok("sock:inet_sock_set_state", Attach::TpBtf),
            HookReport::degraded("tcp_close", Attach::Transitions, "no fentry".into()),
        ]
    }

    /// A hook the operator turned off has no series, so the hook alert
    /// stays quiet; an unavailable one is 0.
    #[test]
    fn hooks_turned_off_are_not_exported() {
        let hooks = [
            HookReport::off("syscalls:sys_exit_accept", "--no-syscall-hooks".into()),
            HookReport::unavailable("syscalls:sys_exit_bind", "absent".into()),
        ];
        let text = Metrics::new(&hooks).render();
        assert!(!text.contains("sys_exit_accept"), "{text}");
        assert!(
            text.contains(
                "closetrace_hook_attached{hook=\"syscalls:sys_exit_bind\",attach=\"none\"} 0"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_kprobe_attached_hook_counts_as_attached() {
        let hooks = [HookReport::degraded(
            "tcp_close",
            Attach::Kprobe,
            "fentry refused".into(),
        )];
        let text = Metrics::new(&hooks).render();
        assert!(
            text.contains("closetrace_hook_attached{hook=\"tcp_close\",attach=\"kprobe\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn exposition_has_every_family_and_bounded_labels() {
        let mut m = Metrics::new(&hooks());
        let many: Vec<_> = (0..200)
            .map(|i| leaks(1000 + i, Some(77), &format!("w{i}"), 1, 2.5))
            .collect();
        m.update(&View {
            leaks: many,
            time_wait: vec![
                (7, "10.0.0.1".into(), 80, 100, Some(0.25)),
                (7, "10.0.0.1".into(), 80, 20, Some(0.1)),
            ],
            errors: vec![("connect", "EADDRNOTAVAIL", 3)],
            fd_budgets: vec![(
                1000,
                Some(77),
                "w0".into(),
                FdBudget {
                    fds: 812,
                    limit: Some(1024),
                    leak_rate_per_min: 3.0,
                    eta_s: Some(2100.0),
                },
            )],
        });
        m.update_kernel(&[(1, 8, 5), (8, 9, 4)], 7);
        let text = m.render();
        for needle in [
            "closetrace_state_transitions_total{old=\"ESTABLISHED\",new=\"CLOSE_WAIT\"} 5",
            "closetrace_close_wait_leaks{pid=\"1000\",pid_start=\"77\",comm=\"w0\"} 1",
            "closetrace_close_wait_leak_oldest_seconds{pid=\"1000\",pid_start=\"77\",comm=\"w0\"} 2.5",
            "closetrace_time_wait_sockets{netns=\"7\",daddr=\"10.0.0.1\",dport=\"80\"} 120",
            "closetrace_time_wait_pressure_ratio{netns=\"7\",daddr=\"10.0.0.1\",dport=\"80\"} 0.25",
            "closetrace_socket_errors_total{syscall=\"connect\",errno=\"EADDRNOTAVAIL\"} 3",
            "closetrace_events_lost_total 7",
            "closetrace_leaking_process_open_fds{pid=\"1000\",pid_start=\"77\",comm=\"w0\"} 812",
            "closetrace_leaking_process_fd_limit{pid=\"1000\",pid_start=\"77\",comm=\"w0\"} 1024",
            "closetrace_leaking_process_fd_exhaustion_seconds{pid=\"1000\",pid_start=\"77\",comm=\"w0\"} 2100.0",
            "closetrace_hook_attached{hook=\"tcp_close\",attach=\"transitions\"} 0",
            "closetrace_hook_attached{hook=\"sock:inet_sock_set_state\",attach=\"tp_btf\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(
            text.matches("closetrace_close_wait_leaks{").count(),
            MAX_PROCESSES
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn counters_follow_totals_and_gauges_are_replaced() {
        let mut m = Metrics::new(&[]);
        m.update_kernel(&[(1, 8, 5)], 2);
        m.update_kernel(&[(1, 8, 9)], 2);
        let leak = View {
            leaks: vec![leaks(7, None, "srv", 2, 1.0)],
            ..View::default()
        };
        m.update(&leak);
        m.update(&View::default());
        let text = m.render();
        assert!(
            text.contains("old=\"ESTABLISHED\",new=\"CLOSE_WAIT\"} 9"),
            "{text}"
        );
        assert!(text.contains("closetrace_events_lost_total 2"), "{text}");
        assert!(
            !text.contains("pid=\"7\""),
            "a closed leak lingers:\n{text}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn serves_metrics_and_refuses_other_paths() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = async {
            for _ in 0..3 {
                let (s, _) = listener.accept().await.unwrap();
                serve_one(s, || "closetrace_x 1\n# EOF\n".into())
                    .await
                    .unwrap();
            }
        };
        let client = async {
            let mut out = Vec::new();
            for path in ["/metrics", "/nope", "/metrics?x=1"] {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut resp = String::new();
                c.read_to_string(&mut resp).await.unwrap();
                out.push(resp);
            }
            out
        };
        let ((), out) = tokio::join!(server, client);
        assert!(out[0].starts_with("HTTP/1.1 200 OK"), "{}", out[0]);
        assert!(out[0].contains("openmetrics-text"));
        assert!(out[0].ends_with("closetrace_x 1\n# EOF\n"));
        assert!(out[1].starts_with("HTTP/1.1 404"), "{}", out[1]);
        assert!(out[2].starts_with("HTTP/1.1 200 OK"));
    }
}
