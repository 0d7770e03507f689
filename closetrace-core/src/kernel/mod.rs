//! The kernel side's half that needs no kernel: the one place where kernel
//! bytes become model types and model types become kernel bytes. Loading,
//! attaching and the ring buffer live in the `closetrace` crate's `kernel`.
pub mod decode;

/// Messages travel from the ring buffer to the coordinator in batches of
/// up to this many: one channel operation per batch rather than per event
/// (each is a semaphore, a lock and a wakeup), at no cost in latency since
/// a batch is sent as soon as the ring buffer is empty.
pub const RING_BATCH: usize = 256;

/// Which tcp_close methods to try (`--close-hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseHookChoice {
    /// fentry, else kprobe, else inference from transitions.
    Auto,
    Fentry,
    Kprobe,
    Transitions,
}

use crate::model::{KernelEvent, MapUse, Task};

/// What the kernel side sends the coordinator: a decoded event, a record
/// the decoder refused, or new losses.
#[derive(Debug)]
pub enum RingMsg {
    Event(KernelEvent),
    Undecodable(decode::DecodeError),
    /// New losses: since the previous report, and since start.
    Lost {
        count: u64,
        total: u64,
    },
}

/// The kernel's side of finding CLOSE_WAIT sockets by scanning (the
/// default mode, in closetrace's own namespace): the kernel records when a
/// socket entered CLOSE_WAIT and its owner but sends nothing, and reports
/// how a socket leaves CLOSE_WAIT only once it is watched. Most sockets
/// leave CLOSE_WAIT promptly; this way they cost no record at all.
pub trait CloseWaitKernel {
    /// When the socket entered CLOSE_WAIT (0: unknown) and its owner.
    fn entered(&self, cookie: u64) -> Option<(u64, Option<Task>)>;
    fn watch(&mut self, cookie: u64);
    fn unwatch(&mut self, cookie: u64);
    /// How full the maps behind this are, for the summary.
    fn occupancy(&self) -> Vec<(&'static str, MapUse)> {
        Vec::new()
    }
}
