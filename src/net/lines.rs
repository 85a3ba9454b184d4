//! The one newline framer: cuts a byte stream, or a datagram, into lines with a limit on
//! their length. The chat (TCP readers, and the UDP receive loop), `upper`, `listen` and
//! `bench chat` all frame with it.
//!
//! Wire format: a line ends with `\n`; a `\r` right before it is part of the line's bytes
//! but not of its length, so `\r\n` and `\n` lines have the same limit. A line is handed
//! on with its `\n` ([`Frame::Line`]); at the end of the input (EOF, or the end of a
//! datagram) the last line is handed on without one. A line over the limit is either
//! dropped and reported once ([`Overlong::Drop`]: the chat's `! line too long`) or handed
//! on in pieces of at most the limit, each cut before an unfinished UTF-8 character
//! ([`Overlong::Split`]: `upper`, `listen`). Either way the framer holds at most the
//! limit's worth of an unfinished line (plus a `\r` that may be the start of its `\r\n`),
//! so a client that never sends a newline cannot grow memory.
//!
//! A stream is framed by [`LineFramer`], which keeps the unfinished line between reads;
//! the same cuts in any chunking. A datagram holds whole lines, so it is framed in place
//! by [`datagram_lines`] (or [`Datagram`], which keeps the cuts with the bytes for another
//! task); an empty datagram is one empty line.
//!
//! No I/O here: see the property tests below. Try it: `switchboard listen 127.0.0.1:9000`
//! and `printf 'one\r\ntwo\nthree' | nc 127.0.0.1 9000`.

use std::ops::Range;

/// What happens to a line longer than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlong {
    /// Reported once as [`Frame::TooLong`], and its bytes dropped through its `\n`.
    Drop,
    /// Handed on as [`Frame::Piece`]s of at most the limit, each cut before an unfinished
    /// UTF-8 character (so a piece never ends inside a character that would print as
    /// escapes or turn into replacement characters), then its end as a [`Frame::Line`].
    Split,
}

/// What the framer found next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A line with its `\n` (and any `\r` before it); the last line at the end of the
    /// input, without one.
    Line(&'a [u8]),
    /// With [`Overlong::Split`]: the next piece of a line over the limit (no line end).
    Piece(&'a [u8]),
    /// With [`Overlong::Drop`]: a line over the limit was dropped.
    TooLong,
}

impl<'a> Frame<'a> {
    /// The bytes handed on: a line's or a piece's; none for a dropped line.
    pub fn bytes(self) -> Option<&'a [u8]> {
        match self {
            Frame::Line(bytes) | Frame::Piece(bytes) => Some(bytes),
            Frame::TooLong => None,
        }
    }
}

/// An emptied carry larger than this is freed: a client that once sent a long line keeps
/// no big buffer while it idles.
const KEEP_CAPACITY: usize = 4096;

/// Frames a byte stream read in chunks of any size: the same frames whatever the chunking.
///
/// ```
/// use switchboard::net::lines::{Frame, LineFramer, Overlong};
/// let mut framer = LineFramer::new(5, Overlong::Drop);
/// let mut frames = Vec::new();
/// for chunk in [&b"ab\r\ncd"[..], b"ef\n1234567\nok"] {
///     let mut rest = chunk;
///     while let Some(frame) = framer.next(&mut rest) {
///         frames.push(format!("{frame:?}"));
///     }
/// }
/// while let Some(frame) = framer.finish() {
///     frames.push(format!("{frame:?}"));
/// }
/// assert_eq!(frames, ["Line([97, 98, 13, 10])", "Line([99, 100, 101, 102, 10])", "TooLong", "Line([111, 107])"]);
/// ```
#[derive(Debug)]
pub struct LineFramer {
    /// The longest line, in bytes (not counting its line end).
    max: usize,
    overlong: Overlong,
    /// The unfinished line: at most `max` bytes, or `max + 1` ending in `\r`, between
    /// calls; while a frame taken from it is out, that frame's bytes too.
    carry: Vec<u8>,
    /// Bytes at the front of `carry` handed out in the last frame, released on the next
    /// call (the frame borrowed them until then).
    spent: usize,
    /// Dropping the rest of an over-long line, up to its `\n`.
    discarding: bool,
    /// Bytes of over-long lines dropped so far (their line ends included).
    discarded: u64,
}

impl LineFramer {
    /// A framer for lines of at most `max` bytes (not counting the line end); over-long
    /// lines are treated as `overlong` says. [`Overlong::Split`] needs a limit of at least
    /// one byte: 0 is taken as 1.
    pub fn new(max: usize, overlong: Overlong) -> Self {
        let max = match overlong {
            Overlong::Split => max.max(1),
            Overlong::Drop => max,
        };
        LineFramer {
            max,
            overlong,
            carry: Vec::new(),
            spent: 0,
            discarding: false,
            discarded: 0,
        }
    }

    /// The next frame from what `input` adds to what came before, advancing `input` past
    /// what it used; `None` once `input` is used up (an unfinished line is kept). Call it
    /// until `None` for each chunk read.
    pub fn next<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8]) -> Option<Frame<'s>> {
        self.step(input, false)
    }

    /// At the end of the input: the frames of the unfinished last line, if any (call it
    /// until `None`). The framer is then empty and can frame a new stream.
    pub fn finish(&mut self) -> Option<Frame<'_>> {
        self.step(&mut &[][..], true)
    }

    /// Bytes of an unfinished line held for the next call.
    pub fn carried(&self) -> usize {
        self.carry.len() - self.spent
    }

    /// Bytes of over-long lines dropped so far, line ends included: with the frames'
    /// bytes and [`Self::carried`], every byte of the input is accounted for.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    fn step<'s, 'i: 's>(&'s mut self, input: &mut &'i [u8], end: bool) -> Option<Frame<'s>> {
        self.carry.drain(..self.spent);
        self.spent = 0;
        if self.carry.is_empty() && self.carry.capacity() > KEEP_CAPACITY {
            self.carry = Vec::new();
        }
        if self.discarding {
            match newline(input) {
                Some(i) => {
                    self.discarded += (i + 1) as u64;
                    self.discarding = false;
                    *input = &input[i + 1..];
                }
                None => {
                    self.discarded += input.len() as u64;
                    self.discarding = !end;
                    *input = &[];
                    return None;
                }
            }
        }
        let reach = self.max.saturating_add(2);
        if self.carry.is_empty() {
            let nl = newline(&input[..input.len().min(reach)]);
            let step = decide(input, nl, self.max, self.overlong, end);
            let (frame, rest) = match step {
                Step::Line(n) => (Frame::Line(&input[..n]), &input[n..]),
                Step::Piece(n) => (Frame::Piece(&input[..n]), &input[n..]),
                Step::TooLong { len, ended } => {
                    self.discarded += len as u64;
                    self.discarding = !ended && !end;
                    (Frame::TooLong, &input[len..])
                }
                Step::More => {
                    self.carry.extend_from_slice(input);
                    *input = &[];
                    return None;
                }
            };
            *input = rest;
            return Some(frame);
        }
        // The carry grows only up to its line's `\n` (after which it takes nothing until
        // that line is out: pieces of a split line are cut before it) and only by what a
        // decision can need (`max + 2` bytes tell whether a line is too long). So a `\n`
        // can only be its last byte, and framing costs no more than the bytes that
        // arrived: a line sent a byte at a time is not scanned again for each byte.
        if self.carry.last() != Some(&b'\n') {
            let window = &input[..input.len().min(reach.saturating_sub(self.carry.len()))];
            let take = newline(window).map_or(window.len(), |i| i + 1);
            self.carry.extend_from_slice(&input[..take]);
            *input = &input[take..];
        }
        let nl = (self.carry.last() == Some(&b'\n')).then(|| self.carry.len() - 1);
        match decide(&self.carry, nl, self.max, self.overlong, end) {
            Step::Line(n) => {
                self.spent = n;
                Some(Frame::Line(&self.carry[..n]))
            }
            Step::Piece(n) => {
                self.spent = n;
                Some(Frame::Piece(&self.carry[..n]))
            }
            Step::TooLong { ended, .. } => {
                self.discarded += self.carry.len() as u64;
                self.carry.clear();
                self.discarding = !ended && !end;
                Some(Frame::TooLong)
            }
            Step::More => None,
        }
    }
}

/// What to do with the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Hand on its first `n` bytes as a line.
    Line(usize),
    /// Hand on its first `n` bytes as a piece of an over-long line.
    Piece(usize),
    /// Drop its first `len` bytes, an over-long line; `ended`: through its `\n`.
    TooLong { len: usize, ended: bool },
    /// Keep it: the line is not finished.
    More,
}

/// Decides what the front of `buf` is. `nl` is its first `\n` if that lies within the
/// first `max + 2` bytes (beyond that the line is too long whatever follows). `end`: no
/// more bytes will follow `buf`.
fn decide(buf: &[u8], nl: Option<usize>, max: usize, overlong: Overlong, end: bool) -> Step {
    let line = &buf[..nl.unwrap_or(buf.len())];
    let length = line.len() - usize::from(line.last() == Some(&b'\r'));
    if length > max {
        return match overlong {
            Overlong::Split => Step::Piece(piece_end(&buf[..max])),
            Overlong::Drop => {
                let from = buf.len().min(max.saturating_add(2));
                let nl = nl.or_else(|| newline(&buf[from..]).map(|i| from + i));
                Step::TooLong {
                    len: nl.map_or(buf.len(), |i| i + 1),
                    ended: nl.is_some(),
                }
            }
        };
    }
    match nl {
        Some(i) => Step::Line(i + 1),
        None if end && !buf.is_empty() => Step::Line(buf.len()),
        None => Step::More,
    }
}

fn newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Where to end a piece of at most `piece.len()` bytes: before a UTF-8 character it ends
/// inside (the bytes at its end that begin a valid character but do not finish it), so
/// the character goes whole into the next piece — unless that would leave nothing.
/// Invalid bytes are no character: they are cut anywhere.
pub fn piece_end(piece: &[u8]) -> usize {
    let len = piece.len();
    // A UTF-8 sequence is at most 4 bytes: an unfinished one is at most 3.
    for back in 1..=len.min(3) {
        let start = len - back;
        if piece[start] & 0xC0 != 0x80 {
            let unfinished = matches!(
                std::str::from_utf8(&piece[start..]),
                Err(e) if e.valid_up_to() == 0 && e.error_len().is_none()
            );
            return if unfinished && start > 0 { start } else { len };
        }
    }
    len
}

/// The frames of one datagram, borrowed from it: as [`LineFramer`] would give for the
/// datagram as a whole stream followed by its end, except that an empty datagram is one
/// empty line (someone sent it: it is not nothing).
pub fn datagram_lines(payload: &[u8], max: usize, overlong: Overlong) -> DatagramLines<'_> {
    DatagramLines {
        payload,
        at: 0,
        max: LineFramer::new(max, overlong).max,
        overlong,
    }
}

/// The iterator [`datagram_lines`] returns.
#[derive(Clone, Debug)]
pub struct DatagramLines<'a> {
    payload: &'a [u8],
    /// Where the next frame starts; past the end once an empty datagram's line is out.
    at: usize,
    max: usize,
    overlong: Overlong,
}

impl DatagramLines<'_> {
    /// The next frame as its kind and where its bytes are in the datagram.
    fn next_span(&mut self) -> Option<(Kind, Range<usize>)> {
        if self.payload.is_empty() && self.at == 0 {
            self.at = 1;
            return Some((Kind::Line, 0..0));
        }
        let rest = self.payload.get(self.at..).filter(|r| !r.is_empty())?;
        let nl = newline(&rest[..rest.len().min(self.max.saturating_add(2))]);
        let (kind, len) = match decide(rest, nl, self.max, self.overlong, true) {
            Step::Line(n) => (Kind::Line, n),
            Step::Piece(n) => (Kind::Piece, n),
            Step::TooLong { len, .. } => (Kind::TooLong, len),
            Step::More => return None, // only for an empty rest, handled above
        };
        let span = self.at..self.at + len;
        self.at += len;
        Some((kind, span))
    }
}

impl<'a> Iterator for DatagramLines<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        let payload = self.payload;
        self.next_span()
            .map(|(kind, span)| kind.frame(&payload[span]))
    }
}

/// Which frame a span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Line,
    Piece,
    TooLong,
}

impl Kind {
    fn frame(self, bytes: &[u8]) -> Frame<'_> {
        match self {
            Kind::Line => Frame::Line(bytes),
            Kind::Piece => Frame::Piece(bytes),
            Kind::TooLong => Frame::TooLong,
        }
    }
}

/// Where one frame of a [`Datagram`] ends. Eight bytes, so a datagram of nothing but
/// newlines holds at most eight times its size in cuts.
#[derive(Clone, Copy, Debug)]
struct Cut {
    end: u32,
    kind: Kind,
}

/// What each frame of a [`Datagram`] takes beside its bytes.
pub const CUT_SIZE: usize = std::mem::size_of::<Cut>();

/// A datagram already cut into lines, to hand to another task: the cutting is done where
/// the datagram arrives, and the task that takes it only reads the lines.
#[derive(Debug)]
pub struct Datagram {
    bytes: Vec<u8>,
    cuts: Vec<Cut>,
}

impl Datagram {
    /// Cuts `bytes` as [`datagram_lines`] does.
    ///
    /// # Panics
    /// If `bytes` is 4 GiB or more (a datagram is at most 64 KiB).
    pub fn new(bytes: Vec<u8>, max: usize, overlong: Overlong) -> Self {
        let mut lines = datagram_lines(&bytes, max, overlong);
        let mut cuts = Vec::new();
        while let Some((kind, span)) = lines.next_span() {
            let end = u32::try_from(span.end).expect("a datagram is smaller than 4 GiB");
            cuts.push(Cut { end, kind });
        }
        Datagram { bytes, cuts }
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty (it is still one empty line).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// How many frames it was cut into (at least one).
    pub fn frames(&self) -> usize {
        self.cuts.len()
    }

    /// Its frames, in order.
    pub fn lines(&self) -> impl Iterator<Item = Frame<'_>> {
        let mut start = 0;
        self.cuts.iter().map(move |cut| {
            let end = cut.end as usize;
            let frame = cut.kind.frame(&self.bytes[start..end]);
            start = end;
            frame
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame as owned data, to compare.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Owned {
        Line(Vec<u8>),
        Piece(Vec<u8>),
        TooLong,
    }

    fn owned(frame: Frame<'_>) -> Owned {
        match frame {
            Frame::Line(b) => Owned::Line(b.to_vec()),
            Frame::Piece(b) => Owned::Piece(b.to_vec()),
            Frame::TooLong => Owned::TooLong,
        }
    }

    fn handed(frame: &Owned) -> u64 {
        match frame {
            Owned::Line(b) | Owned::Piece(b) => b.len() as u64,
            Owned::TooLong => 0,
        }
    }

    /// Frames `chunks` as one stream, checking after each chunk that every byte is
    /// accounted for and the carry stays within its bound.
    fn stream(max: usize, overlong: Overlong, chunks: &[&[u8]]) -> Vec<Owned> {
        let mut framer = LineFramer::new(max, overlong);
        let bound = framer.max;
        let mut out = Vec::new();
        let (mut fed, mut given) = (0u64, 0u64);
        for chunk in chunks {
            let mut rest = *chunk;
            while let Some(frame) = framer.next(&mut rest) {
                let frame = owned(frame);
                given += handed(&frame);
                // While a frame from the carry is out, it holds that frame too.
                assert!(framer.carry.len() <= bound.saturating_add(2));
                out.push(frame);
            }
            fed += chunk.len() as u64;
            // Between chunks: at most the limit, or the limit and a `\r`.
            let carry = &framer.carry[framer.spent..];
            assert!(
                carry.len() <= bound || (carry.len() == bound + 1 && carry.ends_with(b"\r")),
                "carry {} over {bound}",
                carry.len()
            );
            assert!(!carry.contains(&b'\n'));
            assert_eq!(
                given + framer.discarded() + framer.carried() as u64,
                fed,
                "bytes lost or invented"
            );
        }
        while let Some(frame) = framer.finish() {
            let frame = owned(frame);
            given += handed(&frame);
            out.push(frame);
        }
        assert_eq!(framer.carried(), 0);
        assert_eq!(given + framer.discarded(), fed, "bytes lost or invented");
        out
    }

    /// The rules written the plain way, on the whole input at once.
    fn reference(max: usize, overlong: Overlong, input: &[u8]) -> Vec<Owned> {
        let max = max.max(usize::from(overlong == Overlong::Split));
        let mut out = Vec::new();
        for line in input.split_inclusive(|&b| b == b'\n') {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            let length = |b: &[u8]| b.len() - usize::from(b.ends_with(b"\r"));
            match overlong {
                Overlong::Drop if length(body) > max => out.push(Owned::TooLong),
                Overlong::Drop => out.push(Owned::Line(line.to_vec())),
                Overlong::Split => {
                    let mut rest = line;
                    while length(rest.strip_suffix(b"\n").unwrap_or(rest)) > max {
                        let n = piece_end(&rest[..max]);
                        out.push(Owned::Piece(rest[..n].to_vec()));
                        rest = &rest[n..];
                    }
                    out.push(Owned::Line(rest.to_vec()));
                }
            }
        }
        out
    }

    fn datagram(max: usize, overlong: Overlong, payload: &[u8]) -> Vec<Owned> {
        let borrowed: Vec<Owned> = datagram_lines(payload, max, overlong).map(owned).collect();
        let kept = Datagram::new(payload.to_vec(), max, overlong);
        assert_eq!(kept.lines().map(owned).collect::<Vec<_>>(), borrowed);
        assert_eq!(kept.frames(), borrowed.len());
        borrowed
    }

    fn line(b: &[u8]) -> Owned {
        Owned::Line(b.to_vec())
    }

    #[test]
    fn framing_drops_only_the_long_line() {
        // The chat's rules (from its framer's test): `\r\n` and `\n`, a line split across
        // reads, an over-long line reported once however it arrives, the last line at EOF.
        let mut f = LineFramer::new(5, Overlong::Drop);
        let mut frames = |input: &[u8]| {
            let mut rest = input;
            let mut out = Vec::new();
            while let Some(frame) = f.next(&mut rest) {
                out.push(owned(frame));
            }
            out
        };
        assert_eq!(frames(b"ab\r\ncd"), [line(b"ab\r\n")]);
        assert_eq!(frames(b"efg\n"), [line(b"cdefg\n")]);
        assert_eq!(frames(b"123456789"), [Owned::TooLong]);
        assert_eq!(frames(b"more of it"), []);
        assert_eq!(frames(b"\nok\n"), [line(b"ok\n")]);
        assert_eq!(
            frames(b"toolongline\nfine\n"),
            [Owned::TooLong, line(b"fine\n")]
        );
        assert_eq!(frames(b"last"), []);
        assert_eq!(f.finish().map(owned), Some(line(b"last")));
        assert_eq!(f.finish(), None);
    }

    #[test]
    fn a_line_at_the_limit_is_a_line_and_one_byte_more_is_not() {
        for overlong in [Overlong::Drop, Overlong::Split] {
            for input in [&b"12345\n"[..], b"12345\r\n", b"12345", b"12345\r"] {
                let want = [line(input)];
                assert_eq!(stream(5, overlong, &[input]), want, "{input:?}");
                let bytes: Vec<&[u8]> = input.chunks(1).collect();
                assert_eq!(
                    stream(5, overlong, &bytes),
                    want,
                    "{input:?} a byte at a time"
                );
                assert_eq!(
                    datagram(5, overlong, input),
                    want,
                    "{input:?} as a datagram"
                );
            }
        }
        assert_eq!(stream(5, Overlong::Drop, &[b"123456\n"]), [Owned::TooLong]);
        assert_eq!(stream(5, Overlong::Drop, &[b"123456"]), [Owned::TooLong]);
        assert_eq!(
            stream(5, Overlong::Drop, &[b"12345\r\r\n"]),
            [Owned::TooLong]
        );
        assert_eq!(
            stream(5, Overlong::Split, &[b"123456\r\n"]),
            [Owned::Piece(b"12345".to_vec()), line(b"6\r\n")]
        );
    }

    #[test]
    fn pieces_are_cut_before_an_unfinished_character() {
        // 'é' is 2 bytes, '€' 3: a piece that would end inside one ends before it.
        let text = "abcé€xyz\n".as_bytes();
        assert_eq!(
            stream(4, Overlong::Split, &[text]),
            [
                Owned::Piece(b"abc".to_vec()),
                Owned::Piece("é".as_bytes().to_vec()),
                Owned::Piece("€x".as_bytes().to_vec()),
                line(b"yz\n"),
            ]
        );
        // A character longer than the piece is cut anyway, and invalid bytes anywhere.
        assert_eq!(
            stream(2, Overlong::Split, &["€\n".as_bytes()]),
            [Owned::Piece(vec![0xE2, 0x82]), line(b"\xac\n")]
        );
        assert_eq!(
            stream(2, Overlong::Split, &[b"\xff\xe2\x82\xac"]),
            [
                Owned::Piece(vec![0xFF]),
                Owned::Piece(vec![0xE2, 0x82]),
                line(b"\xac")
            ]
        );
    }

    #[test]
    fn a_piece_ends_before_an_unfinished_character_only() {
        // From upper's and listen's cutters, which this one replaces.
        assert_eq!(piece_end("ab€".as_bytes()), 5);
        assert_eq!(piece_end(&"ab€".as_bytes()[..4]), 2);
        assert_eq!(piece_end(&"€".as_bytes()[..2]), 2); // nothing before it: cut anyway
        assert_eq!(piece_end(b"a\xff"), 2);
        assert_eq!(piece_end("aé".as_bytes()), 3);
        assert_eq!(piece_end(&"aé".as_bytes()[..2]), 1);
        assert_eq!(piece_end(&"a€".as_bytes()[..3]), 1);
        assert_eq!(piece_end(&[0x80, 0x80, 0x80, 0x80]), 4);
        // Bytes that can begin no character are not held back, and neither is a
        // character an earlier invalid byte precedes.
        assert_eq!(piece_end(b"a\xe0\x80"), 3); // E0 must be followed by A0..BF
        assert_eq!(piece_end(b"a\xc0"), 2);
        assert_eq!(piece_end(b"\xff\xff\xe2\x82"), 2);
    }

    #[test]
    fn a_datagram_is_its_lines_and_an_empty_one_is_one_empty_line() {
        // The chat's UDP rules, and listen's: one trailing `\n` ends the last line.
        assert_eq!(datagram(64, Overlong::Drop, b""), [line(b"")]);
        assert_eq!(datagram(64, Overlong::Drop, b"\n"), [line(b"\n")]);
        assert_eq!(datagram(64, Overlong::Drop, b"a\n"), [line(b"a\n")]);
        assert_eq!(
            datagram(64, Overlong::Split, b"hello\n[x] forged\n\nlast"),
            [
                line(b"hello\n"),
                line(b"[x] forged\n"),
                line(b"\n"),
                line(b"last")
            ]
        );
        assert_eq!(
            datagram(3, Overlong::Drop, b"/quit\r\nok\r\nlonger"),
            [Owned::TooLong, line(b"ok\r\n"), Owned::TooLong]
        );
        assert_eq!(
            datagram(3, Overlong::Drop, b"abc\r"),
            [line(b"abc\r")],
            "a last `\\r` is not counted, as before its `\\n`"
        );
    }

    #[test]
    fn an_idle_framer_frees_a_big_carry() {
        let mut f = LineFramer::new(1 << 20, Overlong::Drop);
        let big = vec![b'x'; 100_000];
        let mut rest = &big[..];
        assert_eq!(f.next(&mut rest), None);
        let mut rest = &b"\n"[..];
        assert!(matches!(f.next(&mut rest), Some(Frame::Line(l)) if l.len() == 100_001));
        assert_eq!(f.next(&mut rest), None);
        assert_eq!(f.carry.capacity(), 0);
    }

    #[test]
    fn without_a_limit_nothing_overflows() {
        let data = vec![b'y'; 200_000];
        assert_eq!(
            stream(usize::MAX, Overlong::Drop, &[&data, b"\n"]),
            [Owned::Line([&data[..], b"\n"].concat())]
        );
        assert_eq!(
            datagram(usize::MAX, Overlong::Split, &data),
            [Owned::Line(data.clone())]
        );
    }

    /// Bytes that matter to the framer: line ends, multi-byte characters, invalid bytes.
    fn interesting() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                4 => Just(b'a'),
                2 => Just(b'\n'),
                2 => Just(b'\r'),
                1 => Just(0xE2), // '€' is E2 82 AC
                1 => Just(0x82),
                1 => Just(0xAC),
                1 => Just(0xC3), // 'é' is C3 A9
                1 => Just(0xA9),
                1 => any::<u8>(),
            ],
            0..120,
        )
    }

    fn chunked<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([input.len()]) {
            out.push(&input[at..c]);
            at = c;
        }
        out
    }

    proptest! {
        #[test]
        fn framing_is_independent_of_chunk_borders(
            input in interesting(),
            cuts in proptest::collection::vec(0usize..130, 0..12),
            max in 0usize..12,
            split in any::<bool>(),
        ) {
            let overlong = if split { Overlong::Split } else { Overlong::Drop };
            let whole = stream(max, overlong, &[&input]);
            prop_assert_eq!(&stream(max, overlong, &chunked(&input, &cuts)), &whole);
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(&stream(max, overlong, &bytes), &whole);
            // The rules as written, and a datagram of the same bytes.
            prop_assert_eq!(&reference(max, overlong, &input), &whole);
            if !input.is_empty() {
                prop_assert_eq!(&datagram(max, overlong, &input), &whole);
            }
        }

        #[test]
        fn lines_are_within_the_limit_and_pieces_give_back_every_byte(
            input in interesting(),
            max in 1usize..12,
        ) {
            let frames = stream(max, Overlong::Split, &[&input]);
            let mut joined = Vec::new();
            for f in &frames {
                match f {
                    Owned::Line(b) => {
                        let body = b.strip_suffix(b"\n").unwrap_or(b);
                        prop_assert!(!body.contains(&b'\n'));
                        prop_assert!(body.strip_suffix(b"\r").unwrap_or(body).len() <= max);
                        joined.extend_from_slice(b);
                    }
                    Owned::Piece(b) => {
                        prop_assert!(!b.is_empty() && b.len() <= max && !b.contains(&b'\n'));
                        joined.extend_from_slice(b);
                    }
                    Owned::TooLong => prop_assert!(false, "TooLong when splitting"),
                }
            }
            prop_assert_eq!(joined, input);
        }

        #[test]
        fn whole_lines_arrive_and_long_ones_are_reported(
            lines in proptest::collection::vec("[a-z]{0,12}", 0..20),
            cuts in proptest::collection::vec(0usize..300, 0..10),
        ) {
            let input: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            let want: Vec<Owned> = lines
                .iter()
                .map(|l| if l.len() <= 8 { line(format!("{l}\n").as_bytes()) } else { Owned::TooLong })
                .collect();
            prop_assert_eq!(stream(8, Overlong::Drop, &chunked(&input, &cuts)), want);
        }
    }
}
