//! The chat wire protocol as pure functions: telnet filtering, sanitising and command
//! parsing (lines are cut by the shared framer, [`crate::net::lines`]). No I/O here, so
//! every piece is tested on its own (with property tests over arbitrary bytes).
//!
//! Lines are UTF-8 ending in `\n` or `\r\n`. Lines the server writes start with `* `
//! (notice) or `! ` (error to the sender only). Commands: `/nick NAME`, `/msg NAME TEXT`,
//! `/who`, `/join ROOM`, `/rooms`, `/me TEXT`, `/help`, `/quit [REASON]`; `//text` sends
//! a line that starts with `/`. A UDP address joins with `/hello TOKEN`, the token the
//! server sent it ([`super::cookie`]).

use super::unicode_table::INVISIBLE;

/// The longest nick or room name.
pub const MAX_NAME: usize = 32;

/// One line as the client meant it.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// A plain line for the room.
    Say(&'a str),
    /// `/me TEXT`.
    Me(&'a str),
    /// `/nick NAME` (not yet validated).
    Nick(&'a str),
    /// `/msg NAME TEXT`.
    Msg { to: &'a str, text: &'a str },
    /// `/who`.
    Who,
    /// `/join ROOM` (not yet validated).
    Join(&'a str),
    /// `/rooms`.
    Rooms,
    /// `/help`.
    Help,
    /// `/quit [REASON]`.
    Quit(Option<&'a str>),
    /// `/hello TOKEN`: a UDP address answering its challenge (not yet checked).
    Hello(&'a str),
    /// A blank line: ignored.
    Empty,
    /// A command used wrongly: the usage text to send back.
    Usage(&'static str),
    /// `/something` we do not know.
    Unknown(&'a str),
}

/// Parses a sanitised line.
pub fn parse(line: &str) -> Command<'_> {
    let line = line.trim_end();
    if line.trim_start().is_empty() {
        return Command::Empty;
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Command::Say(line);
    };
    if rest.starts_with('/') {
        return Command::Say(rest); // `//text` is the line `/text`
    }
    let (verb, args) = match rest.split_once(char::is_whitespace) {
        Some((verb, args)) => (verb, args.trim()),
        None => (rest, ""),
    };
    match verb.to_ascii_lowercase().as_str() {
        "nick" if is_one_word(args) => Command::Nick(args),
        "nick" => Command::Usage("/nick NAME"),
        "msg" => match args.split_once(char::is_whitespace) {
            Some((to, text)) if !text.trim().is_empty() => Command::Msg {
                to,
                text: text.trim_start(),
            },
            _ => Command::Usage("/msg NAME TEXT"),
        },
        "who" => Command::Who,
        "join" if is_one_word(args) => Command::Join(args.strip_prefix('#').unwrap_or(args)),
        "join" => Command::Usage("/join ROOM"),
        "rooms" => Command::Rooms,
        "me" if !args.is_empty() => Command::Me(args),
        "me" => Command::Usage("/me TEXT"),
        "help" => Command::Help,
        "quit" => Command::Quit((!args.is_empty()).then_some(args)),
        "hello" if is_one_word(args) => Command::Hello(args),
        "hello" => Command::Usage("/hello TOKEN"),
        _ => Command::Unknown(verb),
    }
}

fn is_one_word(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

/// Whether `name` is a valid nick or room: 1 to 32 ASCII letters, digits, `_` or `-`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Nicks nobody may take (compared ignoring case): the server's own notices begin
/// `* server ...`, and a user called `server` could forge them (`/me shutting down`).
pub const RESERVED_NICKS: &[&str] = &["server"];

/// Why `name` cannot be a nick, as the error line to send back; `None` if it can be.
/// Beyond [`valid_name`], a nick starts with a letter — so no `/me` from a nick like
/// `1500` reads as a server count (`* 1500 users left ...`) — and is not one of
/// [`RESERVED_NICKS`].
pub fn nick_problem(name: &str) -> Option<&'static str> {
    if !valid_name(name) {
        Some("! invalid nick: use 1-32 letters, digits, _ or -")
    } else if !name.as_bytes()[0].is_ascii_alphabetic() {
        Some("! invalid nick: it must start with a letter")
    } else if RESERVED_NICKS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        Some("! that nick is reserved")
    } else {
        None
    }
}

/// Makes a received line safe to show on other people's screens: invalid UTF-8 becomes
/// U+FFFD, and control characters other than tab are removed (no terminal escapes, no
/// carriage returns that overwrite a line, no bells). So is everything invisible that can
/// make a line display as something it does not say, or hide text in it: the Unicode
/// `Default_Ignorable_Code_Point` and `Bidi_Control` sets (zero-width spaces and joiners,
/// bidirectional marks and overrides, tag characters, variation selectors) and the line
/// and paragraph separators U+2028/U+2029 (the table is generated from the Unicode data
/// files: [`unicode_table`](super::unicode_table)).
pub fn sanitize(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| c == '\t' || !(c.is_control() || is_invisible(c)))
        .collect()
}

/// Whether `c` is in the sanitiser's table of invisible code points.
pub fn is_invisible(c: char) -> bool {
    // Everything below U+00AD (the table's first entry) is visible or a control.
    c >= '\u{AD}'
        && INVISIBLE
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

/// Removes telnet commands (RFC 854 IAC sequences) from a byte stream, keeping state
/// across chunk borders.
///
/// Only IAC followed by a command byte (240-255) is telnet: `IAC IAC` is the data byte
/// 0xFF, and an IAC before any other byte is no command at all but a raw client's 0xFF
/// (`ÿ` in Latin-1), so both bytes stay data (the 0xFF becomes U+FFFD when sanitised) and
/// the byte after it is never eaten. A subnegotiation (`IAC SB ... IAC SE`) longer than
/// [`MAX_SUBNEGOTIATION`] bytes is abandoned and what follows is data again, so an
/// `IAC SB` that is never closed cannot swallow the rest of the connection.
#[derive(Debug, Default)]
pub struct TelnetFilter {
    state: Telnet,
}

/// The longest subnegotiation honoured, in bytes after `IAC SB`. Terminal type and
/// window size take under 40; a client is only asked for what we negotiate, which is
/// nothing.
pub const MAX_SUBNEGOTIATION: usize = 64;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Telnet {
    #[default]
    Data,
    Iac,
    /// After WILL/WONT/DO/DONT: one option byte follows.
    Option,
    /// Inside a subnegotiation (bytes seen so far), until IAC SE.
    Sub(usize),
    /// An IAC inside a subnegotiation (bytes seen so far).
    SubIac(usize),
}

const IAC: u8 = 255;
const SB: u8 = 250;
const SE: u8 = 240;

impl TelnetFilter {
    /// Appends the data bytes of `input` to `out`.
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // Fast path: no IAC anywhere and no sequence open.
        if self.state == Telnet::Data && !input.contains(&IAC) {
            out.extend_from_slice(input);
            return;
        }
        for &b in input {
            self.step(b, out);
        }
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) {
        self.state = match (self.state, b) {
            (Telnet::Data, IAC) => Telnet::Iac,
            (Telnet::Data, _) => {
                out.push(b);
                Telnet::Data
            }
            (Telnet::Iac, IAC) => {
                out.push(IAC); // escaped: the data byte 0xFF
                Telnet::Data
            }
            (Telnet::Iac, 251..=254) => Telnet::Option,
            (Telnet::Iac, SB) => Telnet::Sub(0),
            (Telnet::Iac, SE..=249) => Telnet::Data, // NOP, GA, AYT, ...: two bytes
            (Telnet::Iac, _) => {
                out.extend_from_slice(&[IAC, b]); // not a command: both are data
                Telnet::Data
            }
            (Telnet::Option, _) => Telnet::Data,
            (Telnet::Sub(n) | Telnet::SubIac(n), _) if n >= MAX_SUBNEGOTIATION => {
                // Never closed: give up on it; this byte is data again.
                self.state = Telnet::Data;
                return self.step(b, out);
            }
            (Telnet::Sub(n), IAC) => Telnet::SubIac(n + 1),
            (Telnet::Sub(n), _) => Telnet::Sub(n + 1),
            (Telnet::SubIac(_), SE) => Telnet::Data,
            (Telnet::SubIac(n), _) => Telnet::Sub(n + 1),
        };
    }
}

/// The `/help` text for a UDP user: one short line, since every byte answering a UDP
/// address is paid for by the bytes that came from it.
pub const HELP_SHORT: &str = "* commands: /nick NAME, /msg NAME TEXT, /who, /join ROOM, /rooms, /me TEXT, /quit [REASON], //text";

/// The `/help` text, one notice per line.
pub const HELP: &[&str] = &[
    "* commands:",
    "*   /nick NAME       change your nick (1-32 letters, digits, _ or -; a letter first)",
    "*   /msg NAME TEXT   send TEXT to NAME alone",
    "*   /who             who is in your room",
    "*   /join ROOM       move to ROOM (created if new)",
    "*   /rooms           list rooms and how many are in each",
    "*   /me TEXT         an action: * NICK TEXT",
    "*   /quit [REASON]   leave",
    "*   //text           send a line that starts with /",
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands() {
        assert_eq!(parse("hello"), Command::Say("hello"));
        assert_eq!(parse("  "), Command::Empty);
        assert_eq!(parse("//etc/passwd"), Command::Say("/etc/passwd"));
        assert_eq!(parse("/nick bob"), Command::Nick("bob"));
        assert_eq!(parse("/NICK bob "), Command::Nick("bob"));
        assert_eq!(parse("/nick"), Command::Usage("/nick NAME"));
        assert_eq!(parse("/nick a b"), Command::Usage("/nick NAME"));
        assert_eq!(
            parse("/msg bob hi there"),
            Command::Msg {
                to: "bob",
                text: "hi there"
            }
        );
        assert_eq!(parse("/msg bob"), Command::Usage("/msg NAME TEXT"));
        assert_eq!(parse("/msg bob   "), Command::Usage("/msg NAME TEXT"));
        assert_eq!(parse("/who"), Command::Who);
        assert_eq!(parse("/join #dev"), Command::Join("dev"));
        assert_eq!(parse("/join"), Command::Usage("/join ROOM"));
        assert_eq!(parse("/rooms"), Command::Rooms);
        assert_eq!(parse("/me waves"), Command::Me("waves"));
        assert_eq!(parse("/me"), Command::Usage("/me TEXT"));
        assert_eq!(parse("/help"), Command::Help);
        assert_eq!(parse("/quit"), Command::Quit(None));
        assert_eq!(
            parse("/quit gone fishing"),
            Command::Quit(Some("gone fishing"))
        );
        assert_eq!(parse("/frobnicate x"), Command::Unknown("frobnicate"));
        assert_eq!(parse("/hello 0123abcd"), Command::Hello("0123abcd"));
        assert_eq!(parse("/HELLO  0123abcd "), Command::Hello("0123abcd"));
        assert_eq!(parse("/hello"), Command::Usage("/hello TOKEN"));
        assert_eq!(parse("/hello a b"), Command::Usage("/hello TOKEN"));
        assert_eq!(parse("/"), Command::Unknown(""));
    }

    #[test]
    fn names() {
        assert!(valid_name("bob") && valid_name("Bob_2-x") && valid_name(&"a".repeat(32)));
        assert!(
            !valid_name("")
                && !valid_name(&"a".repeat(33))
                && !valid_name("bö")
                && !valid_name("a b")
        );
        assert!(!valid_name("*bob*") && !valid_name("<bob>"));
        assert_eq!(nick_problem("bob"), None);
        assert_eq!(nick_problem("Servers"), None);
        assert_eq!(nick_problem("guest12"), None);
        assert_eq!(
            nick_problem("1500"),
            Some("! invalid nick: it must start with a letter")
        );
        assert_eq!(
            nick_problem("_x"),
            Some("! invalid nick: it must start with a letter")
        );
        assert_eq!(nick_problem("SeRvEr"), Some("! that nick is reserved"));
        assert_eq!(
            nick_problem("a b"),
            Some("! invalid nick: use 1-32 letters, digits, _ or -")
        );
    }

    #[test]
    fn sanitizing() {
        assert_eq!(sanitize(b"hi\x1b[31mred\x07\r"), "hi[31mred");
        assert_eq!(sanitize(b"tab\there"), "tab\there");
        assert_eq!(sanitize(b"bad\xffbyte"), "bad\u{FFFD}byte");
        assert_eq!(sanitize("c1\u{9b}x \u{202E}evil".as_bytes()), "c1x evil");
    }

    #[test]
    fn telnet_negotiation_is_removed_across_chunks() {
        let input: &[u8] = &[
            IAC, 251, 1, b'h', IAC, SB, 24, 0, b'x', IAC, SE, b'i', IAC, IAC, IAC, 241, b'\n',
        ];
        for split in 0..input.len() {
            let mut f = TelnetFilter::default();
            let mut out = Vec::new();
            f.filter(&input[..split], &mut out);
            f.filter(&input[split..], &mut out);
            // (`IAC IAC` is the data byte 0xFF.)
            assert_eq!(out, b"hi\xff\n", "split at {split}");
        }
    }

    fn telnet(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        TelnetFilter::default().filter(input, &mut out);
        out
    }

    #[test]
    fn a_lone_0xff_is_data_and_eats_nothing() {
        // A raw Latin-1 client's `5ÿ` then a command on the next line.
        assert_eq!(telnet(b"5\xff\n/who\n"), b"5\xff\n/who\n");
        assert_eq!(telnet(b"\xffa\xff\xff"), b"\xffa\xff");
        assert_eq!(sanitize(b"5\xff"), "5\u{FFFD}");
        // Real commands still go: two-byte ones and option negotiation.
        assert_eq!(telnet(&[b'a', IAC, 241, b'b', IAC, 253, 3, b'c']), b"abc");
    }

    #[test]
    fn an_unclosed_subnegotiation_is_abandoned_after_its_cap() {
        let mut input = vec![IAC, SB, 24];
        input.extend(std::iter::repeat_n(b'.', 200));
        input.extend_from_slice(b"\nhello\n");
        let out = telnet(&input);
        assert!(out.ends_with(b"\nhello\n"), "{out:?}");
        // The option byte and 63 dots were the subnegotiation; the rest is data.
        assert_eq!(
            out.len(),
            200 - (MAX_SUBNEGOTIATION - 1) + b"\nhello\n".len()
        );
        // A closed one of exactly the cap (IAC SE included) is removed whole.
        let mut input = vec![IAC, SB];
        input.extend(std::iter::repeat_n(b'.', MAX_SUBNEGOTIATION - 2));
        input.extend_from_slice(&[IAC, SE, b'o', b'k']);
        assert_eq!(telnet(&input), b"ok");
    }

    #[test]
    fn invisible_characters_are_removed() {
        let sneaky = "a\u{200B}b\u{200D}c\u{2060}d\u{FEFF}e\u{200E}f\u{200F}g\u{061C}h\u{2028}i\u{2029}j\u{E0041}\u{E007F}k\u{00AD}l\u{FE0F}m\u{2066}n";
        assert_eq!(sanitize(sneaky.as_bytes()), "abcdefghijklmn");
        // Visible neighbours of table entries stay.
        let visible = "\u{00AC}\u{00AE}\u{200A}\u{2010}\u{2027}\u{202F}\u{205F}\u{2070}é日本🙂";
        assert_eq!(sanitize(visible.as_bytes()), visible);
    }

    #[test]
    fn the_invisible_table_is_sorted_and_disjoint() {
        assert!(INVISIBLE.iter().all(|&(lo, hi)| lo <= hi));
        assert!(INVISIBLE.windows(2).all(|w| w[0].1 < w[1].0));
        for &(lo, hi) in INVISIBLE {
            assert!(is_invisible(lo) && is_invisible(hi));
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let line = sanitize(&bytes);
            let _ = parse(&line);
        }

        #[test]
        fn sanitized_text_has_no_control_characters(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let clean = sanitize(&bytes);
            prop_assert!(clean.chars().all(|c| c == '\t' || !c.is_control()));
        }

        #[test]
        fn telnet_filter_keeps_plain_text(text in "[ -~\n]{0,100}") {
            let mut out = Vec::new();
            TelnetFilter::default().filter(text.as_bytes(), &mut out);
            prop_assert_eq!(out, text.as_bytes());
        }

        #[test]
        fn telnet_filter_is_independent_of_chunk_borders(
            bytes in proptest::collection::vec(prop_oneof![Just(IAC), Just(SB), Just(SE), Just(251u8), any::<u8>()], 0..300),
            cut in 0usize..300,
        ) {
            let cut = cut.min(bytes.len());
            let whole = telnet(&bytes);
            let mut f = TelnetFilter::default();
            let mut split = Vec::new();
            f.filter(&bytes[..cut], &mut split);
            f.filter(&bytes[cut..], &mut split);
            prop_assert_eq!(&split, &whole);
            // Never more out than in, and bytes without IAC pass untouched.
            prop_assert!(whole.len() <= bytes.len());
            if !bytes.contains(&IAC) {
                prop_assert_eq!(&whole, &bytes);
            }
        }

        #[test]
        fn data_after_any_telnet_garbage_gets_through(
            garbage in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // Whatever came before, at most a cap's worth of bytes plus a few are eaten
            // from what follows.
            let mut input = garbage.clone();
            let tail = vec![b'x'; MAX_SUBNEGOTIATION + 4];
            input.extend_from_slice(&tail);
            prop_assert!(telnet(&input).ends_with(b"x"));
        }

        #[test]
        fn sanitized_text_has_nothing_invisible(s in "(?s).{0,60}", bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            for clean in [sanitize(s.as_bytes()), sanitize(&bytes)] {
                prop_assert!(clean.chars().all(|c| c == '\t' || !(c.is_control() || is_invisible(c))));
            }
        }
    }
}
