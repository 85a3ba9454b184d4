//! [`Lines`]: what a role with a line protocol needs to read its input, one command a
//! line, whatever the chunk borders, in bounded memory.
//!
//! A line ends with `\n`; a `\r` before it is dropped too. A line longer than the limit
//! is reported once as [`LineTooLong`] as soon as it is known to be too long (not at its
//! end, which may never come) and the rest of it, up to its newline, is discarded. At end
//! of input a last line without a newline counts like any other.
//!
//! The framing is [`crate::net::lines`]'s, the one every newline protocol here uses.

use crate::net::lines::{Frame, LineFramer, Overlong};

/// The line was longer than the framer's limit; it was discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineTooLong;

impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("line too long")
    }
}

impl std::error::Error for LineTooLong {}

/// A newline framer with a line limit: [`push`](Lines::push) what arrives, then take
/// lines with [`next`](Lines::next) until it says `None`. Holds at most the limit (and
/// a `\r`) of an unfinished line between pushes.
///
/// It is the crate's one framer ([`LineFramer`], dropping over-long lines) behind an
/// interface that suits a role: input pushed as it comes, lines without their endings.
#[derive(Debug)]
pub struct Lines {
    framer: LineFramer,
    /// What was pushed: the framer takes from `at` on, and keeps an unfinished line
    /// itself, so this is emptied as the lines are taken.
    input: Vec<u8>,
    at: usize,
}

impl Lines {
    /// A framer for lines of at most `max_line` bytes (without the line ending).
    pub fn new(max_line: usize) -> Self {
        Lines {
            framer: LineFramer::new(max_line, Overlong::Drop),
            input: Vec::new(),
            at: 0,
        }
    }

    /// Adds input. What the framer took before is dropped now.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.drain(..self.at);
        self.at = 0;
        self.input.extend_from_slice(bytes);
    }

    /// Says the input has ended: [`Lines::next`] then also gives a last line that has no
    /// newline.
    pub fn finish(&mut self) {
        // The last line ends here: a newline after it frames it like any other (its
        // length, a `\r` at its end, or the rest of an over-long line being skipped).
        let unended = match self.input[self.at..].last() {
            Some(&last) => last != b'\n',
            None => self.framer.carried() > 0,
        };
        if unended {
            self.push(b"\n");
        }
    }

    /// The next whole line (without its line ending), a line that was too long, or
    /// `None` until more is pushed.
    #[allow(clippy::should_implement_trait)] // it lends each line: not an Iterator
    pub fn next(&mut self) -> Option<Result<&[u8], LineTooLong>> {
        let mut rest = &self.input[self.at..];
        let frame = self.framer.next(&mut rest);
        self.at = self.input.len() - rest.len();
        match frame? {
            Frame::Line(line) => {
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                Some(Ok(line.strip_suffix(b"\r").unwrap_or(line)))
            }
            Frame::TooLong | Frame::Piece(_) => Some(Err(LineTooLong)),
        }
    }

    /// Bytes held that are not yet part of a line taken.
    pub fn pending(&self) -> usize {
        self.input.len() - self.at + self.framer.carried()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Everything a framer gives for `chunks`, then for the end of input.
    fn frame(max_line: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, LineTooLong>> {
        let mut lines = Lines::new(max_line);
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk);
            while let Some(line) = lines.next() {
                out.push(line.map(<[u8]>::to_vec));
            }
            assert!(
                lines.pending() <= max_line + 1,
                "an unfinished line grew past the limit"
            );
        }
        lines.finish();
        while let Some(line) = lines.next() {
            out.push(line.map(<[u8]>::to_vec));
        }
        out
    }

    /// What the framer must give, computed on the whole input at once.
    fn model(max_line: usize, input: &[u8]) -> Vec<Result<Vec<u8>, LineTooLong>> {
        let mut segments: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        if segments.last().is_some_and(|s| s.is_empty()) {
            segments.pop();
        }
        segments
            .into_iter()
            .map(|s| {
                let s = s.strip_suffix(b"\r").unwrap_or(s);
                if s.len() > max_line {
                    Err(LineTooLong)
                } else {
                    Ok(s.to_vec())
                }
            })
            .collect()
    }

    #[test]
    fn lines_end_with_lf_or_crlf_and_a_last_line_needs_the_end() {
        let mut lines = Lines::new(16);
        lines.push(b"SET a 1\r\nGET a\nDEL");
        assert_eq!(lines.next(), Some(Ok(&b"SET a 1"[..])));
        assert_eq!(lines.next(), Some(Ok(&b"GET a"[..])));
        assert_eq!(lines.next(), None);
        lines.push(b" a");
        assert_eq!(lines.next(), None);
        lines.finish();
        assert_eq!(lines.next(), Some(Ok(&b"DEL a"[..])));
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn a_long_line_is_reported_before_its_end_and_skipped_to_it() {
        let mut lines = Lines::new(4);
        lines.push(b"abcdef");
        assert_eq!(lines.next(), Some(Err(LineTooLong)));
        assert_eq!(lines.next(), None);
        lines.push(b"ghij\nok\n");
        assert_eq!(lines.next(), Some(Ok(&b"ok"[..])));
        assert_eq!(lines.next(), None);
        assert_eq!(lines.pending(), 0);
    }

    #[test]
    fn a_line_at_the_limit_may_wait_for_its_newline_after_a_cr() {
        assert_eq!(frame(3, &[b"abc\r", b"\n"]), vec![Ok(b"abc".to_vec())]);
        assert_eq!(frame(3, &[b"abc", b"d"]), vec![Err(LineTooLong)]);
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_lines_of_the_whole_input(
            input in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'\r'), Just(b'\n')], 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..8),
            max_line in 0usize..8,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts {
                chunks.push(&input[at..cut]);
                at = cut;
            }
            chunks.push(&input[at..]);
            prop_assert_eq!(frame(max_line, &chunks), model(max_line, &input));
        }
    }
}
