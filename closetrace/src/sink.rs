//! Output sinks: a readable, aligned table for people and JSON lines for
//! machines, written to stdout or `--output`.
use std::io::{self, Write};
use std::net::IpAddr;

use serde::Serialize;

use crate::clock::WallClock;
use crate::model::StateChange;
use crate::records::{self, HookReport, Lost, Ready, State};
use crate::summary::SummaryRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub struct Sink {
    format: Format,
    out: Box<dyn Write + Send>,
    clock: WallClock,
    header_done: bool,
}

impl Sink {
    pub fn new(format: Format, out: Box<dyn Write + Send>, clock: WallClock) -> Self {
        Sink {
            format,
            out,
            clock,
            header_done: false,
        }
    }

    pub fn ready(&mut self, ready: &Ready<'_>) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(ready),
            Format::Text => {
                // People read the hook status on stderr; the table stays clean.
                eprint!("{}", ready_text(ready.hooks, ready.pids));
                Ok(())
            }
        }
    }

    pub fn state(&mut self, ev: &StateChange) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&State::new(ev, &self.clock)),
            Format::Text => {
                if !self.header_done {
                    self.header_done = true;
                    writeln!(self.out, "{}", text_header())?;
                }
                writeln!(self.out, "{}", text_line(ev, &self.clock))
            }
        }
    }

    pub fn lost(&mut self, count: u64, total: u64) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&Lost {
                kind: "lost",
                count,
                total,
            }),
            Format::Text => writeln!(
                self.out,
                "!! {count} events lost ({total} in total): ring buffer full"
            ),
        }
    }

    pub fn summary(&mut self, rec: &SummaryRecord) -> io::Result<()> {
        if self.format == Format::Json {
            self.json(rec)?;
        }
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn json<T: Serialize>(&mut self, v: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")
    }
}

pub fn ready_text(hooks: &[HookReport], pids: &[u32]) -> String {
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
    s + &format!("closetrace: tracing TCP state changes for {scope}; Ctrl-C to stop\n")
}

const W_ADDR: usize = 22;

pub fn text_header() -> String {
    format!(
        "{:<15} {:>7} {:<16} {:<W_ADDR$} {:<W_ADDR$} {:<26} {:>10}",
        "TIME", "PID", "COMM", "LOCAL", "REMOTE", "OLD -> NEW", "MS"
    )
}

pub fn text_line(ev: &StateChange, clock: &WallClock) -> String {
    let ts = records::rfc3339(clock, ev.ts_ns);
    // HH:MM:SS.micros out of the RFC 3339 stamp.
    let time = ts.get(11..26).unwrap_or(&ts);
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
        .map(|n| format!("{:.3}", records::ns_to_ms(n)))
        .unwrap_or_else(|| "-".into());
    format!(
        "{time:<15} {pid:>7} {comm:<16} {:<W_ADDR$} {:<W_ADDR$} {transition:<26} {ms:>10}",
        endpoint(ev.sock.saddr, ev.sock.sport),
        endpoint(ev.sock.daddr, ev.sock.dport),
    )
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Process names are chosen by the process: never let one carry control
/// characters (newlines, ANSI escapes) into a terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::model::*;

    fn ev(owner: Option<Task>) -> StateChange {
        StateChange {
            ts_ns: 3_600_000_000_000 + 1_500_000,
            sock: SockRef {
                id: 1,
                netns: 0,
                family: Family::Ipv4,
                saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                sport: 9501,
                daddr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                dport: 54004,
            },
            old: TcpState::Established,
            new: TcpState::CloseWait,
            old_ns: Some(200_000_000),
            ctx: Task {
                pid: 7,
                tid: 7,
                comm: "cli\x1b[31m".into(),
            },
            owner,
            owner_source: OwnerSource::Listener,
        }
    }

    #[test]
    fn text_columns_align_with_header() {
        let clock = WallClock::from_offset(0);
        let owner = Task {
            pid: 23308,
            tid: 23308,
            comm: "php".into(),
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
}
