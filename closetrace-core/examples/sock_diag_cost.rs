//! What a sock_diag dump costs, parsed by closetrace's own parser and by
//! the netlink-packet-sock-diag crate, on the same sockets: run it in a
//! namespace holding many TIME_WAIT sockets (see `cargo xtask
//! scan-cost`). Prints one line per parser: sockets seen, median ms per
//! dump, and the peak of live heap the parse needed.
use std::time::Instant;

use closetrace_common::tcp_state::{FIN_WAIT2, TIME_WAIT};
use closetrace_core::host::sockets;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

const ROUNDS: usize = 7;
const STATES: u32 = (1 << TIME_WAIT) | (1 << FIN_WAIT2);

/// The crate's way: every message deserialised into its typed form.
fn crate_dump(visit: &mut dyn FnMut(u64, u16)) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_truncate(STATES),
            socket_id: SocketId::new_v4(),
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf[..], 0)?;
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[offset..size])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = u64::from_ne_bytes(r.header.socket_id.cookie);
                    visit(id, r.header.socket_id.source_port);
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(std::io::Error::other(format!("{e:?}")));
                }
                _ => {}
            }
            if msg.header.length == 0 {
                break;
            }
            offset += msg.header.length as usize;
        }
    }
}

fn ours(visit: &mut dyn FnMut(u64, u16)) -> std::io::Result<()> {
    sockets::visit_tcp_sockets(
        closetrace_common::AF_INET,
        STATES,
        sockets::Ext::NONE,
        &mut |s| visit(s.cookie, s.sport),
    )
    .map_err(|e| std::io::Error::other(e.to_string()))
}

fn measure(name: &str, dump: fn(&mut dyn FnMut(u64, u16)) -> std::io::Result<()>) {
    let mut times = Vec::new();
    let mut seen = 0u64;
    let mut sum = 0u64;
    for _ in 0..ROUNDS {
        let mut n = 0u64;
        let started = Instant::now();
        dump(&mut |cookie, port| {
            n += 1;
            sum = sum.wrapping_add(cookie ^ u64::from(port));
        })
        .expect("dump");
        times.push(started.elapsed().as_secs_f64() * 1e3);
        seen = n;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{name:<26} {seen:>8} sockets  median {:>8.2} ms  min {:>8.2} ms  (checksum {sum:x})",
        times[times.len() / 2],
        times[0]
    );
}

fn main() {
    // Interleaved, so the machine's noise falls on both alike.
    for _ in 0..2 {
        measure("closetrace parser", ours);
        measure("netlink-packet-sock-diag", crate_dump);
    }
}
