//! A leak's diagnosis as `close_wait_leak.diagnosis` carries it (the
//! line of text that sums it up is in `verdict.rs`).
use serde::{Deserialize, Serialize};

use crate::model::threads::TcpInfo;
use crate::track::diagnosis::ProcessDiagnosis;

/// What the holders of a leaked socket are doing, and the socket itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Each holding process, the blamed one first.
    #[serde(default)]
    pub processes: Vec<ProcessDiagnosis>,
    /// The leaked socket, from the kernel's tcp_info; null when it could
    /// not be asked.
    pub socket: Option<TcpInfo>,
    /// The other end, when it is on this host.
    pub peer: Option<Peer>,
}

/// The process at the other end of a leaked connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub comm: String,
    pub how: PeerHow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerHow {
    /// It closed its end (its socket went to FIN_WAIT2 / TIME_WAIT).
    Closed,
    /// It still holds its end (it shut down writing only).
    Holds,
}

/// A diagnosis with every part but the peer filled, for tests.
#[cfg(test)]
pub(crate) fn sample() -> Diagnosis {
    use crate::model::TcpState;
    use crate::model::threads::{FdBudget, FdTarget, SchedState};
    use crate::track::diagnosis::{FdArg, Suspicion, ThreadGroup};
    let lo = "127.0.0.1".parse().unwrap();
    let backend = FdArg {
        fd: 9,
        target: FdTarget::Tcp {
            saddr: lo,
            sport: 41234,
            daddr: lo,
            dport: 6379,
            state: TcpState::Established,
        },
    };
    Diagnosis {
        processes: vec![ProcessDiagnosis {
            pid: 23308,
            pid_start: None,
            comm: "php".into(),
            threads: 1,
            groups: vec![ThreadGroup {
                suspicion: Suspicion::WaitsOnPeer,
                state: SchedState::Sleeping,
                syscall: Some("recvfrom".into()),
                fds: vec![backend],
                wchan: None,
                stack: vec![],
                threads: 1,
                tids: vec![23311],
                comm: "php".into(),
                in_call_s: Some(252.0),
                cpu_share: None,
            }],
            threads_not_shown: 0,
            fd_budget: Some(FdBudget {
                fds: 812,
                limit: Some(1024),
                leak_rate_per_min: 3.0,
                eta_s: Some(35.0 * 60.0),
            }),
            partial: false,
        }],
        socket: Some(TcpInfo {
            last_data_recv_ms: 252_000,
            last_data_sent_ms: 252_000,
            ..TcpInfo::default()
        }),
        peer: None,
    }
}
