use super::*;
use crate::model::TcpState;
use crate::model::threads::CallSample;

const S: u64 = 1_000_000_000;

fn thread(tid: u32, state: SchedState, nr: Option<u32>, fds: Vec<(u32, FdTarget)>) -> ThreadSample {
    ThreadSample {
        tid,
        comm: format!("t{tid}"),
        state,
        call: nr.map_or(CallSample::User, |nr| CallSample::Syscall {
            nr,
            args: [0; 6],
        }),
        fds,
        wchan: None,
        stack: vec![],
        cpu_ticks: 100,
        cpu_ticks_later: None,
        off_cpu_ms: None,
    }
}

fn process(threads: Vec<ThreadSample>) -> ProcessSample {
    ProcessSample {
        pid: 10,
        start: Some(5),
        comm: "srv".into(),
        threads_total: threads.len() as u32,
        threads,
        fds: Some(20),
        fd_limit: Some(1024),
        ticks_per_s: 100,
        pause_ms: 100.0,
        partial: false,
    }
}

fn backend() -> FdTarget {
    let lo = "127.0.0.1".parse().unwrap();
    FdTarget::Tcp {
        saddr: lo,
        sport: 41234,
        daddr: lo,
        dport: 6379,
        state: TcpState::Established,
    }
}

/// The rule: waiting on a peer, then busy, then a lock, then sleep, and
/// idle pollers last, whatever order the threads came in.
#[test]
fn threads_are_ranked_by_the_documented_rule() {
    let mut spinner = thread(5, SchedState::Running, None, vec![]);
    spinner.cpu_ticks_later = Some(109);
    let s = process(vec![
        thread(
            1,
            SchedState::Sleeping,
            Some(232),
            vec![(3, FdTarget::Epoll)],
        ),
        thread(2, SchedState::Sleeping, Some(35), vec![]),
        thread(3, SchedState::Sleeping, Some(202), vec![]),
        thread(4, SchedState::Sleeping, Some(45), vec![(9, backend())]),
        spinner,
    ]);
    let d = ThreadWatch::default().diagnose(&s, None, 10 * S);
    let order: Vec<Suspicion> = d.groups.iter().map(|g| g.suspicion).collect();
    assert_eq!(
        order,
        [
            Suspicion::WaitsOnPeer,
            Suspicion::Busy,
            Suspicion::Lock,
            Suspicion::Sleep,
            Suspicion::Idle
        ]
    );
    assert_eq!(d.groups[0].syscall.as_deref(), Some("recvfrom"));
    assert_eq!(d.groups[0].fds[0].fd, 9);
    assert!((d.groups[1].cpu_share.unwrap() - 0.9).abs() < 1e-9);
}

/// 10,000 threads in the same wait are one group with a count, and a few
/// tids, not 10,000 entries.
#[test]
fn many_threads_are_summarised_as_counts() {
    let threads = (1..=10_000)
        .map(|tid| thread(tid, SchedState::Sleeping, Some(202), vec![]))
        .collect();
    let d = ThreadWatch::default().diagnose(&process(threads), None, 0);
    assert_eq!(d.groups.len(), 1);
    assert_eq!(d.groups[0].threads, 10_000);
    assert_eq!(d.groups[0].tids.len(), MAX_TIDS);
    assert_eq!(d.threads_not_shown, 0);
}

/// How long in the call: from the first sample that saw it there, or the
/// kernel's time off CPU, whichever is longer; a new call starts again.
#[test]
fn time_in_call_is_kept_across_samples() {
    let mut w = ThreadWatch::default();
    let mut t = thread(1, SchedState::Sleeping, Some(45), vec![(9, backend())]);
    t.off_cpu_ms = Some(2_000.0);
    let d = w.diagnose(&process(vec![t.clone()]), None, 100 * S);
    assert_eq!(d.groups[0].in_call_s, Some(2.0));
    let d = w.diagnose(&process(vec![t.clone()]), None, 160 * S);
    assert_eq!(d.groups[0].in_call_s, Some(60.0));
    let other = thread(1, SchedState::Sleeping, Some(35), vec![]);
    let d = w.diagnose(&process(vec![other]), None, 170 * S);
    assert_eq!(d.groups[0].in_call_s, Some(0.0));
}

#[test]
fn a_partial_sample_is_still_a_diagnosis() {
    let mut s = process(vec![]);
    s.partial = true;
    s.threads_total = 3;
    let d = ThreadWatch::default().diagnose(&s, None, 0);
    assert!(d.partial && d.groups.is_empty());
    assert_eq!(d.threads_not_shown, 3);
}

/// Ten leaks over 90 s: 6/min; 60 fds left of 1024 at that rate is 10 min.
#[test]
fn the_fd_budget_has_a_rate_and_an_eta() {
    let since: Vec<u64> = (0..10).map(|i| i * 10 * S).collect();
    let b = fd_budget(964, Some(1024), &since, 100 * S);
    assert!((b.leak_rate_per_min - 6.0).abs() < 1e-9);
    assert!((b.eta_s.unwrap() - 600.0).abs() < 1e-6);
    assert_eq!(fd_budget(10, None, &since, 100 * S).eta_s, None);
    assert_eq!(fd_budget(10, Some(100), &[], 100 * S).eta_s, None);
    assert_eq!(fd_budget(100, Some(100), &[], 100 * S).eta_s, Some(0.0));
}

/// Said once when under an hour, once more at EMFILE, and never again.
#[test]
fn exhaustion_is_said_once_per_step() {
    let mut w = ExhaustionWatch::default();
    let who = (10, Some(5));
    let far = FdBudget {
        fds: 10,
        limit: Some(1024),
        leak_rate_per_min: 0.1,
        eta_s: Some(600_000.0),
    };
    assert_eq!(w.on_budget(who, &far), None);
    let near = FdBudget {
        eta_s: Some(60.0),
        ..far.clone()
    };
    assert_eq!(w.on_budget(who, &near), Some(Exhaustion::Approaching));
    assert_eq!(w.on_budget(who, &near), None);
    assert!(w.on_emfile(who));
    assert!(!w.on_emfile(who));
    let full = FdBudget { fds: 1024, ..far };
    assert_eq!(w.on_budget(who, &full), None, "already said");
    assert_eq!(w.on_budget((11, None), &full), Some(Exhaustion::Exhausted));
}

/// A group's fd targets survive the JSON round trip the report relies on.
#[test]
fn groups_read_back_from_json() {
    let s = process(vec![thread(
        4,
        SchedState::Sleeping,
        Some(45),
        vec![(9, backend())],
    )]);
    let d = ThreadWatch::default().diagnose(&s, None, 0);
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains(r#""fd":9,"kind":"tcp""#), "{json}");
    let back: ProcessDiagnosis = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d);
}

/// One leak a second old is one a minute, not sixty; a burst is spread
/// over a minute too.
#[test]
fn few_leaks_do_not_make_a_fast_rate() {
    assert!((fd_budget(10, Some(64), &[99 * S], 100 * S).leak_rate_per_min - 1.0).abs() < 1e-9);
    let burst: Vec<u64> = (0..5).map(|i| 99 * S + i * 1000).collect();
    assert!((fd_budget(10, Some(64), &burst, 100 * S).leak_rate_per_min - 5.0).abs() < 1e-9);
}
