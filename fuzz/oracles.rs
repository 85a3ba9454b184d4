//! What the fuzz targets check, beyond "no panic": one function per target, taking the
//! raw input and returning every property it broke. Shared, through `#[path]`, by the
//! libFuzzer targets in `fuzz/fuzz_targets/` (nightly) and by the stable replay test
//! `tests/fuzz_corpus.rs`, so a corpus file means the same thing to both.
//!
//! Each property has a stable name (`Violation::oracle`). `fuzz/regressions/known-defects.txt`
//! names the oracle a known-failing input trips, and `SWITCHBOARD_FUZZ_ALLOW=a,b` tells a
//! fuzz run to step over those oracles (so a known defect does not stop the search).
//!
//! Try one: `cargo +nightly fuzz run telnet` from the repository root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use switchboard::net::lines::{self, Datagram, Frame, LineFramer, Overlong};
use switchboard::roles::chat::protocol::{self, Command, TelnetFilter};
use switchboard::roles::http::files::{self, RangeSpec};
use switchboard::roles::http::request::{self, Request};
use switchboard::roles::proxy::ftp;
use switchboard::roles::proxy::header::{self, Header, ParseError, Version};

/// One broken property: which oracle, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub oracle: &'static str,
    pub detail: String,
}

/// An oracle: every property the input broke (empty when all hold).
pub type Oracle = fn(&[u8]) -> Vec<Violation>;

/// Every target by name, as the directories under `fuzz/corpus/` are named.
pub const TARGETS: &[(&str, Oracle)] = &[
    ("chat_line", chat_line),
    ("lines", lines),
    ("telnet", telnet),
    ("http_request", http_request),
    ("http_range", http_range),
    ("proxy_header", proxy_header),
    ("ftp_line", ftp_line),
];

/// Collects violations; `check!(v, "name", cond, "fmt", args)`.
macro_rules! check {
    ($v:expr, $oracle:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            $v.push(Violation { oracle: $oracle, detail: format!($($fmt)+) });
        }
    };
}

/// For the fuzz targets: panics on the first violation whose oracle is not listed in
/// `SWITCHBOARD_FUZZ_ALLOW` (comma-separated). The panic message starts with a marker
/// that `fuzz/run.sh` greps for to learn which oracle failed.
#[allow(dead_code)] // the replay test reports violations itself
pub fn enforce(violations: Vec<Violation>) {
    use std::sync::OnceLock;
    static ALLOW: OnceLock<Vec<String>> = OnceLock::new();
    let allow = ALLOW.get_or_init(|| {
        std::env::var("SWITCHBOARD_FUZZ_ALLOW")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if let Some(v) = violations
        .into_iter()
        .find(|v| !allow.iter().any(|a| a == v.oracle))
    {
        panic!("SWITCHBOARD-ORACLE-FAILED: {}: {}", v.oracle, v.detail);
    }
}

// ---------------------------------------------------------------------------------------
// chat_line: framing, sanitising, command parsing

/// Whether the sanitiser must remove `c` (issue 13): Unicode's `Default_Ignorable_Code_Point`
/// (DerivedCoreProperties.txt; it contains all of `Bidi_Control`) and the line and
/// paragraph separators. An oracle's copy of the set, not the implementation's.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF
        | 0x2028 | 0x2029)
}

/// The chat line path: the input is a byte stream framed into lines as the chat frames
/// them (held to the framer's properties, as in [`lines`]), each line sanitised and
/// parsed; the whole input is also sanitised as one line.
pub fn chat_line(data: &[u8]) -> Vec<Violation> {
    let mut v = Vec::new();
    sanitize_and_parse(data, &mut v);

    // Framing as the chat does it, held to the framer's properties (`framer`).
    let max = 1 + data.first().map_or(0, |&b| usize::from(b % 64));
    for line in framer(data, max, Overlong::Drop, &mut v).iter().flatten() {
        sanitize_and_parse(line.strip_suffix(b"\n").unwrap_or(line), &mut v);
    }
    v
}

/// A stream's frames, fed in `chunks`: the bytes of each line or piece, `None` for a
/// line dropped as too long.
fn frames(
    max: usize,
    overlong: Overlong,
    chunks: &mut dyn Iterator<Item = &[u8]>,
) -> Vec<Option<Vec<u8>>> {
    let mut framer = LineFramer::new(max, overlong);
    let mut out = Vec::new();
    for chunk in chunks {
        let mut rest = chunk;
        while let Some(frame) = framer.next(&mut rest) {
            out.push(frame.bytes().map(<[u8]>::to_vec));
        }
    }
    while let Some(frame) = framer.finish() {
        out.push(frame.bytes().map(<[u8]>::to_vec));
    }
    out
}

fn sanitize_and_parse(bytes: &[u8], v: &mut Vec<Violation>) {
    let clean = protocol::sanitize(bytes);
    check!(
        v,
        "sanitize_controls",
        clean.chars().all(|c| c == '\t' || !c.is_control()),
        "control character left in {clean:?}"
    );
    check!(
        v,
        "sanitize_invisible",
        !clean.chars().any(invisible),
        "invisible or bidi character left in {clean:?}"
    );
    let again = protocol::sanitize(clean.as_bytes());
    check!(
        v,
        "sanitize_idempotent",
        again == clean,
        "sanitize twice {again:?} != once {clean:?}"
    );

    let word = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    let trimmed = clean.trim_end();
    let ok = match protocol::parse(&clean) {
        Command::Empty => clean.trim().is_empty(),
        Command::Say(t) => {
            !t.is_empty()
                && (trimmed == t || trimmed.strip_prefix('/') == Some(t) && t.starts_with('/'))
        }
        Command::Nick(n) | Command::Hello(n) => word(n),
        // `/join #` is `Join("")`: names are validated later, only the shape is checked.
        Command::Join(n) => !n.contains(char::is_whitespace),
        Command::Msg { to, text } => word(to) && !text.trim().is_empty(),
        Command::Me(t) | Command::Quit(Some(t)) => !t.trim().is_empty(),
        Command::Unknown(verb) => !verb.contains(char::is_whitespace),
        Command::Who | Command::Rooms | Command::Help | Command::Quit(None) => {
            trimmed.starts_with('/')
        }
        Command::Usage(u) => u.starts_with('/'),
    };
    check!(
        v,
        "chat_parse",
        ok,
        "{clean:?} parsed as {:?}",
        protocol::parse(&clean)
    );
}

fn esc(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Cuts `data` into pieces whose sizes (1 to 7 bytes) come from the data itself, so a
/// fuzzer explores chunk borders together with contents.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    let mut i = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = (usize::from(rest[0].wrapping_add(i as u8)) % 7 + 1).min(rest.len());
        i += 1;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

// ---------------------------------------------------------------------------------------
// lines

/// The line framer (`net::lines`), in both of its ways with an over-long line. The first
/// byte picks the limit (1 to 16) and, by its top bit, splitting rather than dropping.
/// Chunking never matters; every byte is a line's, a piece's or counted as dropped; no
/// more than the limit (and a `\r`) is ever held; lines and pieces keep to the limit and
/// splitting gives every byte back in order; a datagram of the same bytes gives the same
/// frames, kept or borrowed.
pub fn lines(data: &[u8]) -> Vec<Violation> {
    let mut v = Vec::new();
    let first = data.first().copied().unwrap_or(0);
    let max = 1 + usize::from(first % 16);
    let overlong = if first & 0x80 != 0 {
        Overlong::Split
    } else {
        Overlong::Drop
    };
    framer(data, max, overlong, &mut v);
    v
}

/// The framer's properties on `data` (see [`lines`]); returns its frames.
fn framer(
    data: &[u8],
    max: usize,
    overlong: Overlong,
    v: &mut Vec<Violation>,
) -> Vec<Option<Vec<u8>>> {
    let whole = frames(max, overlong, &mut std::iter::once(data));
    let chunked = frames(max, overlong, &mut chunks(data));
    let bytewise = frames(max, overlong, &mut data.chunks(1));
    check!(
        v,
        "lines_chunking",
        whole == chunked && whole == bytewise,
        "{overlong:?} {max}: whole {whole:?}, chunked {chunked:?}, bytewise {bytewise:?}"
    );

    // Accounting and the carry's bound, after every chunk.
    let mut framer = LineFramer::new(max, overlong);
    let (mut fed, mut given) = (0u64, 0u64);
    for chunk in chunks(data) {
        let mut rest = chunk;
        while let Some(frame) = framer.next(&mut rest) {
            given += frame.bytes().map_or(0, <[u8]>::len) as u64;
        }
        fed += chunk.len() as u64;
        let held = framer.carried();
        check!(
            v,
            "lines_carry",
            held <= max + 1,
            "{overlong:?} {max}: {held} bytes held"
        );
        let accounted = given + framer.discarded() + held as u64;
        check!(
            v,
            "lines_accounting",
            accounted == fed,
            "{overlong:?} {max}: {accounted} bytes accounted for, {fed} fed"
        );
    }

    let mut joined = Vec::new();
    for frame in whole.iter().flatten() {
        let line = frame.strip_suffix(b"\n").unwrap_or(frame);
        let body = line.strip_suffix(b"\r").unwrap_or(line);
        check!(
            v,
            "lines_limit",
            body.len() <= max && !line.contains(&b'\n'),
            "{overlong:?} {max}: frame {frame:?}"
        );
        joined.extend_from_slice(frame);
    }
    if overlong == Overlong::Split {
        check!(
            v,
            "lines_split_whole",
            joined == data && whole.iter().all(Option::is_some),
            "{max}: split frames do not give back the input"
        );
    }

    let borrowed: Vec<Option<Vec<u8>>> = lines::datagram_lines(data, max, overlong)
        .map(|f| f.bytes().map(<[u8]>::to_vec))
        .collect();
    let kept: Vec<Option<Vec<u8>>> = Datagram::new(data.to_vec(), max, overlong)
        .lines()
        .map(|f: Frame<'_>| f.bytes().map(<[u8]>::to_vec))
        .collect();
    let want = if data.is_empty() {
        vec![Some(Vec::new())]
    } else {
        whole.clone()
    };
    check!(
        v,
        "lines_datagram",
        borrowed == want && kept == want,
        "{overlong:?} {max}: datagram {borrowed:?} / kept {kept:?} vs stream {want:?}"
    );
    whole
}

// ---------------------------------------------------------------------------------------
// telnet

/// How many bytes after an unterminated `IAC SB` may still be swallowed. The fix for
/// issue 13 caps a subnegotiation at 64 bytes; the oracle only asks for *some* cap.
pub const SUBNEG_BOUND: usize = 256;

const IAC: u8 = 0xFF;

/// The telnet filter: chunking never matters, text without 0xFF passes unchanged, a 0xFF
/// that is not followed by a telnet command byte (240..=255) eats nothing, and an
/// unterminated subnegotiation does not swallow the rest of the stream.
pub fn telnet(data: &[u8]) -> Vec<Violation> {
    let mut v = Vec::new();
    let run = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut filter = TelnetFilter::default();
        let mut out = Vec::new();
        for piece in pieces {
            filter.filter(piece, &mut out);
        }
        out
    };
    let whole = run(&mut std::iter::once(data));
    let by_byte = run(&mut data.chunks(1));
    let halves = run(&mut [&data[..data.len() / 2], &data[data.len() / 2..]].into_iter());
    let mixed = run(&mut chunks(data));
    for (name, out) in [("bytes", &by_byte), ("halves", &halves), ("mixed", &mixed)] {
        check!(
            v,
            "telnet_chunking",
            *out == whole,
            "{name}: {} vs whole: {}",
            esc(out),
            esc(&whole)
        );
    }

    if !data.contains(&IAC) {
        check!(
            v,
            "telnet_plain",
            whole == data,
            "text without 0xFF came out as {}",
            esc(&whole)
        );
    }

    // No byte after IAC is a command: a raw (Latin-1) client's ÿ. Whether the 0xFF itself
    // is kept or dropped is the filter's choice; every other byte must come through.
    let commands = data
        .iter()
        .zip(data.iter().skip(1))
        .any(|(&a, &b)| a == IAC && b >= 240);
    if data.contains(&IAC) && !commands {
        let strip = |b: &[u8]| b.iter().copied().filter(|&x| x != IAC).collect::<Vec<u8>>();
        check!(
            v,
            "telnet_lone_iac",
            strip(&whole) == strip(data),
            "lone 0xFF ate data: {}",
            esc(&whole)
        );
    }

    // Whatever sequence the last 0xFF opened, the filter is back to data within
    // SUBNEG_BOUND bytes: text beyond that comes through.
    if let Some(last) = data.iter().rposition(|&b| b == IAC) {
        let tail = &data[last + 1..];
        if tail.len() > SUBNEG_BOUND + 2 {
            let must = &tail[SUBNEG_BOUND + 2..];
            check!(
                v,
                "telnet_sb_cap",
                whole.ends_with(must),
                "{} bytes after the last IAC, {} came out",
                tail.len(),
                whole.len()
            );
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// http_request

/// The request-head parser (limits, prefix consistency, shape of what it returns) and the
/// target normaliser, on the parsed target and on the whole input taken as a target.
pub fn http_request(data: &[u8]) -> Vec<Violation> {
    let mut v = Vec::new();
    match request::parse_head(data) {
        Ok(Some(req)) => {
            check_head(data, &req, &mut v);
            check_target(&req.target, &mut v);
        }
        Ok(None) => check!(
            v,
            "http_head_bounded",
            data.len() <= request::MAX_HEAD,
            "{} bytes and still waiting for more",
            data.len()
        ),
        Err(_) => {}
    }
    check_target(&String::from_utf8_lossy(data), &mut v);
    check_head_buffer(data, &mut v);
    v
}

/// What a connection's [`request::HeadBuffer`] makes of `data` arriving in reads of
/// `piece` bytes: the heads it gives, whether it refused the input, and the most it
/// held while waiting for more.
fn heads_from_reads(data: &[u8], piece: usize) -> (Vec<Request>, bool, usize) {
    let mut buffer = request::HeadBuffer::default();
    let (mut heads, mut waited) = (Vec::new(), 0);
    for read in data.chunks(piece.max(1)) {
        buffer.extend(read);
        loop {
            match buffer.next_head() {
                Ok(Some(head)) => heads.push(head),
                Ok(None) => {
                    waited = waited.max(buffer.len());
                    break;
                }
                Err(_) => return (heads, true, waited),
            }
        }
    }
    (heads, false, waited)
}

/// The heads a connection reads, and whether it refuses the input, do not depend on how
/// TCP split the bytes; and it never waits holding more than a head's limit plus a read.
/// (A buffer fed in pieces parses again only when a head could have ended, so garbage in
/// the middle of a head may be refused later than at once — never wrongly, and no later
/// than the blank line that ends it, which the second comparison adds.)
fn check_head_buffer(data: &[u8], v: &mut Vec<Violation>) {
    let piece = usize::from(data.first().copied().unwrap_or(0) % 32) + 1;
    let whole = heads_from_reads(data, data.len());
    let split = heads_from_reads(data, piece);
    check!(
        v,
        "http_buffer_chunking",
        whole.0 == split.0 && (whole.1 || !split.1),
        "at once: {} heads, refused {}; in reads of {piece}: {} heads, refused {}",
        whole.0.len(),
        whole.1,
        split.0.len(),
        split.1
    );
    let ended = [data, b"\r\n\r\n"].concat();
    let whole = heads_from_reads(&ended, ended.len());
    let split = heads_from_reads(&ended, piece);
    check!(
        v,
        "http_buffer_chunking",
        whole.0 == split.0 && whole.1 == split.1,
        "with a blank line after: at once {} heads, refused {}; in reads of {piece}: {} heads, refused {}",
        whole.0.len(),
        whole.1,
        split.0.len(),
        split.1
    );
    check!(
        v,
        "http_head_bounded",
        split.2 <= request::MAX_HEAD + piece,
        "waited holding {} bytes in reads of {piece}",
        split.2
    );
}

fn check_head(data: &[u8], req: &Request, v: &mut Vec<Violation>) {
    let n = req.head_len;
    check!(
        v,
        "http_head",
        0 < n && n <= data.len() && n <= request::MAX_HEAD,
        "head_len {n} of {} bytes",
        data.len()
    );
    if !(0 < n && n <= data.len()) {
        return;
    }
    // What follows the head does not change it, and a head cut short waits for more:
    // the answer must not depend on how TCP split the bytes.
    let alone = request::parse_head(&data[..n]);
    check!(
        v,
        "http_head_prefix",
        alone == Ok(Some(req.clone())),
        "the head alone parses as {alone:?}"
    );
    for k in [n - 1, n / 2] {
        let cut = request::parse_head(&data[..k]);
        check!(
            v,
            "http_head_prefix",
            cut == Ok(None),
            "the first {k} of {n} head bytes parse as {cut:?}"
        );
    }
    check!(
        v,
        "http_head",
        !req.method.is_empty() && !req.target.is_empty() && req.minor <= 1,
        "{req:?}"
    );
    for (name, value) in &req.headers {
        check!(
            v,
            "http_head",
            !name.is_empty()
                && !name.bytes().any(|b| b.is_ascii_uppercase())
                && value.trim_ascii() == value.as_slice(),
            "header {name:?}: {value:?}"
        );
    }
}

fn check_target(target: &str, v: &mut Vec<Violation>) {
    use std::os::unix::ffi::OsStrExt;
    let Ok((path, slash)) = request::target_path(target) else {
        return;
    };
    let bytes = path.as_os_str().as_bytes();
    check!(
        v,
        "target_escape",
        path.is_relative()
            && !path.has_root()
            && path.components().all(|c| matches!(c, Component::Normal(_)))
            && !path.components().any(|c| c.as_os_str() == "..")
            && !bytes.contains(&0)
            && !bytes.contains(&b'\\')
            && Path::new("/root").join(&path).starts_with("/root"),
        "{target:?} became {path:?}"
    );
    // Normalising is a fixed point: the path, re-encoded, comes back as itself.
    let mut again = String::new();
    for c in path.components() {
        again.push('/');
        again.push_str(&request::percent_encode(c.as_os_str().as_bytes()));
    }
    if again.is_empty() {
        again.push_str(if slash { "/" } else { "/." });
    } else if slash {
        again.push('/');
    }
    let back = request::target_path(&again);
    check!(
        v,
        "target_idempotent",
        back == Ok((path.clone(), slash)),
        "{target:?} became {path:?}, which as {again:?} became {back:?}"
    );
}

// ---------------------------------------------------------------------------------------
// http_range

/// The `Range` parser, with a file length taken from the input: the first byte is the
/// length when below 0x80, else the next 8 bytes are (little-endian); the rest is the
/// header value.
pub fn http_range(data: &[u8]) -> Vec<Violation> {
    let mut v = Vec::new();
    let (len, rest) = match data.split_first() {
        None => return v,
        Some((&b, rest)) if b < 0x80 => (u64::from(b), rest),
        Some((_, rest)) => {
            let mut n = [0u8; 8];
            let k = rest.len().min(8);
            n[..k].copy_from_slice(&rest[..k]);
            (u64::from_le_bytes(n), &rest[k..])
        }
    };
    let value = String::from_utf8_lossy(rest);
    let got = files::parse_range(&value, len);
    if let RangeSpec::Part(first, last) = got {
        check!(
            v,
            "range_within",
            first <= last && last < len,
            "{value:?} on {len} bytes gave {got:?}"
        );
    }
    if let Some(want) = rfc9110_range(&value, len) {
        check!(
            v,
            "range_rfc9110",
            got == want,
            "{value:?} on {len} bytes gave {got:?}, RFC 9110 says {want:?}"
        );
    }
    v
}

/// What RFC 9110 §14.1.2 says a single, well-formed byte range means, with numbers of any
/// length (a first byte past the file is unsatisfiable however many digits it has; a
/// suffix longer than the file is the whole file). `None` for anything else: the oracle
/// says nothing about ranges a server may ignore.
fn rfc9110_range(value: &str, len: u64) -> Option<RangeSpec> {
    let spec = value.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    // A decimal string, capped at u64::MAX (every file is shorter than that).
    let num = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
    if a.is_empty() {
        if !digits(b) {
            return None;
        }
        let n = num(b);
        return Some(if n == 0 || len == 0 {
            RangeSpec::Unsatisfiable
        } else {
            RangeSpec::Part(len - n.min(len), len - 1)
        });
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return None;
    }
    let first = num(a);
    if !b.is_empty() {
        let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
        if (b.len(), b) < (a.len(), a) {
            return None; // last < first: invalid, may be ignored
        }
    }
    let last = if b.is_empty() { u64::MAX } else { num(b) };
    Some(if first >= len {
        RangeSpec::Unsatisfiable
    } else {
        RangeSpec::Part(first, last.min(len - 1))
    })
}

// ---------------------------------------------------------------------------------------
// proxy_header

/// The PROXY parser (a parsed header re-encodes, in both versions, to the same addresses;
/// it does not depend on what follows; a header cut short is incomplete, never invalid),
/// and the encoder on addresses taken from the input.
pub fn proxy_header(data: &[u8]) -> Vec<Violation> {
    let mut v = Vec::new();
    if let Ok(h) = header::parse(data) {
        let n = h.len;
        check!(
            v,
            "proxy_len",
            0 < n && n <= data.len(),
            "len {n} of {} bytes",
            data.len()
        );
        if 0 < n && n <= data.len() {
            let alone = header::parse(&data[..n]);
            check!(
                v,
                "proxy_prefix",
                alone == Ok(h),
                "the header alone parses as {alone:?}"
            );
            for k in [n - 1, n / 2] {
                let cut = header::parse(&data[..k]);
                check!(
                    v,
                    "proxy_prefix",
                    cut == Err(ParseError::Incomplete),
                    "the first {k} of {n} header bytes parse as {cut:?}"
                );
            }
        }
        if let Some((src, dst)) = h.addrs {
            round_trip(src, dst, (src, dst), &mut v, "proxy_reencode");
        }
    }

    // The encoder, on addresses from the input: mixed families come back as IPv6.
    let mut b = [0u8; 37];
    let k = data.len().min(37);
    b[..k].copy_from_slice(&data[..k]);
    let addr = |v6: bool, ip: &[u8], port: &[u8]| {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).unwrap()))
        } else {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&ip[..4]).unwrap()))
        };
        SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]))
    };
    let src = addr(b[0] & 1 != 0, &b[1..17], &b[33..35]);
    let dst = addr(b[0] & 2 != 0, &b[17..33], &b[35..37]);
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) if src.is_ipv4() != dst.is_ipv4() => {
            SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port())
        }
        _ => a,
    };
    round_trip(
        src,
        dst,
        (mapped(src), mapped(dst)),
        &mut v,
        "proxy_roundtrip",
    );
    v
}

fn round_trip(
    src: SocketAddr,
    dst: SocketAddr,
    want: (SocketAddr, SocketAddr),
    v: &mut Vec<Violation>,
    oracle: &'static str,
) {
    for version in [Version::V1, Version::V2] {
        let encoded = header::encode(version, src, dst);
        let back = header::parse(&encoded);
        let expected = Ok(Header {
            addrs: Some(want),
            len: encoded.len(),
        });
        check!(
            v,
            oracle,
            back == expected,
            "{version:?} {src} -> {dst} encoded as {encoded:?} parsed as {back:?}"
        );
    }
}

/// Where a target's inputs live, relative to the repository root: the fuzzer's corpus
/// (minimised by `fuzz/run.sh`), the hand-written seeds (`fuzz/seeds/make_seeds.py`),
/// and the minimised failures kept as regressions.
pub fn input_dirs(root: &Path, target: &str) -> [PathBuf; 3] {
    let fuzz = root.join("fuzz");
    ["corpus", "seeds", "regressions"].map(|kind| fuzz.join(kind).join(target))
}

// ---------------------------------------------------------------------------------------
// ftp_line

/// The `proxy --ftp` line parsers on one line of anything: an address or port they
/// find formats back to a line that parses to the same (`227`, `229`, `PORT`, `EPRT`),
/// and a reply code is three digits.
pub fn ftp_line(data: &[u8]) -> Vec<Violation> {
    let mut v = Vec::new();
    let text = String::from_utf8_lossy(data);
    if let Some(a) = ftp::parse_227(&text) {
        let again = ftp::format_227(a, "\r\n");
        let back = ftp::parse_227(again.trim_end());
        check!(
            v,
            "ftp_227",
            back == Some(a),
            "{text:?} -> {a} -> {again:?} -> {back:?}"
        );
    }
    if let Some(p) = ftp::parse_229(&text) {
        let again = ftp::format_229(p, "\r\n");
        let back = ftp::parse_229(again.trim_end());
        check!(
            v,
            "ftp_229",
            back == Some(p),
            "{text:?} -> {p} -> {again:?} -> {back:?}"
        );
    }
    for (eprt, parsed) in [
        (false, ftp::parse_port(&text)),
        (true, ftp::parse_eprt(&text)),
    ] {
        if let Some(a) = parsed {
            let again = ftp::format_active(a, eprt, "\r\n");
            let (verb, arg) = ftp::split_command(again.as_bytes());
            let back = match verb.as_str() {
                "PORT" => ftp::parse_port(&arg),
                _ => ftp::parse_eprt(&arg),
            };
            check!(
                v,
                "ftp_active",
                back == Some(a),
                "{text:?} -> {a} -> {again:?} -> {back:?}"
            );
        }
    }
    if let Some((code, _)) = ftp::reply_code(data) {
        check!(v, "ftp_code", code < 1000, "code {code}");
    }
    v
}
