//! Upper-case: each line (TCP) or datagram (UDP) comes back upper-cased, Unicode-aware
//! (`straße` → `STRASSE`). Invalid UTF-8 is replaced with U+FFFD, never a crash or a
//! dropped connection. Line ends (`\n`, `\r\n`) are kept; a last line without one comes
//! back at end of input.
//!
//! A line longer than [`MAX_PENDING`] is not held whole: it is sent on in pieces of at
//! most that many bytes, each cut at a character boundary, so a client without newlines
//! cannot grow memory ([`crate::net::lines`], [`Overlong::Split`]).
//!
//! Upper-casing can lengthen text (`ß` → `SS`, `ŉ` → `ʼN`, `ΐ` → `Ϊ́`, and each invalid
//! byte → U+FFFD, 3 bytes). Over TCP the client gets all of it. Over UDP a reply is never
//! longer than the datagram it answers: it is cut at the last character boundary that
//! fits. A UDP source address can be forged, so a reply larger than its request would
//! make this service an amplifier aimed at whoever the forger names; cut this way it
//! cannot amplify, and the reply always fits in a datagram.
//!
//! Try it: `switchboard upper`, then `nc 127.0.0.1 7008`.

use std::net::SocketAddr;

use crate::net::lines::{LineFramer, Overlong};
use crate::role::{Flow, NewSession, Role, Session};

/// Default address for TCP and UDP.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7008";

/// Bytes of one unfinished line held before they are sent on anyway.
pub const MAX_PENDING: usize = 64 * 1024;

/// The upper-case role.
#[derive(Clone, Copy, Debug, Default)]
pub struct Upper;

impl Role for Upper {
    type Session = UpperSession;

    fn name(&self) -> &'static str {
        "upper"
    }

    fn datagram(&self, _peer: SocketAddr, input: Vec<u8>) -> Option<Vec<u8>> {
        Some(upper_datagram(&input))
    }
}

impl NewSession for Upper {
    fn session(&self, _peer: SocketAddr) -> UpperSession {
        UpperSession::default()
    }
}

/// [`upper`] for one datagram: no longer than `bytes`, cut at a character boundary (see
/// the module notes: a UDP reply must not amplify).
pub fn upper_datagram(bytes: &[u8]) -> Vec<u8> {
    let mut out = String::from_utf8_lossy(bytes).to_uppercase();
    out.truncate(out.floor_char_boundary(bytes.len()));
    out.into_bytes()
}

/// Upper-cases bytes as UTF-8, replacing invalid sequences.
pub fn upper(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(bytes).to_uppercase().into_bytes()
}

/// One TCP client: the unfinished line so far.
#[derive(Debug)]
pub struct UpperSession {
    framer: LineFramer,
}

impl Default for UpperSession {
    fn default() -> Self {
        UpperSession {
            framer: LineFramer::new(MAX_PENDING, Overlong::Split),
        }
    }
}

impl Session for UpperSession {
    fn data(&mut self, input: Vec<u8>) -> (Vec<u8>, Flow) {
        // The lines and pieces of one read are upper-cased in one call: a piece ends at a
        // character boundary and a line with its `\n`, so that is the same as one call
        // each, with one allocation per read instead of one per line.
        let mut text = Vec::with_capacity(input.len());
        let mut rest = input.as_slice();
        while let Some(frame) = self.framer.next(&mut rest) {
            text.extend_from_slice(frame.bytes().unwrap_or_default());
        }
        (upper(&text), Flow::Continue)
    }

    fn end(&mut self) -> Vec<u8> {
        let mut text = Vec::new();
        while let Some(frame) = self.framer.finish() {
            text.extend_from_slice(frame.bytes().unwrap_or_default());
        }
        upper(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = UpperSession::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.data(c.to_vec()).0);
        }
        out.extend(s.end());
        out
    }

    #[test]
    fn lines_split_anywhere_come_back_whole() {
        let text = "straße\r\nçà et là\nπ";
        let expected = "STRASSE\r\nÇÀ ET LÀ\nΠ".as_bytes();
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for j in i..bytes.len() {
                assert_eq!(
                    run(&[&bytes[..i], &bytes[i..j], &bytes[j..]]),
                    expected,
                    "split {i} {j}"
                );
            }
        }
    }

    #[test]
    fn a_datagram_reply_is_never_longer_than_the_request() {
        // 'ß' (2 bytes) becomes "SS" (2); 'ŉ' (2) becomes "ʼN" (3): 32,000 of them grow
        // to 96,000 bytes, cut to the request's 64,000 after the last character that
        // fits: 21,333 "ʼN" (63,999 bytes); the next 'ʼ' (2 bytes) would not fit.
        let input = "ŉ".repeat(32_000);
        let out = String::from_utf8(upper_datagram(input.as_bytes())).unwrap();
        assert_eq!(out.len(), 63_999);
        assert!(out == "ʼN".repeat(21_333));
        // A cut inside a multi-byte character steps back to its start: "ŉŉ" (4 bytes)
        // would be "ʼNʼN" (6); the second 'ʼ' ends at byte 5.
        assert_eq!(upper_datagram("ŉŉ".as_bytes()), "ʼN".as_bytes());
        // Invalid bytes (1 byte each, 3 as U+FFFD) and 'ΐ' (2 bytes, 6 upper-cased).
        assert_eq!(upper_datagram(b"\xff\xff\xff"), "\u{FFFD}".as_bytes());
        assert_eq!(upper_datagram("ΐ".as_bytes()), "\u{399}".as_bytes());
        assert_eq!(upper_datagram(b"ok \xff"), b"OK ");
        // Text that keeps its length comes back whole; nothing comes from nothing.
        assert_eq!(
            upper_datagram("ça va? ß".as_bytes()),
            "ÇA VA? SS".as_bytes()
        );
        assert_eq!(upper_datagram(b""), b"");
    }

    #[test]
    fn a_line_over_the_limit_comes_back_whole_in_any_chunking() {
        // Pieces are cut at character boundaries, so upper-casing them one by one gives
        // what the whole line gives (2-byte 'é' and an invalid byte across the cuts).
        let mut line = "é".repeat(MAX_PENDING).into_bytes();
        line.extend_from_slice(b"\xff\xe2\x82\xac\r\nnext");
        let expected = upper(&line);
        for size in [
            1000,
            MAX_PENDING - 1,
            MAX_PENDING,
            MAX_PENDING + 1,
            line.len(),
        ] {
            let chunks: Vec<&[u8]> = line.chunks(size).collect();
            assert!(run(&chunks) == expected, "chunks of {size}");
        }
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(run(&[b"ab\xffc\n"]), "AB\u{FFFD}C\n".as_bytes());
    }

    #[test]
    fn long_lines_are_cut_at_char_boundaries() {
        let euro = "€".as_bytes(); // 3 bytes: the first two arrive with the long line
        let mut s = UpperSession::default();
        let mut line = vec![b'a'; MAX_PENDING - 1];
        line.extend_from_slice(&euro[..2]);
        let (out, _) = s.data(line);
        // Compared without printing: a failure must not dump 64 KiB.
        assert!(out.len() == MAX_PENDING - 1 && out.iter().all(|&b| b == b'A'));
        assert_eq!(s.data(euro[2..].to_vec()).0, Vec::<u8>::new());
        assert_eq!(s.end(), "€".as_bytes());
        // The cut itself is `net::lines::piece_end`, tested there.
    }
}
