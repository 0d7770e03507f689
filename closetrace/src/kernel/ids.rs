//! How the kernel programs name sockets. Tracing programs may call
//! `bpf_get_socket_cookie` from Linux 5.12; there, a socket's id is its
//! cookie, the value sock_diag (and `ss -e`) reports, so the kernel's
//! records and sock_diag's sockets join on it. Before 5.12 a socket is
//! named by a hash of it keyed with a random value per run: opaque, stable
//! for the socket's life, never its address; sock_diag's sockets are then
//! joined by their endpoints instead.
use aya::util::KernelVersion;
use closetrace_core::model::hooks::{Attach, HookReport, HookStatus};

/// The first kernel whose tracing programs may ask for socket cookies.
const COOKIE_HELPER: KernelVersion = KernelVersion::new(5, 12, 0);

/// The first kernel with `bpf_get_current_task_btf`.
const TASK_BTF_HELPER: KernelVersion = KernelVersion::new(5, 11, 0);

/// Whether the programs may read the current task through a BTF pointer.
pub fn task_btf_helper() -> bool {
    matches!(KernelVersion::current(), Ok(v) if v >= TASK_BTF_HELPER)
}

/// The first kernel with `bpf_task_pt_regs`.
const TASK_REGS_HELPER: KernelVersion = KernelVersion::new(5, 15, 0);

/// Whether the programs may read a task's saved user registers.
pub fn task_regs_helper() -> bool {
    matches!(KernelVersion::current(), Ok(v) if v >= TASK_REGS_HELPER)
}

/// Set to `keyed` (or `cookie`) to choose regardless of the kernel: how
/// the tests exercise the older kernels' path on a new one.
pub const OVERRIDE_ENV: &str = "CLOSETRACE_SOCKET_IDS";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketIds {
    Cookies,
    /// Keyed hashes, and why.
    Keyed(String),
}

impl SocketIds {
    pub fn choose() -> SocketIds {
        match std::env::var(OVERRIDE_ENV).as_deref() {
            Ok("keyed") => return SocketIds::Keyed(format!("{OVERRIDE_ENV}=keyed")),
            Ok("cookie") => return SocketIds::Cookies,
            _ => {}
        }
        match KernelVersion::current() {
            Ok(v) if v < COOKIE_HELPER => SocketIds::Keyed(format!(
                "this kernel ({v}) lets tracing programs ask for socket cookies only from 5.12"
            )),
            _ => SocketIds::Cookies,
        }
    }

    pub fn keyed(&self) -> bool {
        matches!(self, SocketIds::Keyed(_))
    }

    /// For `ready`: what naming sockets without cookies costs.
    pub fn report(&self) -> Option<HookReport> {
        let SocketIds::Keyed(why) = self else {
            return None;
        };
        Some(HookReport {
            hook: "socket ids (bpf_get_socket_cookie)".into(),
            attach: Attach::KeyedHash,
            status: HookStatus::Degraded,
            reason: Some(format!(
                "{why}: sockets are named by a keyed hash of the socket (opaque, never its \
                 address), not by the cookie ss -e shows; CLOSE_WAIT sockets are found from \
                 their transitions rather than sock_diag scans; a leak older than closetrace \
                 ends as unknown, and its owner comes from /proc only"
            )),
        })
    }
}

/// The oldest kernel closetrace supports (and tests, in the VM matrix).
const FLOOR: KernelVersion = KernelVersion::new(5, 10, 0);

/// What a kernel older than the floor lacks that closetrace needs, by
/// when each came; None at or above the floor (or when unknown: the load
/// then says what fails).
pub fn below_floor(v: KernelVersion) -> Option<&'static str> {
    let missing = [
        (
            KernelVersion::new(5, 5, 0),
            "it lacks BTF tracepoints and fentry (5.5) and BPF ring buffers (5.8)",
        ),
        (
            KernelVersion::new(5, 8, 0),
            "it lacks BPF ring buffers (5.8)",
        ),
        (FLOOR, "closetrace is not tested below 5.10"),
    ];
    (v < FLOOR).then(|| {
        missing
            .iter()
            .find(|(since, _)| v < *since)
            .map_or("", |m| m.1)
    })
}

/// Refuse a kernel below the floor with one line, before anything loads.
pub fn check_floor() -> Result<(), super::LoadError> {
    let Ok(v) = KernelVersion::current() else {
        return Ok(());
    };
    match below_floor(v) {
        Some(what) => Err(super::LoadError::TooOld(v.to_string(), what)),
        None => Ok(()),
    }
}

/// A random, non-zero key (zero means cookies).
pub fn random_key() -> u64 {
    let mut key = [0u8; 8];
    // SAFETY: getrandom writes at most key.len() bytes into key.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    let k = u64::from_ne_bytes(key);
    if n == 8 && k != 0 {
        return k;
    }
    // getrandom cannot fail for 8 bytes once the pool is initialised;
    // should it, the time is unpredictable enough to hide an address.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    t | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_ids_say_why_and_what_it_costs() {
        assert_eq!(SocketIds::Cookies.report(), None);
        let r = SocketIds::Keyed("kernel 5.10.0".into()).report().unwrap();
        assert_eq!(r.status, HookStatus::Degraded);
        assert!(
            r.reason
                .unwrap()
                .contains("kernel 5.10.0: sockets are named")
        );
        assert_ne!(random_key(), 0);
    }

    #[test]
    fn kernels_below_the_floor_are_told_what_they_lack() {
        let v = KernelVersion::new;
        assert_eq!(below_floor(v(5, 10, 0)), None);
        assert_eq!(below_floor(v(6, 18, 0)), None);
        assert!(below_floor(v(5, 4, 0)).unwrap().contains("BTF tracepoints"));
        assert!(
            below_floor(v(5, 7, 0))
                .unwrap()
                .ends_with("BPF ring buffers (5.8)")
        );
        assert!(below_floor(v(5, 9, 0)).unwrap().contains("not tested"));
    }
}
