//! Socket calls std does not offer: SO_LINGER 0, a fixed local port
//! before connect(), and a connect() started and then aborted.
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub fn linger_zero(s: &TcpStream) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(s.as_raw_fd(), libc::SO_LINGER, &l)
}

/// connect() from 127.0.0.1:`port` (SO_REUSEADDR, so a port whose earlier
/// connection sits in TIME_WAIT binds again, and connect() decides).
pub fn connect_from(port: u16, to: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--source-port is IPv4 only",
        ));
    };
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt(fd.as_raw_fd(), libc::SO_REUSEADDR, &1i32)?;
    let local = sockaddr(u32::from(std::net::Ipv4Addr::LOCALHOST), port);
    let remote = sockaddr(u32::from(*to.ip()), to.port());
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let raw = |a: &libc::sockaddr_in| (a as *const libc::sockaddr_in).cast::<libc::sockaddr>();
    // SAFETY: valid fd and sockaddr_in of the given length.
    ok(unsafe { libc::bind(fd.as_raw_fd(), raw(&local), len) })?;
    // SAFETY: as above.
    ok(unsafe { libc::connect(fd.as_raw_fd(), raw(&remote), len) })?;
    Ok(TcpStream::from(fd))
}

/// connect() to `to` (IPv4) without waiting for it to finish.
pub fn connect_nonblocking(to: SocketAddr) -> io::Result<OwnedFd> {
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--abort-after-ms is IPv4 only",
        ));
    };
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, kind, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let remote = sockaddr(u32::from(*to.ip()), to.port());
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid fd and sockaddr_in of the given length.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&remote as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    match ok(rc) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => Ok(fd),
    }
}

/// Whether the socket is still in SYN_SENT (TCP_INFO).
pub fn in_syn_sent(fd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: tcp_info is plain data; zeroes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, and a buffer of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    ok(rc)?;
    Ok(u32::from(info.tcpi_state) == closetrace_common::tcp_state::SYN_SENT)
}

/// connect() with AF_UNSPEC: the kernel disconnects the socket
/// (tcp_disconnect), aborting a connect in flight.
pub fn disconnect(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: sockaddr is plain data; zeroes are AF_UNSPEC.
    let unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
    let len = std::mem::size_of::<libc::sockaddr>() as libc::socklen_t;
    // SAFETY: valid fd and a sockaddr of the given length.
    ok(unsafe { libc::connect(fd.as_raw_fd(), &unspec, len) })
}

fn sockaddr(ip: u32, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: ip.to_be() },
        sin_zero: [0; 8],
    }
}

fn setsockopt<T>(fd: i32, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: valid fd, and a value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    ok(rc)
}

/// A libc call's return code as a result: -1 means errno.
fn ok(rc: libc::c_int) -> io::Result<()> {
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
