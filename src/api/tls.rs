//! HTTPS for the API. Job specs carry DSNs with passwords and every `/v1` request the
//! bearer token, so a server reached over a network should not take them in the clear:
//! `serve --tls-cert FILE --tls-key FILE` serves the API and `/metrics` over TLS (rustls),
//! and the CLI trusts the system's roots or `--ca-file`.
//!
//! - [`CertFiles`] serves the certificate chain and key of two PEM files, read at start
//!   (a bad file stops the start, naming it) and again at the first handshake after either
//!   file changed, so a renewed certificate is served without a restart; a renewal that
//!   cannot be read keeps the one before and says why.
//! - [`TlsListener`] accepts TCP connections and makes their handshakes in tasks of their
//!   own (bounded by [`HANDSHAKE_LIMIT`]), so a slow or silent client holds up no other.
//! - [`client_config`] is what the CLI trusts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::pg_connect::tls::{describe_pem_error, provider, read_certs};
use crate::pg_connect::TlsError;

/// How long a client may take over its handshake.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Why the API's TLS could not be set up. Names the file, never a key.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    /// A certificate file could not be read or holds none.
    #[error("{0}")]
    Certificates(#[from] TlsError),
    /// The key file could not be read or holds no key.
    #[error("cannot read the private key (--tls-key) {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    /// The key does not go with the certificate, or rustls refuses them.
    #[error("the certificate {cert} and the key {key} cannot serve TLS: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    /// A root file given to the CLI is unusable.
    #[error("--ca-file {path}: {reason}")]
    Roots { path: PathBuf, reason: String },
}

/// The server certificate of two PEM files, reread when either changes.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: (Option<SystemTime>, Option<SystemTime>),
    key: Arc<CertifiedKey>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl CertFiles {
    /// Reads `cert` (the chain, leaf first) and `key` (PKCS#8, PKCS#1 or SEC1, not
    /// encrypted), checking that they go together.
    pub fn load(cert: &Path, key: &Path) -> Result<CertFiles, ApiTlsError> {
        let stamps = (modified(cert), modified(key));
        let certified = read_pair(cert, key)?;
        Ok(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamps,
                key: certified,
            }),
        })
    }

    /// The certificate to serve now: reread first if either file changed since the last
    /// read (kept as it was, with a warning, if the new files cannot be used).
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let stamps = (modified(&self.cert), modified(&self.key));
        if stamps != loaded.stamps {
            loaded.stamps = stamps;
            match read_pair(&self.cert, &self.key) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert.display(), "API certificate reloaded");
                    loaded.key = key;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the API's certificate files changed but cannot be used; serving the one read before")
                }
            }
        }
        loaded.key.clone()
    }

    /// A rustls configuration serving these files (HTTP/1.1, as the API speaks).
    pub fn server_config(self: Arc<Self>) -> Result<Arc<ServerConfig>, ApiTlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.pair_error(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn pair_error(&self, reason: String) -> ApiTlsError {
        ApiTlsError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason,
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The chain and key of two files, checked to go together.
fn read_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, ApiTlsError> {
    let chain = read_certs("API certificate (--tls-cert)", cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| ApiTlsError::Key {
        path: key.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "it holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)".into()
            }
            other => describe_pem_error(&other),
        },
    })?;
    let pair_error = |reason: String| ApiTlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason,
    };
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| pair_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| pair_error(format!("{e} (the key is not the certificate's)")))?;
    Ok(Arc::new(certified))
}

/// A TCP listener whose connections are handed on once their TLS handshake is done.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<(SocketAddr, Result<TlsStream<TcpStream>, String>)>,
}

impl TlsListener {
    /// Serves TLS with `config` on `tcp`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            let done = tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await;
                            let outcome = match done {
                                Ok(Ok(stream)) => Ok(stream),
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(_) => Err(format!("no handshake within {HANDSHAKE_LIMIT:?}")),
                            };
                            (addr, outcome)
                        });
                    }
                    // Out of file descriptors, say: wait a little rather than spin.
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept an API connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok((addr, Ok(stream))) => return (stream, addr),
                        Ok((addr, Err(reason))) => {
                            tracing::debug!(%addr, reason, "API client's TLS handshake failed");
                        }
                        Err(e) => tracing::debug!(error = %e, "API handshake task ended"),
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A client configuration that trusts nothing, for a client that never speaks TLS.
pub fn client_config_without_roots() -> Result<ClientConfig, ApiTlsError> {
    with_roots(RootCertStore::empty(), None)
}

fn with_roots(roots: RootCertStore, ca_file: Option<&Path>) -> Result<ClientConfig, ApiTlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiTlsError::Roots {
            path: ca_file.map(Path::to_path_buf).unwrap_or_default(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What the CLI trusts: the certificates of `ca_file` only, if given (a private CA, or the
/// server's self-signed certificate), else the system's roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, ApiTlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = read_certs("root certificate file (--ca-file)", path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ApiTlsError::Roots {
                    path: path.to_path_buf(),
                    reason: "no usable certificate in it".into(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    with_roots(roots, ca_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, KeyPair};

    /// A self-signed certificate for `localhost`: (certificate PEM, key PEM).
    fn self_signed() -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Moves a file's modification time on, as a renewal a second later would.
    fn touch_later(path: &Path, secs: u64) {
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open");
        file.set_modified(SystemTime::now() + Duration::from_secs(secs))
            .expect("set mtime");
    }

    #[test]
    fn a_changed_pair_is_served_and_an_unusable_change_keeps_the_one_before() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert_a, key_a) = self_signed();
        let (cert_b, key_b) = self_signed();
        let cert = write(dir.path(), "c.pem", &cert_a);
        let key = write(dir.path(), "k.pem", &key_a);
        let files = CertFiles::load(&cert, &key).expect("load");
        let first = files.current();
        assert!(
            Arc::ptr_eq(&first, &files.current()),
            "unchanged: not reread"
        );

        write(dir.path(), "k.pem", &key_b);
        write(dir.path(), "c.pem", &cert_b);
        touch_later(&cert, 5);
        let second = files.current();
        assert_ne!(second.cert, first.cert, "the renewed certificate is served");

        write(dir.path(), "c.pem", "garbage");
        touch_later(&cert, 10);
        assert_eq!(
            files.current().cert,
            second.cert,
            "kept after a bad renewal"
        );
    }

    #[test]
    fn unusable_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert_a, key_a) = self_signed();
        let (_, key_b) = self_signed();
        let cert = write(dir.path(), "c.pem", &cert_a);
        let key = write(dir.path(), "k.pem", &key_a);
        let other = write(dir.path(), "other.pem", &key_b);
        let empty = write(dir.path(), "empty.pem", "");
        let err = |c: &Path, k: &Path| CertFiles::load(c, k).expect_err("refused").to_string();
        assert!(err(&cert, &other).contains("the key is not the certificate's"));
        assert!(err(&empty, &key).contains("empty.pem holds no PEM certificate"));
        assert!(err(&cert, &empty).contains("empty.pem: it holds no unencrypted PEM private key"));
        let ca = client_config(Some(&empty))
            .expect_err("no roots")
            .to_string();
        assert!(ca.contains("empty.pem"), "{ca}");
    }

    #[tokio::test]
    async fn a_silent_client_holds_up_no_other_and_a_trusted_one_is_served() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert_pem, key_pem) = self_signed();
        let cert = write(dir.path(), "c.pem", &cert_pem);
        let key = write(dir.path(), "k.pem", &key_pem);
        let config = Arc::new(CertFiles::load(&cert, &key).expect("load"))
            .server_config()
            .expect("config");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        let router = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let server =
            tokio::spawn(async move { axum::serve(TlsListener::new(tcp, config), router).await });
        // Connects and never says a word.
        let _silent = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");

        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(client_config(Some(&cert)).expect("roots"))
            .build()
            .expect("client");
        let url = format!("https://localhost:{port}/ping");
        let answer = tokio::time::timeout(Duration::from_secs(5), client.get(&url).send())
            .await
            .expect("served while the silent client waits")
            .expect("request");
        assert_eq!(answer.text().await.expect("body"), "pong");

        let untrusting = reqwest::Client::builder()
            .tls_backend_preconfigured(client_config_without_roots().expect("config"))
            .build()
            .expect("client");
        assert!(untrusting.get(&url).send().await.is_err());
        server.abort();
    }
}
