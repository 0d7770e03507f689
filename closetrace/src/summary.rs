//! Run totals: what was seen, what was lost, which transitions happened.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::model::{StateChange, TcpState};

#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub undecodable: u64,
    /// Sockets seen and not yet closed when tracing stopped.
    pub sockets_open: usize,
    /// Sockets the owner table had to forget because it was full.
    pub owner_table_evicted: u64,
    transitions: BTreeMap<(TcpState, TcpState), u64>,
}

#[derive(Debug, Serialize)]
pub struct SummaryRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub duration_s: f64,
    pub events: u64,
    pub lost: u64,
    pub undecodable: u64,
    pub sockets_open: usize,
    pub owner_table_evicted: u64,
    /// "OLD->NEW" -> count
    pub transitions: BTreeMap<String, u64>,
}

impl Summary {
    pub fn record_state(&mut self, ev: &StateChange) {
        self.events += 1;
        *self.transitions.entry((ev.old, ev.new)).or_default() += 1;
    }

    pub fn to_record(&self, duration_s: f64) -> SummaryRecord {
        SummaryRecord {
            kind: "summary",
            duration_s: (duration_s * 1000.0).round() / 1000.0,
            events: self.events,
            lost: self.lost,
            undecodable: self.undecodable,
            sockets_open: self.sockets_open,
            owner_table_evicted: self.owner_table_evicted,
            transitions: self
                .transitions
                .iter()
                .map(|((o, n), c)| (format!("{}->{}", o.name(), n.name()), *c))
                .collect(),
        }
    }

    /// The human summary closetrace prints to stderr on exit.
    pub fn to_text(&self, duration_s: f64) -> String {
        let mut s = format!(
            "closetrace: {} events in {:.1} s, {} lost, {} undecodable\n",
            self.events, duration_s, self.lost, self.undecodable
        );
        let mut rows: Vec<_> = self.transitions.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for ((o, n), c) in rows {
            let t = format!("{o} -> {n}");
            let _ = writeln!(s, "  {t:<30} {c:>10}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ev(old: TcpState, new: TcpState) -> StateChange {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        StateChange {
            ts_ns: 1,
            sock: SockRef {
                id: 1,
                netns: 0,
                family: Family::Ipv4,
                saddr: lo,
                sport: 1,
                daddr: lo,
                dport: 2,
            },
            old,
            new,
            old_ns: None,
            ctx: Task {
                pid: 1,
                tid: 1,
                comm: "x".into(),
            },
            owner: None,
            owner_source: OwnerSource::Unknown,
        }
    }

    #[test]
    fn counts_transitions() {
        let mut s = Summary::default();
        s.record_state(&ev(TcpState::Established, TcpState::CloseWait));
        s.record_state(&ev(TcpState::Established, TcpState::CloseWait));
        s.record_state(&ev(TcpState::CloseWait, TcpState::LastAck));
        s.lost = 3;
        let r = s.to_record(1.23456);
        assert_eq!(r.events, 3);
        assert_eq!(r.lost, 3);
        assert_eq!(r.duration_s, 1.235);
        assert_eq!(r.transitions["ESTABLISHED->CLOSE_WAIT"], 2);
        assert_eq!(r.transitions["CLOSE_WAIT->LAST_ACK"], 1);
        let text = s.to_text(2.0);
        assert!(text.starts_with("closetrace: 3 events in 2.0 s, 3 lost, 0 undecodable\n"));
        let first_row = text.lines().nth(1).unwrap();
        assert!(first_row.contains("ESTABLISHED -> CLOSE_WAIT") && first_row.ends_with(" 2"));
    }
}
