//! The two log formats an operator can choose with `--log-format`, written by our own
//! [`log::Log`] so the choice no longer follows the build profile as femme's does.
//!
//! Both are byte for byte femme 2.2's, so nothing that reads our logs changes:
//!
//! ```text
//! json:   {"level":30,"time":1700000000000,"msg":"listening (TCP)","role":"echo","addr":"127.0.0.1:7"}
//! pretty: ESC[32mESC[1mswitchboard::net::listenerESC[0m listening (TCP)
//!             ESC[1mroleESC[0m echo
//!             ESC[1maddrESC[0m 127.0.0.1:7
//! ```
//!
//! - **json** (femme's `ndjson`): one object per line; `level` is a number (trace 10,
//!   debug 20, info 30, warn 40, error 50), `time` milliseconds since the Unix epoch,
//!   `msg` the message, then each key-value as a member. Strings and values are written
//!   by `serde_json`, as femme writes them (the same crate and version: femme brings it),
//!   so a number stays a number, and quotes, backslashes and control characters in a
//!   peer's text are escaped: every line is valid JSON whatever was logged (Rust strings
//!   are UTF-8, and `serde_json` passes other characters through as they are). Keys are
//!   escaped too, where femme writes them raw (the same bytes for every key we log).
//! - **pretty** (femme's `pretty`): the target in bold, green up to info, yellow for
//!   warnings, red for errors; the message; each key-value on its own line, indented four
//!   spaces, its key in bold.
//!
//! A line is formatted whole, then written to stdout with one `write_all` (femme writes
//! it in pieces through the same stdout), so it reaches the log pipe
//! ([`crate::logging`]) whole. A failed write is ignored: the log pipe keeps stdout from
//! failing, and without it a log call must not panic (femme's unwraps would).
//!
//! Try it: `switchboard --log-format json echo | jq .msg`.

use std::io::Write;
use std::time::UNIX_EPOCH;

use log::kv::{self, VisitSource};
use log::{Level, Log, Metadata, Record};

/// Which of femme's two formats a [`Logger`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// femme's ndjson: one JSON object per line.
    Json,
    /// femme's pretty form: coloured target, message, indented key-values.
    Pretty,
}

/// A [`log::Log`] writing every record at or under [`log::max_level`] to stdout.
#[derive(Debug)]
pub struct Logger {
    format: Format,
}

impl Logger {
    /// A logger writing `format`; install it with `log::set_logger`.
    pub const fn new(format: Format) -> Self {
        Logger { format }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = Vec::with_capacity(256);
        match self.format {
            Format::Json => json_line(&mut line, record, now_millis()),
            Format::Pretty => pretty_line(&mut line, record),
        }
        let _ = std::io::stdout().lock().write_all(&line);
    }

    fn flush(&self) {
        let _ = std::io::stdout().flush();
    }
}

/// Milliseconds since the Unix epoch, femme's `time` (0 for a clock set before 1970).
fn now_millis() -> u128 {
    UNIX_EPOCH.elapsed().unwrap_or_default().as_millis()
}

/// femme's number for a level.
fn level_number(level: Level) -> u8 {
    match level {
        Level::Trace => 10,
        Level::Debug => 20,
        Level::Info => 30,
        Level::Warn => 40,
        Level::Error => 50,
    }
}

/// Appends `record` as one line of femme's ndjson, `time_ms` as its `time`.
pub fn json_line(out: &mut Vec<u8>, record: &Record<'_>, time_ms: u128) {
    let _ = write!(
        out,
        "{{\"level\":{},\"time\":{},\"msg\":",
        level_number(record.level()),
        time_ms
    );
    json_value(out, record.args());
    struct Members<'a>(&'a mut Vec<u8>);
    impl<'kvs> VisitSource<'kvs> for Members<'_> {
        fn visit_pair(
            &mut self,
            key: kv::Key<'kvs>,
            value: kv::Value<'kvs>,
        ) -> Result<(), kv::Error> {
            self.0.push(b',');
            json_value(self.0, key.as_str());
            self.0.push(b':');
            json_value(self.0, &value);
            Ok(())
        }
    }
    let _ = record.key_values().visit(&mut Members(out));
    out.extend_from_slice(b"}\n");
}

/// Appends `value` as JSON; if it cannot be serialised (a `Display` that fails), `null`
/// instead of half a value, so the line stays valid.
fn json_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let mark = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
}

// femme's ANSI codes.
const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";

/// Appends `record` as femme's pretty form: the target coloured by level, the message,
/// and one indented line per key-value.
pub fn pretty_line(out: &mut Vec<u8>, record: &Record<'_>) {
    let colour = match record.level() {
        Level::Trace | Level::Debug | Level::Info => GREEN,
        Level::Warn => YELLOW,
        Level::Error => RED,
    };
    let _ = write!(
        out,
        "{colour}{BOLD}{}{RESET} {}",
        record.target(),
        record.args()
    );
    struct Lines<'a>(&'a mut Vec<u8>);
    impl<'kvs> VisitSource<'kvs> for Lines<'_> {
        fn visit_pair(
            &mut self,
            key: kv::Key<'kvs>,
            value: kv::Value<'kvs>,
        ) -> Result<(), kv::Error> {
            let _ = write!(self.0, "\n    {BOLD}{key}{RESET} {value}");
            Ok(())
        }
    }
    let _ = record.key_values().visit(&mut Lines(out));
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::kv::Value;

    fn json(level: Level, args: std::fmt::Arguments<'_>, kvs: &[(&str, Value<'_>)]) -> String {
        let mut out = Vec::new();
        let record = Record::builder()
            .level(level)
            .target("switchboard::test")
            .args(args)
            .key_values(&kvs)
            .build();
        json_line(&mut out, &record, 1_700_000_000_123);
        String::from_utf8(out).unwrap()
    }

    fn pretty(level: Level, args: std::fmt::Arguments<'_>, kvs: &[(&str, Value<'_>)]) -> String {
        let mut out = Vec::new();
        let record = Record::builder()
            .level(level)
            .target("switchboard::test")
            .args(args)
            .key_values(&kvs)
            .build();
        pretty_line(&mut out, &record);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_is_femmes_ndjson_with_typed_values() {
        let line = json(
            Level::Info,
            format_args!("stopped: {}", "connections=1"),
            &[
                ("role", Value::from("echo")),
                ("uptime_s", Value::from(42u64)),
                ("delta", Value::from(-3i64)),
                ("ok", Value::from(true)),
                ("ratio", Value::from(0.5f64)),
                ("ip", Value::from_display(&std::net::Ipv4Addr::LOCALHOST)),
            ],
        );
        assert_eq!(
            line,
            "{\"level\":30,\"time\":1700000000123,\"msg\":\"stopped: connections=1\",\
             \"role\":\"echo\",\"uptime_s\":42,\"delta\":-3,\"ok\":true,\"ratio\":0.5,\
             \"ip\":\"127.0.0.1\"}\n"
        );
    }

    #[test]
    fn json_numbers_every_level_as_femme_does() {
        for (level, n) in [
            (Level::Trace, 10),
            (Level::Debug, 20),
            (Level::Info, 30),
            (Level::Warn, 40),
            (Level::Error, 50),
        ] {
            assert_eq!(
                json(level, format_args!("m"), &[]),
                format!("{{\"level\":{n},\"time\":1700000000123,\"msg\":\"m\"}}\n")
            );
        }
    }

    #[test]
    fn json_escapes_what_a_peer_can_send() {
        let text = "say \"hi\" \\ back\nnext\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f} é ✓ 🎉 \u{2028}";
        let line = json(
            Level::Warn,
            format_args!("{text}"),
            &[("text", Value::from(text))],
        );
        let escaped =
            "say \\\"hi\\\" \\\\ back\\nnext\\r\\t\\b\\f\\u0000\\u001f\u{7f} é ✓ 🎉 \u{2028}";
        assert_eq!(
            line,
            format!(
                "{{\"level\":40,\"time\":1700000000123,\"msg\":\"{escaped}\",\"text\":\"{escaped}\"}}\n"
            )
        );
        // One line, and it reads back as the text that was logged.
        assert_eq!(line.matches('\n').count(), 1);
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["msg"], text);
        assert_eq!(parsed["text"], text);
    }

    #[test]
    fn json_of_bytes_from_a_peer_stays_valid() {
        // What a role logs of a peer's bytes is text already (lossy or escaped); either
        // way the line parses and says what was logged.
        let bytes = b"\xff\xfe\"\\\x00\x1b[31m";
        let lossy = String::from_utf8_lossy(bytes);
        let line = json(
            Level::Info,
            format_args!("{lossy}"),
            &[("debug", Value::from_debug(&bytes.as_slice()))],
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["msg"], *lossy);
        assert_eq!(parsed["debug"], format!("{:?}", bytes.as_slice()));
    }

    #[test]
    fn json_writes_a_float_that_is_not_a_number_as_null() {
        let line = json(
            Level::Info,
            format_args!("m"),
            &[("x", Value::from(f64::NAN))],
        );
        assert!(line.ends_with(",\"x\":null}\n"), "{line}");
    }

    #[test]
    fn json_escapes_keys_femme_would_write_raw() {
        let line = json(
            Level::Info,
            format_args!("m"),
            &[("a\"b", Value::from(1u8))],
        );
        assert!(line.ends_with(",\"a\\\"b\":1}\n"), "{line}");
        serde_json::from_str::<serde_json::Value>(&line).unwrap();
    }

    #[test]
    fn pretty_is_femmes_coloured_form() {
        assert_eq!(
            pretty(
                Level::Info,
                format_args!("listening (TCP)"),
                &[("role", Value::from("echo")), ("port", Value::from(7u16))],
            ),
            "\x1b[32m\x1b[1mswitchboard::test\x1b[0m listening (TCP)\
             \n    \x1b[1mrole\x1b[0m echo\
             \n    \x1b[1mport\x1b[0m 7\n"
        );
        assert_eq!(
            pretty(Level::Warn, format_args!("w"), &[]),
            "\x1b[33m\x1b[1mswitchboard::test\x1b[0m w\n"
        );
        assert_eq!(
            pretty(Level::Error, format_args!("e"), &[]),
            "\x1b[31m\x1b[1mswitchboard::test\x1b[0m e\n"
        );
        assert_eq!(
            pretty(Level::Debug, format_args!("d"), &[]),
            "\x1b[32m\x1b[1mswitchboard::test\x1b[0m d\n"
        );
    }
}
