//! The consuming end of ring buffer -> decode -> bounded channel ->
//! coordinator -> sink. One loop takes, in whatever order they come, the
//! kernel's messages (in batches), the tick, and the host worker's answers;
//! it hands the coordinator's jobs to the worker and flushes output once
//! the channel is empty (live for people, batched under load).
use std::io;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::app::coordinator::Monitor;
use crate::app::worker::Worker;
use crate::kernel::RingMsg;
use crate::model::clock::monotonic_ns;
use crate::output::sink::Sink;

/// Batches (of up to `RING_BATCH` messages) waiting between the
/// ring-buffer reader and the coordinator.
pub const CHANNEL_DEPTH: usize = 32;

/// Undecodable records warned about one by one; the rest are counted.
const UNDECODABLE_SHOWN: u64 = 5;

/// At the end, how long the last tick's answer is waited for, so leaks due
/// then are still reported.
const LAST_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Run until every sender is gone or the output fails.
pub async fn consume(
    mut rx: mpsc::Receiver<Vec<RingMsg>>,
    worker: &mut Worker,
    monitor: &mut Monitor,
    sink: &mut Sink,
    tick: Duration,
) -> io::Result<()> {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut worker_alive = true;
    let result = loop {
        let step = tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => handle_batch(m, &mut rx, monitor, sink),
                None => break Ok(()),
            },
            answer = worker.answers.recv(), if worker_alive => match answer {
                Some(a) => monitor.on_answer(a, sink).and_then(|()| sink.flush()),
                None => {
                    worker_alive = false;
                    log::warn!("the host worker stopped: no more scans, holders or listener checks");
                    Ok(())
                }
            },
            _ = ticks.tick() => {
                monitor.on_tick(monotonic_ns());
                Ok(())
            }
        };
        if let Err(e) = step {
            break Err(e);
        }
        dispatch(monitor, worker);
    };
    let result = result.and(last_answer(worker, monitor, sink).await);
    monitor.finish();
    result
}

/// Hand the coordinator's jobs to the worker.
fn dispatch(monitor: &mut Monitor, worker: &Worker) {
    for job in monitor.take_jobs() {
        if !worker.submit(job) {
            log::debug!("host worker gone; job dropped");
        }
    }
}

/// The answer to the tick still with the worker, if it comes in time.
async fn last_answer(
    worker: &mut Worker,
    monitor: &mut Monitor,
    sink: &mut Sink,
) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + LAST_ANSWER_WAIT;
    while monitor.awaits_answer() {
        match tokio::time::timeout_at(deadline, worker.answers.recv()).await {
            Ok(Some(a)) => monitor.on_answer(a, sink)?,
            Ok(None) | Err(_) => break,
        }
    }
    sink.flush()
}

/// `first` and whatever else is already queued, then one flush.
fn handle_batch(
    first: Vec<RingMsg>,
    rx: &mut mpsc::Receiver<Vec<RingMsg>>,
    monitor: &mut Monitor,
    sink: &mut Sink,
) -> io::Result<()> {
    let mut next = Some(first);
    while let Some(batch) = next {
        for msg in batch {
            handle(msg, monitor, sink)?;
        }
        next = rx.try_recv().ok();
    }
    sink.flush()
}

fn handle(msg: RingMsg, monitor: &mut Monitor, sink: &mut Sink) -> io::Result<()> {
    match msg {
        RingMsg::Event(ev) => monitor.on_event(ev, sink),
        RingMsg::Undecodable(e) => {
            monitor.summary.undecodable += 1;
            if monitor.summary.undecodable <= UNDECODABLE_SHOWN {
                log::warn!("undecodable kernel record: {e}");
            }
            Ok(())
        }
        RingMsg::Lost { count, total } => {
            monitor.summary.lost = total;
            sink.lost(count, total)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::coordinator::Settings;
    use crate::app::worker::tests::Stuck;
    use crate::model::KernelEvent;
    use crate::model::TcpState;
    use crate::model::clock::WallClock;
    use crate::model::fixtures::change;
    use crate::output::sink::Format;

    /// Events keep being consumed while the host worker is stuck in a
    /// scan: the stream never waits for the running system.
    #[test]
    fn a_stuck_scan_does_not_stall_events() {
        let stuck = Stuck::new();
        let held = stuck.gate.lock().unwrap();
        let mut worker = Worker::spawn(Box::new(stuck.host())).unwrap();
        let mut monitor = Monitor::new(
            Settings {
                threshold_ns: 1_000_000_000,
                tw_warn: 0.5,
                pids: vec![],
                infer_closes: false,
                stream_all: true,
                reach: crate::model::netns::NetnsReach::Own(1),
                port_policies: Default::default(),
                ids_are_cookies: true,
            },
            WallClock::from_offset(0),
        );
        monitor.scan_close_wait_with(Box::new(NoKernel));
        let mut sink = Sink::new(
            Format::Json,
            Box::new(std::io::sink()),
            WallClock::from_offset(0),
            false,
        );
        // A tick whose scan is stuck in the host.
        monitor.on_tick(1);
        dispatch(&mut monitor, &worker);
        assert!(monitor.awaits_answer());
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let n = 1000;
        for batch in (0..n).collect::<Vec<_>>().chunks(crate::kernel::RING_BATCH) {
            let msgs = batch
                .iter()
                .map(|&id| {
                    let ev = change(id, 9000, TcpState::Established, TcpState::FinWait1);
                    RingMsg::Event(KernelEvent::State(ev))
                })
                .collect();
            tx.try_send(msgs).unwrap();
        }
        drop(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(consume(
            rx,
            &mut worker,
            &mut monitor,
            &mut sink,
            Duration::from_millis(1),
        ))
        .unwrap();
        assert_eq!(monitor.summary.events, n, "every event consumed");
        assert_eq!(
            *stuck.calls.lock().unwrap(),
            0,
            "while the scan never returned"
        );
        assert!(
            monitor.awaits_answer(),
            "the stuck tick is still unanswered"
        );
        drop(held);
    }

    struct NoKernel;

    impl crate::kernel::CloseWaitKernel for NoKernel {
        fn entered(&self, _cookie: u64) -> Option<(u64, Option<crate::model::Task>)> {
            None
        }
        fn watch(&mut self, _cookie: u64) {}
        fn unwatch(&mut self, _cookie: u64) {}
    }
}
