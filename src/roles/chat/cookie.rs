//! Stateless cookies for UDP address validation, as QUIC's Retry token and DTLS's
//! HelloVerifyRequest cookie do it: a UDP source is only an address, and anyone can put
//! any address on a datagram. Before an address may join, it must show that it receives
//! what is sent to it: the server answers an unknown address with
//! `* to join, send: /hello TOKEN`, and the address joins when a datagram from it carries
//! that token. Nothing is stored for the address meanwhile: the token is a keyed hash of
//! the address and the current time window, so the server recomputes it to check it.
//!
//! The hash is SipHash-2-4 (the `siphasher` crate, with an explicit 128-bit key) — a
//! pseudorandom function designed as a MAC for short inputs — keyed with 16 random bytes
//! drawn from the kernel at start (`getrandom(2)`, else `/dev/urandom`). A token is its
//! 64-bit output as 16 hex digits: guessing one for an address one cannot receive at
//! takes 2^64 tries on average, against a join limit of tens a second. A token is
//! accepted in its own window and the next one, so it lives between one and two
//! [`WINDOW`]s. Pure but for [`random_key`]; try it: `nc -u 127.0.0.1 7000`, type `hi`.

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use siphasher::sip::SipHasher24;

/// How long a time window lasts. A token is good for this long at least (a user copies
/// it by hand), and for twice this at most.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Issues and checks tokens with one key.
pub struct Cookies {
    key: [u8; 16],
    /// Windows are counted from here (a monotonic clock: no wall-clock jumps).
    start: Instant,
}

impl Cookies {
    /// Cookies with a fresh random key.
    pub fn new() -> Self {
        Cookies::with_key(random_key(), Instant::now())
    }

    /// Cookies with the given key, windows counted from `start` (for tests).
    pub fn with_key(key: [u8; 16], start: Instant) -> Self {
        Cookies { key, start }
    }

    fn window(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / WINDOW.as_secs()
    }

    /// The token `peer` must send back, as of `now`.
    pub fn token(&self, peer: SocketAddr, now: Instant) -> String {
        token_for(&self.key, peer, self.window(now))
    }

    /// Whether `token` is `peer`'s, from this window or the one before (hex digits in
    /// either case).
    pub fn check(&self, peer: SocketAddr, token: &str, now: Instant) -> bool {
        let window = self.window(now);
        let token = token.to_ascii_lowercase();
        same(&token, &token_for(&self.key, peer, window))
            | (window > 0 && same(&token, &token_for(&self.key, peer, window - 1)))
    }
}

impl Default for Cookies {
    fn default() -> Self {
        Cookies::new()
    }
}

/// The token for `peer` in time window `window`: 16 lowercase hex digits.
pub fn token_for(key: &[u8; 16], peer: SocketAddr, window: u64) -> String {
    let mut h = SipHasher24::new_with_key(key);
    match peer.ip() {
        IpAddr::V4(ip) => {
            h.write_u8(4);
            h.write(&ip.octets());
        }
        IpAddr::V6(ip) => {
            h.write_u8(6);
            h.write(&ip.octets());
        }
    }
    h.write(&peer.port().to_be_bytes());
    h.write(&window.to_le_bytes());
    format!("{:016x}", h.finish())
}

/// Compares without stopping at the first difference, so the time taken tells nothing
/// about how much of a guess was right.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// 16 random bytes from the kernel: `getrandom(2)`, else `/dev/urandom`.
///
/// # Panics
/// If neither gives them (a Linux older than 3.17 without /dev): without a secret key
/// the cookies would protect nothing, so the server must not start.
pub fn random_key() -> [u8; 16] {
    let mut key = [0u8; 16];
    let mut filled = 0;
    while filled < key.len() {
        use rustix::rand::{GetRandomFlags, getrandom};
        match getrandom(&mut key[filled..], GetRandomFlags::empty()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    if filled < key.len() {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .expect("no randomness for the UDP cookie key (getrandom and /dev/urandom failed)");
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_token_is_good_for_its_address_in_this_window_and_the_next() {
        let start = Instant::now();
        let jar = Cookies::with_key([7; 16], start);
        let peer = addr("192.0.2.1:5000");
        let token = jar.token(peer, start);
        assert_eq!(token.len(), 16);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(jar.check(peer, &token, start));
        assert!(jar.check(peer, &token.to_ascii_uppercase(), start));
        assert!(jar.check(peer, &token, start + WINDOW));
        assert!(jar.check(peer, &token, start + WINDOW * 2 - Duration::from_secs(1)));
        assert!(!jar.check(peer, &token, start + WINDOW * 2));
        // Another port, another address, another key: another token.
        assert!(!jar.check(addr("192.0.2.1:5001"), &token, start));
        assert!(!jar.check(addr("192.0.2.2:5000"), &token, start));
        assert!(!jar.check(addr("[::ffff:192.0.2.1]:5000"), &token, start));
        let other = Cookies::with_key([8; 16], start);
        assert!(!other.check(peer, &token, start));
        assert!(!jar.check(peer, "", start));
        assert!(!jar.check(peer, &token[..15], start));
    }

    #[test]
    fn keys_are_random() {
        assert_ne!(random_key(), random_key());
    }

    proptest! {
        #[test]
        fn only_the_right_token_passes(key in any::<[u8; 16]>(), ip in any::<u32>(), port in any::<u16>(), guess in "[0-9a-f]{16}") {
            let start = Instant::now();
            let jar = Cookies::with_key(key, start);
            let peer = SocketAddr::from((std::net::Ipv4Addr::from(ip), port));
            let token = jar.token(peer, start);
            prop_assert!(jar.check(peer, &token, start));
            prop_assert_eq!(jar.check(peer, &guess, start), guess == token);
        }
    }
}
