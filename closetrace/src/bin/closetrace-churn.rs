//! closetrace-churn: loopback connection churn for closetrace's benchmark
//! and soak. Client threads connect and close as fast as they can (or at a
//! set rate) to in-process servers that accept, read to EOF and close.
//!
//! Modes: `rst` (the client aborts with SO_LINGER 0: no TIME_WAIT anywhere),
//! `client-close` (the client closes first: TIME_WAIT on the client). With
//! `--leak-every N`, every Nth connection the server keeps without closing:
//! a CLOSE_WAIT leak, held until `--hold-leaks` after the churn ends.
//!
//! Prints one JSON line at the end: pid, connections, errors, leaks,
//! elapsed_s, rate.
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use socket_opts::{abort_on_close, deepen_backlog, raise_nofile};

/// Connections a client may have ahead of its server's accept(). Beyond the
/// listen backlog SYNs are dropped and connect() stalls for a second, so
/// the client waits for its server instead.
const MAX_AHEAD: u64 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Client closes with RST (SO_LINGER 0): no TIME_WAIT.
    Rst,
    /// Client closes first with FIN: TIME_WAIT on the client side.
    ClientClose,
}

#[derive(Parser)]
#[command(name = "closetrace-churn", about = "loopback TCP connection churn")]
struct Cli {
    #[arg(long, value_enum, default_value_t = Mode::Rst)]
    mode: Mode,
    /// Client threads (each paired with a server thread and listener).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Stop after this long (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many connections in total.
    #[arg(long)]
    connections: Option<u64>,
    /// Target total connections per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Every Nth accepted connection is leaked (kept open in CLOSE_WAIT);
    /// 0 = none.
    #[arg(long, default_value_t = 0)]
    leak_every: u64,
    /// Keep leaked connections this long after the churn ends, then exit.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    hold_leaks: Duration,
    /// Address the servers listen on (port 0 each: one port per thread).
    #[arg(long, default_value = "127.0.0.1")]
    addr: std::net::IpAddr,
}

struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
    errors: AtomicU64,
    accepted: AtomicU64,
    leaks: AtomicU64,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("closetrace-churn: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.threads == 0 {
        bail!("--threads must be at least 1");
    }
    if cli.duration.is_none() && cli.connections.is_none() {
        bail!("give --duration, --connections, or both");
    }
    // Leaks and TIME_WAIT churn need far more descriptors than the default.
    raise_nofile();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        connections: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        leaks: AtomicU64::new(0),
    });
    let mut targets = Vec::new();
    for _ in 0..cli.threads {
        let l = TcpListener::bind(SocketAddr::new(cli.addr, 0)).context("listening")?;
        deepen_backlog(&l);
        let accepted = Arc::new(AtomicU64::new(0));
        targets.push((l.local_addr()?, accepted.clone()));
        let shared = shared.clone();
        let leak_every = cli.leak_every;
        thread::spawn(move || serve(l, &shared, &accepted, leak_every));
    }
    let started = Instant::now();
    let per_thread_rate = cli.rate as f64 / cli.threads as f64;
    let per_thread_cap = cli.connections.map(|n| n.div_ceil(cli.threads as u64));
    let clients: Vec<_> = targets
        .iter()
        .map(|(target, accepted)| {
            let (target, accepted) = (*target, accepted.clone());
            let shared = shared.clone();
            let mode = cli.mode;
            let deadline = cli.duration.map(|d| started + d);
            thread::spawn(move || {
                churn(
                    target,
                    &accepted,
                    mode,
                    per_thread_rate,
                    per_thread_cap,
                    deadline,
                    &shared,
                )
            })
        })
        .collect();
    for c in clients {
        let _ = c.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    // Let the servers take what is still in flight before reporting.
    thread::sleep(Duration::from_millis(100));
    let connections = shared.connections.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "mode": format!("{:?}", cli.mode),
            "pid": std::process::id(),
            "connections": connections,
            "accepted": shared.accepted.load(Ordering::Relaxed),
            "errors": shared.errors.load(Ordering::Relaxed),
            "leaks": shared.leaks.load(Ordering::Relaxed),
            "elapsed_s": elapsed,
            "rate": connections as f64 / elapsed,
        })
    );
    thread::sleep(cli.hold_leaks);
    Ok(())
}

fn churn(
    target: SocketAddr,
    accepted: &AtomicU64,
    mode: Mode,
    rate: f64,
    cap: Option<u64>,
    deadline: Option<Instant>,
    shared: &Shared,
) {
    let started = Instant::now();
    let mut done = 0u64;
    loop {
        if cap.is_some_and(|c| done >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        if rate > 0.0 {
            // Pace against the start, not the previous connection, so short
            // stalls are made up rather than accumulated.
            let due = started + Duration::from_secs_f64(done as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        while done.saturating_sub(accepted.load(Ordering::Relaxed)) > MAX_AHEAD {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            thread::yield_now();
        }
        done += 1;
        match TcpStream::connect(target) {
            Ok(s) => {
                if mode == Mode::Rst {
                    abort_on_close(&s);
                }
                drop(s);
                shared.connections.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn serve(listener: TcpListener, shared: &Shared, accepted: &AtomicU64, leak_every: u64) {
    let mut leaked = Vec::new();
    let mut buf = [0u8; 64];
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let n = shared.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        // Read to EOF (or the reset) so the server closes second.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if leak_every != 0 && n.is_multiple_of(leak_every) {
            shared.leaks.fetch_add(1, Ordering::Relaxed);
            leaked.push(s);
        }
    }
    // Leaked connections stay open until the process exits.
    std::mem::forget(leaked);
}

mod socket_opts {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// SO_LINGER {on, 0}: close() sends RST and skips TIME_WAIT.
    pub fn abort_on_close(s: &TcpStream) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid fd and a correctly sized option value.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const l).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }

    /// std listens with a short backlog; listen() again to lengthen it
    /// (the kernel caps it at net.core.somaxconn).
    pub fn deepen_backlog(l: &TcpListener) {
        // SAFETY: a valid listening fd.
        unsafe { libc::listen(l.as_raw_fd(), 4096) };
    }

    pub fn raise_nofile() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain getrlimit/setrlimit on our own process.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}
