//! TLS for PostgreSQL sessions (rustls): the client configuration a DSN's [`TlsSettings`]
//! ask for, and the `SSLRequest` handshake of a session we speak ourselves (the
//! replication session of `cdc::transport`).
//!
//! Certificate checks follow libpq's:
//! - `verify-full`: the chain must reach a trusted root and the certificate must name the
//!   host (rustls' WebPKI verifier);
//! - `verify-ca`, and `prefer`/`require` when there are root certificates: the chain must
//!   reach a trusted root, the name is not checked ([`NameUnchecked`] with roots);
//! - `prefer`/`require` without root certificates: encryption only, the certificate is not
//!   checked ([`NameUnchecked`] without; the handshake's signatures still are).
//!
//! Root certificates are `sslrootcert` (a PEM file, or `system` for the system's store),
//! else `~/.postgresql/root.crt` if it exists, as with libpq. Where the chain is checked,
//! it is also checked against the certificate revocation lists of `sslcrl` (a PEM file)
//! and `sslcrldir` (a directory of them), else `~/.postgresql/root.crl` if it exists: as
//! with libpq (OpenSSL's `CRL_CHECK_ALL`), every certificate of the chain needs a list
//! from its issuer, and a list past its next update fails the check. Files are read at
//! each connect, so a renewed certificate or list is picked up by the next session.
//!
//! A client key (`sslkey`) in encrypted PKCS#8 is decrypted with `sslpassword` (the
//! `pkcs8` crate: PBES2 with PBKDF2 or scrypt and AES-CBC, what OpenSSL 3 writes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::dsn::{KeyPassword, RootCerts, SslMode, TlsSettings};

/// Why a TLS session could not be set up. Names the file or the step, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode={mode} needs the server's root certificate: give sslrootcert=<file> (or sslrootcert=system), or put it in {default}")]
    NoRootCerts { mode: &'static str, default: String },
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no PEM {kind}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("client key (sslkey) {path} is encrypted and {reason}")]
    EncryptedKey { path: PathBuf, reason: String },
    #[error("the system's trust store holds no certificate (sslrootcert=system)")]
    NoSystemRoots,
    #[error("TLS set-up: {0}")]
    Config(String),
    #[error("sslmode={0}: the server does not accept TLS")]
    Refused(&'static str),
    #[error("sslmode={0}: TLS is not available over a Unix-domain socket")]
    UnixSocket(&'static str),
    #[error("TLS handshake with {host}: {reason}")]
    Handshake { host: String, reason: String },
    #[error("TLS request: {0}")]
    Io(#[from] std::io::Error),
}

impl TlsError {
    /// Whether the server's side may change so that the same settings work later (a
    /// certificate renewed, TLS turned on), as opposed to a file or setting of ours.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TlsError::Refused(_) | TlsError::Handshake { .. } | TlsError::Io(_)
        )
    }
}

/// The rustls provider every session uses (ring, as the NATS client does).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// libpq's default root certificate file, `~/.postgresql/root.crt`.
fn default_root_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"))
}

/// libpq's default revocation list file, `~/.postgresql/root.crl`.
fn default_crl_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crl"))
}

/// How the server's certificate is checked under `settings` (see the module's doc).
fn server_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let roots = root_store(settings)?;
    let chain_checked = |roots: RootCertStore| -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        let mut verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let crls = revocation_lists(settings)?;
        if !crls.is_empty() {
            verifier = verifier.with_crls(crls).enforce_revocation_expiration();
        }
        verifier
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => chain_checked(roots)?,
        (_, Some(roots)) => Arc::new(NameUnchecked {
            chain: Some(chain_checked(roots)?),
            algorithms: provider.signature_verification_algorithms,
        }),
        (mode, None) if mode.requires_roots() => {
            return Err(TlsError::NoRootCerts {
                mode: mode.name(),
                default: default_root_file()
                    .map_or("~/.postgresql/root.crt".into(), |p| p.display().to_string()),
            })
        }
        // No chain to check, so no lists to check it against (libpq reads none either).
        (_, None) => Arc::new(NameUnchecked {
            chain: None,
            algorithms: provider.signature_verification_algorithms,
        }),
    };
    Ok(verifier)
}

/// The client configuration `settings` ask for, files read now.
pub fn client_config(settings: &TlsSettings) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = server_verifier(settings, &provider)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("client certificate (sslcert)", cert)?;
            let key = read_client_key(key, settings.key_password.as_ref())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// How to turn a key this version cannot decrypt into one it can (OpenSSL 3's default).
const REENCRYPT: &str =
    "re-encrypt it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in <key> -out <new key>`";

/// The client key of `sslkey`: a PEM private key (PKCS#8, PKCS#1 or SEC1), or one in
/// encrypted PKCS#8 (`ENCRYPTED PRIVATE KEY`: PBES2 with PBKDF2 or scrypt and AES-CBC,
/// as OpenSSL 3 writes it) decrypted with `sslpassword`. A password given for a key that
/// is not encrypted is ignored, as in libpq.
fn read_client_key(
    path: &Path,
    password: Option<&KeyPassword>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::File {
        what: "client key (sslkey)",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let encrypted = |reason: String| TlsError::EncryptedKey {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(block) = pem_block(&bytes, "ENCRYPTED PRIVATE KEY") {
        let Some(password) = password else {
            return Err(encrypted("no sslpassword is given to decrypt it".into()));
        };
        return decrypt_pkcs8(block, password).map_err(encrypted);
    }
    if find(&bytes, b"Proc-Type: 4,ENCRYPTED").is_some() {
        return Err(encrypted(format!(
            "in OpenSSL's traditional form, which this version cannot read: {REENCRYPT}"
        )));
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "client key (sslkey)",
            path: path.to_path_buf(),
            kind: "private key",
        },
        e => TlsError::File {
            what: "client key (sslkey)",
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

/// The private key of the encrypted PKCS#8 PEM `block`, or why it cannot be had.
fn decrypt_pkcs8(block: &[u8], password: &KeyPassword) -> Result<PrivateKeyDer<'static>, String> {
    use pkcs8::pkcs5::Error as Pkcs5Error;
    let (_, der) =
        pkcs8::der::pem::decode_vec(block).map_err(|e| format!("its PEM cannot be read: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
        .map_err(|e| format!("its encryption cannot be read ({e}): {REENCRYPT}"))?;
    let wrong_password = || "sslpassword does not decrypt it".to_string();
    let plain = match info.decrypt(password.expose()) {
        Ok(plain) => plain,
        // pkcs5 0.7 reports a bad padding (a wrong password) as `EncryptFailed`.
        Err(pkcs8::Error::EncryptedPrivateKey(
            Pkcs5Error::DecryptFailed | Pkcs5Error::EncryptFailed,
        ))
        | Err(pkcs8::Error::Asn1(_)) => return Err(wrong_password()),
        Err(e) => {
            return Err(format!(
                "its encryption is not supported ({e}): {REENCRYPT}"
            ))
        }
    };
    // A wrong password passes the padding check once in 256 tries; what it gives then is
    // no key.
    pkcs8::PrivateKeyInfo::try_from(plain.as_bytes()).map_err(|_| wrong_password())?;
    Ok(PrivateKeyDer::Pkcs8(plain.as_bytes().to_vec().into()))
}

/// The first PEM block labelled `label` in `bytes`, markers included.
fn pem_block<'a>(bytes: &'a [u8], label: &str) -> Option<&'a [u8]> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = find(bytes, begin.as_bytes())?;
    let stop = start + find(&bytes[start..], end.as_bytes())? + end.len();
    Some(&bytes[start..stop])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The trusted roots: `sslrootcert`, else the default file if it exists, else none.
fn root_store(settings: &TlsSettings) -> Result<Option<RootCertStore>, TlsError> {
    let certs = match &settings.root_certs {
        Some(RootCerts::File(path)) => read_certs("root certificate file (sslrootcert)", path)?,
        Some(RootCerts::System) => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
            found.certs
        }
        // Only asked for when TLS may be used (`disable` never builds a configuration).
        None => match default_root_file().filter(|p| p.is_file()) {
            Some(path) => read_certs("root certificate file", &path)?,
            None => return Ok(None),
        },
    };
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Config(
            "no usable root certificate among those given".into(),
        ));
    }
    Ok(Some(store))
}

/// The revocation lists: those of `sslcrl` and of every file of `sslcrldir` (a file
/// holding none, such as a certificate `openssl rehash` linked there, is passed over),
/// else the default file if it exists, else none. A file or directory given that holds no
/// list is an error: with none, no certificate could be checked.
fn revocation_lists(
    settings: &TlsSettings,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut lists = Vec::new();
    if let Some(path) = &settings.crl_file {
        lists.extend(read_crls("revocation list file (sslcrl)", path, true)?);
    }
    if let Some(dir) = &settings.crl_dir {
        let what = "revocation list directory (sslcrldir)";
        let file_error = |e: std::io::Error| TlsError::File {
            what,
            path: dir.clone(),
            reason: e.to_string(),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(file_error)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        let before = lists.len();
        for path in &files {
            lists.extend(read_crls("revocation list (sslcrldir)", path, false)?);
        }
        if lists.len() == before {
            return Err(TlsError::Empty {
                what,
                path: dir.clone(),
                kind: "revocation list",
            });
        }
    }
    if settings.crl_file.is_none() && settings.crl_dir.is_none() {
        if let Some(path) = default_crl_file().filter(|p| p.is_file()) {
            lists.extend(read_crls("revocation list file", &path, true)?);
        }
    }
    Ok(lists)
}

/// The PEM revocation lists of `path`; none found is [`TlsError::Empty`] when `required`.
fn read_crls(
    what: &'static str,
    path: &Path,
    required: bool,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    read_pem(what, path, "revocation list", required)
}

pub(crate) fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_pem(what, path, "certificate", true)
}

/// The PEM objects (`kind`) of `path`, the file named as `what` in errors; none found is
/// [`TlsError::Empty`] when `required`.
fn read_pem<T: PemObject>(
    what: &'static str,
    path: &Path,
    kind: &'static str,
    required: bool,
) -> Result<Vec<T>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let objects = T::pem_file_iter(path)
        .map_err(|e| file_error(describe_pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(describe_pem_error(&e)))?;
    if objects.is_empty() && required {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(objects)
}

/// What is wrong with a PEM file, in words (the parser's own message shows the marker
/// lines as lists of bytes).
pub(crate) fn describe_pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "its PEM section `{}` has no END line (cut short?)",
            String::from_utf8_lossy(end_marker).trim()
        ),
        Error::IllegalSectionStart { line } => format!(
            "a malformed PEM line: `{}`",
            String::from_utf8_lossy(line).trim()
        ),
        Error::Io(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// libpq's checks short of `verify-full`: with a `chain` verifier (built on the roots and
/// revocation lists), the certificate must chain to a root and not be revoked, whatever
/// name it carries (`verify-ca`, and `prefer`/`require` given roots); without, any
/// certificate is taken (`prefer`/`require` without roots: the session is encrypted, the
/// server not authenticated). Either way the handshake's signatures are checked.
#[derive(Debug)]
struct NameUnchecked {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // The WebPKI verifier checks the name last, after the chain and its revocation:
        // a name mismatch therefore means everything else checked out.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            checked => checked,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A stream after the `SSLRequest`: encrypted, or plain where the mode allows it.
pub enum Negotiated<S> {
    Plain(S),
    Tls {
        stream: Box<tokio_rustls::client::TlsStream<S>>,
        /// The `tls-server-end-point` channel binding of the session (RFC 5929): the hash
        /// of the server's certificate, `None` when its signature names no usable hash.
        end_point: Option<Vec<u8>>,
    },
}

/// RFC 5929's `tls-server-end-point`: the server certificate hashed with the hash of its
/// signature algorithm, SHA-256 in place of MD5 and SHA-1. `None` for an algorithm without
/// one (Ed25519) or a certificate that does not parse.
pub fn server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    use x509_cert::der::oid::db::rfc5912 as alg;
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(certificate).ok()?;
    let oid = parsed.signature_algorithm.oid;
    let sha256 = [
        alg::MD_5_WITH_RSA_ENCRYPTION,
        alg::SHA_1_WITH_RSA_ENCRYPTION,
        alg::ECDSA_WITH_SHA_224,
        alg::SHA_224_WITH_RSA_ENCRYPTION,
        alg::SHA_256_WITH_RSA_ENCRYPTION,
        alg::ECDSA_WITH_SHA_256,
    ];
    if sha256.contains(&oid) {
        Some(sha2::Sha256::digest(certificate).to_vec())
    } else if [alg::SHA_384_WITH_RSA_ENCRYPTION, alg::ECDSA_WITH_SHA_384].contains(&oid) {
        Some(sha2::Sha384::digest(certificate).to_vec())
    } else if [alg::SHA_512_WITH_RSA_ENCRYPTION, alg::ECDSA_WITH_SHA_512].contains(&oid) {
        Some(sha2::Sha512::digest(certificate).to_vec())
    } else {
        None
    }
}

/// Asks the server for TLS on a fresh connection to `host` and, if it agrees, makes the
/// handshake; a server that declines gets a plain session unless the mode requires TLS.
/// `allow` asks for TLS only on its second try, after the server refused a plain
/// session: here it requires TLS.
pub async fn negotiate<S>(
    mut stream: S,
    host: &str,
    settings: &TlsSettings,
) -> Result<Negotiated<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if settings.mode == SslMode::Disable {
        return Ok(Negotiated::Plain(stream));
    }
    // Read the files before asking, so a bad file is reported whatever the server says.
    let config = client_config(settings)?;
    let mut request = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    stream.flush().await?;
    // Exactly one byte: anything the server sent after it would be outside the encryption.
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => {}
        b'N' if settings.mode.requires_tls() || settings.mode == SslMode::Allow => {
            return Err(TlsError::Refused(settings.mode.name()))
        }
        b'N' => {
            tracing::info!(
                host,
                "the server declined TLS: the session is plain (sslmode=prefer)"
            );
            return Ok(Negotiated::Plain(stream));
        }
        other => {
            return Err(TlsError::Handshake {
                host: host.to_string(),
                reason: format!("unexpected answer {other:#04x} to the TLS request"),
            })
        }
    }
    let name = ServerName::try_from(host.to_string()).map_err(|e| TlsError::Handshake {
        host: host.to_string(),
        reason: e.to_string(),
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| TlsError::Handshake {
            host: host.to_string(),
            reason: e.to_string(),
        })?;
    let session = tls.get_ref().1;
    let end_point = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|certificate| server_end_point(certificate));
    let protocol = session.protocol_version().map(|p| format!("{p:?}"));
    let cipher = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()));
    tracing::info!(
        host = %host,
        mode = %settings.mode.name(),
        protocol = %protocol.unwrap_or_default(),
        cipher = %cipher.unwrap_or_default(),
        "TLS session"
    );
    Ok(Negotiated::Tls {
        stream: Box::new(tls),
        end_point,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: SslMode, root_certs: Option<RootCerts>) -> TlsSettings {
        TlsSettings {
            mode,
            root_certs,
            ..TlsSettings::default()
        }
    }

    #[test]
    fn verify_modes_without_roots_say_what_they_need() {
        if default_root_file().is_some_and(|p| p.is_file()) {
            return; // this machine has libpq's default root file: nothing to check
        }
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = client_config(&settings(mode, None))
                .expect_err("needs roots")
                .to_string();
            let want = format!(
                "sslmode={} needs the server's root certificate",
                mode.name()
            );
            assert!(err.starts_with(&want), "{err}");
        }
    }

    #[test]
    fn bad_root_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope.pem");
        let err = client_config(&settings(
            SslMode::VerifyCa,
            Some(RootCerts::File(missing.clone())),
        ))
        .expect_err("missing file")
        .to_string();
        assert!(
            err.contains("cannot read root certificate file (sslrootcert)"),
            "{err}"
        );
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = client_config(&settings(
            SslMode::Require,
            Some(RootCerts::File(empty.clone())),
        ))
        .expect_err("no certificate")
        .to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    /// Keys written by OpenSSL 3.0 (`testdata/`): one EC key in the clear (`key.pem`) and
    /// encrypted with password `helios key` in the forms `openssl pkcs8 -topk8` and
    /// `openssl ec -aes256` write.
    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/pg_connect/testdata")
            .join(name)
    }

    fn key_password(text: &str) -> Option<KeyPassword> {
        let dsn = format!("host=h sslpassword='{text}'");
        TlsSettings::of_dsn(&dsn).expect("dsn").key_password
    }

    #[test]
    fn encrypted_pkcs8_keys_are_decrypted_with_sslpassword() {
        let plain = read_client_key(&testdata("key.pem"), None).expect("plain key");
        let password = key_password("helios key");
        for name in ["key_pbkdf2_aes256.pem", "key_scrypt.pem"] {
            let key = read_client_key(&testdata(name), password.as_ref())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(key.secret_der(), plain.secret_der(), "{name}");
        }
        // A password given for a key in the clear is ignored, as in libpq.
        let key = read_client_key(&testdata("key.pem"), password.as_ref()).expect("plain key");
        assert_eq!(key.secret_der(), plain.secret_der());
        // Text around the block (a `Bag Attributes` preamble, say) is passed over.
        let dir = tempfile::tempdir().expect("temp dir");
        let wrapped = dir.path().join("wrapped.pem");
        let block = std::fs::read_to_string(testdata("key_pbkdf2_aes256.pem")).expect("read");
        std::fs::write(
            &wrapped,
            format!("Bag Attributes\n    localKeyID: 01\n{block}\n"),
        )
        .expect("write");
        let key = read_client_key(&wrapped, password.as_ref()).expect("wrapped key");
        assert_eq!(key.secret_der(), plain.secret_der());
    }

    #[test]
    fn encrypted_keys_that_cannot_be_read_say_why_and_what_to_do() {
        let error = |name: &str, password: &str| {
            let path = testdata(name);
            let err = read_client_key(&path, key_password(password).as_ref())
                .expect_err("refused")
                .to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(!err.contains(password) || password.is_empty(), "{err}");
            err
        };
        let err = error("key_pbkdf2_aes256.pem", "");
        assert!(
            err.ends_with("is encrypted and no sslpassword is given to decrypt it"),
            "{err}"
        );
        for name in ["key_pbkdf2_aes256.pem", "key_scrypt.pem"] {
            let err = error(name, "not the password");
            assert!(
                err.ends_with("is encrypted and sslpassword does not decrypt it"),
                "{err}"
            );
        }
        for name in ["key_pbes1.pem", "key_pbes2_des3.pem", "key_traditional.pem"] {
            let err = error(name, "helios key");
            assert!(err.contains(REENCRYPT), "{name}: {err}");
        }
        assert!(error("key_traditional.pem", "x").contains("OpenSSL's traditional form"));
        // Not a key at all.
        let dir = tempfile::tempdir().expect("temp dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = read_client_key(&junk, key_password("x").as_ref())
            .expect_err("junk")
            .to_string();
        assert!(
            err.contains("is encrypted and its encryption cannot be read"),
            "{err}"
        );
        let none = dir.path().join("none.pem");
        std::fs::write(&none, "nothing here\n").expect("write");
        let err = read_client_key(&none, None).expect_err("empty").to_string();
        assert!(err.contains("holds no PEM private key"), "{err}");
    }

    /// A CA, a server certificate it issued for `localhost` (serial 42), and revocation
    /// lists written as PEM files in a temporary directory.
    struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::Certificate,
        ca_key: rcgen::KeyPair,
        leaf: CertificateDer<'static>,
    }

    impl Pki {
        fn new(ca_name: &str) -> Pki {
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, ca_name);
            let ca_key = rcgen::KeyPair::generate().expect("key");
            let ca = ca_params.self_signed(&ca_key).expect("ca cert");
            let mut leaf_params =
                rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("leaf");
            leaf_params.serial_number = Some(rcgen::SerialNumber::from(42u64));
            let leaf_key = rcgen::KeyPair::generate().expect("key");
            let leaf = leaf_params
                .signed_by(&leaf_key, &ca, &ca_key)
                .expect("leaf cert");
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
            Pki {
                dir,
                ca,
                ca_key,
                leaf: leaf.der().clone(),
            }
        }

        /// Writes `name`: a list by the CA revoking the serials given, valid until `until`.
        fn crl(&self, name: &str, revoked: &[u64], until: i32) -> PathBuf {
            let crl = rcgen::CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2020, 1, 1),
                next_update: rcgen::date_time_ymd(until, 1, 1),
                crl_number: rcgen::SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|&serial| rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from(serial),
                        revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                        reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&self.ca, &self.ca_key)
            .expect("crl");
            let path = self.dir.path().join(name);
            std::fs::write(&path, crl.pem().expect("pem")).expect("write crl");
            path
        }

        fn settings(&self, mode: SslMode) -> TlsSettings {
            settings(mode, Some(RootCerts::File(self.dir.path().join("ca.pem"))))
        }

        /// Whether the server certificate passes `settings`' checks as `host`.
        fn check(&self, settings: &TlsSettings, host: &str) -> Result<(), String> {
            let verifier = server_verifier(settings, &provider()).map_err(|e| e.to_string())?;
            let name = ServerName::try_from(host.to_string()).expect("name");
            verifier
                .verify_server_cert(&self.leaf, &[], &name, &[], UnixTime::now())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn a_revoked_server_certificate_is_refused_wherever_the_chain_is_checked() {
        let pki = Pki::new("test CA");
        let revoking = pki.crl("revoking.pem", &[7, 42], 2099);
        let clean = pki.crl("clean.pem", &[7], 2099);
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa, SslMode::Require] {
            let mut settings = pki.settings(mode);
            assert_eq!(pki.check(&settings, "localhost"), Ok(()), "{mode:?}");
            settings.crl_file = Some(clean.clone());
            assert_eq!(pki.check(&settings, "localhost"), Ok(()), "{mode:?}");
            settings.crl_file = Some(revoking.clone());
            let err = pki.check(&settings, "localhost").expect_err("revoked");
            assert!(err.to_lowercase().contains("revoked"), "{mode:?}: {err}");
        }
        // Short of verify-full the name is not checked, revocation still is.
        let mut settings = pki.settings(SslMode::VerifyCa);
        settings.crl_file = Some(clean.clone());
        assert_eq!(pki.check(&settings, "db.example"), Ok(()));
        settings.crl_file = Some(revoking.clone());
        assert!(pki.check(&settings, "db.example").is_err());
        let mut settings = pki.settings(SslMode::VerifyFull);
        settings.crl_file = Some(clean);
        let err = pki.check(&settings, "db.example").expect_err("name");
        assert!(err.contains("not valid for name"), "{err}");
    }

    #[test]
    fn revocation_lists_come_from_a_directory_and_stale_or_foreign_ones_fail() {
        let pki = Pki::new("test CA");
        // A directory as `openssl rehash` leaves it: certificates beside the lists.
        let lists = pki.dir.path().join("crls");
        std::fs::create_dir(&lists).expect("dir");
        std::fs::write(lists.join("0a1b2c3d.0"), pki.ca.pem()).expect("write");
        let mut settings = pki.settings(SslMode::VerifyFull);
        settings.crl_dir = Some(lists.clone());
        let err = pki.check(&settings, "localhost").expect_err("no list");
        assert!(err.contains("holds no PEM revocation list"), "{err}");
        assert!(err.contains("sslcrldir"), "{err}");
        std::fs::rename(
            pki.crl("revoking.pem", &[42], 2099),
            lists.join("0a1b2c3d.r0"),
        )
        .expect("move");
        let err = pki.check(&settings, "localhost").expect_err("revoked");
        assert!(err.to_lowercase().contains("revoked"), "{err}");

        // A list past its next update fails the check, as with libpq.
        let mut settings = pki.settings(SslMode::VerifyFull);
        settings.crl_file = Some(pki.crl("stale.pem", &[], 2021));
        let err = pki.check(&settings, "localhost").expect_err("stale");
        assert!(err.to_lowercase().contains("expired"), "{err}");
        // A list from another CA says nothing of this chain: the status is unknown.
        let other = Pki::new("other CA");
        settings.crl_file = Some(other.crl("other.pem", &[], 2099));
        let err = pki.check(&settings, "localhost").expect_err("unknown");
        assert!(err.contains("UnknownRevocationStatus"), "{err}");
        // A file given that is missing or holds no list is named.
        settings.crl_file = Some(pki.dir.path().join("ca.pem"));
        let err = pki.check(&settings, "localhost").expect_err("no list");
        assert!(err.contains("revocation list file (sslcrl)"), "{err}");
        settings.crl_file = Some(pki.dir.path().join("missing.pem"));
        let err = pki.check(&settings, "localhost").expect_err("missing");
        assert!(
            err.contains("cannot read revocation list file (sslcrl)"),
            "{err}"
        );
    }

    #[test]
    fn prefer_and_require_without_roots_encrypt_only() {
        if default_root_file().is_some_and(|p| p.is_file()) {
            return;
        }
        for mode in [SslMode::Prefer, SslMode::Require] {
            assert!(client_config(&settings(mode, None)).is_ok(), "{mode:?}");
        }
    }

    #[tokio::test]
    async fn a_server_that_declines_tls_is_refused_only_when_tls_is_required() {
        // `allow` negotiates only on its second try, after a plain session was refused.
        for (mode, refused) in [
            (SslMode::Prefer, false),
            (SslMode::Require, true),
            (SslMode::Allow, true),
        ] {
            let (mut server, client) = tokio::io::duplex(64);
            let answer = tokio::spawn(async move {
                let mut request = [0u8; 8];
                server.read_exact(&mut request).await.expect("request");
                server.write_all(b"N").await.expect("answer");
                request
            });
            let got = negotiate(client, "db.example", &settings(mode, None)).await;
            let request = answer.await.expect("server task");
            assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "SSLRequest");
            match got {
                Err(TlsError::Refused(name)) => {
                    assert!(refused, "{mode:?} refused");
                    assert_eq!(name, mode.name());
                }
                Ok(Negotiated::Plain(_)) => assert!(!refused, "{mode:?} went plain"),
                Ok(Negotiated::Tls { .. }) => panic!("no handshake was offered"),
                Err(e) => panic!("{mode:?}: {e}"),
            }
        }
    }

    #[test]
    fn the_end_point_hash_follows_the_certificate_s_signature() {
        use sha2::Digest;
        let certificate = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            let params = rcgen::CertificateParams::new(vec!["db".to_string()]).expect("params");
            params
                .self_signed(&key)
                .expect("certificate")
                .der()
                .to_vec()
        };
        let p256 = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            server_end_point(&p256),
            Some(sha2::Sha256::digest(&p256).to_vec())
        );
        let p384 = certificate(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            server_end_point(&p384),
            Some(sha2::Sha384::digest(&p384).to_vec())
        );
        // Ed25519 names no hash: no binding rather than a wrong one.
        assert_eq!(server_end_point(&certificate(&rcgen::PKCS_ED25519)), None);
        assert_eq!(server_end_point(b"not a certificate"), None);
    }

    #[tokio::test]
    async fn disable_sends_nothing() {
        let (server, client) = tokio::io::duplex(64);
        let got = negotiate(client, "h", &settings(SslMode::Disable, None))
            .await
            .expect("plain");
        assert!(matches!(got, Negotiated::Plain(_)));
        drop(got);
        let mut server = server;
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty(), "sent {rest:?}");
    }
}
