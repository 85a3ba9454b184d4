//! `switchboard bench --tls`, the built binary against TLS servers in this process on
//! 127.0.0.1 port 0, with certificates made here (rcgen; no key is checked in): echo,
//! stream --verify, http and connect complete with nonzero counts and no errors; a wrong
//! name, an unknown CA, a plain-text server and a server that never answers the
//! handshake are each a clear error, not a hang.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use switchboard::net::listener::ServerConfig;
use switchboard::net::shutdown;
use switchboard::net::stats::Stats;
use switchboard::net::tls::Tls;
use switchboard::roles::echo::Echo;
use switchboard::roles::http::{self, HttpConfig};
use switchboard::rt::{self, TcpListener};

/// A CA and a server certificate it signed for `names`, with the server's key, in a
/// directory of their own (removed on drop).
struct Certs {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new(tag: &str, names: &[&str]) -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-bench-tls-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("bench test CA {tag}"));
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let certs = Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&certs.ca, ca.pem()).unwrap();
        std::fs::write(&certs.cert, cert.pem()).unwrap();
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&certs.key)
                .unwrap()
        };
        f.write_all(key.serialize_pem().as_bytes()).unwrap();
        certs
    }

    fn server(&self) -> ServerConfig {
        ServerConfig {
            tls: Some(Arc::new(
                Tls::load(&self.cert, &self.key, Duration::from_secs(10)).unwrap(),
            )),
            ..ServerConfig::default()
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `switchboard bench ARGS --duration 1s --json`; returns (success, stdout, stderr).
fn bench(args: &[&str]) -> (bool, String, String) {
    let out = binary()
        .arg("bench")
        .args(args)
        .args(["--duration", "1s", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A number field of the JSON report.
fn field(json: &str, name: &str) -> f64 {
    let start = json
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + name.len()
        + 3;
    let rest = &json[start..];
    rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
}

fn assert_clean(ok: bool, out: &str, err: &str) {
    assert!(ok, "bench failed: {err} {out}");
    assert!(field(out, "ops") > 0.0, "{out}");
    assert!(out.contains("\"errors\":{}"), "errors reported: {out}");
}

#[test]
fn echo_stream_verify_and_connect_over_tls_complete() {
    let certs = Certs::new("echo", &["localhost", "127.0.0.1"]);
    let server = start_role(Echo, certs.server());
    // By the target's host name (localhost), as connect verifies it.
    let target = format!("localhost:{}", server.tcp.port());
    let tls = ["--tls", "--ca", path(&certs.ca)];

    let (ok, out, err) = bench(&[&["echo", &target, "--conns", "4"], &tls[..]].concat());
    assert_clean(ok, &out, &err);
    assert!(out.contains("\"mode\":\"echo (TLS)\""), "{out}");
    assert_eq!(field(&out, "bytes_received"), field(&out, "bytes_sent"));

    let stream = [
        "stream", &target, "--conns", "2", "--size", "65536", "--verify",
    ];
    let (ok, out, err) = bench(&[&stream[..], &tls[..]].concat());
    assert_clean(ok, &out, &err);
    assert_eq!(
        field(&out, "bytes_received"),
        field(&out, "bytes_sent"),
        "every byte came back through the session"
    );

    let (ok, out, err) = bench(&[&["connect", &target, "--conns", "2"], &tls[..]].concat());
    assert_clean(ok, &out, &err);
    assert!(out.contains("\"mode\":\"connect (TLS)\""), "{out}");
    assert!(out.contains("\"latency_us\""), "{out}");

    // Every handshake bench counted, the server finished too: none failed on its side
    // (bench closes with close_notify and waits for the server's close, no resets).
    let stats = server.stop();
    assert_eq!(stats.tls.total(), 0, "handshakes the server saw fail");
}

#[test]
fn http_over_tls_completes() {
    let certs = Certs::new("http", &["localhost", "127.0.0.1"]);
    let root = certs.dir.join("site");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("1k"), vec![b'x'; 1024]).unwrap();
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = HttpConfig::new(&root, Duration::from_secs(10)).unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(http::run(
        listener,
        certs.server(),
        cfg,
        Stats::new(),
        shutdown,
    ));

    // By IP address: the certificate names 127.0.0.1 too.
    let target = addr.to_string();
    let args = [
        "http",
        &target,
        "--conns",
        "4",
        "--path",
        "/1k",
        "--tls",
        "--ca",
        path(&certs.ca),
    ];
    let (ok, out, err) = bench(&args);
    assert_clean(ok, &out, &err);
    assert_eq!(field(&out, "status 200"), field(&out, "ops"));
    let (ok, out, err) = bench(&[
        "connect",
        &target,
        "--conns",
        "2",
        "--tls",
        "--ca",
        path(&certs.ca),
    ]);
    assert_clean(ok, &out, &err);
    trigger.fire();
    rt::block_on(done);
}

#[test]
fn a_wrong_name_or_unknown_ca_is_a_clear_error() {
    let certs = Certs::new("other", &["other.example"]);
    let server = start_role(Echo, certs.server());
    let target = format!("localhost:{}", server.tcp.port());
    for mode in ["echo", "connect", "http", "stream"] {
        let (ok, out, err) = bench(&[mode, &target, "--tls", "--ca", path(&certs.ca)]);
        assert!(!ok, "{mode}: {out}");
        assert!(
            err.contains("not valid for name \"localhost\""),
            "{mode}: {err}"
        );
        assert!(err.contains("TLS handshake"), "{mode}: {err}");
    }
    // --sni names what the certificate says: accepted.
    let (ok, out, err) = bench(&[
        "echo",
        &target,
        "--conns",
        "1",
        "--tls",
        "--ca",
        path(&certs.ca),
        "--sni",
        "other.example",
    ]);
    assert_clean(ok, &out, &err);

    // A CA that did not sign the server's certificate.
    let stranger = Certs::new("stranger", &["localhost"]);
    let (ok, _, err) = bench(&[
        "echo",
        &target,
        "--tls",
        "--ca",
        path(&stranger.ca),
        "--sni",
        "other.example",
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("not signed by any CA this client trusts"),
        "{err}"
    );

    // --insecure takes any certificate.
    let (ok, out, err) = bench(&["connect", &target, "--conns", "1", "--tls", "--insecure"]);
    assert_clean(ok, &out, &err);
    server.stop();
}

#[test]
fn a_plain_or_silent_server_is_a_clear_error() {
    // A plain echo server sends our ClientHello back; a plain HTTP server answers text.
    let plain = start_role(Echo, ServerConfig::default());
    let target = plain.tcp.to_string();
    for mode in ["echo", "connect"] {
        let (ok, _, err) = bench(&[mode, &target, "--tls", "--insecure"]);
        assert!(!ok, "{mode}: {err}");
        assert!(
            err.contains("did not answer in TLS: is it a plain-text server?"),
            "{mode}: {err}"
        );
    }
    plain.stop();

    let root = std::env::temp_dir().join(format!("switchboard-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let listener = rt::block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = HttpConfig::new(&root, Duration::from_secs(10)).unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let done = rt::spawn(http::run(
        listener,
        ServerConfig::default(),
        cfg,
        Stats::new(),
        shutdown,
    ));
    let (ok, _, err) = bench(&["http", &addr.to_string(), "--tls", "--insecure"]);
    assert!(!ok, "{err}");
    assert!(err.contains("is it a plain-text server?"), "{err}");
    trigger.fire();
    rt::block_on(done);
    let _ = std::fs::remove_dir_all(&root);

    // A server that accepts and never answers the handshake: an error after the reply
    // timeout, not a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (ok, _, err) = bench(&[
        "echo",
        &silent.local_addr().unwrap().to_string(),
        "--conns",
        "1",
        "--tls",
        "--insecure",
    ]);
    assert!(!ok, "{err}");
    assert!(err.contains("not finished within"), "{err}");
    drop(silent);
}

#[test]
fn chat_over_tls_is_refused_with_a_reason() {
    let (ok, _, err) = bench(&["chat", "127.0.0.1:9", "--rate", "1", "--tls", "--insecure"]);
    assert!(!ok);
    assert!(err.contains("bench chat does not speak TLS"), "{err}");
}
