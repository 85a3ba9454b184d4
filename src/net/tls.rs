//! TLS on any TCP server, and on the `connect` tool: rustls with the ring provider, TLS
//! 1.2 and 1.3 only, through futures-rustls.
//!
//! ```text
//!   accept loop ─spawns─▶ connection task: Tls::accept(conn)
//!                           first byte 0x16? (peeked: plain text is closed, nothing sent)
//!                           handshake, within --tls-handshake-timeout
//!                           └─▶ Conn { stream: Stream::over(socket, TlsStream), .. } ─▶ the role's handler
//! ```
//!
//! [`Tls::load`] reads `--tls-cert` and `--tls-key` once (at start, and at each reload
//! under `serve`): a key that does not match the certificate, a file that is missing or
//! holds no PEM of the right kind, is an error naming the file; a key file that group or
//! others may read gets a warning. One [`Tls`] is shared (an `Arc`) by every accept loop
//! of a server; a role may add ALPN to its copy ([`Tls::with_alpn`]: HTTP says
//! `http/1.1`).
//!
//! The handshake runs in the connection's own task, never in the accept loop. One that
//! fails or does not finish in time is closed with one log line and counted
//! (`Stats::tls`, `switchboard_tls_handshake_failures_total{reason}`). After it the
//! role sees a [`Stream`] like any other: its halves share the session, the writer copies
//! files through it instead of `sendfile`, and the proxy copies instead of splicing.
//!
//! The client side ([`client_config`], [`connect`]) verifies the server against the
//! system's roots, or a `--ca` file, by the name given (`--sni`), unless told
//! `--insecure`.
//!
//! Try it (README "TLS" has the `openssl req` line that makes a test certificate):
//! `switchboard echo --tls-cert cert.pem --tls-key key.pem`, then
//! `openssl s_client -connect 127.0.0.1:7007 -quiet`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_rustls::rustls::{self, pki_types};
use futures_rustls::{TlsAcceptor, TlsConnector};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::Result;
use crate::net::describe::describe;
use crate::net::listener::{Conn, TlsInfo};
use crate::net::stream::Stream;
use crate::rt;

/// The default `--tls-handshake-timeout`: a handshake is a few round trips, and a client
/// that has not finished one in this long is stalled or hostile.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// A TLS record's first byte when it carries a handshake message (a ClientHello is one).
const HANDSHAKE_RECORD: u8 = 0x16;

/// The versions offered and accepted: TLS 1.3, and 1.2 for older clients; never less.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto every config here uses: ring's, so no C library beyond what `ring` builds
/// itself is needed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS: its certificate and key, loaded once, and the handshake limit. Shared
/// by every accept loop of the server (and by each generation's, under `serve`).
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    /// The certificate file, for logs.
    cert_path: PathBuf,
    /// The certificate's subject, for the start-up log line.
    subject: String,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert_path)
            .field("subject", &self.subject)
            .field("alpn", &self.config.alpn_protocols)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl Tls {
    /// Reads the certificate chain (PEM, leaf first) and its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1), checks that they belong together, and builds the server's TLS.
    /// Every error names the file it is about. A key file that group or others may read
    /// is logged as a warning (the key is still used).
    pub fn load(cert: &Path, key: &Path, handshake_timeout: Duration) -> Result<Tls> {
        let certs = read_certs(cert, "--tls-cert")?;
        let key_der = read_key(key)?;
        let subject = certs.first().map(|c| subject_of(c)).unwrap_or_default();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "--tls-key {} does not match the certificate in --tls-cert {}",
                    key.display(),
                    cert.display()
                ),
                e => format!(
                    "--tls-cert {} / --tls-key {}: {e}",
                    cert.display(),
                    key.display()
                ),
            })?;
        let config = Arc::new(config);
        Ok(Tls {
            acceptor: TlsAcceptor::from(config.clone()),
            config,
            handshake_timeout: handshake_timeout.max(Duration::from_millis(1)),
            cert_path: cert.to_owned(),
            subject,
        })
    }

    /// The same certificate offering these ALPN protocols (HTTP: `http/1.1`); a client
    /// that asks only for others is refused in the handshake.
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Tls {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        Tls {
            acceptor: TlsAcceptor::from(config.clone()),
            config,
            ..self.clone()
        }
    }

    /// How long a client has to finish its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The certificate's subject (`CN=localhost`), for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The certificate file, for logs.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Runs the server side of the handshake on a freshly accepted connection, in its
    /// own task: the connection with its stream laid over the session, or `None` after
    /// one log line (and a count in `stats.tls`) when the client sent plain text, closed,
    /// failed the handshake or did not finish it within the handshake timeout; its
    /// socket is shut then.
    pub async fn accept(&self, role: &'static str, conn: Conn) -> Option<Conn> {
        let started = Instant::now();
        let Conn {
            stream,
            peer,
            stats,
            idle_timeout,
            close_now,
            tls: _,
        } = conn;
        let socket = stream.socket().clone();
        let failure = match rt::timeout(self.handshake_timeout, self.handshake(stream)).await {
            Some(Ok(tls)) => {
                let (_, session) = tls.get_ref();
                let info = TlsInfo {
                    version: version_name(session.protocol_version()),
                    sni: session.server_name().map(Box::from),
                };
                log::debug!(role = role, peer = peer.to_string().as_str(), version = info.version,
                    sni = info.sni.as_deref().unwrap_or(""),
                    ms = started.elapsed().as_millis() as u64; "tls: handshake done");
                return Some(Conn {
                    stream: Stream::over(socket, tls),
                    peer,
                    stats,
                    idle_timeout,
                    close_now,
                    tls: Some(info),
                });
            }
            Some(Err(failure)) => failure,
            None => Failure::Timeout(self.handshake_timeout),
        };
        let _ = socket.shut_both();
        stats.tls.count(&failure);
        log::info!(role = role, peer = peer.to_string().as_str(), reason = failure.reason(),
            ms = started.elapsed().as_millis() as u64; "tls: handshake failed ({failure}); closing");
        None
    }

    /// The first byte (peeked), then the handshake.
    async fn handshake(
        &self,
        stream: Stream,
    ) -> std::result::Result<futures_rustls::server::TlsStream<Stream>, Failure> {
        let mut first = [0u8; 1];
        match stream.socket().peek(&mut first).await {
            Ok(0) => return Err(Failure::Closed("before its ClientHello".into())),
            Ok(_) if first[0] != HANDSHAKE_RECORD => return Err(Failure::Plaintext(first[0])),
            Ok(_) => {}
            Err(e) => return Err(Failure::Closed(describe(&e))),
        }
        self.acceptor
            .accept(stream)
            .await
            .map_err(|e| Failure::from_io(&e))
    }
}

/// Why a handshake did not complete.
#[derive(Debug)]
enum Failure {
    /// Not finished within the handshake timeout.
    Timeout(Duration),
    /// The first byte was not a TLS handshake record: a client speaking plain text (or
    /// anything else) to a TLS port.
    Plaintext(u8),
    /// The client closed or reset before the handshake was over.
    Closed(String),
    /// The handshake itself failed (no version or cipher in common, a malformed message,
    /// an alert from the client).
    Refused(String),
}

impl Failure {
    fn from_io(e: &io::Error) -> Failure {
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Failure::Refused(tls.to_string());
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Closed(describe(e)),
            _ => Failure::Refused(describe(e)),
        }
    }

    /// The reason as a label (logs, metrics).
    fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Plaintext(_) => "plaintext",
            Failure::Closed(_) => "closed",
            Failure::Refused(_) => "refused",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(limit) => write!(f, "not finished within {limit:?}"),
            Failure::Plaintext(byte) => write!(
                f,
                "not a TLS ClientHello (first byte {byte:#04x}): plain text on a TLS port?"
            ),
            Failure::Closed(how) => write!(f, "client closed: {how}"),
            Failure::Refused(why) => write!(f, "{why}"),
        }
    }
}

/// TLS handshakes that did not complete, by why (a server without TLS has none). One
/// relaxed add per failure.
#[derive(Debug, Default)]
pub struct TlsFailures {
    /// Not finished within `--tls-handshake-timeout`.
    pub timeout: AtomicU64,
    /// The first byte was no TLS handshake record (plain text to a TLS port).
    pub plaintext: AtomicU64,
    /// The client closed or reset during the handshake.
    pub closed: AtomicU64,
    /// The handshake failed (nothing in common, a malformed message, a client's alert).
    pub refused: AtomicU64,
}

impl TlsFailures {
    fn count(&self, failure: &Failure) {
        let counter = match failure {
            Failure::Timeout(_) => &self.timeout,
            Failure::Plaintext(_) => &self.plaintext,
            Failure::Closed(_) => &self.closed,
            Failure::Refused(_) => &self.refused,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Every failure, by reason label.
    pub fn by_reason(&self) -> [(&'static str, &AtomicU64); 4] {
        [
            ("timeout", &self.timeout),
            ("plaintext", &self.plaintext),
            ("closed", &self.closed),
            ("refused", &self.refused),
        ]
    }

    /// All failures together.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n.load(Relaxed)).sum()
    }
}

/// A TLS version as people write it.
pub fn version_name(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "other",
        None => "none",
    }
}

/// The certificates in a PEM file (at least one); `option` names the flag for errors.
fn read_certs(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{option} {}: {}", path.display(), describe(&e)))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{option} {}: not a PEM certificate file ({e})",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{option} {}: no certificate in it (PEM, -----BEGIN CERTIFICATE-----)",
            path.display()
        )
        .into());
    }
    Ok(certs)
}

/// The private key in a PEM file, warning when group or others may read the file. The
/// permissions are those of the file read (one open), not of a path looked up again.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let named = |e: &io::Error| format!("--tls-key {}: {}", path.display(), describe(e));
    let mut file = std::fs::File::open(path).map_err(|e| named(&e))?;
    let mode = file.metadata().map_err(|e| named(&e))?.permissions().mode();
    if mode & 0o044 != 0 {
        log::warn!(key = path.display().to_string().as_str(), mode = format!("{:o}", mode & 0o777).as_str();
            "tls: the key file is readable by its group or other users; chmod 600 it");
    }
    let mut pem = Vec::new();
    file.read_to_end(&mut pem).map_err(|e| named(&e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            pki_types::pem::Error::NoItemsFound => {
                "no private key in it (PEM: PKCS#8, PKCS#1 or SEC1)".to_string()
            }
            e => format!("not a PEM private key ({e})"),
        };
        format!("--tls-key {}: {why}", path.display()).into()
    })
}

/// A certificate's subject as text (`CN=localhost, O=Example`); empty if it does not parse.
pub fn subject_of(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, parsed)| parsed.subject().to_string())
        .unwrap_or_default()
}

/// How a client checks the server's certificate.
#[derive(Clone, Debug, Default)]
pub enum Verify {
    /// Against the system's root certificates (what `openssl` and `curl` use here).
    #[default]
    SystemRoots,
    /// Against the certificates in this PEM file only.
    Ca(PathBuf),
    /// Not at all (`--insecure`): anyone in the path can read and change the traffic.
    Insecure,
}

/// A client's TLS settings: TLS 1.2 and 1.3, verifying as `verify` says.
pub fn client_config(verify: &Verify) -> Result<Arc<rustls::ClientConfig>> {
    client_config_for(verify, "--ca", "--insecure")
}

/// [`client_config`], its errors naming the options as `ca` and `insecure` (the proxy's
/// are `--upstream-ca` and `--upstream-insecure`).
pub fn client_config_for(
    verify: &Verify,
    ca: &str,
    insecure: &str,
) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match verify {
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
        Verify::Ca(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path, ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{ca} {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no system root certificates found{why}: give {ca} PEM, or {insecure}"
                )
                .into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// The name a client verifies and sends as SNI: `sni` if given, else the host of
/// `target` (`HOST:PORT`, `[V6]:PORT`); an IP address is checked against the
/// certificate's IP addresses and sends no SNI.
pub fn server_name(target: &str, sni: Option<&str>) -> Result<ServerName<'static>> {
    let host = match sni {
        Some(name) => name,
        None => {
            let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
            host.trim_start_matches('[').trim_end_matches(']')
        }
    };
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("not a valid TLS server name: {host:?}").into())
}

/// A handshake error as a phrase, with what to do where rustls's own words are terse.
fn explain(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error, HandshakeType};
    let text = e.to_string();
    if text.contains("CaUsedAsEndEntity") {
        return "the server's certificate is a CA certificate (basicConstraints CA:TRUE), which is not accepted as a server's own; make it with -addext basicConstraints=critical,CA:FALSE".into();
    }
    match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("{text} (the certificate is not signed by any CA this client trusts)")
        }
        // A plain-text server answers a ClientHello with its own words (an HTTP 400, a
        // banner) or, if it echoes, with the ClientHello itself.
        Error::InvalidMessage(_)
        | Error::InappropriateHandshakeMessage {
            got_type: HandshakeType::ClientHello,
            ..
        } => format!("{text} (the server did not answer in TLS: is it a plain-text server?)"),
        _ => text,
    }
}

/// A client's handshake error with what to do when it was checked against the system's
/// roots: a private CA is trusted with `--ca`.
pub fn with_hint(e: crate::Error, verify: &Verify) -> crate::Error {
    match verify {
        Verify::SystemRoots => format!(
            "{e} (checked against the system's root certificates; --ca PEM trusts a certificate of your own)"
        )
        .into(),
        _ => e,
    }
}

/// What a client learnt in its handshake: the protocol version and the server
/// certificate's subject.
#[derive(Clone, Debug)]
pub struct Peer {
    pub version: &'static str,
    pub subject: String,
    /// The application protocol agreed (ALPN), if the client offered any.
    pub alpn: Option<String>,
    /// The name the certificate was verified by (and sent as SNI, unless an IP address).
    pub server_name: String,
}

/// Runs the client side of the handshake over `stream` (connected to `addr`), within
/// `limit`: the stream laid over the session, and what the server showed.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    stream: Stream,
    addr: SocketAddr,
    limit: Duration,
) -> Result<(Stream, Peer)> {
    let socket = stream.socket().clone();
    let handshake = TlsConnector::from(config).connect(name.clone(), stream);
    let tls = match rt::timeout(limit, handshake).await {
        Some(Ok(tls)) => tls,
        Some(Err(e)) => {
            let why = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or_else(|| describe(&e), explain);
            return Err(format!(
                "TLS handshake with {addr} ({}) failed: {why}",
                name.to_str()
            )
            .into());
        }
        None => {
            return Err(format!("TLS handshake with {addr} not finished within {limit:?}").into());
        }
    };
    let (_, session) = tls.get_ref();
    let peer = Peer {
        version: version_name(session.protocol_version()),
        subject: session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(subject_of)
            .unwrap_or_default(),
        alpn: session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        server_name: name.to_str().into_owned(),
    };
    Ok((Stream::over(socket, tls), peer))
}

/// `--insecure`: every certificate is taken, while the handshake's signatures are still
/// checked (so the session is at least with whoever holds the key of the certificate
/// shown).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
