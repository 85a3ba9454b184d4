//! HAProxy's PROXY protocol (versions 1 and 2): the header a proxy sends first so the
//! server sees the real client address. Pure functions: encode for `--send-proxy`,
//! parse for `--accept-proxy` (never trusted unless the user asks for it).
//!
//! v1 is one text line: `PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n` (at most 107
//! bytes). v2 is binary: a 12-byte signature, version/command, family/protocol, a length,
//! then the addresses.

use std::net::{IpAddr, SocketAddr};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 header, CRLF included (from the specification).
pub const V1_MAX: usize = 107;

/// The longest v2 header we accept (signature + fixed part + up to 2 KiB of addresses
/// and TLVs; real headers are a few dozen bytes).
pub const V2_MAX: usize = 16 + 2048;

/// Which version to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    /// The text header (`PROXY TCP4 ...`).
    V1,
    /// The binary header.
    V2,
}

/// Encodes a header saying that `src` connected to `dst`.
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        Version::V1 => match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes(),
            (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes(),
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21); // version 2, command PROXY
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    out.push(0x11); // AF_INET, STREAM
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    out.push(0x21); // AF_INET6, STREAM
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                _ => {
                    out.push(0x00); // AF_UNSPEC
                    out.extend_from_slice(&0u16.to_be_bytes());
                }
            }
            out
        }
    }
}

/// Mixed families (an IPv4 client on an IPv6 listener) are written as IPv6, as HAProxy does.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let to_v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (to_v6(src), to_v6(dst))
    }
}

/// What a parsed header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The original client and the address it connected to; `None` for `UNKNOWN`/`LOCAL`
    /// (a health check from the balancer itself: use the connection's own addresses).
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// Bytes the header took; what follows is the client's data.
    pub len: usize,
}

/// Why a header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// More bytes are needed.
    Incomplete,
    /// Not a PROXY header, or a malformed one.
    Invalid(&'static str),
}

/// Parses a v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Header, ParseError> {
    if buf.len() < V2_SIGNATURE.len() {
        // Could still be either version: check what we have so far.
        if !(V2_SIGNATURE.starts_with(buf) || b"PROXY ".starts_with(&buf[..buf.len().min(6)])) {
            return Err(ParseError::Invalid("not a PROXY protocol header"));
        }
        return Err(ParseError::Incomplete);
    }
    if buf.starts_with(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(ParseError::Invalid("not a PROXY protocol header"))
    }
}

fn parse_v1(buf: &[u8]) -> Result<Header, ParseError> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ParseError::Invalid("v1 header longer than 107 bytes"))
        } else {
            Err(ParseError::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ParseError::Invalid("v1 header is not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Header { addrs: None, len }),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| {
                s.parse::<IpAddr>()
                    .map_err(|_| ParseError::Invalid("bad address in v1 header"))
            };
            let port = |s: &str| {
                // The specification forbids leading zeros and signs.
                if s.is_empty()
                    || (s.len() > 1 && s.starts_with('0'))
                    || !s.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(ParseError::Invalid("bad port in v1 header"));
                }
                s.parse::<u16>()
                    .map_err(|_| ParseError::Invalid("bad port in v1 header"))
            };
            let (src, dst) = (ip(src)?, ip(dst)?);
            let v4 = *family == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(ParseError::Invalid(
                    "address family does not match TCP4/TCP6",
                ));
            }
            Ok(Header {
                addrs: Some((
                    SocketAddr::new(src, port(sport)?),
                    SocketAddr::new(dst, port(dport)?),
                )),
                len,
            })
        }
        _ => Err(ParseError::Invalid("malformed v1 header")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Header, ParseError> {
    if buf.len() < 16 {
        return Err(ParseError::Incomplete);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let addr_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ParseError::Invalid("unsupported v2 version"));
    }
    if 16 + addr_len > V2_MAX {
        return Err(ParseError::Invalid("v2 header too long"));
    }
    if buf.len() < 16 + addr_len {
        return Err(ParseError::Incomplete);
    }
    let len = 16 + addr_len;
    let body = &buf[16..len];
    match ver_cmd & 0x0F {
        0x0 => return Ok(Header { addrs: None, len }), // LOCAL: the balancer's own check
        0x1 => {}
        _ => return Err(ParseError::Invalid("unsupported v2 command")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match fam {
        0x11 if body.len() >= 12 => {
            let src = IpAddr::from(<[u8; 4]>::try_from(&body[0..4]).unwrap());
            let dst = IpAddr::from(<[u8; 4]>::try_from(&body[4..8]).unwrap());
            Ok(Header {
                addrs: Some((
                    SocketAddr::new(src, port(&body[8..])),
                    SocketAddr::new(dst, port(&body[10..])),
                )),
                len,
            })
        }
        0x21 if body.len() >= 36 => {
            let src = IpAddr::from(<[u8; 16]>::try_from(&body[0..16]).unwrap());
            let dst = IpAddr::from(<[u8; 16]>::try_from(&body[16..32]).unwrap());
            Ok(Header {
                addrs: Some((
                    SocketAddr::new(src, port(&body[32..])),
                    SocketAddr::new(dst, port(&body[34..])),
                )),
                len,
            })
        }
        0x11 | 0x21 => Err(ParseError::Invalid("v2 address block too short")),
        0x00 => Ok(Header { addrs: None, len }), // UNSPEC
        _ => Err(ParseError::Invalid("unsupported v2 address family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_matches_the_specification_examples() {
        // Section 2.1 of the specification.
        let h = encode(Version::V1, sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
        assert_eq!(h, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        let h6 = encode(
            Version::V1,
            sa("[2001:db8::1]:1234"),
            sa("[2001:db8::2]:80"),
        );
        assert_eq!(h6, b"PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n");
        let mut with_data = h.clone();
        with_data.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&with_data),
            Ok(Header {
                addrs: Some((sa("192.168.0.1:56324"), sa("192.168.0.11:443"))),
                len: h.len()
            })
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Header {
                addrs: None,
                len: 15
            })
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
                .unwrap()
                .addrs,
            None
        );
    }

    #[test]
    fn v2_matches_the_specification_layout() {
        let h = encode(Version::V2, sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[
            0x21, 0x11, 0x00, 0x0C, 192, 168, 0, 1, 192, 168, 0, 11, 0xDC, 0x04, 0x01, 0xBB,
        ]);
        assert_eq!(h, expected);
        assert_eq!(
            parse(&h),
            Ok(Header {
                addrs: Some((sa("192.168.0.1:56324"), sa("192.168.0.11:443"))),
                len: 28
            })
        );
        let h6 = encode(Version::V2, sa("[2001:db8::1]:1234"), sa("[::1]:80"));
        assert_eq!((h6[13], h6.len()), (0x21, 16 + 36));
        assert_eq!(
            parse(&h6).unwrap().addrs,
            Some((sa("[2001:db8::1]:1234"), sa("[::1]:80")))
        );
        // LOCAL (a health check) carries no addresses.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local),
            Ok(Header {
                addrs: None,
                len: 16
            })
        );
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let h = encode(Version::V1, sa("10.0.0.1:5"), sa("[::1]:80"));
        assert_eq!(h, b"PROXY TCP6 ::ffff:10.0.0.1 ::1 5 80\r\n");
    }

    #[test]
    fn garbage_and_partial_headers() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ParseError::Invalid("not a PROXY protocol header"))
        );
        assert_eq!(
            parse(b"GE"),
            Err(ParseError::Invalid("not a PROXY protocol header"))
        );
        assert_eq!(parse(b"PROX"), Err(ParseError::Incomplete));
        assert_eq!(parse(b"\r\n\r\n\0"), Err(ParseError::Incomplete));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2"),
            Err(ParseError::Incomplete)
        );
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n"),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(ParseError::Invalid(_))
        ));
        assert!(matches!(
            parse(&[b"PROXY ".as_slice(), &[b'x'; 120]].concat()),
            Err(ParseError::Invalid(_))
        ));
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x11, 0x11, 0, 12]);
        assert!(matches!(parse(&bad_version), Err(ParseError::Invalid(_))));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 12, 1, 2, 3]);
        assert_eq!(parse(&short), Err(ParseError::Incomplete));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(parse(&huge), Err(ParseError::Invalid(_))));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn round_trips(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), p in any::<u16>(), q in any::<u16>(), v2 in any::<bool>()) {
            let (src, dst) = (SocketAddr::from((a, p)), SocketAddr::from((b, q)));
            let h = encode(if v2 { Version::V2 } else { Version::V1 }, src, dst);
            prop_assert_eq!(parse(&h), Ok(Header { addrs: Some((src, dst)), len: h.len() }));
        }
    }
}
