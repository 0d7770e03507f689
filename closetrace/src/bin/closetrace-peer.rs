//! closetrace-peer: a small TCP actor for closetrace's kernel tests (and for
//! trying closetrace by hand). It plays the server or the client of the
//! article's scenarios on real sockets and prints one line per milestone on
//! stdout so a test can synchronise with it:
//!   LISTENING <port>   CONNECTED <local port>   ACCEPTED <peer port>   DONE
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::sleep;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "closetrace-peer", about = "TCP actor for closetrace tests")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Listen, accept, read until EOF, then close after a delay.
    Server {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Connections to serve before exiting; 0 = forever.
        #[arg(long, default_value_t = 1)]
        connections: u64,
        /// Wait this long after EOF before closing.
        #[arg(long, default_value_t = 0)]
        close_delay_ms: u64,
        /// Close at once after accepting, without reading.
        #[arg(long)]
        no_read: bool,
    },
    /// Connect, send a byte, wait, close first.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Keep each connection open this long before closing.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Close with SO_LINGER 0 (RST, no TIME_WAIT).
        #[arg(long)]
        reset: bool,
        /// Print CONNECTED for each connection.
        #[arg(long)]
        verbose: bool,
    },
}

fn say(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

fn linger_zero(s: &TcpStream) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn serve(
    listen: SocketAddr,
    connections: u64,
    close_delay_ms: u64,
    no_read: bool,
) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    say(&format!("LISTENING {}", l.local_addr()?.port()))?;
    let mut served = 0;
    while connections == 0 || served < connections {
        let (mut s, peer) = l.accept().context("accept")?;
        if connections != 0 {
            say(&format!("ACCEPTED {}", peer.port()))?;
        }
        if !no_read {
            let mut buf = [0u8; 4096];
            while s.read(&mut buf).context("read")? > 0 {}
        }
        sleep(Duration::from_millis(close_delay_ms));
        drop(s);
        served += 1;
    }
    say("DONE")?;
    Ok(())
}

fn client(
    connect: SocketAddr,
    count: u64,
    hold_ms: u64,
    reset: bool,
    verbose: bool,
) -> anyhow::Result<()> {
    for _ in 0..count {
        let mut s = TcpStream::connect(connect).with_context(|| format!("connect {connect}"))?;
        if verbose {
            say(&format!("CONNECTED {}", s.local_addr()?.port()))?;
        }
        s.write_all(b"x").context("write")?;
        sleep(Duration::from_millis(hold_ms));
        if reset {
            linger_zero(&s)?;
        }
        drop(s);
    }
    say("DONE")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().role {
        Role::Server {
            listen,
            connections,
            close_delay_ms,
            no_read,
        } => serve(listen, connections, close_delay_ms, no_read),
        Role::Client {
            connect,
            count,
            hold_ms,
            reset,
            verbose,
        } => client(connect, count, hold_ms, reset, verbose),
    }
}
