//! `switchboard listen [--udp] ADDR`: print what arrives.
//!
//! TCP: many clients at once, each line printed as `[PEER] LINE`; an unfinished last line
//! is printed when its client closes. UDP: each line of each datagram printed as
//! `[PEER] LINE`, so a datagram's sender cannot make a line look like another peer's.
//! A newline is added where a line or datagram lacked one. Clients arriving and leaving
//! are reported on stderr, so stdout carries only data.
//!
//! A line is printed as it came except for what could move a terminal's cursor or end
//! the line early, and so make the rest look like another peer's line (`x\r[10.9.9.9:1]
//! forged`): control characters (C0 but tab, DEL, C1) and invalid UTF-8 bytes are
//! printed as `\xNN` (CR is `\x0d`, ESC `\x1b`), the C1 characters and U+2028/U+2029
//! as `\u{85}`, `\u{2028}`, and a backslash as `\\`, so an escape is never ambiguous.
//! Every byte can still be read back from the output.
//!
//! Every client has its own reader task; they all hand finished lines to one stdout
//! writer actor, so lines from different clients never interleave mid-line. A line longer
//! than 64 KiB is printed in pieces of at most that, each cut before an unfinished UTF-8
//! character ([`crate::net::lines`]). TCP clients are taken by the servers' accept loop
//! ([`crate::net::listener`]): out of descriptors, it pauses until a client leaves (one
//! note on stderr says so) instead of retrying at once.
//!
//! Try it: `switchboard listen 127.0.0.1:9000`, then `echo hi | nc 127.0.0.1 9000`.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::io::AsyncWriteExt;

use crate::Result;
use crate::net::bind::{bind_tcp, bind_udp};
use crate::net::lines::{LineFramer, Overlong, datagram_lines};
use crate::net::listener::{self, Conn, ServerConfig};
use crate::net::reader::{Input, Reader};
use crate::net::shutdown;
use crate::net::stats::Stats;
use crate::net::udp::RECV_BUFFER;
use crate::rt;

/// Lines queued for stdout; a full queue holds the readers back (and so the clients).
const STDOUT_MAILBOX: usize = 256;

/// A line longer than this is printed in pieces of at most this size.
const MAX_LINE: usize = 64 * 1024;

/// Runs `listen` until the process is stopped.
pub async fn run(addr: &str, udp: bool) -> Result<()> {
    let (stdout_tx, stdout_rx) = flume::bounded::<Vec<u8>>(STDOUT_MAILBOX);
    rt::spawn(async move {
        let mut stdout = rt::stdout();
        while let Ok(line) = stdout_rx.recv_async().await {
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                std::process::exit(0); // stdout closed (`| head`): we are done
            }
        }
    });
    if udp {
        listen_udp(addr, stdout_tx).await
    } else {
        listen_tcp(addr, stdout_tx).await
    }
}

/// `[peer] ` + `line` escaped ([`escape_into`]) + a newline (its own, or one added).
pub fn tagged(peer: SocketAddr, line: &[u8]) -> Vec<u8> {
    let mut out = format!("[{peer}] ").into_bytes();
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    escape_into(body, &mut out);
    out.push(b'\n');
    out
}

/// Appends `text` to `out` with every byte or character that could move a terminal's
/// cursor, start a new line or garble the output shown as a visible escape (see the
/// module notes): `\xNN` for C0 controls other than tab, DEL and invalid UTF-8 bytes;
/// `\u{NN}` for C1 controls and U+2028/U+2029; `\\` for a backslash.
pub fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\t' => out.push(b'\t'),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\0'..='\x1f' | '\x7f' => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                _ => {
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Every line of `payload` tagged with `peer` (one line, `[peer] `, for an empty one):
/// a datagram carrying `\n[other] ...` must not print as a line from `other`.
pub fn tagged_lines(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 32);
    for line in datagram_lines(payload, MAX_LINE, Overlong::Split).filter_map(|f| f.bytes()) {
        out.extend_from_slice(&tagged(peer, line));
    }
    out
}

async fn listen_tcp(addr: &str, stdout_tx: flume::Sender<Vec<u8>>) -> Result<()> {
    let listener = bind_tcp(addr).await?;
    crate::note!("listening on {} (TCP)", listener.local_addr()?);
    notes_for_warnings();
    // `listen` runs until the process is stopped: this shutdown never fires.
    let (_never, shutdown) = shutdown::channel();
    let config = Arc::new(ServerConfig::default());
    listener::serve(
        "listen",
        listener,
        config,
        Stats::new(),
        shutdown,
        move |conn| {
            crate::note!("[{}] connected", conn.peer);
            print_lines(conn, stdout_tx.clone())
        },
    )
    .await;
    Ok(())
}

/// One TCP client: its lines, tagged, to the stdout writer; a note when it leaves.
async fn print_lines(conn: Conn, stdout_tx: flume::Sender<Vec<u8>>) -> Result<()> {
    let peer = conn.peer;
    let mut reader = Reader::new(conn.stream.split().0, conn.idle_timeout);
    let mut framer = LineFramer::new(MAX_LINE, Overlong::Split);
    let why = loop {
        match reader.next().await {
            Ok(Input::Data(data)) => {
                let mut rest = data.as_slice();
                while let Some(frame) = framer.next(&mut rest) {
                    let line = frame.bytes().unwrap_or_default(); // split, never dropped
                    let _ = stdout_tx.send_async(tagged(peer, line)).await;
                }
            }
            Ok(_) => break "closed".to_string(),
            Err(e) => break format!("lost: {e}"),
        }
    };
    while let Some(frame) = framer.finish() {
        let line = frame.bytes().unwrap_or_default();
        let _ = stdout_tx.send_async(tagged(peer, line)).await;
    }
    crate::note!("[{peer}] {why} ({} bytes)", reader.bytes);
    Ok(())
}

/// The accept loop says through `log` when it pauses for want of descriptors; a tool
/// starts no logger (stdout is data), so its warnings become stderr notes. Nothing is
/// installed if the program already has a logger.
fn notes_for_warnings() {
    struct Notes;
    impl log::Log for Notes {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                crate::note!("{}", record.args());
            }
        }
        fn flush(&self) {}
    }
    if log::set_logger(&Notes).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

async fn listen_udp(addr: &str, stdout_tx: flume::Sender<Vec<u8>>) -> Result<()> {
    let socket = bind_udp(addr).await?;
    crate::note!("listening on {} (UDP)", socket.local_addr()?);
    // Any datagram fits whole (IPv6 payloads run to 65,527 bytes).
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                // One message: a datagram's lines stay together on stdout.
                let _ = stdout_tx.send_async(tagged_lines(peer, &buf[..n])).await;
            }
            Err(e) => {
                crate::note!("receive failed: {e}");
                rt::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &[u8]) -> String {
        let mut out = Vec::new();
        escape_into(text, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn controls_and_invalid_bytes_are_escaped_and_text_is_not() {
        assert_eq!(
            escaped(b"a\rb\x1b[2K\x0b\x0c\x00\x7f"),
            r"a\x0db\x1b[2K\x0b\x0c\x00\x7f"
        );
        assert_eq!(
            escaped("\u{85}\u{9f}\u{2028}\u{2029}".as_bytes()),
            r"\u{85}\u{9f}\u{2028}\u{2029}"
        );
        assert_eq!(escaped(b"\xff\xe2\x82 x"), r"\xff\xe2\x82 x");
        assert_eq!(escaped(br"C:\dir \x0d"), r"C:\\dir \\x0d");
        assert_eq!(escaped("tab\tcafé ΐ €".as_bytes()), "tab\tcafé ΐ €");
        let peer: SocketAddr = "10.0.0.1:9".parse().unwrap();
        assert_eq!(tagged(peer, b"x\r\n"), b"[10.0.0.1:9] x\\x0d\n");
        assert_eq!(tagged(peer, b""), b"[10.0.0.1:9] \n");
    }

    #[test]
    fn a_datagram_is_tagged_line_by_line() {
        let peer: SocketAddr = "10.0.0.1:9".parse().unwrap();
        assert_eq!(tagged_lines(peer, b""), b"[10.0.0.1:9] \n");
        assert_eq!(tagged_lines(peer, b"a\n"), b"[10.0.0.1:9] a\n");
        assert_eq!(
            tagged_lines(peer, b"a\n\nb"),
            b"[10.0.0.1:9] a\n[10.0.0.1:9] \n[10.0.0.1:9] b\n"
        );
        // (Cutting long lines before an unfinished character: `net::lines::piece_end`.)
    }
}
