//! TLS passthrough routed by SNI (`--sni-route NAME=HOST:PORT`, `--sni-default`): the
//! proxy reads the client's ClientHello, picks the upstream by the server name in it,
//! and relays every byte untouched, the ClientHello first. It never holds a key and
//! never decrypts: the upstream does the handshake with the client (the job of sslh,
//! and of HAProxy's `req.ssl_sni`).
//!
//! ```text
//!   client ─ClientHello─▶ session: read_client_hello (within --proxy-header-timeout)
//!                           rustls's Acceptor parses it (records joined, any split)
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
use futures_rustls::rustls::server::Acceptor;

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
    let mut acceptor = Acceptor::default();
    let mut bytes = early;
    let mut fed = 0;
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(&first) = bytes.first()
            && first != 0x16
        {
            return Err(format!(
                "not a TLS ClientHello (first byte {first:#04x}): plain text on a TLS port?"
            ));
        }
        // The parser takes at most 4 KiB a call, and holds more than one record only
        // once it has seen a handshake message span records: so feed, parse, feed.
        while fed < bytes.len() {
            let n = acceptor
                .read_tls(&mut &bytes[fed..])
                .map_err(|e| format!("not a ClientHello: {e}"))?;
            fed += n;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni = accepted.client_hello().server_name().map(str::to_owned);
                    return Ok(Hello { sni, bytes });
                }
                Ok(None) if n > 0 => {}
                Ok(None) => break,
                Err((e, _alert)) => return Err(format!("not a valid ClientHello: {e}")),
            }
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
