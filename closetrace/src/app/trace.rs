//! The traced run: the ring-buffer reader on a thread of its own, and on
//! this one, as futures of one task, the loss poller, the coordinator, the
//! metrics exporter and the stop trigger (signals, `--duration`, or the
//! coordinator stopping on an output error).
use std::cell::RefCell;
use std::io;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use closetrace_common::LOST_RINGBUF;
use closetrace_core::app::coordinator::Monitor;
use closetrace_core::app::pipeline::{self, CHANNEL_DEPTH};
use closetrace_core::app::worker::Worker;
use closetrace_core::kernel::RingMsg;
use closetrace_core::output::metrics::{self, Metrics};
use closetrace_core::output::sink::Sink;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::kernel::ring::{self, Counters};

pub type Exporter = (TcpListener, Rc<RefCell<Metrics>>);

/// When the coordinator ticks, when the run stops, and where metrics are
/// served.
pub struct Schedule {
    pub tick: Duration,
    /// `--duration`; None runs until a signal.
    pub duration: Option<Duration>,
    pub exporter: Option<Exporter>,
}

pub async fn trace(
    events: RingBuf<MapData>,
    counters: Counters<'_>,
    worker: &mut Worker,
    monitor: &mut Monitor,
    sink: &mut Sink,
    schedule: Schedule,
) -> io::Result<()> {
    let Schedule {
        tick,
        duration,
        exporter,
    } = schedule;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let reader = spawn_reader(events, tx.clone(), stop_tx.subscribe())?;
    let poller = ring::poll_lost(counters, tx, stop_tx.subscribe());
    let consumer = async {
        let out = pipeline::consume(rx, worker, monitor, sink, tick).await;
        // An output failure ends the run: stop the producers too.
        let _ = stop_tx.send(true);
        out
    };
    let serve = serve_metrics(exporter, counters, stop_tx.subscribe());
    let trigger = stop_on_signal(duration, &stop_tx, stop_rx);
    let (signals, (), out, ()) = tokio::join!(trigger, poller, consumer, serve);
    // The consumer ends once every sender is gone, the reader's with it:
    // the thread has returned or is returning.
    let reader_result = reader
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the ring-buffer reader panicked")));
    signals.and(out).and(reader_result)
}

/// The ring-buffer reader, on its own thread: it drains and decodes while
/// the coordinator writes, so under `--states` churn the two share no
/// core's time, and the kernel's records wait less in the ring (a full ring
/// loses them). Its batches reach the coordinator through `tx` as before.
fn spawn_reader(
    events: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<RingMsg>>,
    stop: watch::Receiver<bool>,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("closetrace-ring".into())
        .spawn(move || runtime.block_on(ring::read_ring(events, tx, stop)))
}

/// Ctrl-C, SIGTERM or `--duration` stop the run; so does the consumer
/// stopping on its own (output failed).
async fn stop_on_signal(
    duration: Option<Duration>,
    stop_tx: &watch::Sender<bool>,
    mut stop_rx: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let timeout = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = timeout => {}
        _ = stop_rx.changed() => {}
    }
    let _ = stop_tx.send(true);
    Ok(())
}

/// `--metrics`: one scrape at a time, each with fresh kernel counters.
async fn serve_metrics(
    exporter: Option<Exporter>,
    counters: Counters<'_>,
    mut stop: watch::Receiver<bool>,
) {
    let Some((std_listener, metrics)) = exporter else {
        return;
    };
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("--metrics: {e}; not serving metrics");
            return;
        }
    };
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let body = || {
                    let mut m = metrics.borrow_mut();
                    m.update_kernel(&counters.transition_counts(), counters.lost_count(LOST_RINGBUF));
                    m.render()
                };
                if let Err(e) = metrics::serve_one(stream, body).await {
                    log::debug!("metrics scrape: {e}");
                }
            }
            _ = stop.changed() => return,
        }
    }
}
