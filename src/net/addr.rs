//! Addresses, durations and access lists as users type them.
//!
//! - `ADDR`: `127.0.0.1:7007`, `[::1]:7007`, `localhost:7007`, `0.0.0.0:7007` (exposes the
//!   service: the user's explicit choice).
//! - `DURATION`: `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds; `0` means off.
//! - `CIDR`: `10.0.0.0/8`, `::1/128`, or a bare address for exactly that host.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::Result;
use crate::rt::{self, TcpListener, UdpSocket};

/// Parses a duration such as `30s`, `5m`, `250ms`, `1h` or `0` (off).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 30s, 5m, 250ms or 0)"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("{text:?} is out of range"))
}

/// `None` for a zero duration, which every `--*-timeout` flag takes to mean "off".
pub fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Which peers a server accepts: none of `deny`, and one of `allow` when `allow` is given.
#[derive(Clone, Debug, Default)]
pub struct AccessList {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Parses a CIDR block or a bare address (a block of one host).
pub fn parse_cidr(text: &str) -> std::result::Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not a CIDR block or an IP address (try 10.0.0.0/8)"))
}

impl AccessList {
    /// An access list from `--allow` and `--deny` blocks.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        AccessList { allow, deny }
    }

    /// Whether `peer` may connect. IPv4 peers on an IPv6 socket (`::ffff:a.b.c.d`) are
    /// matched as IPv4, so `--allow 127.0.0.0/8` works on a `[::]` listener too.
    pub fn permits(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|net| net.contains(&peer)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&peer))
    }
}

/// Which transport an address is for, in error messages.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Tcp,
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        })
    }
}

/// Resolves `addr` for binding; the error names the address and what went wrong.
async fn resolve_for(addr: &str, transport: Transport) -> Result<Vec<SocketAddr>> {
    let addrs = rt::resolve(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({transport}): {e}"))?;
    if addrs.is_empty() {
        return Err(
            format!("cannot listen on {addr} ({transport}): it resolves to no address").into(),
        );
    }
    Ok(addrs)
}

/// Binds a TCP listener on the first address `addr` resolves to that can be bound.
pub async fn bind_tcp(addr: &str) -> Result<TcpListener> {
    let mut last = None;
    for a in resolve_for(addr, Transport::Tcp).await? {
        match TcpListener::bind(a).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some((a, e)),
        }
    }
    let (a, e) = last.expect("resolve_for returns at least one address");
    Err(format!("cannot listen on {a} (TCP): {}", describe(&e)).into())
}

/// Binds a UDP socket on the first address `addr` resolves to that can be bound.
pub async fn bind_udp(addr: &str) -> Result<UdpSocket> {
    let mut last = None;
    for a in resolve_for(addr, Transport::Udp).await? {
        match UdpSocket::bind(a).await {
            Ok(socket) => return Ok(socket),
            Err(e) => last = Some((a, e)),
        }
    }
    let (a, e) = last.expect("resolve_for returns at least one address");
    Err(format!("cannot listen on {a} (UDP): {}", describe(&e)).into())
}

/// An I/O error as a short lower-case phrase ("address already in use").
pub fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        AddrInUse => "address already in use".into(),
        AddrNotAvailable => "address not available on this machine".into(),
        PermissionDenied => "permission denied (ports below 1024 need privileges)".into(),
        ConnectionRefused => "connection refused".into(),
        TimedOut => "timed out".into(),
        _ => {
            // std's text ends with " (os error N)"; keep it, it is what people search for.
            let text = e.to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

/// Binds a TCP listener with `SO_REUSEPORT`, so several threads can each own a listener
/// on the same address and the kernel spreads new connections across them.
pub fn bind_tcp_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls on a descriptor we own until it is handed to TcpListener;
    // the sockaddr structs are built to the sizes we pass.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = std::net::TcpListener::from_raw_fd(fd); // closes fd on any error below
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let p = &one as *const _ as *const libc::c_void;
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                p,
                std::mem::size_of::<libc::c_int>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let rc = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                libc::bind(
                    fd,
                    &sin as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                libc::bind(
                    fd,
                    &sin6 as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        };
        if rc != 0 || libc::listen(fd, 1024) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e400s").is_err());
        assert_eq!(nonzero(Duration::ZERO), None);
    }

    #[test]
    fn access_lists() {
        let list = AccessList::new(
            vec![
                parse_cidr("127.0.0.0/8").unwrap(),
                parse_cidr("::1").unwrap(),
            ],
            vec![parse_cidr("127.0.0.2").unwrap()],
        );
        assert!(list.permits("127.0.0.1".parse().unwrap()));
        assert!(list.permits("::1".parse().unwrap()));
        assert!(list.permits("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!list.permits("127.0.0.2".parse().unwrap()));
        assert!(!list.permits("::ffff:127.0.0.2".parse().unwrap()));
        assert!(!list.permits("10.1.2.3".parse().unwrap()));
        assert!(AccessList::default().permits("10.1.2.3".parse().unwrap()));
        let deny_only = AccessList::new(vec![], vec![parse_cidr("10.0.0.0/8").unwrap()]);
        assert!(!deny_only.permits("10.200.0.1".parse().unwrap()));
        assert!(deny_only.permits("192.0.2.1".parse().unwrap()));
        // Host bits in a block are ignored, as in every firewall syntax.
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example").is_err());
    }
}
