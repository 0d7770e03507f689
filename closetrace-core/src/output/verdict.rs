//! The live view's text for a leak's diagnosis: one verdict line under
//! the leak, and the `fd_exhaustion` line.
use super::diagnosis::{Diagnosis, PeerHow};
use super::records::FdExhaustion;
use super::text::{endpoint, printable};
use crate::model::threads::{FdBudget, FdTarget};
use crate::track::diagnosis::{ExhaustedBy, Exhaustion, Suspicion, ThreadGroup};

/// The live view's line for an `fd_exhaustion` record.
pub fn exhaustion_text(r: &FdExhaustion<'_>) -> String {
    let who = format!("{}({})", printable(&r.comm), r.pid);
    let limit = r.budget.limit.map_or("unlimited".into(), |l| l.to_string());
    match r.state {
        Exhaustion::Exhausted => {
            let how = match r.cause {
                Some(ExhaustedBy::Emfile) => "accept() failed with EMFILE",
                Some(ExhaustedBy::Enfile) => "accept() failed with ENFILE (system file table full)",
                _ => "at the limit",
            };
            format!(
                "!! OUT OF FDS {who}: {}/{limit} fds, {how}; {} CLOSE_WAIT leaks open",
                r.budget.fds, r.open_leaks
            )
        }
        Exhaustion::Approaching => format!(
            "!! FDS RUNNING OUT {who}: {}/{limit} fds, EMFILE in ~{} at {:.1} leaks/min",
            r.budget.fds,
            r.budget.eta_s.map_or("?".into(), duration),
            r.budget.leak_rate_per_min
        ),
    }
}

/// The one verdict line under a leak: the likeliest culprit thread, the
/// socket's idle time, the peer, and the fd budget.
pub fn verdict(d: &Diagnosis) -> Option<String> {
    let mut parts = Vec::new();
    let p = d.processes.first();
    if let Some(g) = p.and_then(|p| p.groups.first()) {
        parts.push(thread_text(g));
        let others: u32 = p.map_or(0, |p| p.threads).saturating_sub(g.threads);
        if g.suspicion == Suspicion::Lock
            && let Some(next) = p.and_then(|p| p.groups.get(1))
        {
            parts.push(format!("meanwhile {}", thread_text(next)));
        } else if others > 0 {
            parts.push(format!("{others} other threads"));
        }
    }
    if let Some(s) = &d.socket {
        parts.push(format!(
            "socket idle {}",
            duration(s.last_data_recv_ms.min(s.last_data_sent_ms) as f64 / 1000.0)
        ));
    }
    if let Some(peer) = &d.peer {
        let how = match peer.how {
            PeerHow::Closed => "closed",
            PeerHow::Holds => "shut down, still holds",
        };
        parts.push(format!(
            "peer {}({}) {how}",
            printable(&peer.comm),
            peer.pid
        ));
    }
    if let Some(b) = p.and_then(|p| p.fd_budget.as_ref()) {
        parts.push(budget_text(b));
    }
    (!parts.is_empty()).then(|| format!("   {}", parts.join("; ")))
}

fn thread_text(g: &ThreadGroup) -> String {
    let tid = g.tids.first().copied().unwrap_or(0);
    let who = if g.threads > 1 {
        format!("{} threads ({}, {tid}, ...)", g.threads, printable(&g.comm))
    } else {
        format!("thread {tid} ({})", printable(&g.comm))
    };
    let what = match (&g.syscall, g.suspicion) {
        (_, Suspicion::Busy) => format!("running, {:.0}% CPU", g.cpu_share.unwrap_or(0.0) * 100.0),
        (Some(call), _) => {
            let fds: Vec<String> = g.fds.iter().map(|f| fd_text(f.fd, &f.target)).collect();
            format!("in {call}({})", fds.join(", "))
        }
        (None, _) if g.state.letter() == 'R' => "running".into(),
        (None, _) => format!("blocked in {}", g.wchan.as_deref().unwrap_or("the kernel")),
    };
    let state = match g.state.letter() {
        'D' => " (D)",
        _ => "",
    };
    let since = g
        .in_call_s
        .filter(|s| *s >= 1.0)
        .map(|s| format!(" for {}", duration(s)))
        .unwrap_or_default();
    format!("{who} {what}{state}{since}")
}

fn fd_text(fd: u32, t: &FdTarget) -> String {
    match t {
        FdTarget::Tcp {
            saddr,
            sport,
            daddr,
            dport,
            state,
        } => format!(
            "fd {fd} {} -> {} {}",
            endpoint(saddr, *sport),
            endpoint(daddr, *dport),
            state.name()
        ),
        FdTarget::Listener { saddr, sport } => {
            format!("fd {fd} listening {}", endpoint(saddr, *sport))
        }
        FdTarget::File { path } => format!("fd {fd} {}", printable(path)),
        FdTarget::Other { name } => format!("fd {fd} {}", printable(name)),
        other => {
            let kind = serde_json::to_value(other)
                .ok()
                .and_then(|v| v["kind"].as_str().map(str::to_string))
                .unwrap_or_default();
            format!("fd {fd} {kind}")
        }
    }
}

fn budget_text(b: &FdBudget) -> String {
    let Some(limit) = b.limit else {
        return format!("{} fds, no limit", b.fds);
    };
    let head = format!("{}/{limit} fds", b.fds);
    match b.eta_s {
        Some(e) if e <= 0.0 => format!("{head}, at the limit"),
        // Further off than a day: not news.
        Some(e) if e < 86_400.0 => format!(
            "{head}, EMFILE in ~{} at {:.1} leaks/min",
            duration(e),
            b.leak_rate_per_min
        ),
        _ => head,
    }
}

/// 4m12s, 2h05m, 35s.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::diagnosis::Peer;

    /// The issue's own example line.
    #[test]
    fn the_verdict_names_thread_call_backend_idle_time_and_budget() {
        let mut d = crate::output::diagnosis::sample();
        assert_eq!(
            verdict(&d).unwrap(),
            "   thread 23311 (php) in recvfrom(fd 9 127.0.0.1:41234 -> 127.0.0.1:6379 \
             ESTABLISHED) for 4m12s; socket idle 4m12s; 812/1024 fds, EMFILE in ~35m00s \
             at 3.0 leaks/min"
        );
        assert_eq!(verdict(&Diagnosis::default()), None);
        d.peer = Some(Peer {
            pid: 41,
            pid_start: None,
            comm: "cw-client".into(),
            how: PeerHow::Closed,
        });
        assert!(verdict(&d).unwrap().contains("peer cw-client(41) closed"));
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(duration(35.2), "35s");
        assert_eq!(duration(252.0), "4m12s");
        assert_eq!(duration(7500.0), "2h05m");
    }
}
