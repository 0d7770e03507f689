//! Output sinks: a readable, aligned table for people (rendered by
//! `text`) and JSON lines for machines, written to stdout or `--output`.
use std::io::{self, Write};

use crate::model::clock::WallClock;
use crate::model::{ContainerNames, NoContainers, StateChange};
use crate::output::records::{
    Close, CloseWaitLeak, CloseWaitResolved, Lost, Ready, Record, State, SummaryRecord,
};
use crate::output::text::{
    close_text, leak_text, paint, place, ready_text, resolved_text, text_header, text_line,
};
use crate::output::verdict::verdict;

/// Output is flushed after each batch of events; under load, this much
/// is written at once (`--states` writes 100–300 MB/s).
const SPILL_AT: usize = 256 << 10;
/// Room for the line that crosses `SPILL_AT`, so the buffer never grows.
const SPILL_SLACK: usize = 16 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub struct Sink {
    format: Format,
    /// Colour the text view's findings (see `Color`).
    color: bool,
    out: Box<dyn Write + Send>,
    clock: WallClock,
    header_done: bool,
    /// Records are written here, and reach `out` when it holds
    /// `SPILL_AT` bytes or at a flush: one copy of each line, not two (into
    /// a line, then into a `BufWriter`), and none of serde_json's small
    /// pieces is a call through `out`'s trait object.
    pending: Vec<u8>,
    /// Names the container of each socket's cgroup in records.
    names: Box<dyn ContainerNames>,
    /// The namespace closetrace runs in: lines about sockets elsewhere
    /// name their container or namespace (see `place`).
    home_netns: u32,
}

impl Sink {
    pub fn new(format: Format, out: Box<dyn Write + Send>, clock: WallClock, color: bool) -> Self {
        Sink {
            format,
            color: color && format == Format::Text,
            out,
            clock,
            header_done: false,
            pending: Vec::with_capacity(SPILL_AT + SPILL_SLACK),
            names: Box::new(NoContainers),
            home_netns: 0,
        }
    }

    /// Lines about sockets outside namespace `netns` say where they are.
    pub fn with_home_netns(mut self, netns: u32) -> Self {
        self.home_netns = netns;
        self
    }

    pub fn home_netns(&self) -> u32 {
        self.home_netns
    }

    /// Name containers in records with `names` (none by default).
    pub fn with_containers(mut self, names: Box<dyn ContainerNames>) -> Self {
        self.names = names;
        self
    }

    /// What names containers in the records written here.
    pub fn containers(&self) -> &dyn ContainerNames {
        self.names.as_ref()
    }

    pub fn ready(&mut self, ready: Ready<'_>) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&Record::Ready(ready)),
            Format::Text => {
                // People read the hook status on stderr; the table stays clean.
                eprint!("{}", ready_text(&ready.hooks, &ready.pids, ready.mode));
                Ok(())
            }
        }
    }

    pub fn state(&mut self, ev: &StateChange) -> io::Result<()> {
        match self.format {
            Format::Json => {
                let rec = State::new(ev, &self.clock, self.names.as_ref());
                rec.write_json_line(&mut self.pending);
            }
            Format::Text => {
                if !self.header_done {
                    self.header_done = true;
                    writeln!(self.pending, "{}", text_header())?;
                }
                writeln!(self.pending, "{}", text_line(ev, &self.clock))?;
            }
        }
        self.spill()
    }

    pub fn close(&mut self, rec: Close<'_>) -> io::Result<()> {
        match self.format {
            Format::Json => {
                rec.write_json_line(&mut self.pending);
                self.spill()
            }
            Format::Text => self.text_line(close_text(&rec)),
        }
    }

    /// `process_leaks`: this process's leaks so far, for the running count.
    pub fn leak(&mut self, rec: CloseWaitLeak<'_>, process_leaks: u64) -> io::Result<()> {
        let home = self.home_netns;
        self.emit(rec, Record::CloseWaitLeak, |r| {
            let line = leak_text(r, process_leaks) + &place(&r.sock.scope, home);
            match r.diagnosis.as_ref().and_then(verdict) {
                Some(v) => format!("{line}\n{v}"),
                None => line,
            }
        })
    }

    pub fn resolved(&mut self, rec: CloseWaitResolved<'_>) -> io::Result<()> {
        let home = self.home_netns;
        self.emit(rec, Record::CloseWaitResolved, |r| {
            resolved_text(r) + &place(&r.sock.scope, home)
        })
    }

    /// A record of type `T`: as JSON, wrapped by `wrap`, or as the one line
    /// `text` renders for people.
    fn emit<'a, T>(
        &mut self,
        rec: T,
        wrap: impl FnOnce(T) -> Record<'a>,
        text: impl FnOnce(&T) -> String,
    ) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&wrap(rec)),
            Format::Text => self.text_line(text(&rec)),
        }
    }

    /// Any record: JSON as is, or `text()` as one line for people.
    pub fn record(&mut self, rec: Record<'_>, text: impl FnOnce() -> String) -> io::Result<()> {
        match self.format {
            Format::Json => self.json(&rec),
            Format::Text => self.text_line(text()),
        }
    }

    fn text_line(&mut self, line: String) -> io::Result<()> {
        if self.color {
            writeln!(self.pending, "{}", paint(&line))?;
        } else {
            writeln!(self.pending, "{line}")?;
        }
        self.spill()
    }

    pub fn lost(&mut self, count: u64, total: u64) -> io::Result<()> {
        self.record(Record::Lost(Lost { count, total }), || {
            format!("!! {count} events lost ({total} in total): ring buffer full")
        })
    }

    pub fn summary(&mut self, rec: SummaryRecord) -> io::Result<()> {
        if self.format == Format::Json {
            self.json(&Record::Summary(rec))?;
        }
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.out.flush()
    }

    fn json(&mut self, v: &Record<'_>) -> io::Result<()> {
        serde_json::to_writer(&mut self.pending, v)?;
        self.pending.push(b'\n');
        self.spill()
    }

    /// Write what is pending once there is enough of it for one large write.
    #[inline]
    fn spill(&mut self) -> io::Result<()> {
        if self.pending.len() >= SPILL_AT {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Pending bytes are written once: after a failure (the run then
    /// stops) a retry could repeat the part that was written.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.out.write_all(&self.pending);
        self.pending.clear();
        written
    }
}

impl Drop for Sink {
    /// Whatever was not flushed yet, as a `BufWriter` would on drop.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::warn!("output: {e}; the last records may be missing");
        }
    }
}
