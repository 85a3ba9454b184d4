//! `switchboard connect [--udp] HOST:PORT`: like nc, stdin to the socket and the socket
//! to stdout at the same time.
//!
//! TCP: a stdin reader feeds the socket's writer actor while the socket's reader prints
//! to stdout, so the server may speak first or many times. At stdin EOF the writer
//! half-closes the connection and printing goes on until the server closes.
//!
//! UDP: each stdin line (with its newline) is one datagram; replies print as they come.
//! At stdin EOF replies still print for `--wait`, then the command exits.
//!
//! TLS (`--tls`): the handshake follows the connect, verifying the server against the
//! system's roots or `--ca`, by the target's host name or `--sni` (`--insecure`: not at
//! all); then the same two actors carry the bytes through the session, and stdin's EOF
//! sends TLS's close_notify before the FIN.
//!
//! Try it: `printf 'hi\n' | switchboard connect 127.0.0.1:7007`, or with
//! `--tls --ca cert.pem -v` against a server started with `--tls-cert`.

use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use futures::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::Result;
use crate::client::resolve_target;
use crate::net::describe::describe;
use crate::net::reader::{Input, READ_CHUNK, Reader};
use crate::net::stats::Stats;
use crate::net::stream::Stream;
use crate::net::tls::{self, Verify};
use crate::net::udp::{MAX_DATAGRAM, RECV_BUFFER};
use crate::net::writer::spawn_writer;
use crate::rt::{self, UdpSocket};

/// What `connect` was asked to do.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub target: String,
    pub udp: bool,
    /// UDP: how long to keep printing replies after stdin ends.
    pub wait: Duration,
    /// How long a TCP connect may take (and, with TLS, the handshake after it).
    pub connect_timeout: Duration,
    /// TLS over the TCP connection (`--tls`), and how to check the server.
    pub tls: Option<TlsOptions>,
}

/// `--tls`, `--ca`, `--sni`, `--insecure`, and `-v` for what the handshake showed.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Whose certificates to trust: the system's roots, a `--ca` file, or none.
    pub verify: Verify,
    /// The name to verify and send as SNI; by default the target's host.
    pub sni: Option<String>,
    /// Print the protocol version and the server certificate's subject on stderr.
    pub verbose: bool,
}

/// Runs `connect`; `Ok` means the session ended cleanly.
pub async fn run(opts: ConnectOptions) -> Result<()> {
    let addrs = resolve_target(&opts.target).await?;
    if opts.udp {
        udp(&opts, addrs).await
    } else {
        tcp(&opts, addrs).await
    }
}

/// Connects to the first address that answers, trying each in turn.
pub async fn connect_any(target: &str, addrs: &[SocketAddr], limit: Duration) -> Result<Stream> {
    let mut last = String::new();
    for &addr in addrs {
        match rt::timeout(limit, Stream::connect(addr)).await {
            Some(Ok(stream)) => return Ok(stream),
            Some(Err(e)) => last = format!("{target} ({addr}): {}", describe(&e)),
            None => last = format!("{target} ({addr}): connect timed out after {limit:?}"),
        }
    }
    Err(last.into())
}

async fn tcp(opts: &ConnectOptions, addrs: Vec<SocketAddr>) -> Result<()> {
    // The TLS settings first: a bad --ca or --sni is an error before any connect.
    let tls = match &opts.tls {
        Some(tls) => Some((
            tls::client_config(&tls.verify)?,
            tls::server_name(&opts.target, tls.sni.as_deref())?,
            tls.verbose,
        )),
        None => None,
    };
    let mut stream = connect_any(&opts.target, &addrs, opts.connect_timeout).await?;
    let _ = stream.socket().set_nodelay(true);
    if let Some((config, name, verbose)) = tls {
        let addr = stream.socket().peer_addr()?;
        let (secure, peer) = tls::connect(config, name, stream, addr, opts.connect_timeout)
            .await
            .map_err(|e| match &opts.tls {
                Some(tls) => tls::with_hint(e, &tls.verify),
                None => e,
            })?;
        if verbose {
            crate::note!(
                "switchboard connect: {} with {addr}; peer certificate subject: {}",
                peer.version,
                peer.subject
            );
        }
        stream = secure;
    }
    let (read, write) = stream.split();
    let stats = Stats::new();

    // stdin → socket: the stdin pump is this socket's only sender; at stdin EOF it drops
    // the sender, and the writer flushes and half-closes.
    let writer_tx = spawn_writer::<Vec<u8>>(write, &stats);
    rt::spawn(async move {
        let mut stdin = rt::stdin();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer_tx.send_async(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    // socket → stdout, until the server closes.
    let mut reader = Reader::new(read, None);
    let mut stdout = rt::stdout();
    loop {
        match reader.next().await {
            Ok(Input::Data(data)) => {
                if stdout.write_all(&data).await.is_err() || stdout.flush().await.is_err() {
                    return Ok(()); // stdout closed (`| head`): nothing more to do
                }
            }
            Ok(Input::Eof) | Ok(Input::Idle) => return Ok(()),
            Err(e) => {
                return Err(format!("{}: connection lost: {}", opts.target, describe(&e)).into());
            }
        }
    }
}

async fn udp(opts: &ConnectOptions, addrs: Vec<SocketAddr>) -> Result<()> {
    let target = addrs[0];
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let socket = UdpSocket::bind(local).await?;
    // A connected socket takes replies only from the target and reports its ICMP errors.
    socket.connect(target).await?;
    let target_name = opts.target.clone();

    let sending = async {
        let mut stdin = BufReader::new(rt::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return Ok::<(), crate::Error>(()),
                Ok(n) if n > MAX_DATAGRAM => {
                    crate::note!(
                        "switchboard connect: skipped a {n}-byte line: a datagram holds at most {MAX_DATAGRAM} bytes"
                    );
                }
                Ok(_) => {
                    socket
                        .send(&line)
                        .await
                        .map_err(|e| format!("{target_name}: send failed: {}", describe(&e)))?;
                }
            }
        }
    };
    let receiving = async {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut stdout = rt::stdout();
        loop {
            match socket.recv(&mut buf).await {
                Ok(n) => {
                    if stdout.write_all(&buf[..n]).await.is_err() || stdout.flush().await.is_err() {
                        return Ok::<(), crate::Error>(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(format!(
                        "{target_name}: connection refused (nothing is listening on UDP there)"
                    )
                    .into());
                }
                Err(e) => {
                    return Err(format!("{target_name}: receive failed: {}", describe(&e)).into());
                }
            }
        }
    };
    futures::pin_mut!(receiving);
    // Send everything while printing replies; then print for `wait` more.
    futures::select! {
        sent = sending.fuse() => sent?,
        received = (&mut receiving).fuse() => return received,
    }
    match rt::timeout(opts.wait, receiving).await {
        Some(result) => result,
        None => Ok(()),
    }
}
