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

use std::collections::{HashMap, HashSet};
use std::future::Future;
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

/// What the set does with a socket of either kind.
trait Bound: Sized {
    /// Another descriptor for the same socket.
    fn dup(&self) -> io::Result<Self>;
    /// The address it is bound to.
    fn local(&self) -> io::Result<SocketAddr>;
    /// Binds a new one on `addr`.
    fn bind(addr: &str) -> impl Future<Output = Result<Self>>;
}

impl Bound for TcpListener {
    fn dup(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn local(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
    fn bind(addr: &str) -> impl Future<Output = Result<Self>> {
        bind::bind_tcp(addr)
    }
}

impl Bound for UdpSocket {
    fn dup(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn local(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
    fn bind(addr: &str) -> impl Future<Output = Result<Self>> {
        bind::bind_udp(addr)
    }
}

/// The sockets of one transport.
struct Held<S> {
    by_key: HashMap<String, S>,
    /// The sockets systemd passed, kept for the life of the process: an address dropped
    /// by one reload and written again by a later one (or written another way, `localhost`
    /// for `127.0.0.1`) finds its socket here, where a bind of our own would fail on the
    /// socket systemd still holds.
    passed: Vec<S>,
}

impl<S> Default for Held<S> {
    fn default() -> Self {
        Held {
            by_key: HashMap::new(),
            passed: Vec::new(),
        }
    }
}

impl<S: Bound> Held<S> {
    /// Adopts a passed socket, for `addr` when the file names it.
    fn adopt(&mut self, addr: Option<&str>, socket: S) {
        if let (Some(addr), Ok(copy)) = (addr, socket.dup()) {
            self.by_key.insert(addr.to_owned(), copy);
        }
        self.passed.push(socket);
    }

    /// A passed socket bound to what `addr` resolves to, if any.
    async fn passed_for(&self, addr: &str) -> Option<S> {
        if self.passed.is_empty() {
            return None;
        }
        let wanted = crate::rt::resolve(addr).await.ok()?;
        let held = self
            .passed
            .iter()
            .find(|s| s.local().is_ok_and(|a| wanted.contains(&a)))?;
        held.dup().ok()
    }

    /// Binds (or finds among the passed ones) each of `owner`'s `addrs` not held yet,
    /// into `new`.
    async fn bind_into(
        &self,
        owner: &str,
        addrs: &[String],
        new: &mut HashMap<String, S>,
    ) -> Result<()> {
        for (i, addr) in addrs.iter().enumerate() {
            let k = key(owner, addr, i);
            if !self.by_key.contains_key(&k) && !new.contains_key(&k) {
                let socket = match self.passed_for(addr).await {
                    Some(passed) => passed,
                    None => S::bind(addr).await?,
                };
                new.insert(k, socket);
            }
        }
        Ok(())
    }

    /// Duplicates of `owner`'s sockets for `addrs`, in order.
    fn dups(&self, owner: &str, addrs: &[String]) -> io::Result<Vec<S>> {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let held = self.by_key.get(&key(owner, a, i));
                held.ok_or_else(|| io::Error::other(format!("{a} is not bound")))?
                    .dup()
            })
            .collect()
    }

    /// The addresses `owner`'s sockets for `addrs` are bound to.
    fn locals(&self, owner: &str, addrs: &[String]) -> Vec<SocketAddr> {
        let held = addrs.iter().enumerate();
        held.filter_map(|(i, a)| self.by_key.get(&key(owner, a, i))?.local().ok())
            .collect()
    }

    /// Lets go of every socket whose key is not in `wanted`.
    fn keep_only(&mut self, wanted: &HashSet<String>) {
        self.by_key.retain(|k, _| wanted.contains(k));
    }
}

/// The sockets, by address.
#[derive(Default)]
pub struct Sockets {
    tcp: Held<TcpListener>,
    udp: Held<UdpSocket>,
}

impl Sockets {
    /// An empty set.
    pub fn new() -> Sockets {
        Sockets::default()
    }

    /// Adopts a TCP socket passed by systemd (for `addr`, when it is in the file).
    pub fn adopt_tcp(&mut self, addr: Option<&str>, listener: TcpListener) {
        self.tcp.adopt(addr, listener);
    }

    /// Adopts a UDP socket passed by systemd (for `addr`, when it is in the file).
    pub fn adopt_udp(&mut self, addr: Option<&str>, socket: UdpSocket) {
        self.udp.adopt(addr, socket);
    }

    /// Binds every address of `listen` not held yet. On an error nothing new is kept,
    /// and the error names the address.
    pub async fn bind(&mut self, listen: &[Owned<'_>]) -> Result<()> {
        let (mut tcp, mut udp) = (HashMap::new(), HashMap::new());
        for (owner, l) in listen {
            self.tcp.bind_into(owner, &l.tcp, &mut tcp).await?;
            self.udp.bind_into(owner, &l.udp, &mut udp).await?;
        }
        self.tcp.by_key.extend(tcp);
        self.udp.by_key.extend(udp);
        Ok(())
    }

    /// Duplicates of `owner`'s sockets for `listen`, in its order (bound by
    /// [`Sockets::bind`]).
    pub fn for_service(
        &self,
        owner: &str,
        listen: &Listen,
    ) -> io::Result<(Vec<TcpListener>, Vec<UdpSocket>)> {
        Ok((
            self.tcp.dups(owner, &listen.tcp)?,
            self.udp.dups(owner, &listen.udp)?,
        ))
    }

    /// The addresses `owner`'s sockets for `listen` are bound to (the ports picked, for
    /// port 0): TCP, then UDP.
    pub fn local(&self, owner: &str, listen: &Listen) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        (
            self.tcp.locals(owner, &listen.tcp),
            self.udp.locals(owner, &listen.udp),
        )
    }

    /// Lets go of every socket not in `listen` (generations that still have duplicates
    /// keep those open until they end; sockets systemd passed are kept regardless).
    pub fn keep_only(&mut self, listen: &[Owned<'_>]) {
        let wanted = |pick: fn(&Listen) -> &Vec<String>| -> HashSet<String> {
            listen
                .iter()
                .flat_map(|(owner, l)| pick(l).iter().enumerate().map(|(i, a)| key(owner, a, i)))
                .collect()
        };
        self.tcp.keep_only(&wanted(|l| &l.tcp));
        self.udp.keep_only(&wanted(|l| &l.udp));
    }
}
