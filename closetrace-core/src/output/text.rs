//! The text view: the `ready` banner, the aligned table of state changes,
//! one line per finding, and the helpers that keep them safe to print
//! (process names cannot carry escapes) and consistent (one endpoint form).
use std::io;

use crate::model::StateChange;
use crate::model::clock::WallClock;
use crate::model::hooks::Mode;
use crate::output::records::{
    Close, CloseWaitLeak, CloseWaitResolved, ClosedBy, HookReport, LeakSince, Scope,
};

/// When the text view uses colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    /// On a terminal, unless NO_COLOR is set (and not empty).
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether to colour text written to stdout (`to_stdout`) or a file.
    pub fn enabled(self, to_stdout: bool) -> bool {
        use std::io::IsTerminal;
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                to_stdout
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && io::stdout().is_terminal()
            }
        }
    }
}

/// A finding's line in colour by its kind: leaks red, other warnings
/// yellow, endings green, periodic notes dim. Only the prefix chosen here
/// decides; process names were made printable before, so none can carry an
/// escape of its own.
pub fn paint(line: &str) -> String {
    let code = if line.starts_with("!! CLOSE_WAIT LEAK") {
        "1;31"
    } else if line.starts_with("!!") {
        "33"
    } else if line.starts_with("==") {
        "32"
    } else if line.starts_with("--") {
        "2"
    } else {
        return line.to_string();
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

pub fn ready_text(hooks: &[HookReport], pids: &[u32], mode: Mode) -> String {
    let mut s = String::new();
    for h in hooks {
        match &h.reason {
            None => s += &format!("closetrace: {} via {}: {}\n", h.hook, h.attach, h.status),
            Some(r) => {
                s += &format!(
                    "closetrace: {} via {}: {} ({r})\n",
                    h.hook, h.attach, h.status
                )
            }
        }
    }
    let scope = if pids.is_empty() {
        "the whole host".to_string()
    } else {
        let p: Vec<String> = pids.iter().map(u32::to_string).collect();
        format!("pid {}", p.join(", "))
    };
    let what = if mode == Mode::States {
        "tracing every TCP state change"
    } else {
        "hunting CLOSE_WAIT leaks, TIME_WAIT pressure and connect/bind failures \
         (--states: every state change)"
    };
    s + &format!("closetrace: {what} for {scope}; Ctrl-C to stop\n")
}

const W_ADDR: usize = 22;

/// One row of the table: every line of it goes through here, so the
/// columns stay aligned with the header.
fn row(
    time: &str,
    pid: &str,
    comm: &str,
    local: &str,
    remote: &str,
    what: &str,
    ms: &str,
) -> String {
    format!("{time:<15} {pid:>7} {comm:<16} {local:<W_ADDR$} {remote:<W_ADDR$} {what:<26} {ms:>10}")
}

pub fn text_header() -> String {
    row("TIME", "PID", "COMM", "LOCAL", "REMOTE", "OLD -> NEW", "MS")
}

pub fn text_line(ev: &StateChange, clock: &WallClock) -> String {
    let time = clock_time(clock.wall(ev.ts_ns));
    let (pid, comm) = match &ev.owner {
        Some(o) => (o.pid.to_string(), printable(&o.comm)),
        None => (
            "?".to_string(),
            format!("? (ctx {})", printable(&ev.ctx.comm)),
        ),
    };
    let transition = format!("{} -> {}", ev.old, ev.new);
    let ms = ev
        .old_ns
        .map(|n| format!("{:.3}", crate::output::records::ns_to_ms(n)))
        .unwrap_or_else(|| "-".into());
    row(
        &time,
        &pid,
        &comm,
        &endpoint(ev.sock.saddr, ev.sock.sport),
        &endpoint(ev.sock.daddr, ev.sock.dport),
        &transition,
        &ms,
    )
}

/// A close as a table row: "close in STATE" (or "exit in STATE").
pub fn close_text(rec: &Close<'_>) -> String {
    let what = format!(
        "{} in {}",
        match rec.by {
            ClosedBy::Exit => "exit",
            ClosedBy::Close => "close",
        },
        rec.state
    );
    row(
        &clock_time(rec.ts.0),
        &rec.pid.to_string(),
        &printable(&rec.comm),
        &endpoint(rec.sock.saddr, rec.sock.sport),
        &endpoint(rec.sock.daddr, rec.sock.dport),
        &what,
        "-",
    )
}

/// Where a socket lives, for a line about it: nothing in `home` (the
/// namespace closetrace runs in), else its container (runtime and short
/// id) or, failing that, its namespace inode.
pub fn place(scope: &Scope, home: u32) -> String {
    if scope.netns == 0 || scope.netns == home {
        return String::new();
    }
    match &scope.container {
        Some(c) => format!(" [{} {}]", c.runtime.name(), &c.id[..c.id.len().min(12)]),
        None => format!(" [netns {}]", scope.netns),
    }
}

pub fn leak_text(rec: &CloseWaitLeak<'_>, process_leaks: u64) -> String {
    let who = match (rec.pid, &rec.comm) {
        (Some(p), Some(c)) => format!("{}({p})", printable(c)),
        _ => "unknown process".into(),
    };
    let holders: Vec<String> = rec
        .holders
        .iter()
        .map(|h| format!("{}({}) fd {}", printable(&h.comm), h.pid, h.fd))
        .collect();
    let held = match (holders.is_empty(), rec.accept_queue) {
        (true, _) => "nobody visible".to_string(),
        (false, false) => holders.join(", "),
        (false, true) => format!(
            "nobody: never accepted, its listener {}",
            holders.join(", ")
        ),
    };
    let eof = match rec.recv_q {
        Some(0) => "EOF read, never closed".to_string(),
        Some(n) => format!("EOF never read, {n} bytes unread"),
        None => "recv_q unknown".to_string(),
    };
    let at_least = match rec.since {
        LeakSince::Startup => ">= ",
        // Exact unless the peer sent more after its FIN (see LeakSince).
        LeakSince::Transition | LeakSince::TcpInfo => "",
    };
    let again = match rec.report {
        0 | 1 => String::new(),
        n => format!(" (report {n})"),
    };
    format!(
        "!! CLOSE_WAIT LEAK #{}{again} {who} {} -> {} for {at_least}{:.1} s ({eof}); held by {held}; {who} leaks: {process_leaks}",
        rec.leak,
        endpoint(rec.sock.saddr, rec.sock.sport),
        endpoint(rec.sock.daddr, rec.sock.dport),
        rec.close_wait_ms / 1000.0,
    )
}

pub fn resolved_text(rec: &CloseWaitResolved<'_>) -> String {
    format!(
        "== CLOSE_WAIT leak ended: {}({}) {} -> {} after {:.1} s: {}",
        printable(rec.comm.as_deref().unwrap_or("?")),
        rec.pid.map_or("?".into(), |p| p.to_string()),
        endpoint(rec.sock.saddr, rec.sock.sport),
        endpoint(rec.sock.daddr, rec.sock.dport),
        rec.close_wait_ms / 1000.0,
        rec.how.name()
    )
}

/// HH:MM:SS.micros (UTC), the table's time column.
fn clock_time(t: std::time::SystemTime) -> String {
    let ts = humantime::format_rfc3339_micros(t).to_string();
    ts.get(11..26).unwrap_or(&ts).to_string()
}

/// An address with its port, IPv6 in brackets: `10.0.0.1:80`,
/// `[::1]:80`. Takes an `IpAddr` or the string a JSON record carries.
pub fn endpoint(addr: impl std::fmt::Display, port: u16) -> String {
    let addr = addr.to_string();
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Process names are chosen by the process: never let one carry control
/// characters (newlines, ANSI escapes) into a terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if is_hostile(c) { '?' } else { c })
        .collect()
}

/// Characters a process name or address could use to forge or disguise a
/// line: controls (newlines, escape sequences) and the invisible
/// formatting ones that reorder or hide text (bidi overrides, zero-width).
fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use super::*;
    use crate::model::fixtures::change;
    use crate::model::*;

    /// Sockets outside closetrace's namespace say where they are: their
    /// container, else their namespace; at home, nothing.
    #[test]
    fn place_names_container_or_namespace() {
        let scope = |netns, container| Scope {
            netns,
            cgroup: 7,
            container,
        };
        assert_eq!(place(&scope(5, None), 5), "");
        assert_eq!(place(&scope(0, None), 5), "");
        assert_eq!(place(&scope(9, None), 5), " [netns 9]");
        let c = Container {
            runtime: Runtime::Containerd,
            id: "4f6c".repeat(16).into(),
        };
        assert_eq!(place(&scope(9, Some(c)), 5), " [containerd 4f6c4f6c4f6c]");
    }

    fn ev(owner: Option<Task>) -> StateChange {
        let mut ev = change(1, 9501, TcpState::Established, TcpState::CloseWait);
        ev.ts_ns = 3_600_000_000_000 + 1_500_000;
        ev.sock.daddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        ev.sock.dport = 54004;
        ev.old_ns = Some(200_000_000);
        ev.ctx.comm = "cli\x1b[31m".into();
        ev.owner_source = OwnerSource::Listener;
        ev.owner = owner;
        ev
    }

    /// A socket never accepted has no holder of its own: the line says so
    /// before naming its listener's.
    #[test]
    fn an_unaccepted_leak_names_its_listener_as_such() {
        let ev = ev(None);
        let holders = [Holder {
            pid: 7,
            start: None,
            comm: "nginx".into(),
            fd: 6,
        }];
        let mut rec = CloseWaitLeak {
            ts: crate::output::records::Ts::at(&WallClock::from_offset(0), 0),
            pid: Some(7),
            pid_start: None,
            comm: Some("nginx".into()),
            sock: crate::output::records::SockFields::new(&ev.sock, &NoContainers),
            close_wait_ms: 2_500.0,
            since: LeakSince::TcpInfo,
            recv_q: Some(0),
            holders: holders[..].into(),
            accept_queue: true,
            report: 1,
            leak: 1,
            diagnosis: None,
        };
        let line = leak_text(&rec, 1);
        assert!(line.contains("for 2.5 s (EOF read"), "{line}");
        let queued = "held by nobody: never accepted, its listener nginx(7) fd 6;";
        assert!(line.contains(queued), "{line}");
        rec.accept_queue = false;
        let line = leak_text(&rec, 1);
        assert!(line.contains("held by nginx(7) fd 6;"), "{line}");
    }

    #[test]
    fn findings_are_coloured_by_kind_only() {
        assert_eq!(
            paint("!! CLOSE_WAIT LEAK #1 php(7)"),
            "\x1b[1;31m!! CLOSE_WAIT LEAK #1 php(7)\x1b[0m"
        );
        assert!(paint("!! bind() EADDRINUSE").starts_with("\x1b[33m"));
        assert!(paint("== CLOSE_WAIT leak ended").starts_with("\x1b[32m"));
        assert!(paint("-- TIME_WAIT top").starts_with("\x1b[2m"));
        // State rows and anything else stay plain.
        assert_eq!(
            paint("21:39:38.577787   28070 php"),
            "21:39:38.577787   28070 php"
        );
        assert!(Color::Always.enabled(false));
        assert!(!Color::Never.enabled(true));
        // A file is never coloured by default; nor is a pipe (tests run
        // with stdout captured).
        assert!(!Color::Auto.enabled(false));
    }

    #[test]
    fn text_columns_align_with_header() {
        let clock = WallClock::from_offset(0);
        let owner = Task {
            pid: 23308,
            tid: 23308,
            comm: "php".into(),
            start: Some(1),
        };
        let line = text_line(&ev(Some(owner)), &clock);
        let header = text_header();
        assert!(line.starts_with("01:00:00.001500"), "{line}");
        assert_eq!(
            line.find("23308").unwrap() + 5,
            header.find("PID").unwrap() + 3
        );
        assert_eq!(line.find("127.0.0.1:9501"), header.find("LOCAL"));
        assert_eq!(line.find("[::1]:54004"), header.find("REMOTE"));
        assert_eq!(
            line.find("ESTABLISHED -> CLOSE_WAIT"),
            header.find("OLD -> NEW")
        );
        assert!(line.ends_with("200.000"));
        assert_eq!(line.len(), header.len());
    }

    #[test]
    fn unknown_owner_and_control_characters() {
        let line = text_line(&ev(None), &WallClock::from_offset(0));
        assert!(line.contains("? (ctx cli?[31m)"), "{line}");
        assert!(!line.contains('\x1b'));
    }

    #[test]
    fn names_cannot_forge_lines_or_reorder_text() {
        let hostile = "a\nb\rc\x1b[2Jd\u{202e}e\u{200b}f\u{7f}g\u{fffd}";
        assert_eq!(printable(hostile), "a?b?c?[2Jd?e?f?g\u{fffd}");
        assert_eq!(printable("php-fpm: pool www"), "php-fpm: pool www");
    }
}
