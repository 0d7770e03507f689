//! closetrace-peer: a small TCP actor for closetrace's kernel tests (and for
//! trying closetrace by hand). It plays the server or the client of the
//! article's scenarios on real sockets and prints one line per milestone on
//! stdout so a test can synchronise with it:
//!   LISTENING <port>   CONNECTED <local port>   ACCEPTED <peer port>
//!   FD <fd>   CHILD <pid>   WORKER <pid>   PASSED   RECEIVED <fd>   DONE
//!   HANDLER <tid>   LOCKER <tid>   BACKEND <local port>   ERROR <errno>
mod handlers;
mod sockets;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::sleep;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "closetrace-peer", about = "TCP actor for closetrace tests")]
struct Cli {
    /// Process name to take (prctl PR_SET_NAME, at most 15 bytes): what
    /// closetrace will show for this process. Any bytes but NUL, so tests
    /// can take hostile names (newlines, escapes, invalid UTF-8).
    #[arg(long, global = true, value_parser = clap::value_parser!(std::ffi::OsString))]
    comm: Option<std::ffi::OsString>,
    #[command(subcommand)]
    role: Role,
}

fn set_comm(name: &std::ffi::OsStr) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(name.as_bytes()).context("--comm must not contain NUL")?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes).
    if unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_NAME)");
    }
    Ok(())
}

#[derive(Subcommand)]
enum Role {
    /// Listen, accept, read until EOF, then close after a delay.
    Server {
        #[command(flatten)]
        opts: ServeOptions,
        /// Never close accepted connections (the leak): hold them until killed.
        #[arg(long)]
        never_close: bool,
        /// After EOF (and --close-delay-ms), shutdown(SHUT_WR) but never close.
        #[arg(long)]
        shutdown_only: bool,
        /// Fork after accepting; the child keeps the connection and blocks,
        /// the parent closes its copy.
        #[arg(long)]
        fork_child: bool,
        /// Pass each accepted connection to the `holder` at this Unix
        /// socket (SCM_RIGHTS), then close our copy.
        #[arg(long, value_name = "PATH")]
        pass_to: Option<PathBuf>,
        /// Swoole PROCESS mode: a master holds connections and waits for a
        /// worker to say "close"; the worker is blocked and never does.
        #[arg(long)]
        blocked_worker: bool,
        /// After EOF, run a close handler that never returns, holding the
        /// connection: recv=ADDR (waits on a backend), mutex, sleep, spin.
        #[arg(long, value_name = "HANDLER")]
        on_close: Option<handlers::Handler>,
    },
    /// Connect, send a byte, wait, close first.
    Client(ClientOptions),
    /// Receive connections over a Unix socket and hold them forever.
    Holder {
        #[arg(long, value_name = "PATH")]
        unix: PathBuf,
    },
    /// bind() a port and report: BOUND, or ERROR <errno>.
    Bind {
        #[arg(long)]
        addr: SocketAddr,
    },
}

#[derive(clap::Args)]
struct ServeOptions {
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
    /// listen() backlog.
    #[arg(long)]
    backlog: Option<i32>,
    /// Never call accept(): connections pile up in the accept queue.
    #[arg(long)]
    no_accept: bool,
    /// Fork this many workers after listening, each accepting
    /// --connections on the inherited listener (a prefork server: nginx,
    /// php-fpm); the parent only waits for them. Workers print
    /// `WORKER <pid>` and `ACCEPTED_BY <pid> <peer port>`.
    #[arg(long, default_value_t = 0)]
    prefork: u32,
    /// Lower RLIMIT_NOFILE to this. An accept() failing with EMFILE then
    /// prints `ERROR 24` once and is retried every 100 ms, as servers do.
    #[arg(long)]
    nofile: Option<u64>,
}

#[derive(clap::Args)]
struct ClientOptions {
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
    /// Send nothing (so a server that closes first leaves no unread data).
    #[arg(long)]
    silent: bool,
    /// Read until the server closes before closing: the server closes first.
    #[arg(long)]
    wait_eof: bool,
    /// Stop at the first failing connect, printing ERROR <errno>.
    #[arg(long)]
    until_error: bool,
    /// Bind this local port (SO_REUSEADDR) before each connect (IPv4).
    #[arg(long)]
    source_port: Option<u16>,
    /// Give up on a connect after this long and go on (listen overflow).
    #[arg(long)]
    connect_timeout_ms: Option<u64>,
    /// Start each connect without waiting, and after this long abort it
    /// with connect(AF_UNSPEC), printing PENDING for each one that was
    /// still in SYN_SENT (IPv4).
    #[arg(long, conflicts_with_all = ["source_port", "connect_timeout_ms"])]
    abort_after_ms: Option<u64>,
}

fn say(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

fn serve(opts: ServeOptions, mode: ServeMode) -> anyhow::Result<()> {
    let ServeOptions {
        listen,
        connections,
        close_delay_ms,
        no_read,
        backlog,
        no_accept,
        prefork,
        nofile,
    } = opts;
    if let Some(n) = nofile {
        handlers::set_nofile(n)?;
    }
    let lock = match &mode {
        ServeMode::Handler(h) => handlers::prepare(h)?,
        _ => None,
    };
    // The blocked worker is forked first, so it holds no socket of ours.
    let worker_pipe = match mode {
        ServeMode::BlockedWorker => Some(spawn_blocked_worker()?),
        _ => None,
    };
    let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    if let Some(b) = backlog {
        // listen() again on a listening socket just sets the backlog.
        // SAFETY: a valid listening socket.
        if unsafe { libc::listen(l.as_raw_fd(), b) } != 0 {
            return Err(io::Error::last_os_error()).context("listen");
        }
    }
    say(&format!("LISTENING {}", l.local_addr()?.port()))?;
    if no_accept {
        hold_forever(vec![l]);
    }
    let serving = Serving {
        connections,
        close_delay_ms,
        no_read,
        worker_pipe,
        worker: prefork > 0,
        lock,
    };
    if prefork > 0 {
        return prefork_workers(l, prefork, &serving, &mode);
    }
    // By reference: the listener stays open while the leaked connections
    // are held, as a real server's does.
    let held = accept_loop(&l, &serving, &mode)?;
    say("DONE")?;
    if !held.is_empty() {
        hold_forever(held);
    }
    Ok(())
}

/// What each accept loop needs.
struct Serving {
    connections: u64,
    close_delay_ms: u64,
    no_read: bool,
    worker_pipe: Option<(std::fs::File, std::fs::File)>,
    /// A prefork worker: accepted connections are announced with its pid.
    worker: bool,
    /// `--on-close mutex`: the lock another thread holds.
    lock: Option<std::sync::Arc<std::sync::Mutex<()>>>,
}

/// `n` workers accepting on `l`, each until its connections are served;
/// the parent waits for all, then says DONE. Workers die with the parent.
fn prefork_workers(
    l: TcpListener,
    n: u32,
    serving: &Serving,
    mode: &ServeMode,
) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    for _ in 0..n {
        // SAFETY: single-threaded process; the child runs the accept loop.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            // SAFETY: prctl with constant arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            say(&format!("WORKER {}", std::process::id()))?;
            let held = accept_loop(&l, serving, mode)?;
            if !held.is_empty() {
                hold_forever(held);
            }
            std::process::exit(0);
        }
        workers.push(pid);
    }
    for pid in workers {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    Ok(say("DONE")?)
}

/// Accept and serve until `connections` are served; returns the
/// connections it keeps open.
fn accept_loop(
    l: &TcpListener,
    serving: &Serving,
    mode: &ServeMode,
) -> anyhow::Result<Vec<TcpStream>> {
    let Serving {
        connections,
        close_delay_ms,
        no_read,
        ref worker_pipe,
        worker,
        ref lock,
    } = *serving;
    let mut held = Vec::new();
    let mut served = 0;
    let mut out_of_fds = false;
    while connections == 0 || served < connections {
        let (mut s, peer) = match l.accept() {
            Ok(a) => a,
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                if !std::mem::replace(&mut out_of_fds, true) {
                    say(&format!("ERROR {}", libc::EMFILE))?;
                }
                sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => return Err(e).context("accept"),
        };
        if worker {
            say(&format!(
                "ACCEPTED_BY {} {}",
                std::process::id(),
                peer.port()
            ))?;
        } else if connections != 0 {
            say(&format!("ACCEPTED {}", peer.port()))?;
            say(&format!("FD {}", s.as_raw_fd()))?;
        }
        if !no_read {
            let mut buf = [0u8; 4096];
            while s.read(&mut buf).context("read")? > 0 {}
        }
        served += 1;
        match mode {
            ServeMode::Plain => {
                sleep(Duration::from_millis(close_delay_ms));
                drop(s);
            }
            ServeMode::NeverClose => held.push(s),
            ServeMode::Handler(h) => {
                held.push(s);
                handlers::run(h, lock.as_ref())?;
            }
            ServeMode::ShutdownOnly => {
                sleep(Duration::from_millis(close_delay_ms));
                s.shutdown(std::net::Shutdown::Write).context("shutdown")?;
                held.push(s);
            }
            ServeMode::ForkChild => {
                // SAFETY: single-threaded process; the child only sleeps.
                let pid = unsafe { libc::fork() };
                if pid < 0 {
                    return Err(io::Error::last_os_error()).context("fork");
                }
                if pid == 0 {
                    say(&format!("CHILD {}", std::process::id()))?;
                    // The child holds the connection only, not the
                    // listener; it never returns, so nothing closes it twice.
                    // SAFETY: our own descriptor, closed once.
                    unsafe { libc::close(l.as_raw_fd()) };
                    hold_forever(vec![s]);
                }
                drop(s);
            }
            ServeMode::PassTo(path) => {
                let unix = UnixStream::connect(path)
                    .with_context(|| format!("connect {}", path.display()))?;
                send_fd(&unix, s.as_raw_fd())?;
                drop(s);
                say("PASSED")?;
            }
            ServeMode::BlockedWorker => {
                // Ask the worker what to do with the closed connection and
                // wait for its answer, holding the socket: it never answers.
                let (to_worker, from_worker) = worker_pipe.as_ref().expect("worker");
                (&*to_worker)
                    .write_all(b"closed\n")
                    .context("tell worker")?;
                let mut answer = [0u8; 1];
                let _ = (&*from_worker).read(&mut answer);
                drop(s);
            }
        }
    }
    Ok(held)
}

enum ServeMode {
    Plain,
    NeverClose,
    ShutdownOnly,
    ForkChild,
    PassTo(PathBuf),
    BlockedWorker,
    Handler(handlers::Handler),
}

fn hold_forever<T>(held: Vec<T>) -> ! {
    loop {
        sleep(Duration::from_secs(3600));
        let _ = &held;
    }
}

/// A worker process that reads one request and then blocks forever
/// (the article's onClose callback that never returns).
fn spawn_blocked_worker() -> anyhow::Result<(std::fs::File, std::fs::File)> {
    let (to_worker_r, to_worker_w) = pipe()?;
    let (from_worker_r, from_worker_w) = pipe()?;
    // SAFETY: single-threaded process; the child only reads and sleeps.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        drop(to_worker_w);
        drop(from_worker_r);
        let mut buf = [0u8; 64];
        let _ = (&to_worker_r).read(&mut buf);
        hold_forever(vec![from_worker_w]);
    }
    say(&format!("WORKER {pid}"))?;
    Ok((to_worker_w, from_worker_r))
}

fn pipe() -> anyhow::Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: both descriptors are fresh and ours.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// A one-byte message with room for one descriptor in its control data.
/// The returned msghdr points into `byte`, `iov` and `control`.
fn fd_message(byte: &mut [u8; 1], iov: &mut libc::iovec, control: &mut Vec<u8>) -> libc::msghdr {
    *iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    control.resize(space, 0);
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    msg
}

fn send_fd(unix: &UnixStream, fd: RawFd) -> anyhow::Result<()> {
    let (mut byte, mut control) = ([b'x'], Vec::new());
    let mut iov = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let msg = fd_message(&mut byte, &mut iov, &mut control);
    // SAFETY: the control buffer is CMSG_SPACE(sizeof fd) bytes, enough for one header.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: msg points at live buffers, initialised above.
    if unsafe { libc::sendmsg(unix.as_raw_fd(), &msg, 0) } < 0 {
        return Err(io::Error::last_os_error()).context("sendmsg SCM_RIGHTS");
    }
    Ok(())
}

fn recv_fd(unix: &UnixStream) -> anyhow::Result<RawFd> {
    let (mut byte, mut control) = ([0u8], Vec::new());
    let mut iov = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut msg = fd_message(&mut byte, &mut iov, &mut control);
    // SAFETY: msg points at live buffers of the sizes given.
    if unsafe { libc::recvmsg(unix.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error()).context("recvmsg");
    }
    // SAFETY: the kernel filled msg; CMSG_FIRSTHDR checks the length.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            anyhow::bail!("no descriptor received");
        }
        Ok(std::ptr::read_unaligned(
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
        ))
    }
}

fn holder(path: PathBuf) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    say("READY")?;
    let mut held = Vec::new();
    loop {
        let (conn, _) = l.accept().context("accept")?;
        let fd = recv_fd(&conn)?;
        say(&format!("RECEIVED {fd}"))?;
        // SAFETY: the descriptor was just received and is ours.
        held.push(unsafe { TcpStream::from_raw_fd(fd) });
    }
}

fn client(o: ClientOptions) -> anyhow::Result<()> {
    if let Some(ms) = o.abort_after_ms {
        return abort_connects(o.connect, o.count, Duration::from_millis(ms));
    }
    let connect_timeout = o.connect_timeout_ms.map(Duration::from_millis);
    let mut pending = Vec::new();
    for _ in 0..o.count {
        let attempt = match (o.source_port, connect_timeout) {
            (Some(port), _) => sockets::connect_from(port, o.connect),
            (None, Some(t)) => TcpStream::connect_timeout(&o.connect, t),
            (None, None) => TcpStream::connect(o.connect),
        };
        let mut s = match attempt {
            Ok(s) => s,
            Err(e) if o.until_error => {
                say(&format!("ERROR {}", e.raw_os_error().unwrap_or(0)))?;
                break;
            }
            // Overflow tests expect refusals and timeouts: keep going.
            Err(_) if connect_timeout.is_some() => continue,
            Err(e) => return Err(e).with_context(|| format!("connect {}", o.connect)),
        };
        if o.verbose {
            say(&format!("CONNECTED {}", s.local_addr()?.port()))?;
        }
        if connect_timeout.is_some() {
            // Keep them open so they stay queued on the listener.
            pending.push(s);
            continue;
        }
        if !o.silent {
            s.write_all(b"x").context("write")?;
        }
        if o.wait_eof {
            let mut buf = [0u8; 512];
            while s.read(&mut buf).context("read")? > 0 {}
        }
        sleep(Duration::from_millis(o.hold_ms));
        if o.reset {
            sockets::linger_zero(&s)?;
        }
        drop(s);
    }
    say("DONE")?;
    Ok(())
}

fn abort_connects(to: SocketAddr, count: u64, after: Duration) -> anyhow::Result<()> {
    for _ in 0..count {
        let s = sockets::connect_nonblocking(to).with_context(|| format!("connect {to}"))?;
        sleep(after);
        if sockets::in_syn_sent(&s)? {
            say("PENDING")?;
        }
        sockets::disconnect(&s).context("connect(AF_UNSPEC)")?;
    }
    say("DONE")?;
    Ok(())
}

fn try_bind(addr: SocketAddr) -> anyhow::Result<()> {
    match TcpListener::bind(addr) {
        Ok(_) => say("BOUND")?,
        Err(e) => say(&format!("ERROR {}", e.raw_os_error().unwrap_or(0)))?,
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(name) = &cli.comm {
        set_comm(name)?;
    }
    match cli.role {
        Role::Server {
            opts,
            never_close,
            shutdown_only,
            fork_child,
            pass_to,
            blocked_worker,
            on_close,
        } => {
            let modes = [
                never_close.then_some(ServeMode::NeverClose),
                shutdown_only.then_some(ServeMode::ShutdownOnly),
                fork_child.then_some(ServeMode::ForkChild),
                pass_to.map(ServeMode::PassTo),
                blocked_worker.then_some(ServeMode::BlockedWorker),
                on_close.map(ServeMode::Handler),
            ];
            let mut chosen = modes.into_iter().flatten();
            let mode = chosen.next().unwrap_or(ServeMode::Plain);
            if chosen.next().is_some() {
                anyhow::bail!(
                    "choose one of --never-close, --shutdown-only, --fork-child, --pass-to, \
                     --blocked-worker, --on-close"
                );
            }
            serve(opts, mode)
        }
        Role::Client(opts) => client(opts),
        Role::Holder { unix } => holder(unix),
        Role::Bind { addr } => try_bind(addr),
    }
}
