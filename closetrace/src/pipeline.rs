//! ring buffer -> decode -> bounded channel -> owner table -> sink.
//!
//! Three futures share one task: the ring-buffer reader (the only place
//! kernel bytes are decoded), the loss poller, and the consumer that runs
//! the state machines and writes output. A stop signal makes the reader drain
//! what is left and the poller take a last count, so nothing already in the
//! ring buffer at Ctrl-C is dropped.
use std::io;
use std::time::Duration;

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use closetrace_common::{LOST_RINGBUF, STATE_SLOTS, TRANSITION_SLOTS};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::clock::monotonic_ns;
use crate::decode::{DecodeError, decode};
use crate::model::KernelEvent;
use crate::monitor::Monitor;
use crate::sink::Sink;

const CHANNEL_DEPTH: usize = 8192;
const LOST_POLL: Duration = Duration::from_millis(250);
/// The kernel wakes the reader only once the ring is an eighth full (see
/// `Config::wakeup_bytes`); below that, this bounds how late a record is.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub enum Msg {
    Event(KernelEvent),
    Undecodable(DecodeError),
    /// New losses: since the previous report, and since start.
    Lost {
        count: u64,
        total: u64,
    },
}

/// Run until `stop` fires (or the output fails). Returns the run's summary
/// and the output error, if any, so the caller can still report totals.
pub async fn run(
    events: RingBuf<MapData>,
    lost: &PerCpuArray<MapData, u64>,
    monitor: &mut Monitor,
    sink: &mut Sink,
    tick: Duration,
    stop_tx: &watch::Sender<bool>,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let reader = read_ring(events, tx.clone(), stop_tx.subscribe());
    let poller = poll_lost(lost, tx, stop_tx.subscribe());
    let consumer = async {
        let out = consume(rx, monitor, sink, tick).await;
        // An output failure ends the run: stop the producers too.
        let _ = stop_tx.send(true);
        out
    };
    let (reader_result, (), out) = tokio::join!(reader, poller, consumer);
    out.and(reader_result)
}

async fn read_ring(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Msg>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unreplaced,
    // for as long as the AsyncFd that owns the ring buffer exists.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)? };
    let mut timer = tokio::time::interval(DRAIN_EVERY);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                if !drain(guard.get_inner_mut(), &tx).await {
                    return Ok(());
                }
                guard.clear_ready();
            }
            _ = timer.tick() => {
                if !drain(fd.get_mut(), &tx).await {
                    return Ok(());
                }
            }
            _ = stop.changed() => {
                drain(fd.get_mut(), &tx).await;
                return Ok(());
            }
        }
    }
}

/// Forward every record now in the ring buffer; false once nobody listens.
async fn drain(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<Msg>) -> bool {
    loop {
        // Decode while the item borrows the ring, then release it before
        // awaiting channel space (which is where backpressure happens).
        let msg = match ring.next() {
            Some(item) => match decode(&item) {
                Ok(ev) => Msg::Event(ev),
                Err(e) => Msg::Undecodable(e),
            },
            None => return true,
        };
        if tx.send(msg).await.is_err() {
            return false;
        }
    }
}

/// One slot of a per-CPU counter array, summed over the CPUs.
fn per_cpu_total(map: &PerCpuArray<MapData, u64>, slot: u32) -> Result<u64, MapError> {
    Ok(map.get(&slot, 0)?.iter().sum())
}

/// One of the kernel's per-CPU loss counters, summed.
pub fn lost_count(lost: &PerCpuArray<MapData, u64>, slot: u32) -> u64 {
    per_cpu_total(lost, slot).unwrap_or_else(|e| {
        log::warn!("reading the loss counter failed: {e}");
        0
    })
}

/// Per-transition totals from the kernel's per-CPU counters, as
/// (old, new, count).
pub fn transition_counts(map: &PerCpuArray<MapData, u64>) -> Vec<(u32, u32, u64)> {
    let mut out = Vec::new();
    for slot in 0..TRANSITION_SLOTS {
        match per_cpu_total(map, slot) {
            Ok(0) => {}
            Ok(n) => out.push((slot / STATE_SLOTS, slot % STATE_SLOTS, n)),
            Err(e) => {
                log::warn!("reading transition counts failed: {e}");
                break;
            }
        }
    }
    out
}

async fn poll_lost(
    lost: &PerCpuArray<MapData, u64>,
    tx: mpsc::Sender<Msg>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reported = 0u64;
    let mut tick = tokio::time::interval(LOST_POLL);
    loop {
        let last_round = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let total = lost_count(lost, LOST_RINGBUF);
        if total > reported {
            let count = total - reported;
            reported = total;
            if tx.send(Msg::Lost { count, total }).await.is_err() {
                return;
            }
        }
        if last_round {
            return;
        }
    }
}

async fn consume(
    mut rx: mpsc::Receiver<Msg>,
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
        let mut next = Some(first);
        let mut failed = None;
        while let Some(msg) = next {
            if let Err(e) = handle(msg, monitor, sink) {
                failed = Some(e);
                break;
            }
            next = rx.try_recv().ok();
        }
        if let Some(e) = failed {
            break Err(e);
        }
        // Flush once the channel is empty: live for people, batched under load.
        if let Err(e) = sink.flush() {
            break Err(e);
        }
    };
    monitor.finish();
    result
}

fn handle(msg: Msg, monitor: &mut Monitor, sink: &mut Sink) -> io::Result<()> {
    match msg {
        Msg::Event(ev) => monitor.on_event(ev, sink),
        Msg::Undecodable(e) => {
            monitor.summary.undecodable += 1;
            if monitor.summary.undecodable <= 5 {
                eprintln!("closetrace: warning: undecodable kernel record: {e}");
            }
            Ok(())
        }
        Msg::Lost { count, total } => {
            monitor.summary.lost = total;
            sink.lost(count, total)
        }
    }
}
