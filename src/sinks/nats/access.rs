//! How to reach a NATS server: its URL (which may carry `user:password@` or a token) and,
//! optionally, TLS files and a credentials file. Used by the NATS sink, `helios-repl
//! tail` and the access-event subscriber of `serve`.
//!
//! TLS itself is async-nats' (rustls): a `tls://` URL, or any of the TLS files, requires
//! it. Files are read at each connect, so renewed certificates are picked up by the next
//! session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// TLS files and credentials for a NATS server; all optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, clap::Args)]
pub struct NatsAccess {
    /// PEM file of the root certificates to trust (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long = "nats-tls-ca-file", value_name = "PEM")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of a client certificate (the server verifies clients); needs the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long = "nats-tls-cert-file", value_name = "PEM")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long = "nats-tls-key-file", value_name = "PEM")]
    pub tls_key_file: Option<PathBuf>,
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long = "nats-credentials-file", value_name = "CREDS")]
    pub credentials_file: Option<PathBuf>,
}

/// Why a NATS session could not be opened. Names the file or the server, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum NatsAccessError {
    #[error("`{given}` is given without `{missing}`: a client certificate needs both")]
    HalfClientCert {
        given: &'static str,
        missing: &'static str,
    },
    #[error("`{0}` must not be empty")]
    EmptyPath(&'static str),
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("connect to {url}: {reason}")]
    Connect { url: String, reason: String },
}

impl NatsAccessError {
    /// Whether the same settings can work later without anyone changing them.
    pub fn is_transient(&self) -> bool {
        matches!(self, NatsAccessError::Connect { .. })
    }
}

impl NatsAccess {
    /// Checks that the settings go together (not that the files exist: they are read
    /// when connecting).
    pub fn check(&self) -> Result<(), NatsAccessError> {
        let paths = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
            ("credentials_file", &self.credentials_file),
        ];
        if let Some((field, _)) = paths
            .iter()
            .find(|(_, p)| p.as_ref().is_some_and(|p| p.as_os_str().is_empty()))
        {
            return Err(NatsAccessError::EmptyPath(field));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => Err(NatsAccessError::HalfClientCert {
                given: "tls_cert_file",
                missing: "tls_key_file",
            }),
            (None, Some(_)) => Err(NatsAccessError::HalfClientCert {
                given: "tls_key_file",
                missing: "tls_cert_file",
            }),
            _ => Ok(()),
        }
    }

    /// Whether any TLS file is given (then TLS is required).
    fn wants_tls(&self) -> bool {
        self.tls_ca_file.is_some() || self.tls_cert_file.is_some()
    }

    /// Connects to `url`, giving up on one attempt after `timeout`.
    pub async fn connect(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<async_nats::Client, NatsAccessError> {
        self.check()?;
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .require_tls(self.wants_tls() || url.trim().starts_with("tls://"));
        if let Some(ca) = &self.tls_ca_file {
            readable("root certificate file (tls_ca_file)", ca)?;
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            readable("client certificate (tls_cert_file)", cert)?;
            readable("client key (tls_key_file)", key)?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(creds) = &self.credentials_file {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| NatsAccessError::File {
                    what: "credentials file (credentials_file)",
                    path: creds.clone(),
                    reason: e.to_string(),
                })?;
        }
        options
            .connect(url)
            .await
            .map_err(|e| NatsAccessError::Connect {
                url: crate::control::secret::redact_any_url(url),
                reason: describe_connect_error(&e),
            })
    }
}

/// A file async-nats reads later, checked now so a missing one is named as ours.
fn readable(what: &'static str, path: &Path) -> Result<(), NatsAccessError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| NatsAccessError::File {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// async-nats' connect error with its cause (the TLS handshake's reason, say).
fn describe_connect_error(e: &async_nats::ConnectError) -> String {
    let text = e.to_string();
    match std::error::Error::source(e).map(|c| c.to_string()) {
        Some(cause) if !text.contains(&cause) => format!("{text}: {cause}"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_its_certificate() {
        let half = NatsAccess {
            tls_cert_file: Some("/c.pem".into()),
            ..NatsAccess::default()
        };
        assert_eq!(
            half.check().expect_err("half").to_string(),
            "`tls_cert_file` is given without `tls_key_file`: a client certificate needs both"
        );
        let half = NatsAccess {
            tls_key_file: Some("/k.pem".into()),
            ..NatsAccess::default()
        };
        assert!(half.check().is_err());
        assert!(NatsAccess::default().check().is_ok());
        let empty = NatsAccess {
            credentials_file: Some("".into()),
            ..NatsAccess::default()
        };
        assert_eq!(
            empty.check().expect_err("empty").to_string(),
            "`credentials_file` must not be empty"
        );
    }

    #[tokio::test]
    async fn missing_files_are_named_before_connecting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("ca.pem");
        let access = NatsAccess {
            tls_ca_file: Some(missing.clone()),
            ..NatsAccess::default()
        };
        let err = access
            .connect("tls://127.0.0.1:1", Duration::from_millis(100))
            .await
            .expect_err("no file");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.starts_with("cannot read root certificate file (tls_ca_file)")
                && text.contains(&missing.display().to_string()),
            "{text}"
        );
        let creds = NatsAccess {
            credentials_file: Some(dir.path().join("user.creds")),
            ..NatsAccess::default()
        };
        let err = creds
            .connect("nats://127.0.0.1:1", Duration::from_millis(100))
            .await
            .expect_err("no file");
        assert!(err.to_string().contains("credentials file"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_transient_and_hides_the_password() {
        let err = NatsAccess::default()
            .connect("nats://u:hunter2@127.0.0.1:1", Duration::from_millis(200))
            .await
            .expect_err("nothing listens");
        assert!(err.is_transient(), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
