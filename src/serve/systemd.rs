//! systemd's side of `serve`: sockets it passes (`LISTEN_FDS`, socket activation, so a
//! restart keeps the ports and the clients queued on them) and the readiness it is told
//! (`NOTIFY_SOCKET`, for `Type=notify`). Both are a few lines of a documented protocol
//! (sd_listen_fds(3), sd_notify(3)); neither needs a crate.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};

use super::Listen;
use super::sockets::{Owned, Sockets};
use crate::rt::{self, UdpSocket};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// The most descriptors taken from `LISTEN_FDS` (a unit passes a handful).
const LISTEN_FDS_MAX: i32 = 1024;

/// Takes the sockets systemd passed, if any were passed to this process, and adopts each
/// for the address in `listens` it is bound to. One that matches no address is closed
/// with a warning.
pub fn adopt(sockets: &mut Sockets, listens: &[Owned<'_>]) {
    let (Ok(pid), Ok(count)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return;
    };
    // These are for us only if LISTEN_PID is our pid.
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return;
    }
    // The variables stay set (unsetting them while other threads run is not sound);
    // a child could not take the descriptors anyway: LISTEN_PID names this process.
    let count = count.parse::<i32>().unwrap_or(0).clamp(0, LISTEN_FDS_MAX);
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count {
        let Some(owned) = crate::net::sys::inherited_fd(fd) else {
            continue;
        };
        adopt_one(sockets, listens, owned, fd);
    }
}

/// Adopts one passed descriptor for the address it is bound to.
fn adopt_one(sockets: &mut Sockets, listens: &[Owned<'_>], fd: OwnedFd, number: i32) {
    use rustix::net::{SocketType, sockopt};
    let Ok(kind) = sockopt::socket_type(fd.as_fd()) else {
        log::warn!(fd = number; "systemd passed a descriptor that is not a socket; closed");
        return;
    };
    let local = rustix::net::getsockname(fd.as_fd())
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok());
    let Some(local) = local else {
        log::warn!(fd = number; "systemd passed a socket without an IP address; closed");
        return;
    };
    let matches = |addr: &String| {
        addr.to_socket_addrs()
            .map(|mut all| all.any(|a| a == local))
            .unwrap_or(false)
    };
    let addr_of = |list: fn(&Listen) -> &Vec<String>| {
        listens
            .iter()
            .flat_map(|(_, l)| list(l))
            .find(|a| matches(a))
            .map(String::as_str)
    };
    // A socket no service names yet is kept too: a reload may name it.
    let shown = local.to_string();
    if kind == SocketType::STREAM {
        let addr = addr_of(|l| &l.tcp);
        match rt::listener_from_std(std::net::TcpListener::from(fd)) {
            Ok(listener) => {
                log::info!(addr = addr.unwrap_or(&shown), used = addr.is_some(); "taking the TCP socket systemd passed");
                sockets.adopt_tcp(addr, listener);
            }
            Err(e) => log::warn!(error = e.to_string().as_str(); "systemd's socket unusable"),
        }
    } else if kind == SocketType::DGRAM {
        let addr = addr_of(|l| &l.udp);
        match UdpSocket::from_std(std::net::UdpSocket::from(fd)) {
            Ok(socket) => {
                log::info!(addr = addr.unwrap_or(&shown), used = addr.is_some(); "taking the UDP socket systemd passed");
                sockets.adopt_udp(addr, socket);
            }
            Err(e) => log::warn!(error = e.to_string().as_str(); "systemd's socket unusable"),
        }
    } else {
        log::warn!(fd = number, addr = shown.as_str(); "systemd passed a socket that is neither TCP nor UDP; closed");
    }
}

/// The message for the start of a reload: `RELOADING=1` with the `MONOTONIC_USEC=` that
/// systemd needs to match it to the reload it asked for (sd_notify(3); with
/// `Type=notify-reload` a `RELOADING=1` without it is ignored, and `systemctl reload`
/// waits until its timeout).
pub fn reloading() -> String {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

/// Tells systemd `state` (`READY=1`, `RELOADING=1`, `STOPPING=1`) when it asked to be
/// told (`NOTIFY_SOCKET`); otherwise does nothing.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        log::debug!(error = e.to_string().as_str(); "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reloading_carries_the_monotonic_time() {
        let message = super::reloading();
        let (first, second) = message.split_once('\n').unwrap();
        assert_eq!(first, "RELOADING=1");
        let usec: u64 = second
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
    }
}
