//! The two records written once per event under `--states` (`state` and
//! `close`), as JSON written by hand. Through serde's derive, an
//! internally tagged enum and `flatten` put every field in map mode, and
//! serde_json escapes every key and every enum name: that was half of
//! closetrace's CPU under `--states` churn. Here the keys and names are
//! written as they are (they are fixed ASCII); only text that came from
//! the kernel (a comm) goes through serde_json's escaping, and only when
//! it needs to.
//!
//! The output is byte for byte what serde writes for the same record; the
//! derive stays the reference, which the tests hold this to, and it still
//! writes every other record and reads them all back.
use std::net::IpAddr;

use crate::model::Family;
use crate::output::records::{Close, ClosedBy, Scope, SockFields, State, Ts};

/// Every octet's decimal digits: two of them in each of a state line's
/// addresses, where itoa's general loop was a tenth of the line's time.
static OCTETS: [([u8; 3], u8); 256] = octet_digits();

const fn octet_digits() -> [([u8; 3], u8); 256] {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut n = 0;
    while n < 256 {
        let (h, t, o) = ((n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8);
        table[n] = if n >= 100 {
            ([b'0' + h, b'0' + t, b'0' + o], 3)
        } else if n >= 10 {
            ([b'0' + t, b'0' + o, 0], 2)
        } else {
            ([b'0' + o, 0, 0], 1)
        };
        n += 1;
    }
    table
}

/// One JSON object being written into `buf`, from `{"type":...` to `}\n`.
struct Line<'b> {
    buf: &'b mut Vec<u8>,
}

// Inlined: with the key a constant at each call, its copies can be a few
// moves rather than a call to memcpy each (measured: ~5 % less CPU).
impl<'b> Line<'b> {
    fn open(buf: &'b mut Vec<u8>, kind: &'static str) -> Self {
        buf.extend_from_slice(b"{\"type\":\"");
        buf.extend_from_slice(kind.as_bytes());
        buf.push(b'"');
        Line { buf }
    }

    #[inline(always)]
    fn key(&mut self, key: &'static str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// A value that is a fixed name (an enum's): nothing to escape.
    #[inline(always)]
    fn name(&mut self, key: &'static str, name: &'static str) {
        self.key(key);
        self.quoted(name.as_bytes());
    }

    #[inline(always)]
    fn quoted(&mut self, bytes: &[u8]) {
        self.buf.push(b'"');
        self.buf.extend_from_slice(bytes);
        self.buf.push(b'"');
    }

    #[inline(always)]
    fn text(&mut self, key: &'static str, text: &str) {
        self.key(key);
        if text
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.quoted(text.as_bytes());
        } else {
            // Writing into a Vec cannot fail, and a str always serialises.
            let _ = serde_json::to_writer(&mut *self.buf, text);
        }
    }

    #[inline(always)]
    fn opt_text(&mut self, key: &'static str, text: Option<&str>) {
        match text {
            Some(t) => self.text(key, t),
            None => self.null(key),
        }
    }

    #[inline(always)]
    fn null(&mut self, key: &'static str) {
        self.key(key);
        self.buf.extend_from_slice(b"null");
    }

    #[inline(always)]
    fn uint(&mut self, key: &'static str, n: u64) {
        self.key(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    #[inline(always)]
    fn opt_uint(&mut self, key: &'static str, n: Option<u64>) {
        match n {
            Some(n) => self.uint(key, n),
            None => self.null(key),
        }
    }

    /// Milliseconds with microsecond precision (see `ns_to_ms`).
    fn opt_ms(&mut self, key: &'static str, x: Option<f64>) {
        self.key(key);
        match x.and_then(whole_micros) {
            Some(us) => self.micros_as_ms(us),
            // serde_json's own float formatting, so the digits are the same.
            None => {
                let _ = serde_json::to_writer(&mut *self.buf, &x);
            }
        }
    }

    /// `us` / 1000 as the shortest decimal that reads back as the same
    /// f64, which is what serde_json writes: below 10^15 a decimal of up to
    /// 15 significant digits is that shortest form, and `n.0` when whole.
    fn micros_as_ms(&mut self, us: u64) {
        let mut digits = itoa::Buffer::new();
        self.buf
            .extend_from_slice(digits.format(us / 1000).as_bytes());
        self.buf.push(b'.');
        let frac = us % 1000;
        if frac == 0 {
            self.buf.push(b'0');
            return;
        }
        let text = [
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let kept = if !frac.is_multiple_of(10) {
            3
        } else if !frac.is_multiple_of(100) {
            2
        } else {
            1
        };
        self.buf.extend_from_slice(&text[..kept]);
    }

    fn ip(&mut self, key: &'static str, ip: IpAddr) {
        self.key(key);
        self.buf.push(b'"');
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b'.');
                    }
                    let (text, len) = &OCTETS[usize::from(octet)];
                    self.buf.extend_from_slice(&text[..usize::from(*len)]);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let _ = write!(self.buf, "{v6}");
            }
        }
        self.buf.push(b'"');
    }

    fn ts(&mut self, key: &'static str, ts: &Ts) {
        self.key(key);
        match ts.rfc3339() {
            Some(text) => self.quoted(&text),
            None => {
                let _ = serde_json::to_writer(&mut *self.buf, ts);
            }
        }
    }

    fn sock(&mut self, s: &SockFields) {
        self.endpoints(s.family, (s.saddr, s.sport), (s.daddr, s.dport));
        self.uint("sock", s.sock);
        self.scope(&s.scope);
    }

    fn endpoints(
        &mut self,
        family: Family,
        (saddr, sport): (IpAddr, u16),
        (daddr, dport): (IpAddr, u16),
    ) {
        self.name("family", family.name());
        self.ip("saddr", saddr);
        self.uint("sport", sport.into());
        self.ip("daddr", daddr);
        self.uint("dport", dport.into());
    }

    fn scope(&mut self, s: &Scope) {
        self.uint("netns", s.netns.into());
        self.uint("cgroup", s.cgroup);
        if let Some(c) = &s.container {
            self.key("container");
            let _ = serde_json::to_writer(&mut *self.buf, c);
        }
    }

    fn close(self) {
        self.buf.extend_from_slice(b"}\n");
    }
}

/// The whole number of microseconds `x` milliseconds is, when `x` is
/// exactly what `ns_to_ms` makes of it and small enough for
/// `micros_as_ms`; None for anything else (serde_json writes those).
fn whole_micros(x: f64) -> Option<u64> {
    let us = (x * 1000.0).round();
    let fits = (0.0..1e15).contains(&us) && us / 1000.0 == x;
    fits.then_some(us as u64)
}

impl State<'_> {
    /// This record as one JSON line, appended to `buf`.
    pub fn write_json_line(&self, buf: &mut Vec<u8>) {
        let mut l = Line::open(buf, "state");
        l.ts("ts", &self.ts);
        l.opt_uint("pid", self.pid.map(u64::from));
        l.opt_uint("pid_start", self.pid_start);
        l.opt_text("comm", self.comm.as_deref());
        l.name("owner", self.owner.name());
        l.uint("ctx_pid", self.ctx_pid.into());
        l.text("ctx_comm", &self.ctx_comm);
        l.endpoints(
            self.family,
            (self.saddr, self.sport),
            (self.daddr, self.dport),
        );
        l.uint("sock", self.sock);
        l.name("old", self.old.name());
        l.name("new", self.new.name());
        l.opt_ms("old_ms", self.old_ms);
        l.scope(&self.scope);
        l.close();
    }
}

impl Close<'_> {
    /// This record as one JSON line, appended to `buf`.
    pub fn write_json_line(&self, buf: &mut Vec<u8>) {
        let mut l = Line::open(buf, "close");
        l.ts("ts", &self.ts);
        l.uint("pid", self.pid.into());
        l.opt_uint("pid_start", self.pid_start);
        l.text("comm", &self.comm);
        l.sock(&self.sock);
        l.name("state", self.state.name());
        l.name(
            "by",
            match self.by {
                ClosedBy::Close => "close",
                ClosedBy::Exit => "exit",
            },
        );
        l.name("via", self.via.name());
        l.close();
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::model::{CloseVia, Container, OwnerSource, Runtime, TcpState};
    use crate::output::records::{Record, ns_to_ms};

    const STATES: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];
    const OWNERS: [OwnerSource; 6] = [
        OwnerSource::Unknown,
        OwnerSource::Transition,
        OwnerSource::Listener,
        OwnerSource::Io,
        OwnerSource::Snapshot,
        OwnerSource::Accept,
    ];
    /// Plain, needing escapes, control bytes, non-ASCII, DEL, empty.
    const COMMS: [&str; 6] = [
        "nginx",
        "cli\"ent\\",
        "a\nb\tc\u{1}",
        "naïve·日本",
        "x\u{7f}",
        "",
    ];

    fn addrs() -> [(Family, IpAddr, IpAddr); 4] {
        [
            (
                Family::Ipv4,
                Ipv4Addr::new(127, 0, 0, 1).into(),
                Ipv4Addr::new(10, 200, 3, 255).into(),
            ),
            (
                Family::Ipv4,
                Ipv4Addr::UNSPECIFIED.into(),
                Ipv4Addr::BROADCAST.into(),
            ),
            (
                Family::Ipv6,
                Ipv6Addr::LOCALHOST.into(),
                "2001:db8::1:0:0:1".parse().unwrap(),
            ),
            (
                Family::Ipv6,
                Ipv6Addr::UNSPECIFIED.into(),
                "::ffff:192.0.2.7".parse().unwrap(),
            ),
        ]
    }

    fn scope(i: usize) -> Scope {
        Scope {
            netns: 4026531840 + i as u32,
            cgroup: if i.is_multiple_of(2) {
                0
            } else {
                u64::MAX - i as u64
            },
            container: (i % 3 == 1).then(|| Container {
                runtime: Runtime::CriO,
                id: format!("{i:064x}").into(),
            }),
        }
    }

    fn times() -> [Ts; 4] {
        [
            Ts(UNIX_EPOCH + Duration::new(1_796_000_000, 123_456_789)),
            Ts(UNIX_EPOCH),
            Ts(UNIX_EPOCH + Duration::new(4_102_444_799, 999_999_999)),
            // The latest `WallClock::wall` gives.
            Ts(UNIX_EPOCH + Duration::from_nanos(u64::MAX)),
        ]
    }

    fn by_serde(rec: Record<'_>) -> String {
        serde_json::to_string(&rec).unwrap() + "\n"
    }

    #[test]
    fn state_lines_match_serde_byte_for_byte() {
        let mut checked = 0;
        for (i, old) in STATES.into_iter().enumerate() {
            for (j, owner) in OWNERS.into_iter().enumerate() {
                let k = i * OWNERS.len() + j;
                let (family, saddr, daddr) = addrs()[k % 4];
                let known = !k.is_multiple_of(5);
                let rec = State {
                    ts: times()[k % 4],
                    pid: known.then_some(u32::MAX - k as u32),
                    pid_start: (!k.is_multiple_of(3)).then_some(k as u64 * 1_000_003),
                    comm: known.then(|| Cow::Borrowed(COMMS[k % COMMS.len()])),
                    owner,
                    ctx_pid: k as u32,
                    ctx_comm: Cow::Borrowed(COMMS[(k + 1) % COMMS.len()]),
                    family,
                    saddr,
                    sport: (k * 997 % 65536) as u16,
                    daddr,
                    dport: if k.is_multiple_of(7) { u16::MAX } else { 0 },
                    sock: u64::MAX / (k as u64 + 1),
                    old,
                    new: STATES[(i + j + 1) % STATES.len()],
                    old_ms: match k % 4 {
                        0 => None,
                        1 => Some(0.0),
                        2 => Some(0.055),
                        _ => Some(123_456.789),
                    },
                    scope: scope(k),
                };
                let mut fast = Vec::new();
                rec.write_json_line(&mut fast);
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    by_serde(Record::State(rec))
                );
                checked += 1;
            }
        }
        assert_eq!(checked, STATES.len() * OWNERS.len());
    }

    /// Milliseconds as `ns_to_ms` makes them, written as serde_json
    /// writes them, across magnitudes and trailing zeros; and values it
    /// does not make fall back to serde_json.
    #[test]
    fn milliseconds_match_serde() {
        let mut micros: Vec<u64> = vec![
            0,
            1,
            10,
            100,
            999,
            1000,
            1001,
            1010,
            1100,
            55,
            86_400_000_000,
        ];
        let mut x = 7u64;
        for _ in 0..200_000 {
            // A spread over 0 .. 10^15 µs, with every count of trailing zeros.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let digits = (x >> 60) as u32; // 0..15
            micros.push((x >> 8) % 10u64.pow(digits.max(1)));
        }
        micros.push(999_999_999_999_999);
        let floats = [1e15, 2.5e17, -1.0, 0.0005, 1.0 / 3.0, f64::MAX];
        let values = micros.iter().map(|&us| ns_to_ms(us * 1000)).chain(floats);
        for value in values {
            let mut fast = Vec::new();
            Line { buf: &mut fast }.opt_ms("k", Some(value));
            let mut slow = Vec::new();
            slow.extend_from_slice(b",\"k\":");
            serde_json::to_writer(&mut slow, &Some(value)).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap(),
                "{value}"
            );
        }
    }

    /// Every octet, in every position, as std writes it.
    #[test]
    fn ipv4_addresses_match_std() {
        for octet in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(octet, 255 - octet, octet / 3, 9));
            let mut fast = Vec::new();
            Line { buf: &mut fast }.ip("a", ip);
            assert_eq!(String::from_utf8(fast).unwrap(), format!(",\"a\":\"{ip}\""));
        }
    }

    #[test]
    fn close_lines_match_serde_byte_for_byte() {
        let vias = [CloseVia::Fentry, CloseVia::Kprobe, CloseVia::Transition];
        for (i, state) in STATES.into_iter().enumerate() {
            for (j, via) in vias.into_iter().enumerate() {
                let k = i * vias.len() + j;
                let (family, saddr, daddr) = addrs()[k % 4];
                let rec = Close {
                    ts: times()[k % 4],
                    pid: k as u32,
                    pid_start: (k.is_multiple_of(2)).then_some(k as u64),
                    comm: Cow::Borrowed(COMMS[k % COMMS.len()]),
                    sock: SockFields {
                        family,
                        saddr,
                        sport: k as u16,
                        daddr,
                        dport: 443,
                        sock: k as u64 + 1,
                        scope: scope(k),
                    },
                    state,
                    by: if k.is_multiple_of(2) {
                        ClosedBy::Close
                    } else {
                        ClosedBy::Exit
                    },
                    via,
                };
                let mut fast = Vec::new();
                rec.write_json_line(&mut fast);
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    by_serde(Record::Close(rec))
                );
            }
        }
    }
}
