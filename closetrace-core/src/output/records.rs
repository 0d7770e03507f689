//! The JSON-lines contract (docs/events.md). These serde types are the
//! output model, deliberately separate from the kernel record layout.
use std::net::IpAddr;

use serde::Serialize;

use crate::model::clock::WallClock;
pub use crate::model::hooks::HookReport;
use crate::model::hooks::Mode;
use crate::model::{ContainerNames, SockRef, StateChange};

/// Bumped whenever a record changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Ready<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub version: u32,
    pub closetrace: &'static str,
    pub hooks: &'a [HookReport],
    /// `--pid` filter, empty for the whole host.
    pub pids: &'a [u32],
    /// Sockets found at start-up and given an owner from /proc.
    pub snapshot_sockets: usize,
    pub close_wait_threshold_ms: u64,
    pub mode: Mode,
    /// `--pid-tree` roots; `pids` then lists them and their descendants.
    pub pid_tree: &'a [u32],
    /// `--netns`, as an inode; null for every namespace.
    pub netns: Option<u32>,
    /// `--cgroup`, as a path under the cgroup2 mount; null for all.
    pub cgroup: Option<String>,
    /// Capabilities kept after attaching; null if dropping them failed.
    pub privileges: Option<&'a crate::model::Privileges>,
}

#[derive(Debug, Serialize)]
pub struct State<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: Ts,
    /// Owner's pid and name; null when not known yet.
    pub pid: Option<u32>,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: Option<&'a str>,
    /// How the owner was learned.
    pub owner: &'static str,
    pub ctx_pid: u32,
    pub ctx_comm: &'a str,
    pub family: &'static str,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub sock: u64,
    pub old: &'static str,
    pub new: &'static str,
    pub old_ms: Option<f64>,
    #[serde(flatten)]
    pub scope: Scope,
}

impl<'a> State<'a> {
    pub fn new(ev: &'a StateChange, clock: &WallClock, names: &dyn ContainerNames) -> Self {
        State {
            kind: "state",
            ts: Ts(clock.wall(ev.ts_ns)),
            pid: ev.owner.as_ref().map(|o| o.pid),
            pid_start: ev.owner.as_ref().and_then(|o| o.start),
            comm: ev.owner.as_ref().map(|o| o.comm.as_str()),
            owner: ev.owner_source.name(),
            ctx_pid: ev.ctx.pid,
            ctx_comm: &ev.ctx.comm,
            family: ev.sock.family.name(),
            saddr: ev.sock.saddr,
            sport: ev.sock.sport,
            daddr: ev.sock.daddr,
            dport: ev.sock.dport,
            sock: ev.sock.id,
            old: ev.old.name(),
            new: ev.new.name(),
            old_ms: ev.old_ns.map(ns_to_ms),
            scope: Scope::new(ev.sock.netns, ev.sock.cgroup, names),
        }
    }
}

/// Where a socket or a caller lives: its network namespace, its cgroup,
/// and the container that cgroup belongs to, if any.
#[derive(Debug, Serialize)]
pub struct Scope {
    /// Network namespace inode; 0 when unknown.
    pub netns: u32,
    /// cgroup (v2) id: its directory's inode under the cgroup2 mount; 0
    /// when unknown.
    pub cgroup: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::model::Container>,
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
#[derive(Debug, Serialize)]
pub struct SockFields {
    pub family: &'static str,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub sock: u64,
    #[serde(flatten)]
    pub scope: Scope,
}

impl SockFields {
    pub fn new(s: &SockRef, names: &dyn ContainerNames) -> Self {
        SockFields {
            family: s.family.name(),
            saddr: s.saddr,
            sport: s.sport,
            daddr: s.daddr,
            dport: s.dport,
            sock: s.id,
            scope: Scope::new(s.netns, s.cgroup, names),
        }
    }
}

/// The application (or its exit) closed a socket.
#[derive(Debug, Serialize)]
pub struct Close<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: String,
    pub pid: u32,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: &'a str,
    #[serde(flatten)]
    pub sock: SockFields,
    /// TCP state at the close.
    pub state: &'static str,
    /// `close` (close(2) and the like) or `exit` (the process exited).
    pub by: &'static str,
    /// `fentry`, `kprobe` or `transition` (inferred).
    pub via: &'static str,
}

#[derive(Debug, Serialize)]
pub struct CloseWaitLeak<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: String,
    /// The holder closetrace blames: the owner if it holds the socket, else
    /// the first holder.
    pub pid: Option<u32>,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: Option<&'a str>,
    #[serde(flatten)]
    pub sock: SockFields,
    pub close_wait_ms: f64,
    /// `transition` (age measured from entering CLOSE_WAIT) or `startup`
    /// (it was already in CLOSE_WAIT when closetrace started: a lower bound).
    pub since: &'static str,
    /// Unread bytes: > 0 the EOF was never read; 0 it was read and the
    /// socket not closed. Null when the kernel could not be asked.
    pub recv_q: Option<u32>,
    /// Every process with the socket in its fd table.
    pub holders: &'a [crate::model::Holder],
    /// 1 for the first report of this leak, then 2, 3 ... (backing off).
    pub report: u32,
}

#[derive(Debug, Serialize)]
pub struct CloseWaitResolved<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: String,
    pub pid: Option<u32>,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: Option<&'a str>,
    #[serde(flatten)]
    pub sock: SockFields,
    pub close_wait_ms: f64,
    /// `closed`, `shutdown`, `reset`, `process_exit` or `unknown`.
    pub how: &'static str,
    /// The task in whose context it ended, when known.
    pub by_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct TimeWaitPressure {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: String,
    /// `warn` (crossed --tw-warn), `worse` (10 points more), `cleared`.
    pub level: &'static str,
    pub saddr: String,
    pub daddr: String,
    pub dport: u16,
    pub time_wait: u32,
    pub ports_available: u32,
    pub ratio: f64,
    pub rate_per_s: f64,
    /// Seconds until every port is in TIME_WAIT at the current rate.
    pub exhaustion_s: Option<f64>,
    /// tcp_tw_reuse applies to this destination (only ~1 s of TIME_WAIT blocks ports).
    pub tw_reuse: bool,
    /// Processes whose active closes put these sockets in TIME_WAIT.
    pub pids: Vec<u32>,
}

/// The busiest TIME_WAIT destinations, every 10 s while there are any:
/// the time series `closetrace report` charts.
#[derive(Debug, Serialize)]
pub struct TimeWaitTop {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: String,
    pub top: Vec<TimeWaitDest>,
}

#[derive(Debug, Serialize)]
pub struct TimeWaitDest {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    pub time_wait: u32,
    /// Share of the ephemeral ports; null when the port range is unknown.
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ConnectError<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: String,
    pub pid: u32,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: &'a str,
    pub errno: &'static str,
    pub family: &'static str,
    pub daddr: String,
    pub dport: u16,
    /// TIME_WAIT sockets toward daddr:dport when it failed.
    pub time_wait: u32,
    /// Identical failures not reported since the previous record.
    pub suppressed: u64,
    #[serde(flatten)]
    pub scope: Scope,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub fd: Option<u32>,
    pub state: &'static str,
    pub daddr: String,
    pub dport: u16,
}

#[derive(Debug, Serialize)]
pub struct BindError<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: String,
    pub pid: u32,
    /// When that process started (clock ticks since boot, /proc/PID/stat's
    /// starttime): with `pid`, it names the process, as pids are reused.
    /// Null when unknown.
    pub pid_start: Option<u64>,
    pub comm: &'a str,
    pub errno: &'static str,
    pub family: &'static str,
    pub saddr: String,
    pub sport: u16,
    /// Sockets (other than TIME_WAIT) on that port, with their processes.
    pub holders: Vec<PortHolder>,
    /// TIME_WAIT sockets on that port.
    pub time_wait: u32,
    pub hint: &'static str,
    pub suppressed: u64,
    #[serde(flatten)]
    pub scope: Scope,
}

#[derive(Debug, Serialize)]
pub struct ListenOverflow<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub ts: String,
    pub pid: Option<u32>,
    pub comm: Option<&'a str>,
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

#[derive(Debug, Serialize)]
pub struct Lost {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Events lost since the previous `lost` record.
    pub count: u64,
    /// Events lost since start.
    pub total: u64,
}

/// An RFC 3339 timestamp (microseconds, UTC) formatted straight into the
/// output: the state stream writes one per event, so no String per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ts(pub std::time::SystemTime);

impl Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

pub fn rfc3339(clock: &WallClock, mono_ns: u64) -> String {
    humantime::format_rfc3339_micros(clock.wall(mono_ns)).to_string()
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
            &serde_json::to_string(&State::new(&ev, &clock, &crate::model::NoContainers)).unwrap(),
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
}
