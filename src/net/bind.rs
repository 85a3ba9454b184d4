//! Binding listening sockets on addresses as users type them: `127.0.0.1:7007`,
//! `[::1]:7007`, `localhost:7007`, `0.0.0.0:7007` (exposes the service: the user's
//! explicit choice); and several listeners on one address with `SO_REUSEPORT`.

use std::fmt;
use std::net::SocketAddr;

use crate::Result;
use crate::net::describe::describe;
use crate::rt::{self, TcpListener, UdpSocket};

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

/// Binds a TCP listener with `SO_REUSEPORT`, so several threads can each own a listener
/// on the same address and the kernel spreads new connections across them.
pub fn bind_tcp_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 1024)?;
    Ok(std::net::TcpListener::from(fd))
}
