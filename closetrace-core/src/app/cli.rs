//! Command line.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::output::sink::Format;

/// Trace TCP connection teardown live: every state change tied to the
/// process that owns the socket.
#[derive(Debug, Parser)]
#[command(
    name = "closetrace",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Only report sockets owned by this process (repeatable). A thread id
    /// is taken as its process.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Follow this process and all its descendants, including those forked
    /// after start (a Swoole master and its workers, nginx and its
    /// workers). Repeatable; combines with --pid.
    #[arg(long = "pid-tree", value_name = "PID")]
    pub pid_trees: Vec<u32>,

    /// Only sockets of this cgroup (v2) and the cgroups below it, e.g.
    /// system.slice/nginx.service or a path under the cgroup2 mount.
    /// Applied in the kernel.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Only sockets of this network namespace: a namespace file
    /// (/run/netns/NAME, /proc/PID/ns/net) or its inode number. Applied in
    /// the kernel.
    #[arg(long, value_name = "PATH|INODE")]
    pub netns: Option<String>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Stream every state change and every close too. Without it closetrace
    /// hunts: it reports leaks and their end, TIME_WAIT pressure, connect and
    /// bind failures, listen overflows and losses, and the kernel sends only
    /// the transitions those need (all transitions are still counted).
    #[arg(long)]
    pub states: bool,

    /// Colour in the text view: auto (on a terminal, unless NO_COLOR is
    /// set), always, never.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: crate::output::text::Color,

    /// Serve Prometheus metrics at /metrics on this port of 127.0.0.1, or
    /// on ADDR:PORT. Off by default; an address other than loopback
    /// exposes process names and destinations to whoever can reach it.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_metrics_addr)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Write events here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Stop after this long (e.g. 500ms, 30s, 5m). Default: until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// A socket in CLOSE_WAIT this long, not closed by its holder, is reported
    /// as a leak (e.g. 500ms, 2s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub close_wait_threshold: Duration,

    /// Report TIME_WAIT pressure when a destination's TIME_WAIT sockets
    /// reach this share of the ephemeral ports (0 < ratio <= 1).
    #[arg(long, value_name = "RATIO", default_value_t = 0.5, value_parser = parse_ratio)]
    pub tw_warn: f64,

    /// How to hook tcp_close: auto (fentry, else kprobe, else inferred from
    /// transitions), or force one method.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "CLOSETRACE_CLOSE_HOOK"
    )]
    pub close_hook: crate::kernel::CloseHookChoice,

    /// Ring buffer size in bytes: a power of two, at least one page.
    /// Default: 2 MiB, or 16 MiB with --states: about 300 and 400 ms of
    /// the busiest churn here (where every connection leaves a record
    /// in the default mode), enough to ride out the reader being scheduled
    /// out. Mapped twice, so resident memory counts it twice.
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub ring_buffer_size: Option<u32>,

    /// Also learn owners from every send and receive (the sock_send_length
    /// and sock_recv_length tracepoints, 6.3+). Off by default: owners come
    /// from accept(), connect(), listen() and close, once per connection,
    /// and this adds a program run to every message (see the README's
    /// Performance section for what it costs). Useful where an fd is handed
    /// to another process that neither accepted nor closes it.
    #[arg(long)]
    pub owner_from_io: bool,

    /// Attach no syscall tracepoint (accept, bind; shutdown too before
    /// Linux 5.15). While any syscall tracepoint is attached, the kernel
    /// takes its slower syscall path for every syscall of every process,
    /// 30-50 ns each here (see the README's Performance section).
    /// Without them: accepted sockets belong to their listener's owner
    /// until the acceptor closes them, and accept() running out of fds
    /// (EMFILE, ENFILE) and bind() failures are not reported (connect()
    /// failures still are; before 5.15 a half-close counts as a close).
    #[arg(long)]
    pub no_syscall_hooks: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sum up JSON lines that closetrace wrote: leaks per process, the
    /// busiest TIME_WAIT destinations, errors, losses and the time range.
    /// Needs no privileges.
    Report {
        /// JSON lines from `closetrace --format json` (`-` for stdin).
        #[arg(value_name = "EVENTS.JSONL")]
        file: PathBuf,
        /// Also write an HTML page with charts (CLOSE_WAIT leaks per
        /// process, TIME_WAIT per destination, over time), readable offline.
        #[arg(long, value_name = "OUT.HTML")]
        html: Option<PathBuf>,
    },
    /// Write the man page and shell completions into DIR (packaging; used
    /// by `cargo xtask assets`).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The packaging files generated from this definition: (path under the
/// assets directory, contents).
pub fn assets() -> std::io::Result<Vec<(&'static str, Vec<u8>)>> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let mut out = Vec::new();
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .section("8")
        .render(&mut page)?;
    out.push(("man/closetrace.8", page));
    for (shell, file) in [
        (Shell::Bash, "completions/closetrace.bash"),
        (Shell::Zsh, "completions/_closetrace"),
        (Shell::Fish, "completions/closetrace.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "closetrace", &mut buf);
        out.push((file, buf));
    }
    Ok(out)
}

impl Cli {
    pub fn ring_bytes(&self) -> u32 {
        self.ring_buffer_size
            .unwrap_or(if self.states { 16 << 20 } else { 2 << 20 })
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (examples: 500ms, 2s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// `--metrics`: a bare port means loopback.
pub fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    s.parse().map_err(|_| {
        format!("{s:?}: expected PORT (on 127.0.0.1) or ADDR:PORT, e.g. 9477 or [::1]:9477")
    })
}

pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !(r > 0.0 && r <= 1.0) {
        return Err("must be greater than 0 and at most 1 (e.g. 0.5)".into());
    }
    Ok(r)
}

pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.trim().parse().map_err(|e| format!("{e}"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
    if n < page || !n.is_power_of_two() {
        return Err(format!(
            "must be a power of two and at least {page} (one page)"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(parse_duration("soon").unwrap_err().contains("examples"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    /// deploy/ ships the man page and completions; regenerate them with
    /// `cargo xtask assets` when the options change.
    #[test]
    fn packaged_assets_are_current() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for (name, bytes) in assets().unwrap() {
            let on_disk = std::fs::read(deploy.join(name)).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "deploy/{name} is stale: run `cargo xtask assets`"
            );
        }
    }

    #[test]
    fn report_is_a_subcommand_and_excludes_tracing_options() {
        let c =
            Cli::try_parse_from(["closetrace", "report", "x.jsonl", "--html", "o.html"]).unwrap();
        assert!(matches!(c.command, Some(Command::Report { .. })));
        assert!(Cli::try_parse_from(["closetrace", "--states", "report", "x"]).is_err());
        assert!(Cli::try_parse_from(["closetrace", "report"]).is_err());
        let c = Cli::try_parse_from(["closetrace", "--metrics", "127.0.0.1:9477"]).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9477".parse().unwrap()));
        // A bare port stays on loopback.
        let c = Cli::try_parse_from(["closetrace", "--metrics", "9477"]).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9477".parse().unwrap()));
        let c = Cli::try_parse_from(["closetrace", "--metrics", "[::1]:9477"]).unwrap();
        assert_eq!(c.metrics, Some("[::1]:9477".parse().unwrap()));
        for bad in ["x", "70000", "host:9477", ""] {
            assert!(
                Cli::try_parse_from(["closetrace", "--metrics", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("4194304"), Ok(4 << 20));
        assert!(parse_ring_size("5000").is_err());
        assert!(parse_ring_size("1024").is_err());
        assert!(parse_ring_size("big").is_err());
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from(["closetrace", "--pid", "1", "--pid", "2", "--format", "json"])
            .unwrap();
        assert_eq!(c.pids, vec![1, 2]);
        assert_eq!(c.format, Format::Json);
        assert!(!c.states, "hunting is the default");
        assert_eq!(c.ring_bytes(), 2 << 20);
        let c = Cli::try_parse_from(["closetrace", "--states"]).unwrap();
        assert_eq!(c.ring_bytes(), 16 << 20);
        let c =
            Cli::try_parse_from(["closetrace", "--states", "--ring-buffer-size", "4096"]).unwrap();
        assert_eq!(c.ring_bytes(), 4096);
        assert_eq!(c.close_wait_threshold, Duration::from_secs(30));
        let c = Cli::try_parse_from(["closetrace", "--close-wait-threshold", "500ms"]).unwrap();
        assert_eq!(c.close_wait_threshold, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["closetrace", "--close-wait-threshold", "0s"]).is_err());
        assert_eq!(Cli::try_parse_from(["closetrace"]).unwrap().tw_warn, 0.5);
        for bad in ["0", "1.5", "-0.1", "NaN", "x"] {
            assert!(
                Cli::try_parse_from(["closetrace", "--tw-warn", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Cli::try_parse_from(["closetrace", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["closetrace", "--format", "xml"]).is_err());
    }
}
