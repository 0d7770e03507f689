//! The kernel's side of the pipeline: the ring-buffer reader (where kernel
//! bytes meet the one decoder), the loss poller, and the per-CPU counters.
//! Both send `RingMsg`s to the coordinator's channel. A stop signal makes
//! the reader drain what is left and the poller take a last count, so
//! nothing already in the ring buffer at Ctrl-C is dropped.
use std::io;
use std::time::Duration;

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use closetrace_common::{LOST_RINGBUF, STATE_SLOTS, TRANSITION_SLOTS};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use closetrace_core::kernel::decode::decode;
use closetrace_core::kernel::{RING_BATCH, RingMsg};

const LOST_POLL: Duration = Duration::from_millis(250);
/// The kernel wakes the reader only once the ring is an eighth full (see
/// `Config::wakeup_bytes`); below that, this bounds how late a record is.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

pub async fn read_ring(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<RingMsg>>,
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

/// Forward every record now in the ring buffer, in batches of up to
/// `RING_BATCH`; false once nobody listens.
async fn drain(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<Vec<RingMsg>>) -> bool {
    loop {
        // Decode while each item borrows the ring, then release it before
        // awaiting channel space (which is where backpressure happens).
        let mut batch = Vec::with_capacity(RING_BATCH);
        while batch.len() < RING_BATCH {
            let Some(item) = ring.next() else { break };
            batch.push(match decode(&item) {
                Ok(ev) => RingMsg::Event(ev),
                Err(e) => RingMsg::Undecodable(e),
            });
        }
        let emptied = batch.len() < RING_BATCH;
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return false;
        }
        if emptied {
            return true;
        }
    }
}

/// The kernel's per-CPU counters: events lost (by cause) and transitions
/// (by old and new state), each summed over the CPUs when read.
#[derive(Clone, Copy)]
pub struct Counters<'a> {
    pub lost: &'a PerCpuArray<MapData, u64>,
    pub transitions: &'a PerCpuArray<MapData, u64>,
}

/// One slot of a per-CPU counter array, summed over the CPUs.
fn per_cpu_total(map: &PerCpuArray<MapData, u64>, slot: u32) -> Result<u64, MapError> {
    Ok(map.get(&slot, 0)?.iter().sum())
}

impl Counters<'_> {
    /// One of the loss counters (`LOST_RINGBUF`, `LOST_CALL_ARGS`).
    pub fn lost_count(&self, slot: u32) -> u64 {
        per_cpu_total(self.lost, slot).unwrap_or_else(|e| {
            log::warn!("reading the loss counter failed: {e}");
            0
        })
    }

    /// Per-transition totals, as (old, new, count).
    pub fn transition_counts(&self) -> Vec<(u32, u32, u64)> {
        let mut out = Vec::new();
        for slot in 0..TRANSITION_SLOTS {
            match per_cpu_total(self.transitions, slot) {
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
}

pub async fn poll_lost(
    counters: Counters<'_>,
    tx: mpsc::Sender<Vec<RingMsg>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reported = 0u64;
    let mut tick = tokio::time::interval(LOST_POLL);
    loop {
        let last_round = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let total = counters.lost_count(LOST_RINGBUF);
        if total > reported {
            let count = total - reported;
            reported = total;
            if tx.send(vec![RingMsg::Lost { count, total }]).await.is_err() {
                return;
            }
        }
        if last_round {
            return;
        }
    }
}
