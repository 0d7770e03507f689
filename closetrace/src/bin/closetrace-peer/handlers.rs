//! Close handlers that never return (the article's Swoole `onClose` that
//! blocks): the connection stays in CLOSE_WAIT while the handler is stuck
//! in a way a diagnosis should name. Each prints `HANDLER <tid>` before it
//! gets stuck.
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::Duration;

use anyhow::Context;

use super::say;

#[derive(Clone, Debug)]
pub enum Handler {
    /// Ask a backend and wait for an answer that never comes (recvfrom).
    Recv(SocketAddr),
    /// Take a mutex another thread holds while it sleeps (futex).
    Mutex,
    /// Sleep (clock_nanosleep).
    Sleep,
    /// Spin on CPU.
    Spin,
}

impl std::str::FromStr for Handler {
    type Err = String;
    fn from_str(s: &str) -> Result<Handler, String> {
        match s {
            "mutex" => Ok(Handler::Mutex),
            "sleep" => Ok(Handler::Sleep),
            "spin" => Ok(Handler::Spin),
            _ => match s.strip_prefix("recv=") {
                Some(addr) => addr
                    .parse()
                    .map(Handler::Recv)
                    .map_err(|e| format!("recv=ADDR: {e}")),
                None => Err("one of recv=ADDR, mutex, sleep, spin".into()),
            },
        }
    }
}

fn tid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Set up what the handler needs before serving: for `Mutex`, a thread
/// that takes the lock and sleeps holding it (it prints `LOCKER <tid>`).
pub fn prepare(h: &Handler) -> anyhow::Result<Option<Arc<Mutex<()>>>> {
    let Handler::Mutex = h else {
        return Ok(None);
    };
    let lock = Arc::new(Mutex::new(()));
    let (taken_tx, taken) = std::sync::mpsc::channel();
    let held = lock.clone();
    std::thread::Builder::new()
        .name("locker".into())
        .spawn(move || {
            let _guard = held.lock().expect("fresh mutex");
            let _ = taken_tx.send(tid());
            loop {
                sleep(Duration::from_secs(3600));
            }
        })
        .context("spawn the lock holder")?;
    let locker = taken.recv().context("lock holder")?;
    say(&format!("LOCKER {locker}"))?;
    Ok(Some(lock))
}

/// Run the handler for a connection whose peer closed; never returns.
pub fn run(h: &Handler, lock: Option<&Arc<Mutex<()>>>) -> anyhow::Result<()> {
    say(&format!("HANDLER {}", tid()))?;
    match h {
        Handler::Recv(backend) => {
            let mut b = TcpStream::connect(backend)
                .with_context(|| format!("connect to the backend {backend}"))?;
            say(&format!("BACKEND {}", b.local_addr()?.port()))?;
            b.write_all(b"GET key\r\n").context("ask the backend")?;
            let mut answer = [0u8; 64];
            // The backend never answers: blocked here, in recvfrom.
            let _ = b.read(&mut answer);
            blocked_forever()
        }
        Handler::Mutex => {
            let lock = lock.context("no lock prepared")?;
            let _guard = lock.lock();
            blocked_forever()
        }
        Handler::Sleep => blocked_forever(),
        Handler::Spin => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    }
}

fn blocked_forever() -> ! {
    loop {
        sleep(Duration::from_secs(3600));
    }
}

/// `--nofile N`: lower RLIMIT_NOFILE's soft limit.
pub fn set_nofile(n: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit");
    }
    lim.rlim_cur = n.min(lim.rlim_max);
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error()).context("setrlimit");
    }
    Ok(())
}
