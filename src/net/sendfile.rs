//! Sending part of a file: with `sendfile(2)` on a plain socket, so large files never
//! pass through user space; through the session, in chunks, on a layered stream.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::io::AsyncWriteExt;
use rustix::io::Errno;

use crate::net::shutdown::Shutdown;
use crate::net::socket::Socket;
use crate::net::stream::WriteHalf;
use crate::net::writer::deadline::{ServerClosing, progress};

/// Part of an open file, to be sent as it is.
#[derive(Clone, Debug)]
pub struct FileRegion {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    pub len: u64,
}

/// The most one copy through a session reads from the file at a time.
const COPY_CHUNK: usize = 64 * 1024;

/// Sends a file region: `sendfile` on a plain stream, waiting on the reactor whenever the
/// socket is full; a copy through the session on a layered one. A file that shrank
/// underneath is an error: the promised length cannot be kept.
pub async fn send_file(stream: &mut WriteHalf, region: &FileRegion) -> io::Result<u64> {
    let mut sent = 0;
    let socket = stream.socket().clone();
    send_file_counted(stream, &socket, region, &mut sent, None, None, &mut |_| {}).await?;
    Ok(sent)
}

/// [`send_file`], counting into `sent` the bytes of the region sent so far, so a caller
/// knows how far it got when it fails, and telling `on_sent` each call's bytes as it
/// returns (so the server's counters move during a long transfer); a wait for room that
/// makes no progress for `send_timeout` fails ([`progress`]), as does one still waiting
/// when `close` fires.
pub(crate) async fn send_file_counted(
    stream: &mut WriteHalf,
    socket: &Socket,
    region: &FileRegion,
    sent: &mut u64,
    send_timeout: Option<Duration>,
    close: Option<&Shutdown>,
    on_sent: &mut (dyn FnMut(u64) + Send),
) -> io::Result<()> {
    let end = region.offset + region.len;
    let mut offset = region.offset;
    let mut copy = Vec::new();
    while offset < end {
        *sent = offset - region.offset;
        if close.is_some_and(Shutdown::is_fired) {
            return Err(io::Error::other(ServerClosing));
        }
        if let Some(raw) = stream.raw() {
            let want = (end - offset).min(1 << 30) as usize;
            match rustix::fs::sendfile(raw, &*region.file, Some(&mut offset), want) {
                Ok(0) => return Err(shrank()),
                Ok(n) => {
                    *sent = offset - region.offset;
                    on_sent(n as u64);
                    if n < want {
                        // The socket took what it had room for: wait for more room
                        // rather than ask again for an EAGAIN.
                        progress(socket, send_timeout, close, socket.writable()).await?;
                    }
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    progress(socket, send_timeout, close, socket.writable()).await?;
                }
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        // Under a session: the bytes must pass through it.
        use std::os::unix::fs::FileExt;
        copy.resize(COPY_CHUNK, 0);
        let chunk = (end - offset).min(COPY_CHUNK as u64) as usize;
        let got = region.file.read_at(&mut copy[..chunk], offset)?;
        if got == 0 {
            return Err(shrank());
        }
        let mut done = 0;
        while done < got {
            let n = progress(socket, send_timeout, close, stream.write(&copy[done..got])).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
            offset += n as u64;
            *sent = offset - region.offset;
            on_sent(n as u64);
        }
    }
    *sent = region.len;
    Ok(())
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file shrank while it was being sent",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::tests::{layered, pair};
    use crate::rt;
    use futures::io::AsyncReadExt;

    #[test]
    fn a_region_arrives_whole_by_sendfile_and_through_a_session() {
        let path = std::env::temp_dir().join(format!("sb-sendfile-{}", std::process::id()));
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        rt::block_on(async {
            for wrap in [false, true] {
                let (near, far) = pair().await;
                let near = if wrap { layered(near) } else { near };
                let (_near_r, mut near_w) = near.split();
                let region = FileRegion {
                    file: file.clone(),
                    offset: 1000,
                    len: 2_500_000,
                };
                let sender = rt::spawn(async move {
                    let sent = send_file(&mut near_w, &region).await.unwrap();
                    near_w.close().await.unwrap();
                    sent
                });
                let (mut far_r, _far_w) = far.split();
                let mut got = Vec::new();
                far_r.read_to_end(&mut got).await.unwrap();
                assert_eq!(sender.await, 2_500_000);
                assert!(got == content[1000..2_501_000], "bytes changed on the way");
            }
        });
    }
}
