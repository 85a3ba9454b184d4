//! The listening sockets of `serve`, by address as written in the config file.
//!
//! The set owns one socket per address; each generation of a service gets duplicates
//! (`dup(2)`: the same socket, another descriptor), so a generation that retires closes
//! only its own descriptors and the socket itself stays open, its backlog and all. A
//! reload binds only the addresses that are new and lets go of the ones no longer in
//! the file: an address that stays is never rebound, and no client is refused.
//!
//! An address with port 0 asks for a fresh port: it is held per service (and per place
//! in the service's list), so two services on `127.0.0.1:0` get two sockets, and a
//! reload keeps each one's port.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use super::Listen;
use crate::Result;
use crate::net::bind;
use crate::rt::{TcpListener, UdpSocket};

/// Where a socket is held: its address, or for port 0 also its owner and place.
fn key(owner: &str, addr: &str, place: usize) -> String {
    if addr.ends_with(":0") {
        format!("{addr} {owner}#{place}")
    } else {
        addr.to_owned()
    }
}

/// A service's addresses and whose they are (its name).
pub type Owned<'a> = (&'a str, &'a Listen);

/// The sockets, by address.
#[derive(Default)]
pub struct Sockets {
    tcp: HashMap<String, TcpListener>,
    udp: HashMap<String, UdpSocket>,
    /// The sockets systemd passed, kept for the life of the process: an address dropped
    /// by one reload and written again by a later one (or written another way, `localhost`
    /// for `127.0.0.1`) finds its socket here, where a bind of our own would fail on the
    /// socket systemd still holds.
    passed_tcp: Vec<TcpListener>,
    passed_udp: Vec<UdpSocket>,
}

impl Sockets {
    /// An empty set.
    pub fn new() -> Sockets {
        Sockets::default()
    }

    /// Adopts a TCP socket passed by systemd (for `addr`, when it is in the file).
    pub fn adopt_tcp(&mut self, addr: Option<&str>, listener: TcpListener) {
        if let (Some(addr), Ok(copy)) = (addr, listener.try_clone()) {
            self.tcp.insert(addr.to_owned(), copy);
        }
        self.passed_tcp.push(listener);
    }

    /// Adopts a UDP socket passed by systemd (for `addr`, when it is in the file).
    pub fn adopt_udp(&mut self, addr: Option<&str>, socket: UdpSocket) {
        if let (Some(addr), Ok(copy)) = (addr, socket.try_clone()) {
            self.udp.insert(addr.to_owned(), copy);
        }
        self.passed_udp.push(socket);
    }

    /// A passed TCP socket bound to what `addr` resolves to, if any.
    async fn passed_tcp_for(&self, addr: &str) -> Option<TcpListener> {
        if self.passed_tcp.is_empty() {
            return None;
        }
        let wanted = crate::rt::resolve(addr).await.ok()?;
        let held = self
            .passed_tcp
            .iter()
            .find(|l| l.local_addr().is_ok_and(|a| wanted.contains(&a)))?;
        held.try_clone().ok()
    }

    /// [`Sockets::passed_tcp_for`] for UDP.
    async fn passed_udp_for(&self, addr: &str) -> Option<UdpSocket> {
        if self.passed_udp.is_empty() {
            return None;
        }
        let wanted = crate::rt::resolve(addr).await.ok()?;
        let held = self
            .passed_udp
            .iter()
            .find(|s| s.local_addr().is_ok_and(|a| wanted.contains(&a)))?;
        held.try_clone().ok()
    }

    /// Binds every address of `listen` not held yet. On an error nothing new is kept,
    /// and the error names the address.
    pub async fn bind(&mut self, listen: &[Owned<'_>]) -> Result<()> {
        let mut tcp = HashMap::new();
        let mut udp = HashMap::new();
        for (owner, l) in listen {
            for (i, addr) in l.tcp.iter().enumerate() {
                let k = key(owner, addr, i);
                if !self.tcp.contains_key(&k) && !tcp.contains_key(&k) {
                    let socket = match self.passed_tcp_for(addr).await {
                        Some(passed) => passed,
                        None => bind::bind_tcp(addr).await?,
                    };
                    tcp.insert(k, socket);
                }
            }
            for (i, addr) in l.udp.iter().enumerate() {
                let k = key(owner, addr, i);
                if !self.udp.contains_key(&k) && !udp.contains_key(&k) {
                    let socket = match self.passed_udp_for(addr).await {
                        Some(passed) => passed,
                        None => bind::bind_udp(addr).await?,
                    };
                    udp.insert(k, socket);
                }
            }
        }
        self.tcp.extend(tcp);
        self.udp.extend(udp);
        Ok(())
    }

    /// Duplicates of `owner`'s sockets for `listen`, in its order (bound by
    /// [`Sockets::bind`]).
    pub fn for_service(
        &self,
        owner: &str,
        listen: &Listen,
    ) -> io::Result<(Vec<TcpListener>, Vec<UdpSocket>)> {
        let missing = |addr: &str| io::Error::other(format!("{addr} is not bound"));
        let tcp = listen
            .tcp
            .iter()
            .enumerate()
            .map(|(i, a)| {
                self.tcp
                    .get(&key(owner, a, i))
                    .ok_or_else(|| missing(a))?
                    .try_clone()
            })
            .collect::<io::Result<_>>()?;
        let udp = listen
            .udp
            .iter()
            .enumerate()
            .map(|(i, a)| {
                self.udp
                    .get(&key(owner, a, i))
                    .ok_or_else(|| missing(a))?
                    .try_clone()
            })
            .collect::<io::Result<_>>()?;
        Ok((tcp, udp))
    }

    /// The addresses `owner`'s sockets for `listen` are bound to (the ports picked, for
    /// port 0): TCP, then UDP.
    pub fn local(&self, owner: &str, listen: &Listen) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let tcp = listen.tcp.iter().enumerate();
        let udp = listen.udp.iter().enumerate();
        (
            tcp.filter_map(|(i, a)| self.tcp.get(&key(owner, a, i))?.local_addr().ok())
                .collect(),
            udp.filter_map(|(i, a)| self.udp.get(&key(owner, a, i))?.local_addr().ok())
                .collect(),
        )
    }

    /// Lets go of every socket not in `listen` (generations that still have duplicates
    /// keep those open until they end).
    pub fn keep_only(&mut self, listen: &[Owned<'_>]) {
        let wanted = |tcp: bool| -> std::collections::HashSet<String> {
            listen
                .iter()
                .flat_map(|(owner, l)| {
                    let list = if tcp { &l.tcp } else { &l.udp };
                    list.iter().enumerate().map(|(i, a)| key(owner, a, i))
                })
                .collect()
        };
        let (tcp, udp) = (wanted(true), wanted(false));
        self.tcp.retain(|k, _| tcp.contains(k));
        self.udp.retain(|k, _| udp.contains(k));
    }
}
