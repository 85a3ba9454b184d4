//! TLS passthrough routed by SNI (`--sni-route NAME=HOST:PORT`, `--sni-default`): the
//! proxy reads the client's ClientHello, picks the upstream by the server name in it,
//! and relays every byte untouched, the ClientHello first. It never holds a key and
//! never decrypts: the upstream does the handshake with the client (the job of sslh,
//! and of HAProxy's `req.ssl_sni`).
//!
//! ```text
//!   client ─ClientHello─▶ session: read_client_hello (within --proxy-header-timeout)
//!                           HelloParser finds its end and name (records joined,
//!                           any split; what the upstream decides is not judged)
//!                           SniRoutes::pick(name) ─▶ that route's Upstreams::connect
//!                           the hello's bytes are the upstream's first bytes, then
//!                           the same relay as plain TCP (splice, when on)
//! ```
//!
//! Names are matched without regard to case: an exact name first, then the longest
//! `*.domain` wildcard whose domain ends the name (`*.example.com` takes
//! `a.example.com` and `a.b.example.com`, not `example.com`), then `--sni-default`. A
//! name given more than once balances among its upstreams (`--balance`). A ClientHello
//! with no name, or a name no route takes, goes to the default or is closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::io::AsyncReadExt;

use super::upstreams::Upstreams;
use crate::Result;
use crate::net::stats::Stats;
use crate::net::stream::ReadHalf;
use crate::rt;

/// The most bytes read while looking for the end of a ClientHello: the largest
/// handshake message (64 KiB), split into records of their own headers.
pub const MAX_HELLO: usize = 64 * 1024 + 4 * 1024;

/// One `--sni-route` name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// `a.example.com`, lower case.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`, lower case.
    Wildcard(String),
}

impl Pattern {
    fn parse(name: &str) -> Result<Pattern> {
        let lower = name.to_ascii_lowercase();
        let (pattern, domain) = match lower.strip_prefix("*.") {
            Some(domain) => (Pattern::Wildcard(format!(".{domain}")), domain),
            None => (Pattern::Exact(lower.clone()), lower.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
            return Err(format!(
                "{name:?} is not a host name (a.example.com) or a wildcard (*.example.com)"
            )
            .into());
        }
        Ok(pattern)
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact,
            Pattern::Wildcard(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        }
    }

    /// Which of two matching patterns wins: exact names, then longer domains.
    fn rank(&self) -> (bool, usize) {
        match self {
            Pattern::Exact(name) => (true, name.len()),
            Pattern::Wildcard(suffix) => (false, suffix.len()),
        }
    }
}

/// `--sni-route NAME=HOST:PORT`, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniRoute {
    pub name: String,
    pub upstream: String,
}

/// Parses `NAME=HOST:PORT` (clap's value parser for `--sni-route`).
pub fn parse_route(text: &str) -> std::result::Result<SniRoute, String> {
    let (name, upstream) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=HOST:PORT"))?;
    Pattern::parse(name).map_err(|e| e.to_string())?;
    if upstream
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!(
            "{text:?}: the upstream {upstream:?} is not HOST:PORT"
        ));
    }
    Ok(SniRoute {
        name: name.to_owned(),
        upstream: upstream.to_owned(),
    })
}

/// Every route of a proxy: a table of upstreams per name, and the default's.
pub struct SniRoutes {
    /// Each name's table, in the order first given.
    routes: Vec<(Pattern, Arc<Upstreams>)>,
    default: Option<Arc<Upstreams>>,
    /// How long a client has to send its whole ClientHello.
    pub hello_timeout: Duration,
}

impl SniRoutes {
    /// The routes, each name's upstreams a [`Upstreams::sibling`] of `like` (its
    /// balance, back-off and descriptor waiters).
    pub fn new(
        routes: &[SniRoute],
        default: Option<&str>,
        like: &Upstreams,
        hello_timeout: Duration,
    ) -> Result<SniRoutes> {
        let mut grouped: Vec<(Pattern, Vec<String>)> = Vec::new();
        for route in routes {
            let pattern = Pattern::parse(&route.name)?;
            match grouped.iter_mut().find(|(p, _)| *p == pattern) {
                Some((_, targets)) => targets.push(route.upstream.clone()),
                None => grouped.push((pattern, vec![route.upstream.clone()])),
            }
        }
        Ok(SniRoutes {
            routes: grouped
                .into_iter()
                .map(|(pattern, targets)| (pattern, like.sibling(targets)))
                .collect(),
            default: default.map(|d| like.sibling(vec![d.to_owned()])),
            hello_timeout: hello_timeout.max(Duration::from_millis(1)),
        })
    }

    /// The table for a ClientHello's server name (`None`: it sent none): the best
    /// route, else the default, else `None` (the client is closed).
    pub fn pick(&self, name: Option<&str>) -> Option<&Arc<Upstreams>> {
        let routed = name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.routes
                .iter()
                .filter(|(pattern, _)| pattern.matches(&name))
                .max_by_key(|(pattern, _)| pattern.rank())
                .map(|(_, table)| table)
        });
        routed.or(self.default.as_ref())
    }

    /// Every table, the default's last.
    pub fn tables(&self) -> impl Iterator<Item = &Arc<Upstreams>> {
        self.routes.iter().map(|(_, t)| t).chain(&self.default)
    }
}

/// A ClientHello as read: the server name it asks for, and every byte read (the hello
/// and anything after it), to be relayed first.
pub struct Hello {
    pub sni: Option<String>,
    pub bytes: Vec<u8>,
}

/// The most bytes of one TLS record's payload (RFC 8446 5.1: 2^14).
const MAX_RECORD: usize = 1 << 14;

/// The largest ClientHello body taken (rustls's limit for any handshake message).
const MAX_MESSAGE: usize = 0xffff;

/// Finds the end of a ClientHello and the server name in it, as its bytes come: the
/// records at the front are joined (any segmentation, a hello over many records) into
/// the handshake message, and the message is parsed once it is whole.
///
/// It reads only what routing needs, and judges nothing an upstream would decide: a TLS
/// 1.0 hello, one without `signature_algorithms` or with a compression method besides
/// null goes through for the upstream to take or refuse (rustls's `Acceptor`, a
/// server's parser, refused those itself). What it does refuse is what cannot be routed
/// by: not a handshake record, another message than a ClientHello, a malformed one, two
/// `server_name` extensions or host names, or a name that is not a host name. An IP
/// address as the name (which RFC 6066 forbids and some clients send) counts as no name.
#[derive(Default)]
struct HelloParser {
    /// How far the records read so far go.
    at: usize,
    /// The handshake bytes of those records.
    message: Vec<u8>,
}

impl HelloParser {
    /// With `bytes` everything read so far (what an earlier call saw, then more): `None`
    /// while the hello is not whole, then its server name.
    fn feed(&mut self, bytes: &[u8]) -> std::result::Result<Option<Option<String>>, String> {
        while let Some(header) = bytes.get(self.at..self.at + 5) {
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            match header[0] {
                0x16 => {}
                0x15 => return Err("an alert before the ClientHello ended".into()),
                other => {
                    return Err(format!(
                        "a record of type {other:#04x} before the ClientHello ended"
                    ));
                }
            }
            if header[1] != 0x03 {
                return Err(format!(
                    "not a TLS record (version {}.{})",
                    header[1], header[2]
                ));
            }
            if len == 0 || len > MAX_RECORD {
                return Err(format!("a handshake record of {len} bytes"));
            }
            let Some(fragment) = bytes.get(self.at + 5..self.at + 5 + len) else {
                return Ok(None);
            };
            self.message.extend_from_slice(fragment);
            self.at += 5 + len;
            if let [kind, a, b, c, ..] = self.message[..] {
                if kind != 0x01 {
                    return Err(format!(
                        "a handshake message of type {kind}, not a ClientHello"
                    ));
                }
                let body = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if body > MAX_MESSAGE {
                    return Err(format!("a ClientHello of {body} bytes"));
                }
                if self.message.len() >= body + 4 {
                    return server_name(&self.message[4..body + 4]).map(Some);
                }
            }
        }
        Ok(None)
    }
}

/// Reads a ClientHello's fields in turn.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("the ClientHello ends inside its {what}"));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self, what: &str) -> std::result::Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> std::result::Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self, what: &str) -> std::result::Result<&'a [u8], String> {
        let n = self.u8(what)?;
        self.take(n.into(), what)
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self, what: &str) -> std::result::Result<&'a [u8], String> {
        let n = self.u16(what)?;
        self.take(n.into(), what)
    }
}

/// The server name of a ClientHello's body (after the type and length).
fn server_name(body: &[u8]) -> std::result::Result<Option<String>, String> {
    let mut hello = Fields(body);
    hello.take(2 + 32, "version and random")?;
    if hello.vec8("session id")?.len() > 32 {
        return Err("a session id longer than 32 bytes".into());
    }
    let suites = hello.vec16("cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("no cipher suites".into());
    }
    if hello.vec8("compression methods")?.is_empty() {
        return Err("no compression methods".into());
    }
    if hello.0.is_empty() {
        return Ok(None); // no extensions at all (SSL 3.0, early TLS clients)
    }
    let mut extensions = Fields(hello.vec16("extensions")?);
    if !hello.0.is_empty() {
        return Err("bytes after the ClientHello's extensions".into());
    }
    let mut name = None;
    let mut seen = false;
    while !extensions.0.is_empty() {
        let kind = extensions.u16("extensions")?;
        let data = extensions.vec16("extensions")?;
        if kind != 0 {
            continue;
        }
        if std::mem::replace(&mut seen, true) {
            return Err("two server_name extensions".into());
        }
        let mut data = Fields(data);
        let mut list = Fields(data.vec16("server_name")?);
        if !data.0.is_empty() || list.0.is_empty() {
            return Err("a malformed server_name extension".into());
        }
        let mut host = None;
        while !list.0.is_empty() {
            let kind = list.u8("server_name")?;
            let value = list.vec16("server_name")?;
            if kind == 0 && host.replace(value).is_some() {
                return Err("two host names in server_name".into());
            }
        }
        name = match host {
            Some(host) => host_name(host)?,
            None => None,
        };
    }
    Ok(name)
}

/// A `host_name` as routes match it (lower case), judged as rustls judges one: an IP
/// address is no name at all; anything else must be a DNS name.
fn host_name(raw: &[u8]) -> std::result::Result<Option<String>, String> {
    let text = std::str::from_utf8(raw)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            format!(
                "the server name {:?} is not a host name",
                raw.escape_ascii().to_string()
            )
        })?;
    if text.parse::<std::net::IpAddr>().is_ok() {
        return Ok(None);
    }
    match rustls_pki_types::DnsName::try_from(text) {
        Ok(_) => Ok(Some(text.to_ascii_lowercase())),
        Err(_) => Err(format!("the server name {text:?} is not a host name")),
    }
}

/// Reads from `reader` until `early` plus what follows holds a whole ClientHello,
/// within `limit`. An error is a phrase for the log: not TLS, a malformed hello, one
/// larger than [`MAX_HELLO`], a client that closed or stalled.
pub async fn read_client_hello(
    reader: &mut ReadHalf,
    early: Vec<u8>,
    limit: Duration,
    stats: &Stats,
) -> std::result::Result<Hello, String> {
    let deadline = Instant::now() + limit;
    let mut parser = HelloParser::default();
    let mut bytes = early;
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(&first) = bytes.first()
            && first != 0x16
        {
            return Err(format!(
                "not a TLS ClientHello (first byte {first:#04x}): plain text on a TLS port?"
            ));
        }
        match parser.feed(&bytes) {
            Ok(Some(sni)) => return Ok(Hello { sni, bytes }),
            Ok(None) => {}
            Err(e) => return Err(format!("not a valid ClientHello: {e}")),
        }
        if bytes.len() >= MAX_HELLO {
            return Err(format!(
                "no whole ClientHello in the first {} bytes",
                bytes.len()
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let room = (MAX_HELLO - bytes.len()).min(chunk.len());
        match rt::timeout(left, reader.read(&mut chunk[..room])).await {
            Some(Ok(0)) => {
                return Err(format!(
                    "client closed {} bytes into its ClientHello",
                    bytes.len()
                ));
            }
            Some(Ok(n)) => {
                Stats::add(&stats.bytes_in, n as u64);
                bytes.extend_from_slice(&chunk[..n]);
            }
            Some(Err(e)) => return Err(format!("reading the ClientHello: {e}")),
            None => {
                return Err(format!(
                    "no whole ClientHello within {limit:?} ({} bytes came)",
                    bytes.len()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::proxy::upstreams::Balance;

    fn routes(given: &[&str], default: Option<&str>) -> SniRoutes {
        let given: Vec<SniRoute> = given.iter().map(|r| parse_route(r).unwrap()).collect();
        let like = Upstreams::new(vec![], Balance::First, Duration::from_secs(1));
        SniRoutes::new(&given, default, &like, Duration::from_secs(1)).unwrap()
    }

    fn picked(routes: &SniRoutes, name: Option<&str>) -> Option<Vec<String>> {
        routes
            .pick(name)
            .map(|t| t.targets().map(str::to_owned).collect())
    }

    #[test]
    fn exact_names_beat_wildcards_and_longer_wildcards_beat_shorter() {
        let r = routes(
            &[
                "*.example.com=wild:1",
                "a.example.com=exact:1",
                "*.b.example.com=deeper:1",
                "a.example.com=exact:2",
            ],
            Some("default:1"),
        );
        let names = |n| picked(&r, Some(n));
        assert_eq!(
            names("A.Example.COM"),
            Some(vec!["exact:1".into(), "exact:2".into()])
        );
        assert_eq!(names("x.example.com"), Some(vec!["wild:1".into()]));
        assert_eq!(names("x.y.example.com"), Some(vec!["wild:1".into()]));
        assert_eq!(names("x.b.example.com"), Some(vec!["deeper:1".into()]));
        assert_eq!(
            names("a.example.com."),
            Some(vec!["exact:1".into(), "exact:2".into()])
        );
        // The wildcard's domain itself, and other names: the default.
        assert_eq!(names("example.com"), Some(vec!["default:1".into()]));
        assert_eq!(names("notexample.com"), Some(vec!["default:1".into()]));
        assert_eq!(picked(&r, None), Some(vec!["default:1".into()]));
        let strict = routes(&["a.example.com=exact:1"], None);
        assert_eq!(picked(&strict, Some("b.example.com")), None);
        assert_eq!(picked(&strict, None), None);
    }

    /// A ClientHello as rustls sends one, for `name`.
    fn rustls_hello(name: &str) -> Vec<u8> {
        let cfg = crate::net::tls::client_config(&crate::net::tls::Verify::Insecure).unwrap();
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = futures_rustls::rustls::ClientConnection::new(cfg, name).unwrap();
        let mut hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut hello).unwrap();
        }
        hello
    }

    /// A ClientHello with `extensions` (each `(type, data)`), of `version`, in records
    /// of at most `record` bytes.
    fn hello_with(version: [u8; 2], extensions: &[(u16, Vec<u8>)], record: usize) -> Vec<u8> {
        let mut body = version.to_vec();
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x00, 0x2f, 1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        if !extensions.is_empty() {
            body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            body.extend_from_slice(&ext);
        }
        let mut message = vec![1];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        let mut records = Vec::new();
        for fragment in message.chunks(record) {
            records.extend_from_slice(&[0x16, 0x03, 0x01]);
            records.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            records.extend_from_slice(fragment);
        }
        records
    }

    /// A `server_name` extension's data naming each of `names` (type `host_name`).
    fn names(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for name in names {
            list.push(0);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        data
    }

    /// What a parser fed `bytes` one byte more at a time makes of them, and how many
    /// bytes it needed.
    fn parsed_bytewise(bytes: &[u8]) -> (std::result::Result<Option<String>, String>, usize) {
        let mut parser = HelloParser::default();
        for end in 0..=bytes.len() {
            match parser.feed(&bytes[..end]) {
                Ok(None) => {}
                Ok(Some(name)) => return (Ok(name), end),
                Err(e) => return (Err(e), end),
            }
        }
        (Err("never whole".into()), bytes.len())
    }

    #[test]
    fn a_hello_is_whole_at_its_last_byte_however_it_comes() {
        let mut hello = rustls_hello("A.Example.COM");
        let len = hello.len();
        hello.extend_from_slice(b"\x17\x03\x03\x00\x05early");
        assert_eq!(
            parsed_bytewise(&hello),
            (Ok(Some("a.example.com".into())), len)
        );
        // Across records of every small size.
        for record in [1, 2, 3, 5, 100] {
            let sni = (0u16, names(&[b"a.example.com"]));
            let split = hello_with([3, 3], &[sni], record);
            assert_eq!(
                parsed_bytewise(&split),
                (Ok(Some("a.example.com".into())), split.len()),
                "records of {record} bytes"
            );
        }
    }

    #[test]
    fn what_the_upstream_decides_is_not_judged_here() {
        // TLS 1.0, no signature_algorithms; compression offered; no extensions at all.
        let old = hello_with([3, 1], &[(0, names(&[b"old.example.com"]))], 1 << 14);
        assert_eq!(parsed_bytewise(&old).0, Ok(Some("old.example.com".into())));
        assert_eq!(
            parsed_bytewise(&hello_with([3, 0], &[], 1 << 14)).0,
            Ok(None)
        );
        // An IP address as the name is no name (rustls's reading too).
        let ip = hello_with([3, 3], &[(0, names(&[b"127.0.0.1"]))], 1 << 14);
        assert_eq!(parsed_bytewise(&ip).0, Ok(None));
    }

    #[test]
    fn what_cannot_be_routed_by_is_refused() {
        let sni = |n: &[&[u8]]| (0u16, names(n));
        for (what, bad) in [
            (
                "two host names",
                hello_with([3, 3], &[sni(&[b"a.test", b"b.test"])], 1 << 14),
            ),
            (
                "two extensions",
                hello_with([3, 3], &[sni(&[b"a.test"]), sni(&[b"b.test"])], 1 << 14),
            ),
            ("empty name", hello_with([3, 3], &[sni(&[b""])], 1 << 14)),
            ("empty list", hello_with([3, 3], &[sni(&[])], 1 << 14)),
            (
                "non-ASCII",
                hello_with([3, 3], &[sni(&["\u{e4}.test".as_bytes()])], 1 << 14),
            ),
            (
                "a space",
                hello_with([3, 3], &[sni(&[b"a b.test"])], 1 << 14),
            ),
            ("not a hello", vec![0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            ("an empty record", vec![0x16, 3, 1, 0, 0]),
            (
                "an alert",
                vec![0x16, 3, 1, 0, 1, 1, 0x15, 3, 3, 0, 2, 2, 40],
            ),
            ("too large", vec![0x16, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]),
            ("truncated inside", {
                let mut h = hello_with([3, 3], &[sni(&[b"a.test"])], 1 << 14);
                // The message and record say 3 bytes fewer than the extensions need.
                h[4] -= 3;
                h[8] -= 3;
                h.truncate(h.len() - 3);
                h
            }),
        ] {
            assert!(parsed_bytewise(&bad).0.is_err(), "{what} was taken");
        }
    }

    #[test]
    fn routes_are_checked_as_given() {
        assert!(parse_route("a.example.com=127.0.0.1:443").is_ok());
        assert!(parse_route("*.example.com=[::1]:443").is_ok());
        for bad in [
            "a.example.com",
            "=h:1",
            "a..b=h:1",
            "*.=h:1",
            "a.*.b=h:1",
            "a b=h:1",
            "a=h",
            "a=:1",
            "a=h:99999",
        ] {
            assert!(parse_route(bad).is_err(), "{bad} was taken");
        }
    }
}
