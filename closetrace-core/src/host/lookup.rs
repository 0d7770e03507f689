//! One TCP socket by its endpoints (a sock_diag request that is not a
//! dump: the kernel looks the tuple up in its hash tables), with the
//! kernel's tcp_info when asked. A leak's diagnosis reads its socket and
//! its peer's this way, at one round trip each, however many sockets the
//! namespace holds.
use std::net::IpAddr;

use closetrace_common::{AF_INET, AF_INET6};

use super::sockets::{
    DIAG_MSG_LEN, DIAG_REQ_LEN, DiagSocket, INET_DIAG_INFO, SnapshotError, diag_attr, diag_header,
    exchange, parse_diag_msg,
};
use crate::model::threads::TcpInfo;

/// No cookie to match: any socket with the tuple.
const INET_DIAG_NOCOOKIE: u32 = !0;

/// The socket whose local end is `local` and remote end `remote`, in the
/// namespace the calling thread is in; None when there is none.
pub fn tcp_socket(
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    info: bool,
) -> Result<Option<(DiagSocket, Option<TcpInfo>)>, SnapshotError> {
    let family = match local.0 {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    };
    let mut req = [0u8; DIAG_REQ_LEN];
    diag_header(&mut req, libc::NLM_F_REQUEST as u16, family);
    if info {
        req[18] = 1 << (INET_DIAG_INFO - 1);
    }
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: sport, dport (network order), src, dst, if, cookie.
    req[24..26].copy_from_slice(&local.1.to_be_bytes());
    req[26..28].copy_from_slice(&remote.1.to_be_bytes());
    req[28..44].copy_from_slice(&addr_bytes(local.0));
    req[44..60].copy_from_slice(&addr_bytes(remote.0));
    req[64..68].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    req[68..72].copy_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    let mut found = None;
    let asked = exchange(&req, &mut |m| {
        // The kernel's lookup falls back to a listener on the local port:
        // only the exact connection is an answer.
        if let Some(s) = parse_diag_msg(m)?.filter(|s| s.dport == remote.1 && s.daddr == remote.0) {
            let info = diag_attr(&m[DIAG_MSG_LEN..], INET_DIAG_INFO).and_then(parse_tcp_info);
            found = Some((s, info));
        }
        Ok(())
    });
    match asked {
        Ok(()) => Ok(found),
        // The kernel's answer when no socket has the tuple.
        Err(SnapshotError::Netlink(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn addr_bytes(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

/// The fields of `struct tcp_info` a diagnosis shows (offsets fixed by
/// the kernel's UAPI; an older kernel's shorter struct lacks the byte
/// counts, which then read as 0).
pub fn parse_tcp_info(b: &[u8]) -> Option<TcpInfo> {
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|x| u32::from_ne_bytes(x.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|x| u64::from_ne_bytes(x.try_into().expect("8 bytes")))
    };
    Some(TcpInfo {
        last_data_sent_ms: u32_at(44)?,
        last_data_recv_ms: u32_at(52)?,
        bytes_acked: u64_at(120).unwrap_or(0),
        bytes_received: u64_at(128).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A real connection: looked up by its tuple from either end, with
    /// the bytes it carried; a tuple nobody has is None.
    #[test]
    fn a_connection_is_found_by_its_tuple_with_tcp_info() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        let (cl, sl) = (c.local_addr().unwrap(), s.local_addr().unwrap());
        let found = tcp_socket((sl.ip(), sl.port()), (cl.ip(), cl.port()), true).unwrap();
        let (sock, info) = found.expect("the server's socket");
        assert_eq!((sock.sport, sock.dport), (sl.port(), cl.port()));
        let info = info.expect("tcp_info");
        assert_eq!(info.bytes_received, 5);
        let none = tcp_socket((sl.ip(), sl.port()), (cl.ip(), 1), false).unwrap();
        assert!(none.is_none());
    }
}
