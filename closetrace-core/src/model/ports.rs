//! How many ephemeral ports a destination can use: `ip_local_port_range`
//! minus `ip_local_reserved_ports`, and whether `tcp_tw_reuse` lets
//! outgoing connections reuse TIME_WAIT ports. The host layer reads them
//! from /proc/sys (`host::port_policy`).
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    pub lo: u16,
    pub hi: u16,
    /// Reserved ports inside [lo, hi].
    pub reserved: u32,
    /// 0 off, 1 on, 2 loopback only.
    pub tw_reuse: u8,
}

impl PortPolicy {
    pub fn parse(range: &str, reserved: &str, reuse: &str) -> Result<Self, String> {
        let mut it = range.split_whitespace().map(str::parse::<u16>);
        let (Some(Ok(lo)), Some(Ok(hi))) = (it.next(), it.next()) else {
            return Err(format!("ip_local_port_range: cannot parse {range:?}"));
        };
        if lo > hi {
            return Err(format!("ip_local_port_range: {lo} > {hi}"));
        }
        let mut n = 0u32;
        for part in reserved.trim().split(',').filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
                None => (part.trim().parse::<u32>(), part.trim().parse::<u32>()),
            };
            let (Ok(a), Ok(b)) = (a, b) else {
                return Err(format!("ip_local_reserved_ports: cannot parse {part:?}"));
            };
            let (a, b) = (a.max(lo as u32), b.min(hi as u32));
            if a <= b {
                n += b - a + 1;
            }
        }
        let tw_reuse = reuse
            .trim()
            .parse::<u8>()
            .map_err(|_| format!("tcp_tw_reuse: {reuse:?}"))?;
        Ok(PortPolicy {
            lo,
            hi,
            reserved: n,
            tw_reuse,
        })
    }

    /// Ephemeral ports a single destination can use.
    pub fn available(&self) -> u32 {
        (self.hi as u32 - self.lo as u32 + 1)
            .saturating_sub(self.reserved)
            .max(1)
    }

    /// Whether connect() and bind(port 0) pick `port` by themselves: a
    /// socket on another port (a service port) uses up no ephemeral port.
    pub fn is_ephemeral(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// Whether connect() may reuse a TIME_WAIT port toward `daddr`.
    pub fn reuse_applies(&self, daddr: IpAddr) -> bool {
        match self.tw_reuse {
            1 => true,
            2 => daddr.is_loopback(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_range_reserved_and_reuse() {
        let p = PortPolicy::parse("32768\t60999\n", "", "2\n").unwrap();
        assert_eq!(p.available(), 28232);
        assert!(p.reuse_applies("127.0.0.1".parse().unwrap()));
        assert!(!p.reuse_applies("10.0.0.1".parse().unwrap()));
        let p = PortPolicy::parse("40000 40199", "40000-40009,40100,50000-50010\n", "0").unwrap();
        assert_eq!(p.reserved, 11);
        assert_eq!(p.available(), 189);
        assert!(!p.reuse_applies("::1".parse().unwrap()));
        assert!(PortPolicy::parse("2 1", "", "0").is_err());
        assert!(PortPolicy::parse("x", "", "0").is_err());
        assert!(PortPolicy::parse("1 2", "a-b", "0").is_err());
    }
}
