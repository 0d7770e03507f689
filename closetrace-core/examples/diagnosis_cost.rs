//! What reading a leak holder's threads costs (`host::threads::sample`,
//! the /proc half of a leak diagnosis): this process, holding N threads
//! blocked on a lock, is sampled as a holder would be. Prints the median
//! ms per sample for each N, without the 100 ms pause a thread on CPU
//! adds (the sampling thread itself is on CPU).
//!
//!   cargo run --release -p closetrace-core --example diagnosis_cost
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use closetrace_core::host::threads;
use closetrace_core::model::threads::FdTarget;

const ROUNDS: usize = 7;

fn median_ms(pid: u32) -> (f64, usize) {
    let mut times = Vec::new();
    let mut threads_read = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let s = threads::sample(&[pid], &mut |_, _| FdTarget::Socket);
        times.push(t.elapsed().as_secs_f64() * 1000.0 - s[0].pause_ms);
        threads_read = s[0].threads.len();
    }
    times.sort_by(f64::total_cmp);
    (times[ROUNDS / 2], threads_read)
}

fn main() {
    let pid = std::process::id();
    let lock = Arc::new(Mutex::new(()));
    let held = lock.lock().expect("fresh lock");
    let mut spawned = 0;
    println!("threads  read  median ms per sample");
    for target in [1usize, 100, 1000, 10_000] {
        let more = target.saturating_sub(spawned + 1);
        let ready = Arc::new(Barrier::new(more + 1));
        for _ in 0..more {
            let (lock, ready) = (lock.clone(), ready.clone());
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    ready.wait();
                    // Blocks in futex until the process exits.
                    let _g = lock.lock();
                })
                .expect("spawn");
        }
        ready.wait();
        spawned += more;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (ms, read) = median_ms(pid);
        println!("{:>7}  {read:>4}  {ms:.1}", spawned + 1);
    }
    drop(held);
    std::process::exit(0);
}
