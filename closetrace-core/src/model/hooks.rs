//! How each kernel hook (and sock_diag) came up: the method it attached
//! by, its status, and why it is degraded or unavailable. `ready` lists
//! these, the text view prints them and the metrics export them.
use std::fmt;

use serde::{Deserialize, Serialize};

/// How a hook is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    TpBtf,
    Tracepoint,
    Fentry,
    Kprobe,
    /// Not hooked: what it would see is inferred from state transitions.
    Transitions,
    /// sock_diag, over netlink.
    Netlink,
    /// Sockets named by a keyed hash, for want of cookies.
    KeyedHash,
    /// A BPF iterator, read on demand.
    Iter,
    /// /proc, read by hand where no BPF program does it.
    Procfs,
    /// Not attached at all.
    None,
}

impl Attach {
    pub fn name(self) -> &'static str {
        match self {
            Attach::TpBtf => "tp_btf",
            Attach::Tracepoint => "tracepoint",
            Attach::Fentry => "fentry",
            Attach::Kprobe => "kprobe",
            Attach::Transitions => "transitions",
            Attach::Netlink => "netlink",
            Attach::KeyedHash => "keyed_hash",
            Attach::Iter => "iter",
            Attach::Procfs => "procfs",
            Attach::None => "none",
        }
    }

    /// Whether something is really attached (or connected) by this method.
    pub fn is_attached(self) -> bool {
        !matches!(self, Attach::Transitions | Attach::None)
    }
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStatus {
    /// Attached by the best method.
    Ok,
    /// Working, by a lesser method (`reason` says which was refused).
    Degraded,
    /// Not working; `reason` says what that costs.
    Unavailable,
    /// Turned off by a flag (`reason` says which, and what that costs):
    /// the operator's choice, so no alert.
    Off,
}

impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookStatus::Ok => "ok",
            HookStatus::Degraded => "degraded",
            HookStatus::Unavailable => "unavailable",
            HookStatus::Off => "off",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookReport {
    /// What is hooked, e.g. `sock:inet_sock_set_state`.
    pub hook: String,
    pub attach: Attach,
    pub status: HookStatus,
    /// Why it is degraded or unavailable, and what that costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl HookReport {
    pub fn ok(hook: &str, attach: Attach) -> Self {
        HookReport {
            hook: hook.into(),
            attach,
            status: HookStatus::Ok,
            reason: None,
        }
    }

    pub fn degraded(hook: &str, attach: Attach, reason: String) -> Self {
        HookReport {
            hook: hook.into(),
            attach,
            status: HookStatus::Degraded,
            reason: Some(reason),
        }
    }

    pub fn off(hook: &str, reason: String) -> Self {
        HookReport {
            hook: hook.into(),
            attach: Attach::None,
            status: HookStatus::Off,
            reason: Some(reason),
        }
    }

    pub fn unavailable(hook: &str, reason: String) -> Self {
        HookReport {
            hook: hook.into(),
            attach: Attach::None,
            status: HookStatus::Unavailable,
            reason: Some(reason),
        }
    }

    /// Whether the hook is attached, by whatever method: a kprobe that
    /// stands in for a refused fentry is attached; an inference is not.
    pub fn attached(&self) -> bool {
        self.status != HookStatus::Unavailable && self.attach.is_attached()
    }
}

/// What the kernel sends: findings only, or every state change too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The default: only what findings are made from.
    #[default]
    Findings,
    /// `--states`: every state change and close as well.
    States,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Findings => "findings",
            Mode::States => "states",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kprobe_standing_in_for_fentry_is_attached() {
        let kprobe = HookReport::degraded("tcp_close", Attach::Kprobe, "fentry refused".into());
        assert!(kprobe.attached());
        let inferred = HookReport::degraded("tcp_close", Attach::Transitions, "no kprobes".into());
        assert!(!inferred.attached());
        assert!(!HookReport::unavailable("x", "y".into()).attached());
        assert!(HookReport::ok("sock_diag", Attach::Netlink).attached());
    }

    #[test]
    fn serialises_as_the_documented_strings() {
        let h = HookReport::degraded("tcp_close", Attach::TpBtf, "r".into());
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            r#"{"hook":"tcp_close","attach":"tp_btf","status":"degraded","reason":"r"}"#
        );
        assert_eq!(serde_json::from_str::<HookReport>(&json).unwrap(), h);
    }
}
