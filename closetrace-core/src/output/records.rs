//! The JSON-lines contract (docs/events.md), defined once: the daemon
//! writes these types and `closetrace report` reads them back. They are the
//! output model, deliberately separate from the kernel record layout.
//!
//! Text a record borrows from the event it describes is a `Cow`, so writing
//! copies nothing and reading owns what it read. Kinds and statuses are
//! enums that serialise as the documented strings.
//!
//! Reading is lenient where it costs nothing: only what identifies a
//! record and what `report` sums is required (a socket's id, a timestamp,
//! an age, an errno); every other field defaults when absent, so older
//! files and trimmed lines still read.
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::clock::WallClock;
pub use crate::model::hooks::HookReport;
use crate::model::hooks::Mode;
use crate::model::{
    CloseVia, Container, ContainerNames, Errno, Family, Holder, MapUse, OwnerSource, Privileges,
    SockError, SockRef, StateChange, TcpState,
};
use crate::track::closes::How;
use crate::track::timewait::Level;

/// Bumped whenever a record changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

/// Every record closetrace writes, tagged by its `type`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    Ready(Ready<'a>),
    State(State<'a>),
    Close(Close<'a>),
    CloseWaitLeak(CloseWaitLeak<'a>),
    CloseWaitResolved(CloseWaitResolved<'a>),
    TimeWaitPressure(TimeWaitPressure),
    TimeWaitTop(TimeWaitTop),
    ConnectError(ConnectError<'a>),
    BindError(BindError<'a>),
    ListenOverflow(ListenOverflow<'a>),
    FdExhaustion(FdExhaustion<'a>),
    Lost(Lost),
    Summary(SummaryRecord),
    /// A type this version does not know (a newer closetrace wrote it).
    #[serde(other, skip_serializing)]
    Unknown,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Ready<'a> {
    pub version: u32,
    pub closetrace: Cow<'a, str>,
    pub hooks: Cow<'a, [HookReport]>,
    /// `--pid` filter, empty for the whole host.
    pub pids: Cow<'a, [u32]>,
    /// Sockets found at start-up and given an owner from /proc.
    #[serde(default)]
    pub snapshot_sockets: usize,
    #[serde(default)]
    pub close_wait_threshold_ms: u64,
    pub mode: Mode,
    /// `--pid-tree` roots; `pids` then lists them and their descendants.
    #[serde(default)]
    pub pid_tree: Cow<'a, [u32]>,
    /// `--netns`, as an inode; null for every namespace.
    pub netns: Option<u32>,
    /// `--cgroup`, as a path under the cgroup2 mount; null for all.
    pub cgroup: Option<String>,
    /// Capabilities kept after attaching; null if dropping them failed.
    pub privileges: Option<Cow<'a, Privileges>>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct State<'a> {
    pub ts: Ts,
    /// Owner's pid and name; null when not known yet.
    pub pid: Option<u32>,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: Option<Cow<'a, str>>,
    /// How the owner was learned.
    pub owner: OwnerSource,
    pub ctx_pid: u32,
    pub ctx_comm: Cow<'a, str>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub sock: u64,
    pub old: TcpState,
    pub new: TcpState,
    pub old_ms: Option<f64>,
    #[serde(flatten)]
    pub scope: Scope,
}

impl<'a> State<'a> {
    pub fn new(ev: &'a StateChange, clock: &WallClock, names: &dyn ContainerNames) -> Self {
        State {
            ts: Ts(clock.wall(ev.ts_ns)),
            pid: ev.owner.as_ref().map(|o| o.pid),
            pid_start: ev.owner.as_ref().and_then(|o| o.start),
            comm: ev.owner.as_ref().map(|o| Cow::Borrowed(o.comm.as_str())),
            owner: ev.owner_source,
            ctx_pid: ev.ctx.pid,
            ctx_comm: Cow::Borrowed(&ev.ctx.comm),
            family: ev.sock.family,
            saddr: ev.sock.saddr,
            sport: ev.sock.sport,
            daddr: ev.sock.daddr,
            dport: ev.sock.dport,
            sock: ev.sock.id,
            old: ev.old,
            new: ev.new,
            old_ms: ev.old_ns.map(ns_to_ms),
            scope: Scope::new(ev.sock.netns, ev.sock.cgroup, names),
        }
    }
}

/// Where a socket or a caller lives: its network namespace, its cgroup,
/// and the container that cgroup belongs to, if any.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Scope {
    /// Network namespace inode; 0 when unknown.
    #[serde(default)]
    pub netns: u32,
    /// cgroup (v2) id: its directory's inode under the cgroup2 mount; 0
    /// when unknown.
    #[serde(default)]
    pub cgroup: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

impl Scope {
    pub fn new(netns: u32, cgroup: u64, names: &dyn ContainerNames) -> Self {
        Scope {
            netns,
            cgroup,
            container: names.container(cgroup),
        }
    }
}

/// The socket fields every socket record carries.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SockFields {
    #[serde(default)]
    pub family: Family,
    #[serde(default = "unspecified")]
    pub saddr: IpAddr,
    #[serde(default)]
    pub sport: u16,
    #[serde(default = "unspecified")]
    pub daddr: IpAddr,
    #[serde(default)]
    pub dport: u16,
    pub sock: u64,
    #[serde(flatten)]
    pub scope: Scope,
}

impl SockFields {
    pub fn new(s: &SockRef, names: &dyn ContainerNames) -> Self {
        SockFields {
            family: s.family,
            saddr: s.saddr,
            sport: s.sport,
            daddr: s.daddr,
            dport: s.dport,
            sock: s.id,
            scope: Scope::new(s.netns, s.cgroup, names),
        }
    }
}

/// An address a trimmed or older line did not carry.
fn unspecified() -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
}

/// What ended a socket's use by the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// close(2) and the like.
    Close,
    /// The process exited and the kernel closed its files.
    Exit,
}

/// The application (or its exit) closed a socket.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Close<'a> {
    pub ts: Ts,
    pub pid: u32,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: Cow<'a, str>,
    #[serde(flatten)]
    pub sock: SockFields,
    /// TCP state at the close.
    pub state: TcpState,
    pub by: ClosedBy,
    pub via: CloseVia,
}

/// Since when a leak's age is counted (the detector's own account).
pub use crate::track::leaks::LeakSince;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct CloseWaitLeak<'a> {
    pub ts: Ts,
    /// The holder closetrace blames: the owner if it holds the socket, else
    /// the first holder.
    pub pid: Option<u32>,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: Option<Cow<'a, str>>,
    #[serde(flatten)]
    pub sock: SockFields,
    pub close_wait_ms: f64,
    #[serde(default)]
    pub since: LeakSince,
    /// Unread bytes: > 0 the EOF was never read; 0 it was read and the
    /// socket not closed. Null when the kernel could not be asked.
    pub recv_q: Option<u32>,
    /// Every process with the socket in its fd table; for a socket never
    /// accepted (`accept_queue`), every process holding its listener.
    #[serde(default)]
    pub holders: Cow<'a, [Holder]>,
    /// Never accepted: still in its listener's accept queue (its server
    /// stopped accepting, or accepts too slowly), with no fd of its own.
    #[serde(default)]
    pub accept_queue: bool,
    /// 1 for the first report of this leak, then 2, 3 ... (backing off).
    #[serde(default)]
    pub report: u32,
    /// The leak's number: 1 for the first leak reported, 2 for the next
    /// (its reports all carry the same).
    #[serde(default)]
    pub leak: u64,
    /// What its holders are doing; null when nobody visible holds it.
    #[serde(default)]
    pub diagnosis: Option<super::diagnosis::Diagnosis>,
}

/// A process running out of file descriptors.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct FdExhaustion<'a> {
    pub ts: Ts,
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub comm: Cow<'a, str>,
    pub state: crate::track::diagnosis::Exhaustion,
    /// When exhausted: how it was seen.
    #[serde(default)]
    pub cause: Option<crate::track::diagnosis::ExhaustedBy>,
    #[serde(flatten)]
    pub budget: crate::model::threads::FdBudget,
    /// Its leaks still open.
    #[serde(default)]
    pub open_leaks: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct CloseWaitResolved<'a> {
    pub ts: Ts,
    pub pid: Option<u32>,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: Option<Cow<'a, str>>,
    #[serde(flatten)]
    pub sock: SockFields,
    pub close_wait_ms: f64,
    pub how: How,
    /// The task in whose context it ended, when known.
    pub by_pid: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TimeWaitPressure {
    pub ts: Ts,
    /// `warn` (crossed --tw-warn), `worse` (10 points more), `cleared`.
    pub level: Level,
    #[serde(default = "unspecified")]
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    pub time_wait: u32,
    #[serde(default)]
    pub ports_available: u32,
    pub ratio: f64,
    #[serde(default)]
    pub rate_per_s: f64,
    /// Seconds until every port is in TIME_WAIT at the current rate.
    pub exhaustion_s: Option<f64>,
    /// tcp_tw_reuse applies to this destination (only ~1 s of TIME_WAIT blocks ports).
    #[serde(default)]
    pub tw_reuse: bool,
    /// Processes whose active closes put these sockets in TIME_WAIT.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// The namespace (inode) whose ports these are: pressure is per
    /// namespace and destination.
    #[serde(default)]
    pub netns: u32,
}

/// The busiest TIME_WAIT destinations, every 10 s while there are any:
/// the time series `closetrace report` charts.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TimeWaitTop {
    pub ts: Ts,
    pub top: Vec<TimeWaitDest>,
    /// TIME_WAIT on service ports (a listener's, or outside the ephemeral
    /// range): the server closed first. It uses up no ephemeral port, so
    /// it is kept out of `top`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_side: Vec<ServerTimeWait>,
}

/// Server-side TIME_WAIT on one local port of one namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerTimeWait {
    pub netns: u32,
    pub port: u16,
    pub time_wait: u32,
}

/// A destination's TIME_WAIT sockets (in `time_wait_top` and the summary).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TimeWaitDest {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    pub time_wait: u32,
    /// Share of the ephemeral ports; null when the port range is unknown.
    pub ratio: Option<f64>,
    /// The namespace (inode) the sockets are in.
    #[serde(default)]
    pub netns: u32,
}

/// Who failed a connect() or bind(), and how: the fields both failure
/// records start with.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Caller<'a> {
    pub ts: Ts,
    pub pid: u32,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: Cow<'a, str>,
    pub errno: Errno,
    #[serde(default)]
    pub family: Family,
}

impl<'a> Caller<'a> {
    pub fn of(e: &'a SockError, clock: &WallClock) -> Self {
        Caller {
            ts: Ts::at(clock, e.ts_ns),
            pid: e.task.pid,
            pid_start: e.task.start,
            comm: Cow::Borrowed(&e.task.comm),
            errno: e.errno,
            family: e.family,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnectError<'a> {
    #[serde(flatten)]
    pub caller: Caller<'a>,
    #[serde(default = "unspecified")]
    pub daddr: IpAddr,
    #[serde(default)]
    pub dport: u16,
    /// TIME_WAIT sockets toward daddr:dport when it failed.
    #[serde(default)]
    pub time_wait: u32,
    /// Identical failures not reported since the previous record.
    #[serde(default)]
    pub suppressed: u64,
    #[serde(flatten)]
    pub scope: Scope,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub fd: Option<u32>,
    pub state: TcpState,
    pub daddr: IpAddr,
    pub dport: u16,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct BindError<'a> {
    #[serde(flatten)]
    pub caller: Caller<'a>,
    #[serde(default = "unspecified")]
    pub saddr: IpAddr,
    #[serde(default)]
    pub sport: u16,
    /// Sockets (other than TIME_WAIT) on that port, with their processes.
    #[serde(default)]
    pub holders: Vec<PortHolder>,
    /// TIME_WAIT sockets on that port.
    #[serde(default)]
    pub time_wait: u32,
    /// What would have let bind() succeed, in words.
    #[serde(default)]
    pub hint: Cow<'static, str>,
    #[serde(default)]
    pub suppressed: u64,
    #[serde(flatten)]
    pub scope: Scope,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ListenOverflow<'a> {
    pub ts: Ts,
    pub pid: Option<u32>,
    pub comm: Option<Cow<'a, str>>,
    #[serde(flatten)]
    pub sock: SockFields,
    /// The listen() backlog in force.
    pub backlog: u32,
    /// Connections waiting in the accept queue.
    pub queued: u32,
    /// Connections dropped since the previous check.
    pub dropped: u32,
    pub total_dropped: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Lost {
    /// Events lost since the previous `lost` record.
    pub count: u64,
    /// Events lost since start.
    #[serde(default)]
    pub total: u64,
}

/// The run's totals, the last line of a JSON run.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SummaryRecord {
    pub duration_s: f64,
    pub events: u64,
    pub lost: u64,
    pub undecodable: u64,
    pub sockets_open: usize,
    pub owner_table_evicted: u64,
    pub closes: u64,
    pub close_wait_untracked: u64,
    pub time_wait: TimeWaitSummary,
    /// syscall -> errno -> failures
    pub errors: BTreeMap<Cow<'static, str>, BTreeMap<Cow<'static, str>, u64>>,
    pub errors_unattributed: u64,
    pub listen_overflows: u64,
    /// Leaking processes, most leaks first.
    pub leaks: Vec<LeakStats>,
    /// "OLD->NEW" -> count
    pub transitions: BTreeMap<String, u64>,
    /// Kernel map -> entries and capacity at exit.
    pub kernel_maps: BTreeMap<Cow<'static, str>, MapUse>,
    /// How long the host worker's reads took per tick.
    #[serde(default)]
    pub host_scans: HostScans,
}

/// The host worker's reads of the running system, per tick (sock_diag in
/// every namespace read, fd tables, sysctls): off the event path, but
/// they decide how late a finding can be.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct HostScans {
    /// Ticks answered.
    pub ticks: u64,
    /// Ticks that asked nothing: the previous tick's reads were still running.
    pub skipped: u64,
    pub mean_ms: f64,
    pub max_ms: f64,
    /// The most network namespaces one tick's CLOSE_WAIT scan read.
    pub namespaces: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TimeWaitSummary {
    /// Destinations with the most TIME_WAIT sockets at exit.
    pub top: Vec<TimeWaitDest>,
    /// TIME_WAIT sockets at exit per process whose close put them there.
    pub by_process: Vec<TimeWaitProcess>,
    /// Server-side TIME_WAIT at exit (as in `time_wait_top`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_side: Vec<ServerTimeWait>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct TimeWaitProcess {
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub comm: String,
    pub time_wait: u32,
}

/// CLOSE_WAIT leaks of one process.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeakStats {
    pub pid: u32,
    /// When that process started (clock ticks since boot, as /proc/PID/stat);
    /// null when unknown.
    pub pid_start: Option<u64>,
    pub comm: String,
    /// Distinct sockets reported as leaked.
    pub leaks: u64,
    /// Still leaked when closetrace stopped.
    pub open: u64,
    /// Longest CLOSE_WAIT age reported.
    pub oldest_ms: f64,
}

impl LeakStats {
    /// A process as records name it: a pid that two processes had in
    /// turn is two processes.
    pub fn process(&self) -> (u32, Option<u64>) {
        (self.pid, self.pid_start)
    }

    /// Most leaks first, then by process: the summary's and the report's
    /// order.
    pub fn by_leaks(a: &Self, b: &Self) -> std::cmp::Ordering {
        (b.leaks.cmp(&a.leaks)).then(a.process().cmp(&b.process()))
    }

    /// Most still open first, then by process: the metrics' order.
    pub fn by_open(a: &Self, b: &Self) -> std::cmp::Ordering {
        (b.open.cmp(&a.open)).then(a.process().cmp(&b.process()))
    }
}

/// An RFC 3339 timestamp (microseconds, UTC), formatted straight into the
/// output: the state stream writes one per event, so no String per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ts(pub SystemTime);

impl Ts {
    /// The wall-clock time of a kernel (monotonic) timestamp.
    pub fn at(clock: &WallClock, mono_ns: u64) -> Ts {
        Ts(clock.wall(mono_ns))
    }

    /// `2026-11-30T09:03:55.511361Z`, as ASCII; None before the epoch.
    pub fn rfc3339(&self) -> Option<[u8; 27]> {
        let since_epoch = self.0.duration_since(UNIX_EPOCH).ok()?;
        let mut text = [0u8; 27];
        rfc3339_micros(since_epoch, &mut text);
        Some(text)
    }
}

impl Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(text) = self.rfc3339() else {
            return s.collect_str(&humantime::format_rfc3339_micros(self.0));
        };
        // Only ASCII digits and separators were written.
        s.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

/// `2026-11-30T09:03:55.511361Z` into `out`. The date and time of day
/// are formatted once per second and kept: a busy stream stamps thousands
/// of records within one.
fn rfc3339_micros(since_epoch: Duration, out: &mut [u8; 27]) {
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let secs = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
            prefix.copy_from_slice(&whole.to_string().as_bytes()[..19]);
            *cached = secs;
        }
        out[..19].copy_from_slice(prefix);
    });
    out[19] = b'.';
    let mut micros = since_epoch.subsec_micros();
    for digit in out[20..26].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out[26] = b'Z';
}

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Ts)
            .map_err(|e| serde::de::Error::custom(format!("ts {text:?}: {e}")))
    }
}

/// Milliseconds with microsecond precision.
pub fn ns_to_ms(ns: u64) -> f64 {
    (ns / 1_000) as f64 / 1_000.0
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use super::*;
    use crate::model::fixtures::change;
    use crate::model::{Family, TcpState};

    #[test]
    fn state_record_shape() {
        let mut ev = change(77, 9501, TcpState::Established, TcpState::CloseWait);
        ev.ts_ns = 2_000_000_000;
        ev.sock.family = Family::Ipv6;
        ev.sock.saddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        ev.sock.daddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        ev.old_ns = Some(1_234_567);
        ev.ctx.comm = "cli\"ent\n".into();
        let clock = WallClock::from_offset(0);
        let v: serde_json::Value = serde_json::from_str(
            &serde_json::to_string(&Record::State(State::new(
                &ev,
                &clock,
                &crate::model::NoContainers,
            )))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(v["type"], "state");
        assert_eq!(v["ts"], "1970-01-01T00:00:02.000000Z");
        assert_eq!(v["pid"], serde_json::Value::Null);
        assert_eq!(v["owner"], "unknown");
        assert_eq!(v["ctx_comm"], "cli\"ent\n");
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["saddr"], "::1");
        assert_eq!(v["old"], "ESTABLISHED");
        assert_eq!(v["new"], "CLOSE_WAIT");
        assert_eq!(v["old_ms"], 1.234);
        assert_eq!(v["sock"], 77);
    }

    /// A container name for cgroup 7, none for others.
    struct OneContainer;

    impl ContainerNames for OneContainer {
        fn container(&self, cgroup: u64) -> Option<Container> {
            (cgroup == 7).then(|| Container {
                runtime: crate::model::Runtime::CriO,
                id: "ab".repeat(32).into(),
            })
        }
    }

    /// The cached per-second prefix never shows a stale second: the same
    /// text as humantime's, for times within, across and back over seconds.
    #[test]
    fn timestamps_match_humantime() {
        let base = 1_764_000_000_000_000u64;
        for micros in [
            0,
            999_999,
            1_000_000,
            1_000_001,
            86_400_000_000,
            5,
            59_999_999,
        ] {
            let t = UNIX_EPOCH + Duration::from_micros(base + micros);
            let ours = serde_json::to_string(&Ts(t)).unwrap();
            let theirs = format!("\"{}\"", humantime::format_rfc3339_micros(t));
            assert_eq!(ours, theirs);
        }
    }

    fn ts(s: u64) -> Ts {
        Ts(std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_764_000_000_000_000 + s))
    }

    fn sock() -> SockFields {
        let mut ev = change(5, 9501, TcpState::Established, TcpState::CloseWait);
        ev.sock.cgroup = 7;
        SockFields::new(&ev.sock, &OneContainer)
    }

    /// One record of every kind, with every optional field set one way or
    /// the other and text that needs escaping.
    fn every_kind(
        ev: &StateChange,
        holders: &[Holder],
        hooks: &[HookReport],
    ) -> Vec<Record<'static>> {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let clock = WallClock::from_offset(1_764_000_000_000_000_000);
        let owned = |r: Record<'_>| -> Record<'static> {
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap()
        };
        vec![
            owned(Record::Ready(Ready {
                version: SCHEMA_VERSION,
                closetrace: "0.1.0".into(),
                hooks: hooks.into(),
                pids: vec![1, 2].into(),
                snapshot_sockets: 3,
                close_wait_threshold_ms: 30_000,
                mode: Mode::States,
                pid_tree: vec![1].into(),
                netns: Some(4026531840),
                cgroup: Some("/system.slice/x.service".into()),
                privileges: Some(Cow::Owned(Privileges {
                    kept: vec!["CAP_SYS_PTRACE".into()],
                    note: None,
                })),
            })),
            owned(Record::State(State::new(ev, &clock, &OneContainer))),
            owned(Record::Close(Close {
                ts: ts(1),
                pid: 10,
                pid_start: Some(99),
                comm: "nginx: worker\n".into(),
                sock: sock(),
                state: TcpState::CloseWait,
                by: ClosedBy::Exit,
                via: CloseVia::Kprobe,
            })),
            owned(Record::CloseWaitLeak(CloseWaitLeak {
                ts: ts(2),
                pid: Some(10),
                pid_start: None,
                comm: Some("php".into()),
                sock: sock(),
                close_wait_ms: 30_001.5,
                since: LeakSince::Startup,
                recv_q: Some(0),
                holders: holders.into(),
                accept_queue: true,
                report: 2,
                leak: 3,
                diagnosis: Some(crate::output::diagnosis::sample()),
            })),
            owned(Record::FdExhaustion(FdExhaustion {
                ts: ts(3),
                pid: 10,
                pid_start: Some(99),
                comm: "php".into(),
                state: crate::track::diagnosis::Exhaustion::Approaching,
                cause: None,
                budget: crate::model::threads::FdBudget {
                    fds: 812,
                    limit: Some(1024),
                    leak_rate_per_min: 3.0,
                    eta_s: Some(2100.0),
                },
                open_leaks: 7,
            })),
            owned(Record::CloseWaitResolved(CloseWaitResolved {
                ts: ts(3),
                pid: None,
                pid_start: None,
                comm: None,
                sock: sock(),
                close_wait_ms: 0.25,
                how: How::ProcessExit,
                by_pid: Some(11),
            })),
            Record::TimeWaitPressure(TimeWaitPressure {
                ts: ts(4),
                level: Level::Worse,
                saddr: lo,
                daddr: v6,
                dport: 6379,
                time_wait: 180,
                ports_available: 200,
                ratio: 0.9,
                rate_per_s: 12.5,
                exhaustion_s: None,
                tw_reuse: true,
                pids: vec![12, 13],
                netns: 4026532401,
            }),
            Record::TimeWaitTop(TimeWaitTop {
                ts: ts(5),
                top: vec![TimeWaitDest {
                    saddr: lo,
                    daddr: lo,
                    dport: 80,
                    time_wait: 50,
                    ratio: None,
                    netns: 4026531840,
                }],
                server_side: vec![ServerTimeWait {
                    netns: 4026532401,
                    port: 8080,
                    time_wait: 31,
                }],
            }),
            owned(Record::ConnectError(ConnectError {
                caller: Caller {
                    ts: ts(6),
                    pid: 14,
                    pid_start: Some(1),
                    comm: "cli".into(),
                    errno: Errno::AddrNotAvail,
                    family: Family::Ipv6,
                },
                daddr: v6,
                dport: 80,
                time_wait: 199,
                suppressed: 4,
                scope: Scope::new(1, 7, &OneContainer),
            })),
            owned(Record::BindError(BindError {
                caller: Caller {
                    ts: ts(7),
                    pid: 15,
                    pid_start: None,
                    comm: "srv".into(),
                    errno: Errno::AddrInUse,
                    family: Family::Ipv4,
                },
                saddr: lo,
                sport: 8080,
                holders: vec![PortHolder {
                    pid: Some(16),
                    comm: Some("old".into()),
                    fd: Some(3),
                    state: TcpState::Listen,
                    daddr: "0.0.0.0".parse().unwrap(),
                    dport: 0,
                }],
                time_wait: 2,
                hint: "a listener holds the port".into(),
                suppressed: 0,
                scope: Scope::new(1, 0, &OneContainer),
            })),
            owned(Record::ListenOverflow(ListenOverflow {
                ts: ts(8),
                pid: Some(17),
                comm: Some("slow".into()),
                sock: sock(),
                backlog: 4,
                queued: 5,
                dropped: 6,
                total_dropped: 7,
            })),
            Record::Lost(Lost { count: 3, total: 9 }),
            Record::Summary(SummaryRecord {
                duration_s: 1.5,
                events: 100,
                lost: 9,
                undecodable: 0,
                sockets_open: 2,
                owner_table_evicted: 0,
                closes: 5,
                close_wait_untracked: 0,
                time_wait: TimeWaitSummary {
                    top: vec![],
                    by_process: vec![TimeWaitProcess {
                        pid: 12,
                        pid_start: Some(5),
                        comm: "cli".into(),
                        time_wait: 30,
                    }],
                    server_side: vec![ServerTimeWait {
                        netns: 4026532401,
                        port: 80,
                        time_wait: 12,
                    }],
                },
                errors: [("connect".into(), [("EADDRNOTAVAIL".into(), 5)].into())].into(),
                errors_unattributed: 0,
                listen_overflows: 1,
                leaks: vec![LeakStats {
                    pid: 10,
                    pid_start: None,
                    comm: "php".into(),
                    leaks: 2,
                    open: 1,
                    oldest_ms: 30_001.5,
                }],
                transitions: [("ESTABLISHED->CLOSE_WAIT".into(), 4)].into(),
                host_scans: HostScans {
                    ticks: 4,
                    skipped: 1,
                    mean_ms: 2.5,
                    max_ms: 7.25,
                    namespaces: 3,
                },
                kernel_maps: [(
                    "SOCKS".into(),
                    MapUse {
                        entries: 1,
                        capacity: 65536,
                    },
                )]
                .into(),
            }),
        ]
    }

    /// `closetrace report` reads exactly what the daemon writes: every
    /// kind survives writing and reading unchanged, tagged by its type.
    #[test]
    fn every_record_kind_round_trips() {
        let mut ev = change(77, 9501, TcpState::FinWait2, TcpState::Close);
        ev.sock.cgroup = 7;
        ev.owner = Some(crate::model::fixtures::started(10, "srv\u{1b}[2J", 5));
        ev.owner_source = OwnerSource::Listener;
        ev.old_ns = Some(1_500);
        let holders = [Holder {
            pid: 10,
            start: Some(5),
            comm: "php-fpm: pool www".into(),
            fd: 9,
        }];
        let hooks = [
            HookReport::ok(
                "sock:inet_sock_set_state",
                crate::model::hooks::Attach::TpBtf,
            ),
            HookReport::degraded("tcp_close", crate::model::hooks::Attach::Kprobe, "r".into()),
        ];
        let kinds = every_kind(&ev, &holders, &hooks);
        let mut seen = std::collections::BTreeSet::new();
        for rec in &kinds {
            let line = serde_json::to_string(rec).unwrap();
            let tag: serde_json::Value = serde_json::from_str(&line).unwrap();
            let kind = tag["type"].as_str().unwrap().to_string();
            assert!(
                line.starts_with(&format!("{{\"type\":\"{kind}\",")),
                "{line}"
            );
            let back: Record<'_> = serde_json::from_str(&line).unwrap();
            assert_eq!(&back, rec, "{line}");
            assert_eq!(serde_json::to_string(&back).unwrap(), line);
            seen.insert(kind);
        }
        assert_eq!(seen.len(), 13, "one of each kind: {seen:?}");
        // The container a record names reads back too.
        let leak = serde_json::to_string(&kinds[3]).unwrap();
        assert!(
            leak.contains("\"container\":{\"runtime\":\"cri-o\""),
            "{leak}"
        );
    }

    #[test]
    fn a_type_from_a_newer_version_reads_as_unknown() {
        let r: Record<'_> = serde_json::from_str(r#"{"type":"pod_eviction","pid":1}"#).unwrap();
        assert_eq!(r, Record::Unknown);
        assert!(serde_json::from_str::<Record<'_>>(r#"{"type":"lost"}"#).is_err());
    }
}
