//! Userspace cost of `--states --format json` per event, without the kernel
//! or the churn's noise: ring-buffer records of client-close connections
//! (both ends' transitions and closes, as the kernel writes them) go
//! through the decoder, the coordinator and the JSON sink into memory.
//! Prints the median over rounds, in CPU-s per 100k events, the figure the
//! bench reports (which adds the file write and the ring buffer's reads).
use std::time::Instant;

use closetrace_common::{
    CloseRecord, RECORD_CLOSE, RECORD_STATE, StateRecord, TaskId, close_src, owner_src,
    tcp_state::*,
};
use closetrace_core::app::coordinator::{Monitor, Settings};
use closetrace_core::kernel::decode::decode;
use closetrace_core::model::clock::WallClock;
use closetrace_core::model::netns::NetnsReach;
use closetrace_core::output::sink::{Format, Sink};

const CONNECTIONS: u64 = 20_000;
const ROUNDS: usize = 7;

fn task(pid: u32, comm: &[u8]) -> TaskId {
    let mut c = [0u8; 16];
    c[..comm.len()].copy_from_slice(comm);
    TaskId {
        tgid: pid,
        tid: pid,
        comm: c,
        start_ns: 1_000_000_000,
    }
}

fn bytes<T>(rec: &T) -> Vec<u8> {
    // SAFETY: the record types are repr(C) with explicit padding, all initialised.
    unsafe { std::slice::from_raw_parts((rec as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// 127.0.0.1 as the kernel writes an IPv4 address: 4 bytes, the rest zero.
const LOOPBACK: [u8; 16] = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn state(id: u64, ts: u64, old: u32, new: u32, sport: u16, dport: u16, owner: TaskId) -> Vec<u8> {
    bytes(&StateRecord {
        kind: RECORD_STATE,
        old_state: old,
        new_state: new,
        owner_src: owner_src::TRANSITION,
        ts_ns: ts,
        old_since_ns: ts - 1000,
        sock_id: id,
        netns: 4026531840,
        family: 2,
        sport,
        dport,
        flags: 0,
        _pad: [0; 4],
        saddr: LOOPBACK,
        daddr: LOOPBACK,
        ctx: owner,
        owner,
        cgroup: 1,
    })
}

fn close(id: u64, ts: u64, st: u32, sport: u16, dport: u16, closer: TaskId) -> Vec<u8> {
    bytes(&CloseRecord {
        kind: RECORD_CLOSE,
        state: st,
        close_src: close_src::FENTRY,
        _pad0: 0,
        ts_ns: ts,
        sock_id: id,
        netns: 4026531840,
        family: 2,
        sport,
        dport,
        flags: 0,
        _pad1: [0; 4],
        saddr: LOOPBACK,
        daddr: LOOPBACK,
        task: closer,
        cgroup: 1,
    })
}

/// One client-close connection: the client's and the server's records.
fn connection(n: u64) -> Vec<Vec<u8>> {
    let me = task(4242, b"churn");
    let (c, s) = (2 * n + 1, 2 * n + 2);
    let cport = 30_000 + (n % 30_000) as u16;
    let t = n * 10_000 + 1_000_000;
    vec![
        state(c, t, CLOSE, SYN_SENT, cport, 8080, me),
        state(s, t + 1, LISTEN, SYN_RECV, 8080, cport, me),
        state(c, t + 2, SYN_SENT, ESTABLISHED, cport, 8080, me),
        state(s, t + 3, SYN_RECV, ESTABLISHED, 8080, cport, me),
        close(c, t + 4, ESTABLISHED, cport, 8080, me),
        state(c, t + 5, ESTABLISHED, FIN_WAIT1, cport, 8080, me),
        state(s, t + 6, ESTABLISHED, CLOSE_WAIT, 8080, cport, me),
        state(c, t + 7, FIN_WAIT1, FIN_WAIT2, cport, 8080, me),
        close(s, t + 8, CLOSE_WAIT, 8080, cport, me),
        state(s, t + 9, CLOSE_WAIT, LAST_ACK, 8080, cport, me),
        state(c, t + 10, FIN_WAIT2, CLOSE, cport, 8080, me),
        state(s, t + 11, LAST_ACK, CLOSE, 8080, cport, me),
    ]
}

fn round(records: &[Vec<u8>]) -> f64 {
    let settings = Settings {
        threshold_ns: 30_000_000_000,
        tw_warn: 0.5,
        pids: vec![],
        infer_closes: false,
        stream_all: true,
        reach: NetnsReach::Own(4026531840),
        port_policies: Default::default(),
        ids_are_cookies: true,
    };
    let clock = WallClock::sample();
    let mut monitor = Monitor::new(settings, clock);
    let mut sink = Sink::new(Format::Json, Box::new(std::io::sink()), clock, false);
    let cpu = cpu_seconds();
    let started = Instant::now();
    for r in records {
        let ev = decode(r).expect("records decode");
        monitor.on_event(ev, &mut sink).expect("in-memory sink");
    }
    let _ = started.elapsed();
    (cpu_seconds() - cpu) / records.len() as f64 * 100_000.0
}

/// This process's user + system CPU time.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    // SAFETY: zeroed, then filled by getrusage.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let records: Vec<Vec<u8>> = (0..CONNECTIONS).flat_map(connection).collect();
    let mut per_100k: Vec<f64> = (0..ROUNDS).map(|_| round(&records)).collect();
    per_100k.sort_by(f64::total_cmp);
    println!(
        "{} events per round, {ROUNDS} rounds: median {:.4} CPU-s per 100k events (min {:.4}, max {:.4})",
        records.len(),
        per_100k[ROUNDS / 2],
        per_100k[0],
        per_100k[ROUNDS - 1]
    );
}
