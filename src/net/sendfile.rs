//! Sending part of a file with `sendfile(2)`, so large files never pass through user
//! space.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use futures::io::AsyncWriteExt;

use crate::net::shutdown::Shutdown;
use crate::net::writer::deadline::{ServerClosing, progress};
use crate::rt::TcpStream;

/// Part of an open file, to be sent as it is.
#[derive(Clone, Debug)]
pub struct FileRegion {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
}

/// Sends a file region with `sendfile`. When the socket is full, one ordinary write of
/// the next few bytes waits for room (the runtime offers no bare "wait until writable").
/// A file that shrank underneath is an error: the promised length cannot be kept.
pub async fn send_file(stream: &TcpStream, region: &FileRegion) -> io::Result<u64> {
    let mut sent = 0;
    send_file_counted(stream, region, &mut sent, None, None, &mut |_| {}).await?;
    Ok(sent)
}

/// [`send_file`], counting into `sent` the bytes of the region sent so far, so a caller
/// knows how far it got when it fails, and telling `on_sent` each call's bytes as it
/// returns (so the server's counters move during a long transfer); a wait for room that
/// lasts `send_timeout` fails (every `sendfile` or write that moves bytes starts that
/// clock again), as does one still waiting when `close` fires.
pub(crate) async fn send_file_counted(
    mut stream: &TcpStream,
    region: &FileRegion,
    sent: &mut u64,
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
    on_sent: &mut (dyn FnMut(u64) + Send),
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (sock, file) = (stream.as_raw_fd(), region.file.as_raw_fd());
    let end = region.offset + region.len;
    let mut offset = region.offset as libc::off_t;
    let mut fallback = [0u8; 4096];
    while (offset as u64) < end {
        *sent = offset as u64 - region.offset;
        if close.is_some_and(Shutdown::is_fired) {
            return Err(io::Error::other(ServerClosing));
        }
        let want = (end - offset as u64).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the duration (we hold the stream and the
        // file), and `offset` is a valid off_t the kernel advances.
        let n = unsafe { libc::sendfile(sock, file, &mut offset, want) };
        if n > 0 {
            on_sent(n as u64);
            continue;
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being sent",
            ));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let chunk = (end - offset as u64).min(fallback.len() as u64) as usize;
                let got = region.file.read_at(&mut fallback[..chunk], offset as u64)?;
                if got == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was being sent",
                    ));
                }
                let wrote =
                    progress(stream, send_timeout, close, stream.write(&fallback[..got])).await?;
                on_sent(wrote as u64);
                offset += wrote as libc::off_t;
            }
            _ => return Err(e),
        }
    }
    *sent = region.len;
    Ok(())
}
