//! HTTP/1.x request heads, parsed with `httparse`, and request targets turned into safe
//! paths under the root. Pure functions, tested on their own.

use std::path::{Component, Path, PathBuf};

/// The longest request line accepted (longer: 414).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The largest head accepted, request line and headers (larger: 431).
pub const MAX_HEAD: usize = 64 * 1024;

/// The most header fields accepted (more: 431).
pub const MAX_HEADERS: usize = 100;

/// How many empty lines before a request line are ignored (RFC 9112 2.2 asks for at
/// least one, which clients send after a body; more than a few is a client sending
/// nothing else, refused with 400).
pub const MAX_EMPTY_LINES: usize = 4;

/// One parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header names lower-cased, values as sent (trimmed).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head, blank line included.
    pub head_len: usize,
    /// The body length its one well-formed `Content-Length` announces (0 when it has
    /// none). Any other body framing is refused by [`parse_head`] itself.
    pub body_len: u64,
}

impl Request {
    /// The first value of header `name` (lower-case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The value of header `name` (lower-case) when the request has exactly one; `None`
    /// when it has none, several (a singleton field sent twice is ignored, never read as
    /// its first copy), or one that is not text.
    pub fn single_header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => std::str::from_utf8(v).ok(),
            _ => None,
        }
    }

    /// How many times header `name` (lower-case) was sent.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    /// Every value of header `name` (lower-case) that is text, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The comma-separated members of every copy of list header `name`, trimmed, empty
    /// ones skipped (RFC 9110 5.3: several copies of a list field are one list).
    pub fn list_members<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.header_values(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// Whether the connection stays open after this request: a `close` in any
    /// `Connection` header closes it; otherwise HTTP/1.1 stays open, and HTTP/1.0 only
    /// with a `keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let mut keep_alive = false;
        for token in self.list_members("connection") {
            if token.eq_ignore_ascii_case("close") {
                return false;
            }
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
        keep_alive || self.minor >= 1
    }

    /// The one `Host` this request names, if it names exactly one (RFC 9112 3.2: a
    /// request with two, or with a list, is refused, since proxies could pick different
    /// ones). `Err` for two or a list; `Ok(None)` for none.
    pub fn host(&self) -> Result<Option<&str>, &'static str> {
        match self.header_count("host") {
            0 => Ok(None),
            1 => match self.single_header("host") {
                Some(h) if h.contains(',') => Err("a list in Host"),
                Some(h) => Ok(Some(h)),
                None => Err("a Host that is not text"),
            },
            _ => Err("more than one Host"),
        }
    }
}

/// Collects a connection's input and decides when it is worth parsing, so that a head
/// that arrives in many small pieces is parsed a few times, not once per read (which
/// cost time quadratic in its length: every parse starts from the beginning).
///
/// A head is parsed when it first has bytes (so garbage is refused at once), when its
/// request line has ended, when a possible end of head (`\n\n` or `\n\r\n`) arrives
/// beyond what was already looked at, and when it outgrows a limit (so [`parse_head`]
/// refuses it). Empty lines before a request line are dropped (RFC 9112 2.2; at most
/// [`MAX_EMPTY_LINES`], and a `\r` there must be followed by `\n`), so the first blank
/// line seen is always the end of the head; nothing waits before the size limits.
#[derive(Debug, Default)]
pub struct HeadBuffer {
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already looked at for the end of the head.
    scanned: usize,
    /// The head now in `buf` has been parsed at least once.
    looked: bool,
    /// Its request line has ended (a `\n` has been seen).
    line_seen: bool,
    /// Empty lines dropped before this head's request line (at most
    /// [`MAX_EMPTY_LINES`]).
    empty_lines: usize,
    /// How many times [`parse_head`] has run (what the tests count).
    pub parses: u64,
}

impl HeadBuffer {
    /// Appends what was read.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// How many bytes are buffered (at most [`MAX_HEAD`] plus one read while a head is
    /// awaited: past that, [`HeadBuffer::next_head`] refuses it).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is buffered (not even part of a head).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next complete head, taken out of the buffer; `Ok(None)` when more bytes are
    /// needed. After an error the connection is to be closed.
    pub fn next_head(&mut self) -> Result<Option<Request>, HeadError> {
        if !self.looked {
            // Empty lines before a request line are dropped (RFC 9112 2.2), a few of
            // them: more is a client sending nothing else, a 400. A `\r` not followed
            // by `\n` is malformed at once, so nothing is buffered before the request
            // line starts (a lone `\r` at the end waits for its byte: at most one).
            let mut skip = 0;
            loop {
                let step = match &self.buf[skip..] {
                    [b'\n', ..] => 1,
                    [b'\r', b'\n', ..] => 2,
                    [b'\r', b, ..] if *b != b'\n' => {
                        return Err(HeadError::Bad("CR not followed by LF"));
                    }
                    _ => break,
                };
                if self.empty_lines >= MAX_EMPTY_LINES {
                    return Err(HeadError::Bad("too many empty lines before a request"));
                }
                self.empty_lines += 1;
                skip += step;
            }
            self.buf.drain(..skip);
            if self.buf.first().is_none_or(|&b| b == b'\r') {
                return Ok(None);
            }
        }
        if !self.worth_parsing() {
            return Ok(None);
        }
        self.parses += 1;
        let parsed = parse_head(&self.buf)?;
        if let Some(req) = &parsed {
            self.buf.drain(..req.head_len);
            self.scanned = 0;
            self.looked = false;
            self.line_seen = false;
            self.empty_lines = 0;
        }
        Ok(parsed)
    }

    /// Whether what arrived since the last look could complete (or overflow) the head.
    fn worth_parsing(&mut self) -> bool {
        let buf = &self.buf;
        // Two bytes back, so an end split across two reads is found.
        let new = &buf[self.scanned.saturating_sub(2).min(buf.len())..];
        self.scanned = buf.len();
        let first_look = !std::mem::replace(&mut self.looked, true);
        let mut worth = first_look || buf.len() > MAX_HEAD;
        if !self.line_seen {
            if new.contains(&b'\n') {
                self.line_seen = true;
                worth = true;
            } else if buf.len() > MAX_REQUEST_LINE {
                worth = true;
            }
        }
        worth
            || new
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .any(|(i, _)| matches!(&new[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
    }
}

/// Why a head was refused, as the status to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400: malformed.
    Bad(&'static str),
    /// 414: request line too long.
    UriTooLong,
    /// 431: headers too large or too many.
    HeadersTooLarge,
    /// 505: not HTTP/1.x.
    Version,
}

/// Parses the head at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Request>, HeadError> {
    // Limits first, so a client cannot make us buffer without end.
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.map_or(buf.len(), |e| e) > MAX_REQUEST_LINE {
        return Err(HeadError::UriTooLong);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                Err(HeadError::HeadersTooLarge)
            } else {
                Ok(None)
            }
        }
        Ok(httparse::Status::Complete(head_len)) => {
            if head_len > MAX_HEAD {
                return Err(HeadError::HeadersTooLarge);
            }
            let body_len = body_framing(req.headers).map_err(HeadError::Bad)?;
            let headers = req
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.trim_ascii().to_vec()))
                .collect();
            Ok(Some(Request {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                minor: req.version.unwrap_or(1),
                headers,
                head_len,
                body_len,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::HeadersTooLarge),
        // httparse says "version" for anything after the target that is not one it
        // knows, a space inside the target included: only a well-formed request line
        // naming another version is 505.
        Err(httparse::Error::Version) if names_other_version(buf) => Err(HeadError::Version),
        Err(_) => Err(HeadError::Bad("malformed request")),
    }
}

/// Whether the request line is `METHOD SP TARGET SP HTTP/D.D` (so the only fault is the
/// version). Anything else, such as a space inside the target, is malformed.
fn names_other_version(buf: &[u8]) -> bool {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        // Incomplete: judge what there is, as far as it goes.
        return false;
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts.as_slice() {
        [method, target, version] if !method.is_empty() && !target.is_empty() => {
            matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit())
        }
        _ => false,
    }
}

/// Checks how the request says its body is framed (RFC 9112 6.3), comparing names and
/// values as bytes so that nothing hides behind bytes that are not UTF-8. A request
/// may carry one `Content-Length` of plain digits (its value is returned); every other
/// form — two of them, a list, a sign, non-ASCII, any `Transfer-Encoding` — is refused,
/// because a server and the proxy in front of it could frame it differently.
pub fn body_framing(headers: &[httparse::Header<'_>]) -> Result<u64, &'static str> {
    let mut length = None;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err("Transfer-Encoding is not accepted");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err("more than one Content-Length");
            }
            let value = h.value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err("malformed Content-Length");
            }
            // All digits: an overflow is simply a body far too large.
            let n = value.iter().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            length = Some(n);
        }
    }
    Ok(length.unwrap_or(0))
}

/// Why a target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// 400: not a path we can read (bad escapes, NUL, not origin- or absolute-form).
    Bad(&'static str),
    /// 404 (and logged): it tries to leave the root.
    Escape(&'static str),
}

/// Splits a request target into its path (never empty) and its query (with its `?`, or
/// empty); the fragment, if a client sent one, is dropped. An absolute-form target
/// (`http://host/a?b`) gives the path and query after its authority: the host named
/// there is never used.
fn split_target(target: &str) -> Result<(&str, &str), TargetError> {
    // The scheme is case-insensitive (RFC 9110 4.2.3): `HTTP://host/a` is `http://`.
    let scheme = |name: &str| {
        target
            .get(..name.len())
            .filter(|s| s.eq_ignore_ascii_case(name))
            .map(|_| &target[name.len()..])
    };
    let rest = if let Some(rest) = scheme("http://").or_else(|| scheme("https://")) {
        &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..]
    } else if target.starts_with('/') {
        target
    } else {
        return Err(TargetError::Bad("the target must start with /"));
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (path, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    Ok((if path.is_empty() { "/" } else { path }, query))
}

/// Decodes a request target into a relative path under the root, refusing anything that
/// could leave it. Returns the path and whether the target ended with `/`.
///
/// - `http://host/a/b` (absolute form) is taken as `/a/b`; the query is dropped.
/// - `%xx` escapes are decoded exactly once: `%252e` stays the file name `%2e`.
/// - `..` (plain or decoded), backslashes and NUL are refused, never resolved.
pub fn target_path(target: &str) -> Result<(PathBuf, bool), TargetError> {
    let (path, _query) = split_target(target)?;
    let decoded = percent_decode(path).ok_or(TargetError::Bad("bad percent-escape"))?;
    if decoded.contains(&0) {
        return Err(TargetError::Bad("NUL in path"));
    }
    if decoded.contains(&b'\\') {
        return Err(TargetError::Escape("backslash in path"));
    }
    // A final `.` segment names the directory too (`/a.txt/.` is `/a.txt/`).
    let last = decoded.rsplit(|&b| b == b'/').next().unwrap_or_default();
    let trailing_slash = decoded.ends_with(b"/") || last == b".";
    let mut out = PathBuf::new();
    use std::os::unix::ffi::OsStrExt;
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => return Err(TargetError::Escape("dot-dot segment")),
            s => out.push(std::ffi::OsStr::from_bytes(s)),
        }
    }
    // Belt and braces: what we built has only normal components.
    if !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(TargetError::Escape("unexpected path component"));
    }
    Ok((out, trailing_slash))
}

/// The `Location` for a directory asked for without its trailing slash: the decoded,
/// normalised path `rel` (from [`target_path`]) with every segment percent-encoded and a
/// slash added, then the target's query, escaped. It is always a path on this server:
/// it starts with one `/` and then an encoded segment, so no browser reads it as a host
/// (`//host`, `/\host`), and the host of an absolute-form target is never echoed.
pub fn directory_location(rel: &Path, target: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::from("/");
    for segment in rel.iter() {
        out.push_str(&percent_encode(segment.as_bytes()));
        out.push('/');
    }
    if let Ok((_, query)) = split_target(target) {
        for &b in query.as_bytes() {
            if b.is_ascii_graphic() {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Percent-encodes a file name for an `href` (keeps unreserved characters).
pub fn percent_encode(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether `path` (already canonical) lies inside `root` (canonical).
pub fn inside(root: &Path, path: &Path) -> bool {
    path.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heads() {
        let r = parse_head(
            b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Upgrade\r\n\r\nrest",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.method.as_str(), r.target.as_str(), r.minor, r.head_len),
            ("GET", "/a?b", 1, 63)
        );
        assert_eq!(r.header("host"), Some("x"));
        assert!(r.keep_alive());
        let r10 = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r10.keep_alive());
        let r10ka = parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r10ka.keep_alive());
        let close = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!close.keep_alive());
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:"), Ok(None));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\n\0\r\n\r\n"),
            Err(HeadError::Bad("malformed request"))
        );
        assert_eq!(
            parse_head(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Version)
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(parse_head(long.as_bytes()), Err(HeadError::UriTooLong));
        let partial_long = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(
            parse_head(partial_long.as_bytes()),
            Err(HeadError::UriTooLong)
        );
        let big = format!("GET / HTTP/1.1\r\n{}", "X-A: b\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(
            parse_head(format!("{big}\r\n").as_bytes()),
            Err(HeadError::HeadersTooLarge)
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(MAX_HEAD));
        assert_eq!(parse_head(huge.as_bytes()), Err(HeadError::HeadersTooLarge));
    }

    #[test]
    fn targets() {
        let ok = |t: &str| target_path(t).unwrap();
        assert_eq!(ok("/"), (PathBuf::new(), true));
        assert_eq!(ok("/a/b.txt?x=1#f"), (PathBuf::from("a/b.txt"), false));
        assert_eq!(ok("/dir/"), (PathBuf::from("dir"), true));
        assert_eq!(ok("/a%20b"), (PathBuf::from("a b"), false));
        assert_eq!(ok("//a/./b"), (PathBuf::from("a/b"), false));
        assert_eq!(ok("http://example.org/x/y"), (PathBuf::from("x/y"), false));
        assert_eq!(ok("http://example.org"), (PathBuf::new(), true));
        // Double encoding decodes once: `%2e%2e` as a literal name is harmless.
        assert_eq!(ok("/%252e%252e/x"), (PathBuf::from("%2e%2e/x"), false));
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/etc",
            "/%2E%2E%2Fetc",
            "/a/%2e%2e",
            "/..",
            "/a\\..\\b",
            "/a%5c..%5cb",
        ] {
            assert!(
                matches!(target_path(bad), Err(TargetError::Escape(_))),
                "{bad}"
            );
        }
        for bad in ["*", "example.org:80", "/a%00b", "/a%zz", "/a%2"] {
            assert!(
                matches!(target_path(bad), Err(TargetError::Bad(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(percent_encode(b"a b/<c>.txt"), "a%20b%2F%3Cc%3E.txt");
    }

    fn head(raw: &[u8]) -> Result<Option<Request>, HeadError> {
        parse_head(raw)
    }

    #[test]
    fn body_framing_is_read_as_bytes_and_only_one_plain_length_passes() {
        let ok = |extra: &[u8]| {
            let mut raw = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
            raw.extend_from_slice(extra);
            raw.extend_from_slice(b"\r\n");
            head(&raw).map(|r| r.unwrap().body_len)
        };
        assert_eq!(ok(b""), Ok(0));
        assert_eq!(ok(b"Content-Length: 0\r\n"), Ok(0));
        assert_eq!(ok(b"content-length:  5 \r\n"), Ok(5));
        assert_eq!(
            ok(b"Content-Length: 99999999999999999999999\r\n"),
            Ok(u64::MAX)
        );
        for bad in [
            &b"Content-Length: 0\r\nContent-Length: 44\r\n"[..],
            b"Content-Length: 0\r\ncontent-length: 0\r\n",
            b"Content-Length: 44\xff\r\n",
            b"Content-Length: 0, 0\r\n",
            b"Content-Length: +0\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 0x0\r\n",
            b"Content-Length:\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: \xe9chunked\r\n",
            b"TRANSFER-ENCODING: identity\r\n",
            b"Transfer-Encoding:\r\n",
            b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert!(
                matches!(ok(bad), Err(HeadError::Bad(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_malformed_request_line_is_400_and_only_another_version_is_505() {
        for bad in [
            &b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n"[..],
            b"GET /a HTTP/1.1 x\r\nHost: t\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
            b"GET / HTTP/1.1x\r\n\r\n",
            b"GET / HTTPS/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/11\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(HeadError::Bad(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                head(bad)
            );
        }
        for other in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET / HTTP/3.0\r\nHost: t\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
        ] {
            assert_eq!(head(other), Err(HeadError::Version), "{other:?}");
        }
    }

    #[test]
    fn singleton_headers_sent_twice_are_not_read() {
        let r = head(b"GET / HTTP/1.1\r\nRange: bytes=0-1\r\nrange: bytes=5-6\r\nHost: t\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.single_header("range"), None);
        assert_eq!(r.header_count("range"), 2);
        assert_eq!(r.single_header("host"), Some("t"));
        assert_eq!(r.single_header("if-range"), None);
    }

    #[test]
    fn directory_redirects_stay_on_this_server() {
        let location = |t: &str| directory_location(&target_path(t).unwrap().0, t);
        assert_eq!(location("/docs"), "/docs/");
        assert_eq!(location("/docs?x=1"), "/docs/?x=1");
        assert_eq!(location("//evil.example/x"), "/evil.example/x/");
        assert_eq!(location("///evil.example"), "/evil.example/");
        assert_eq!(location("/%2F%2Fevil.example"), "/evil.example/");
        assert_eq!(location("/%2f/evil.example/./x"), "/evil.example/x/");
        assert_eq!(location("/sub#x"), "/sub/");
        assert_eq!(location("/sub?a#b"), "/sub/?a");
        assert_eq!(location("http://evil.example/docs"), "/docs/");
        assert_eq!(location("https://evil.example//docs?q"), "/docs/?q");
        assert_eq!(location("/a%20b/%C3%A9"), "/a%20b/%C3%A9/");
        assert_eq!(location("/a%3Fb"), "/a%3Fb/");
        assert_eq!(location("/q?\u{e9}"), "/q/?%C3%A9");
    }

    #[test]
    fn any_close_token_in_any_connection_header_closes() {
        let ka = |raw: &[u8]| head(raw).unwrap().unwrap().keep_alive();
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: x, Close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        assert!(ka(
            b"GET / HTTP/1.0\r\nConnection: x\r\nConnection: Keep-Alive\r\n\r\n"
        ));
        assert!(ka(b"GET / HTTP/1.1\r\nConnection: ,,\r\n\r\n"));
    }

    #[test]
    fn one_host_only() {
        let host = |raw: &[u8]| {
            let r = head(raw).unwrap().unwrap();
            r.host().map(|h| h.map(str::to_string))
        };
        assert_eq!(
            host(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Some("a".into()))
        );
        assert_eq!(host(b"GET / HTTP/1.0\r\n\r\n"), Ok(None));
        assert!(host(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").is_err());
        assert!(host(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n").is_err());
        assert!(host(b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n").is_err());
        assert!(host(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n").is_err());
    }

    #[test]
    fn a_final_dot_segment_is_a_trailing_slash() {
        assert_eq!(
            target_path("/a.txt/.").unwrap(),
            (PathBuf::from("a.txt"), true)
        );
        assert_eq!(
            target_path("/a.txt/%2e").unwrap(),
            (PathBuf::from("a.txt"), true)
        );
        assert_eq!(target_path("/.").unwrap(), (PathBuf::new(), true));
        assert_eq!(
            target_path("/a.txt/.x").unwrap(),
            (PathBuf::from("a.txt/.x"), false)
        );
        assert_eq!(
            target_path("/a.txt").unwrap(),
            (PathBuf::from("a.txt"), false)
        );
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let ok = |t: &str| target_path(t).unwrap();
        assert_eq!(ok("HTTP://example.org/x"), (PathBuf::from("x"), false));
        assert_eq!(ok("hTtPs://example.org/x/"), (PathBuf::from("x"), true));
        assert!(target_path("HTTPX://example.org/x").is_err());
        assert!(target_path("HTT").is_err());
        assert!(target_path("\u{e9}ttp://x/a").is_err());
    }

    /// Feeds `raw` to a HeadBuffer in pieces of `piece` bytes; the heads it gives.
    fn dribble(raw: &[u8], piece: usize) -> (Vec<Result<Request, HeadError>>, u64) {
        let mut heads = HeadBuffer::default();
        let mut out = Vec::new();
        for chunk in raw.chunks(piece.max(1)) {
            heads.extend(chunk);
            loop {
                match heads.next_head() {
                    Ok(None) => break,
                    Ok(Some(r)) => out.push(Ok(r)),
                    Err(e) => {
                        out.push(Err(e));
                        return (out, heads.parses);
                    }
                }
            }
        }
        (out, heads.parses)
    }

    #[test]
    fn a_dribbled_head_is_parsed_a_few_times_not_once_per_piece() {
        // 60 KB in one header line, 20 bytes at a time: 3,000 reads. The old loop parsed
        // the whole buffer after every read (0.39 s of CPU for this head).
        let mut raw = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX-A: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 60_000));
        raw.extend_from_slice(b"\r\n\r\n");
        let (heads, parses) = dribble(&raw, 20);
        assert_eq!(heads.len(), 1);
        assert_eq!(heads[0].as_ref().unwrap().head_len, raw.len());
        assert!(parses <= 4, "{parses} parses");
        // Many short header lines, one byte at a time: still a few parses per head.
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..90 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let twice = [raw.clone(), raw].concat();
        let (heads, parses) = dribble(&twice, 1);
        assert_eq!(heads.len(), 2);
        assert!(parses <= 8, "{parses} parses");
        // Garbage is still refused at its first byte, not at the end of a head.
        assert_eq!(
            dribble(b"\x16\x03\x01", 1).0,
            vec![Err(HeadError::Bad("malformed request"))]
        );
        // A few empty lines before a request line are skipped, and may be dribbled too;
        // a stream of nothing else is refused once past the few, not buffered.
        let few = b"\r\n".repeat(MAX_EMPTY_LINES);
        let (heads, parses) = dribble(&few, 3);
        assert!(heads.is_empty() && parses == 0, "{parses}");
        let (heads, parses) = dribble(&b"\r\n".repeat(30_000), 3);
        assert_eq!(
            heads,
            vec![Err(HeadError::Bad("too many empty lines before a request"))]
        );
        assert_eq!(parses, 0);
        let (heads, _) = dribble(&[few.as_slice(), b"GET / HTTP/1.1\r\n\r\n"].concat(), 1);
        assert_eq!(heads.len(), 1);
        let (heads, _) = dribble(b"\r\n\nGET / HTTP/1.1\r\n\r\n", 1);
        assert_eq!(heads.len(), 1);
        // Limits still apply while nothing looks like an end of head.
        let long = [b"GET /".as_slice(), &[b'a'; MAX_REQUEST_LINE]].concat();
        assert_eq!(dribble(&long, 100).0, vec![Err(HeadError::UriTooLong)]);
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'v'; MAX_HEAD]].concat();
        assert_eq!(dribble(&big, 100).0, vec![Err(HeadError::HeadersTooLarge)]);
    }

    proptest! {
        /// However the input is cut into reads, the heads come out as parsing the whole
        /// input head by head gives them.
        #[test]
        fn a_head_buffer_agrees_with_parse_head(
            heads in proptest::collection::vec(
                "(\r\n)?(GET|HEAD) /[a-z]{0,5} HTTP/1\\.[01]\r\n(X-[a-z]: [a-z]{0,30}\r?\n){0,6}\r?\n",
                1..4,
            ),
            piece in 1usize..40,
        ) {
            let raw = heads.concat();
            let mut want = Vec::new();
            let mut rest = raw.trim_start_matches(['\r', '\n']);
            while let Ok(Some(r)) = parse_head(rest.as_bytes()) {
                rest = rest[r.head_len..].trim_start_matches(['\r', '\n']);
                want.push(r);
            }
            prop_assert_eq!(want.len(), heads.len());
            let (got, _) = dribble(raw.as_bytes(), piece);
            let got: Vec<Request> = got.into_iter().map(Result::unwrap).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_lone_cr_before_a_request_line_is_refused_at_once() {
        // A `\r` then anything but `\n` once made the buffer wait for good: 1 GiB of
        // `A` after one `\r` was taken in and kept, never parsed.
        let raw = [b"\r".as_slice(), &[b'A'; 100 * 1024]].concat();
        for piece in [1, 2, 1000, raw.len()] {
            assert_eq!(
                dribble(&raw, piece).0,
                vec![Err(HeadError::Bad("CR not followed by LF"))],
                "pieces of {piece}"
            );
        }
        assert_eq!(
            dribble(b"\r\n\r\r", 1).0,
            vec![Err(HeadError::Bad("CR not followed by LF"))]
        );
        // A `\r` at the very end waits for the byte after it.
        let mut heads = HeadBuffer::default();
        heads.extend(b"\r\n\r");
        assert_eq!(heads.next_head(), Ok(None));
        heads.extend(b"\nGET / HTTP/1.1\r\n\r\n");
        assert!(heads.next_head().unwrap().is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever arrives, in whatever reads, the buffer never waits with more than
        /// MAX_HEAD bytes in it: past that it has a head or an error, never `Ok(None)`.
        #[test]
        fn a_head_buffer_never_waits_past_max_head(
            runs in proptest::collection::vec(
                (prop::sample::select(&b"\r\nA :G/"[..]), 1usize..20_000),
                1..40,
            ),
            piece in 1usize..70_000,
        ) {
            let mut raw = Vec::new();
            for (b, n) in runs {
                raw.extend(std::iter::repeat_n(b, n));
            }
            raw.resize(raw.len().max(MAX_HEAD + 2), b'A');
            let mut heads = HeadBuffer::default();
            'feed: for chunk in raw.chunks(piece) {
                heads.extend(chunk);
                loop {
                    match heads.next_head() {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            prop_assert!(heads.len() <= MAX_HEAD, "waits with {}", heads.len());
                            break;
                        }
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn a_directory_redirect_is_always_a_local_path(
            t in "(/|//|http://[a-z.]{0,8}|https://x)[a-zA-Z0-9./%\\\\?#:@]{0,40}"
        ) {
            if let Ok((rel, _)) = target_path(&t) {
                let l = directory_location(&rel, &t);
                prop_assert!(l.starts_with('/'), "{}", l);
                prop_assert!(!l.starts_with("//") && !l.starts_with("/\\"), "{}", l);
                let path = l.split('?').next().unwrap();
                prop_assert!(path.ends_with('/'), "{}", l);
                prop_assert!(!path.contains("//") && !path.contains(':') && !path.contains('#'), "{}", l);
                prop_assert!(l.bytes().all(|b| b.is_ascii_graphic()), "{}", l);
            }
        }

        #[test]
        fn no_target_leaves_the_root(t in "/[a-zA-Z0-9./%\\\\]{0,40}") {
            if let Ok((p, _)) = target_path(&t) {
                prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
            }
        }

        #[test]
        fn parse_head_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_head(&bytes);
        }
    }
}
