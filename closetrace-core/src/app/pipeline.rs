//! The consuming end of ring buffer -> decode -> bounded channel ->
//! coordinator -> sink: batches messages, ticks the coordinator, and flushes
//! output once the channel is empty (live for people, batched under load).
use std::io;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::app::coordinator::Monitor;
use crate::kernel::RingMsg;
use crate::model::clock::monotonic_ns;
use crate::output::sink::Sink;

/// Messages waiting between the ring-buffer reader and the coordinator.
pub const CHANNEL_DEPTH: usize = 8192;

/// Undecodable records warned about one by one; the rest are counted.
const UNDECODABLE_SHOWN: u64 = 5;

/// Run until every sender is gone or the output fails.
pub async fn consume(
    mut rx: mpsc::Receiver<RingMsg>,
    monitor: &mut Monitor,
    sink: &mut Sink,
    tick: Duration,
) -> io::Result<()> {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => m,
                None => break Ok(()),
            },
            _ = ticks.tick() => {
                if let Err(e) = monitor.on_tick(monotonic_ns(), sink).and_then(|()| sink.flush()) {
                    break Err(e);
                }
                continue;
            }
        };
        if let Err(e) = handle_batch(first, &mut rx, monitor, sink) {
            break Err(e);
        }
    };
    monitor.finish();
    result
}

/// `first` and whatever else is already queued, then one flush.
fn handle_batch(
    first: RingMsg,
    rx: &mut mpsc::Receiver<RingMsg>,
    monitor: &mut Monitor,
    sink: &mut Sink,
) -> io::Result<()> {
    let mut next = Some(first);
    while let Some(msg) = next {
        handle(msg, monitor, sink)?;
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
