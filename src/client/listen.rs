//! `switchboard listen [--udp] ADDR`: print what arrives.
//!
//! TCP: many clients at once, each line printed as `[PEER] LINE`; an unfinished last line
//! is printed when its client closes. UDP: each line of each datagram printed as
//! `[PEER] LINE`, so a datagram's sender cannot make a line look like another peer's.
//! Bytes are printed as they came (this is a debugging tool: nothing is re-encoded);
//! a newline is added where a line or datagram lacked one. Clients arriving and leaving
//! are reported on stderr, so stdout carries only data.
//!
//! Every client has its own reader task; they all hand finished lines to one stdout
//! writer actor, so lines from different clients never interleave mid-line.
//!
//! Try it: `switchboard listen 127.0.0.1:9000`, then `echo hi | nc 127.0.0.1 9000`.

use std::net::SocketAddr;

use futures::io::AsyncWriteExt;

use crate::Result;
use crate::net::addr::{bind_tcp, bind_udp};
use crate::net::conn::{Input, Reader};
use crate::net::udp::MAX_DATAGRAM;
use crate::rt;

/// Lines queued for stdout; a full queue holds the readers back (and so the clients).
const STDOUT_MAILBOX: usize = 256;

/// A line held this long without a newline is printed in pieces of this size.
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

/// `[peer] ` + `line` + a newline if it lacks one.
pub fn tagged(peer: SocketAddr, line: &[u8]) -> Vec<u8> {
    let mut out = format!("[{peer}] ").into_bytes();
    out.extend_from_slice(line);
    if line.last() != Some(&b'\n') {
        out.push(b'\n');
    }
    out
}

/// Every line of `payload` tagged with `peer` (one line, `[peer] `, for an empty one):
/// a datagram carrying `\n[other] ...` must not print as a line from `other`.
pub fn tagged_lines(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    if payload.is_empty() {
        return tagged(peer, payload);
    }
    let mut out = Vec::with_capacity(payload.len() + 32);
    for line in payload.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(&tagged(peer, line));
    }
    out
}

async fn listen_tcp(addr: &str, stdout_tx: flume::Sender<Vec<u8>>) -> Result<()> {
    let listener = bind_tcp(addr).await?;
    crate::note!("listening on {} (TCP)", listener.local_addr()?);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                crate::note!("accept failed: {e}");
                rt::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        crate::note!("[{peer}] connected");
        let stdout_tx = stdout_tx.clone();
        rt::spawn(async move {
            let mut reader = Reader::new(stream, None);
            let mut pending = Vec::new();
            let why = loop {
                match reader.next().await {
                    Ok(Input::Data(data)) => {
                        pending.extend_from_slice(&data);
                        let mut start = 0;
                        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
                            let _ = stdout_tx
                                .send_async(tagged(peer, &pending[start..start + i + 1]))
                                .await;
                            start += i + 1;
                        }
                        while pending.len() - start >= MAX_LINE {
                            let _ = stdout_tx
                                .send_async(tagged(peer, &pending[start..start + MAX_LINE]))
                                .await;
                            start += MAX_LINE;
                        }
                        pending.drain(..start);
                    }
                    Ok(_) => break "closed".to_string(),
                    Err(e) => break format!("lost: {e}"),
                }
            };
            if !pending.is_empty() {
                let _ = stdout_tx.send_async(tagged(peer, &pending)).await;
            }
            crate::note!("[{peer}] {why} ({} bytes)", reader.bytes);
        });
    }
}

async fn listen_udp(addr: &str, stdout_tx: flume::Sender<Vec<u8>>) -> Result<()> {
    let socket = bind_udp(addr).await?;
    crate::note!("listening on {} (UDP)", socket.local_addr()?);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
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
