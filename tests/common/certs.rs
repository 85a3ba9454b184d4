//! Certificates made at run time for the TLS tests (rcgen): never checked-in keys.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchboard::net::tls::{self, Tls, Verify};

/// A CA, a server certificate it signed for `localhost` and 127.0.0.1, and the server's
/// key, written to a directory of their own (the key mode 600, as a server wants it).
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn new(label: &str) -> Certs {
        Certs::named(label, &["localhost", "127.0.0.1"])
    }

    /// A CA of its own and a server certificate for `names` (its subject `CN=` the
    /// first), in a directory named after `label`.
    pub fn named(label: &str, names: &[&str]) -> Certs {
        Certs::make(label, names, false)
    }

    /// As [`Certs::named`], the server certificate valid only in 2020 (long expired).
    pub fn expired(label: &str, names: &[&str]) -> Certs {
        Certs::make(label, names, true)
    }

    fn make(label: &str, names: &[&str], expired: bool) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("switchboard-tls-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("switchboard test CA {label}"),
        );
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
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
        write_private(&certs.key, &key.serialize_pem());
        certs
    }

    /// The server's TLS, with a handshake limit.
    pub fn tls(&self, handshake: Duration) -> Arc<Tls> {
        Arc::new(Tls::load(&self.cert, &self.key, handshake).unwrap())
    }

    /// A server's settings with this certificate (a 10 s handshake limit).
    pub fn server_config(&self) -> switchboard::net::listener::ServerConfig {
        switchboard::net::listener::ServerConfig {
            tls: Some(self.tls(Duration::from_secs(10))),
            ..Default::default()
        }
    }

    /// A client config trusting this CA only.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        tls::client_config(&Verify::Ca(self.ca.clone())).unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
