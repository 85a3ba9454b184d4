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
