//! Who closed a socket, and how it left CLOSE_WAIT, from what the kernel saw.
//!
//! Where `tcp_close` can be hooked (fentry, kprobe) the kernel reports every
//! close exactly. Where it cannot, a close is inferred from the transitions
//! that only an application close causes, run in the closer's own context:
//! leaving ESTABLISHED or CLOSE_WAIT with a FIN, or for CLOSE with an RST
//! (unread data, SO_LINGER 0) when no reset arrived and no error is pending.
//! shutdown(2) causes the same FIN transitions without closing: the kernel
//! flags transitions made inside shutdown(2), and they are not closes.
//! Pure functions: no state, no I/O.
use crate::model::{Close, CloseVia, StateChange, TcpState};

/// How a socket left CLOSE_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// The application closed it.
    Closed,
    /// shutdown(SHUT_WR): FIN sent, the fd still open.
    Shutdown,
    /// The peer reset it (or an error such as a timeout ended it).
    Reset,
    /// The holder exited and the kernel closed its files.
    ProcessExit,
    /// It vanished without closetrace seeing how (events lost).
    Unknown,
}

impl How {
    pub fn name(self) -> &'static str {
        match self {
            How::Closed => "closed",
            How::Shutdown => "shutdown",
            How::Reset => "reset",
            How::ProcessExit => "process_exit",
            How::Unknown => "unknown",
        }
    }
}

/// The application close this transition implies, if any.
pub fn infer_close(ev: &StateChange) -> Option<Close> {
    use TcpState::{
        Close as Closed, CloseWait, Established, FinWait1, LastAck, Listen, SynRecv, SynSent,
    };
    let c = &ev.context;
    // Process context is required: softirq (pid 0) never closes a socket.
    if ev.ctx.pid == 0 || c.in_shutdown {
        return None;
    }
    let closes = match (ev.old, ev.new) {
        (Established, FinWait1) | (CloseWait, LastAck) | (Listen, Closed) => true,
        (Established | CloseWait | SynRecv, Closed) => !c.error,
        (SynSent, Closed) => !c.error && !c.connect_failed,
        _ => false,
    };
    closes.then(|| Close {
        ts_ns: ev.ts_ns,
        sock: ev.sock.clone(),
        state: ev.old,
        closer: ev.ctx.clone(),
        exiting: c.exiting,
        via: CloseVia::Transition,
    })
}

/// For a transition out of CLOSE_WAIT: how it ended.
pub fn how_left_close_wait(ev: &StateChange) -> How {
    let c = &ev.context;
    if ev.new == TcpState::Close && c.error {
        return How::Reset;
    }
    if ev.ctx.pid == 0 {
        // Not in any process's context: nobody closed it.
        return if ev.new == TcpState::Close {
            How::Reset
        } else {
            How::Unknown
        };
    }
    if c.in_shutdown {
        How::Shutdown
    } else if c.exiting {
        How::ProcessExit
    } else {
        How::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::change;
    use TcpState::*;

    #[test]
    fn fin_transitions_in_process_context_are_closes() {
        for (old, new) in [
            (Established, FinWait1),
            (CloseWait, LastAck),
            (Listen, Close),
        ] {
            let c = infer_close(&change(1, 80, old, new)).expect("a close");
            assert_eq!(c.state, old);
            assert_eq!(c.closer.pid, 999);
            assert_eq!(c.via, CloseVia::Transition);
            assert!(!c.exiting);
        }
    }

    #[test]
    fn shutdown_softirq_and_passive_transitions_are_not() {
        let mut ev = change(1, 80, CloseWait, LastAck);
        ev.context.in_shutdown = true;
        assert_eq!(infer_close(&ev), None);
        let mut ev = change(1, 80, Established, FinWait1);
        ev.ctx.pid = 0;
        assert_eq!(infer_close(&ev), None);
        for (old, new) in [
            (Established, CloseWait),
            (FinWait1, FinWait2),
            (LastAck, Close),
        ] {
            assert_eq!(infer_close(&change(1, 80, old, new)), None, "{old}->{new}");
        }
    }

    #[test]
    fn rst_close_versus_peer_reset() {
        // close() with unread data: straight to CLOSE with our own RST.
        assert!(infer_close(&change(1, 80, CloseWait, Close)).is_some());
        let mut ev = change(1, 80, CloseWait, Close);
        ev.context.error = true;
        assert_eq!(infer_close(&ev), None, "the peer's RST is not our close");
        ev.context = Default::default();
        ev.context.error = true;
        assert_eq!(infer_close(&ev), None, "a timeout is not our close");
    }

    #[test]
    fn a_failed_connect_is_not_a_close_but_closing_a_connecting_socket_is() {
        let closing = change(1, 80, SynSent, Close);
        assert!(infer_close(&closing).is_some());
        let mut failed = change(1, 80, SynSent, Close);
        failed.context.connect_failed = true;
        assert_eq!(infer_close(&failed), None);
    }

    #[test]
    fn exit_is_a_close_by_exit() {
        let mut ev = change(1, 80, CloseWait, LastAck);
        ev.context.exiting = true;
        assert!(infer_close(&ev).unwrap().exiting);
        assert_eq!(how_left_close_wait(&ev), How::ProcessExit);
    }

    #[test]
    fn how_close_wait_ended() {
        assert_eq!(
            how_left_close_wait(&change(1, 80, CloseWait, LastAck)),
            How::Closed
        );
        let mut ev = change(1, 80, CloseWait, LastAck);
        ev.context.in_shutdown = true;
        assert_eq!(how_left_close_wait(&ev), How::Shutdown);
        let mut ev = change(1, 80, CloseWait, Close);
        ev.context.error = true;
        assert_eq!(how_left_close_wait(&ev), How::Reset);
        let mut ev = change(1, 80, CloseWait, Close);
        ev.ctx.pid = 0;
        assert_eq!(how_left_close_wait(&ev), How::Reset);
        assert_eq!(
            how_left_close_wait(&change(1, 80, CloseWait, Close)),
            How::Closed
        );
    }
}
