//! Start-up snapshot: the TCP sockets that already exist (netlink sock_diag)
//! and the processes holding them (fd tables under /proc, the way `ss -p`
//! finds them). Sockets opened before closetrace started have had their
//! process-context moments already; this is how they get an owner anyway.
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use closetrace_common::{AF_INET, AF_INET6, IPPROTO_TCP};
use thiserror::Error;

use crate::model::{Family, SockRef, TcpState};

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("sock_diag: {0}")]
    Netlink(#[from] io::Error),
    #[error("sock_diag: malformed reply: {0}")]
    Malformed(&'static str),
}

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub cookie: u64,
    pub inode: u32,
    pub state: TcpState,
    /// idiag_timer: 3 marks a timewait socket (whatever its substate).
    pub timer: u8,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub rqueue: u32,
    pub wqueue: u32,
    /// Packets the socket dropped (`sk_drops`, from INET_DIAG_SKMEMINFO),
    /// when asked for: for a listener, its accept-queue overflows.
    pub drops: Option<u32>,
    /// The socket's cgroup (v2) id (INET_DIAG_CGROUP_ID, sent unasked by
    /// 5.7+ kernels for full sockets); 0 when absent.
    pub cgroup: u64,
    /// Milliseconds since the peer's last ACK (tcp_info's
    /// `tcpi_last_ack_recv`), when asked (`Ext::INFO`) and the socket is a
    /// full one. For a CLOSE_WAIT socket it dates the FIN, which carried
    /// an ACK: the socket entered CLOSE_WAIT then, or earlier if the peer
    /// sent more after it.
    pub last_ack_recv_ms: Option<u32>,
    /// The network namespace (inode) it was listed in: set by whoever
    /// asked sock_diag, since the reply does not say.
    pub netns: u32,
}

pub use crate::model::Holder;

const NLMSG_HDR: usize = 16;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub(crate) const DIAG_MSG_LEN: usize = 72;
pub(crate) const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_SKMEMINFO: u16 = 7;
const INET_DIAG_CGROUP_ID: u16 = 21;
const SK_MEMINFO_DROPS: usize = 8;
/// `tcpi_last_ack_recv` in `struct tcp_info` (UAPI, fixed since 2.6).
const TCPI_LAST_ACK_RECV: usize = 56;

/// The optional attributes a dump asks for (`idiag_ext` bits), beyond
/// what every reply carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ext(u8);

impl Ext {
    pub const NONE: Ext = Ext(0);
    /// tcp_info, for `DiagSocket::last_ack_recv_ms`.
    pub const INFO: Ext = Ext(1 << (INET_DIAG_INFO - 1));
    /// sk_meminfo, for `DiagSocket::drops`.
    pub const MEMINFO: Ext = Ext(1 << (INET_DIAG_SKMEMINFO - 1));
}

/// TCP sockets of `family` whose state is in the `states` bit mask (bit N =
/// TCP state N), with the attributes `ext` asks for, each handed to
/// `visit` as it is parsed: a host can hold a hundred thousand TIME_WAIT
/// sockets, and a periodic count of them should not materialise them all.
pub fn visit_tcp_sockets(
    family: u16,
    states: u32,
    ext: Ext,
    visit: &mut dyn FnMut(DiagSocket),
) -> Result<(), SnapshotError> {
    let mut req = [0u8; DIAG_REQ_LEN];
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    diag_header(&mut req, flags, family);
    req[18] = ext.0;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    exchange(&req, &mut |m| {
        if let Some(s) = parse_diag_msg(m)? {
            visit(s);
        }
        Ok(())
    })
}

/// Length of a sock_diag request: netlink header and inet_diag_req_v2.
pub(crate) const DIAG_REQ_LEN: usize = NLMSG_HDR + 56;

/// The netlink header and the start of inet_diag_req_v2 (family, TCP).
pub(crate) fn diag_header(req: &mut [u8; DIAG_REQ_LEN], flags: u16, family: u16) {
    req[0..4].copy_from_slice(&(DIAG_REQ_LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family as u8;
    req[17] = IPPROTO_TCP as u8;
}

/// Send one sock_diag request and hand each reply message (an
/// inet_diag_msg with its attributes) to `on_msg`, until the kernel is done.
pub(crate) fn exchange(
    req: &[u8],
    on_msg: &mut dyn FnMut(&[u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: raw is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: req is a valid buffer of the given length; the kernel is the peer.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error().into());
    }
    let dump = u16::from_ne_bytes([req[6], req[7]]) & libc::NLM_F_DUMP as u16 != 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: buf is writable for its whole length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        // A request that is not a dump gets one datagram and no DONE.
        if n == 0 || parse_batch(&buf[..n as usize], on_msg)? || !dump {
            return Ok(());
        }
    }
}

/// Parse one datagram of netlink messages; true once the dump is done.
fn parse_batch(
    mut data: &[u8],
    on_msg: &mut dyn FnMut(&[u8]) -> Result<(), SnapshotError>,
) -> Result<bool, SnapshotError> {
    while data.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR || len > data.len() {
            return Err(SnapshotError::Malformed("message length out of bounds"));
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = data
                    .get(16..20)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or(SnapshotError::Malformed("short error message"))?;
                return Err(io::Error::from_raw_os_error(-errno).into());
            }
            _ => on_msg(&data[NLMSG_HDR..len])?,
        }
        // Messages are 4-byte aligned.
        let advance = (len + 3) & !3;
        data = data.get(advance..).unwrap_or(&[]);
    }
    Ok(false)
}

/// One socket; None for a state this version does not know (a newer
/// kernel's), which is skipped rather than failing the whole dump.
pub(crate) fn parse_diag_msg(m: &[u8]) -> Result<Option<DiagSocket>, SnapshotError> {
    if m.len() < DIAG_MSG_LEN {
        return Err(SnapshotError::Malformed("inet_diag_msg too short"));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().expect("4 bytes"));
    let be16_at = |o: usize| u16::from_be_bytes(m[o..o + 2].try_into().expect("2 bytes"));
    let family =
        Family::from_af(m[0] as u16).ok_or(SnapshotError::Malformed("unknown address family"))?;
    let addr = |o: usize| family.addr(m[o..o + 16].try_into().expect("16 bytes"));
    let Ok(state) = TcpState::try_from(u32::from(m[1])) else {
        return Ok(None);
    };
    Ok(Some(DiagSocket {
        drops: diag_attr(&m[DIAG_MSG_LEN..], INET_DIAG_SKMEMINFO).and_then(|a| {
            let at = 4 * SK_MEMINFO_DROPS;
            a.get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        }),
        cgroup: diag_attr(&m[DIAG_MSG_LEN..], INET_DIAG_CGROUP_ID)
            .and_then(|a| a.get(..8))
            .map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes"))),
        last_ack_recv_ms: diag_attr(&m[DIAG_MSG_LEN..], INET_DIAG_INFO)
            .and_then(|a| a.get(TCPI_LAST_ACK_RECV..TCPI_LAST_ACK_RECV + 4))
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes"))),
        family,
        state,
        timer: m[2],
        sport: be16_at(4),
        dport: be16_at(6),
        saddr: addr(8),
        daddr: addr(24),
        cookie: u32_at(44) as u64 | ((u32_at(48) as u64) << 32),
        rqueue: u32_at(56),
        wqueue: u32_at(60),
        inode: u32_at(68),
        netns: 0,
    }))
}

/// idiag_timer of a timewait socket.
pub const TIMER_TIME_WAIT: u8 = 3;

/// A test's socket: 127.0.0.1:`sport` to 127.0.0.1:40000, empty queues.
#[cfg(test)]
impl DiagSocket {
    pub(crate) fn on_loopback(cookie: u64, state: TcpState, sport: u16, netns: u32) -> Self {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        DiagSocket {
            cookie,
            inode: cookie as u32,
            state,
            timer: 0,
            family: Family::Ipv4,
            saddr: lo,
            sport,
            daddr: lo,
            dport: 40000,
            rqueue: 0,
            wqueue: 0,
            drops: None,
            cgroup: 0,
            last_ack_recv_ms: None,
            netns,
        }
    }
}

impl DiagSocket {
    /// As the event model names sockets.
    pub fn sock_ref(&self) -> SockRef {
        SockRef {
            id: self.cookie,
            netns: self.netns,
            cgroup: self.cgroup,
            family: self.family,
            saddr: self.saddr,
            sport: self.sport,
            daddr: self.daddr,
            dport: self.dport,
        }
    }

    /// A timewait socket: TIME_WAIT, or FIN_WAIT2 handed over early (an
    /// orphaned active close): either way it holds its port.
    pub fn is_timewait(&self) -> bool {
        self.state == TcpState::TimeWait || self.timer == TIMER_TIME_WAIT
    }
}

/// The payload of netlink attribute `want`, if present and well formed.
pub(crate) fn diag_attr(mut attrs: &[u8], want: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == want {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// Every TCP socket in `states`, both families (IPv6 failing is not an error).
pub fn tcp_sockets_both(states: u32, ext: Ext) -> Result<Vec<DiagSocket>, SnapshotError> {
    let mut v = Vec::new();
    visit_tcp_sockets_both(states, ext, &mut |s| v.push(s))?;
    Ok(v)
}

/// `visit_tcp_sockets` for both families (IPv6 failing is not an error).
pub fn visit_tcp_sockets_both(
    states: u32,
    ext: Ext,
    visit: &mut dyn FnMut(DiagSocket),
) -> Result<(), SnapshotError> {
    visit_tcp_sockets(AF_INET, states, ext, visit)?;
    let _ = visit_tcp_sockets(AF_INET6, states, ext, visit);
    Ok(())
}

/// The kernel's own account of TCP sockets right now, with their holders.
#[derive(Debug)]
pub struct KernelView {
    pub by_cookie: HashMap<u64, DiagSocket>,
    pub holders: HashMap<u32, Vec<Holder>>,
    /// Sockets never accepted (no inode yet), by cookie: the inode of the
    /// listener whose accept queue holds them (see `accept_queue`).
    pub queued_on: HashMap<u64, u32>,
    /// Cookies by namespace and endpoints, built on the first `find` that
    /// needs it (ids that are not cookies), once for the whole view.
    by_ends: std::cell::OnceCell<HashMap<Ends, u64>>,
}

/// A socket's namespace and endpoints: (netns, sport, dport, saddr, daddr).
type Ends = (u32, u16, u16, IpAddr, IpAddr);

/// State masks for `KernelView::take`: bit N is TCP state N.
pub mod states {
    use closetrace_common::tcp_state::TIME_WAIT;
    pub const ALL: u32 = u32::MAX;
    /// Everything a process can hold: timewait sockets have no owner, and
    /// there can be a hundred thousand of them.
    pub const HELD: u32 = !(1 << TIME_WAIT);
}

impl KernelView {
    pub fn new(by_cookie: HashMap<u64, DiagSocket>, holders: HashMap<u32, Vec<Holder>>) -> Self {
        KernelView {
            by_cookie,
            holders,
            queued_on: HashMap::new(),
            by_ends: std::cell::OnceCell::new(),
        }
    }

    pub fn empty() -> KernelView {
        KernelView::new(HashMap::new(), HashMap::new())
    }

    pub fn holders_of(&self, cookie: u64) -> &[Holder] {
        self.by_cookie
            .get(&cookie)
            .and_then(|s| self.holders.get(&s.inode))
            .map_or(&[], Vec::as_slice)
    }

    /// The socket `sock` names: by its id, or where ids are not cookies
    /// (`by_tuple`; see closetrace's `kernel::ids`), by its namespace and
    /// endpoints.
    pub fn find(&self, sock: &SockRef, by_tuple: bool) -> Option<&DiagSocket> {
        self.by_cookie.get(&sock.id).or_else(|| {
            if !by_tuple {
                return None;
            }
            let by_ends = self.by_ends.get_or_init(|| {
                (self.by_cookie.values())
                    .map(|s| ((s.netns, s.sport, s.dport, s.saddr, s.daddr), s.cookie))
                    .collect()
            });
            let ends = (sock.netns, sock.sport, sock.dport, sock.saddr, sock.daddr);
            by_ends.get(&ends).and_then(|c| self.by_cookie.get(c))
        })
    }

    /// Every process holding `sock` (see `find`).
    pub fn holders_of_sock(&self, sock: &SockRef, by_tuple: bool) -> &[Holder] {
        self.find(sock, by_tuple)
            .and_then(|s| self.holders.get(&self.held_as(s)))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether `sock` was never accepted: `holders_of_sock` then names
    /// those holding its listener.
    pub fn in_accept_queue(&self, sock: &SockRef, by_tuple: bool) -> bool {
        self.find(sock, by_tuple)
            .is_some_and(|s| s.inode == 0 && self.queued_on.contains_key(&s.cookie))
    }

    /// The inode whose holders answer for `s`: its own, or, never
    /// accepted, its listener's.
    fn held_as(&self, s: &DiagSocket) -> u32 {
        match s.inode {
            0 => self.queued_on.get(&s.cookie).copied().unwrap_or(0),
            inode => inode,
        }
    }
}

/// Inode of this process's network namespace (what the kernel reports as netns).
pub fn own_netns() -> Option<u32> {
    crate::host::procs::ns_inode("self", "net").and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::net::{Ipv4Addr, TcpListener};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn parse_into(batch: &[u8], out: &mut Vec<DiagSocket>) -> Result<bool, SnapshotError> {
        parse_batch(batch, &mut |m| {
            if let Some(s) = parse_diag_msg(m)? {
                out.push(s);
            }
            Ok(())
        })
    }

    fn diag_msg(family: u8, state: u8, sport: u16, cookie: u64, inode: u32) -> Vec<u8> {
        let mut m = vec![0u8; DIAG_MSG_LEN];
        m[0] = family;
        m[1] = state;
        m[4..6].copy_from_slice(&sport.to_be_bytes());
        m[8..12].copy_from_slice(&[127, 0, 0, 1]);
        m[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        m[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        m[56..60].copy_from_slice(&5u32.to_ne_bytes());
        m[68..72].copy_from_slice(&inode.to_ne_bytes());
        m
    }

    fn nlmsg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((NLMSG_HDR + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_a_dump_batch() {
        let mut batch = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(2, 8, 9501, (7 << 32) | 9, 4242),
        );
        batch.extend(nlmsg(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse_into(&batch, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(
            (s.state, s.sport, s.inode, s.rqueue),
            (TcpState::CloseWait, 9501, 4242, 5)
        );
        assert_eq!(s.cookie, (7 << 32) | 9);
        assert_eq!(s.saddr, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }

    /// A state a newer kernel added skips that socket, not the dump.
    #[test]
    fn an_unknown_state_skips_one_socket() {
        let mut batch = nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(2, 99, 1, 1, 1));
        batch.extend(nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(2, 8, 2, 2, 2)));
        batch.extend(nlmsg(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse_into(&batch, &mut out).unwrap());
        assert_eq!(out.iter().map(|s| s.cookie).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn parses_skmeminfo_drops() {
        let mut m = diag_msg(2, 10, 80, 1, 1);
        let mut attr = Vec::new();
        attr.extend_from_slice(&(4u16 + 4 * 9).to_ne_bytes());
        attr.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        for i in 0..9u32 {
            attr.extend_from_slice(&(if i == 8 { 17 } else { i }).to_ne_bytes());
        }
        m.extend_from_slice(&attr);
        let mut out = Vec::new();
        parse_into(&nlmsg(SOCK_DIAG_BY_FAMILY, &m), &mut out).unwrap();
        assert_eq!(out[0].drops, Some(17));
        let mut out = Vec::new();
        parse_into(
            &nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(2, 10, 80, 1, 1)),
            &mut out,
        )
        .unwrap();
        assert_eq!(out[0].drops, None);
    }

    #[test]
    fn rejects_truncated_messages() {
        let msg = nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(2, 8, 1, 1, 1)[..40]);
        assert!(matches!(
            parse_into(&msg, &mut Vec::new()),
            Err(SnapshotError::Malformed(_))
        ));
        let mut bad_len = nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(2, 8, 1, 1, 1));
        bad_len[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_into(&bad_len, &mut Vec::new()).is_err());
    }

    /// Real kernel, no root needed: our own listener shows up with our pid.
    #[test]
    fn finds_own_listener_and_holder() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut socks = Vec::new();
        visit_tcp_sockets(AF_INET, u32::MAX, Ext::NONE, &mut |s| socks.push(s)).unwrap();
        let me = socks
            .iter()
            .find(|s| s.sport == port && s.state == TcpState::Listen)
            .expect("listener");
        assert_ne!(me.cookie, 0);
        let fd_inode = fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino();
        assert_eq!(me.inode as u64, fd_inode);
        let holders = crate::host::holders::socket_holders();
        let h = holders.get(&me.inode).expect("holder found");
        assert!(
            h.iter()
                .any(|h| h.pid == std::process::id() && h.fd == l.as_raw_fd() as u32)
        );
    }

    /// By cookie always; by namespace and endpoints only when asked (ids
    /// that are not cookies), and never a socket of another namespace.
    #[test]
    fn a_view_finds_sockets_by_cookie_or_by_their_ends() {
        let sock =
            |cookie, netns| DiagSocket::on_loopback(cookie, TcpState::CloseWait, 9501, netns);
        let by_cookie = [(7, sock(7, 1)), (8, sock(8, 2))].into_iter().collect();
        let holders = [(8, vec![])].into_iter().collect();
        let view = KernelView::new(by_cookie, holders);
        let mut wanted = sock(7, 2).sock_ref();
        assert_eq!(view.find(&wanted, false).map(|s| s.cookie), Some(7));
        wanted.id = 1 << 62;
        assert_eq!(view.find(&wanted, false), None);
        assert_eq!(view.find(&wanted, true).map(|s| s.cookie), Some(8));
        wanted.netns = 3;
        assert_eq!(view.find(&wanted, true), None);
    }
}
