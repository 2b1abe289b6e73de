//! The TLS settings of a DSN, read as libpq reads them, and the rest of the DSN for
//! tokio-postgres.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and no
//! `sslrootcert`, `sslcert`, `sslkey`, `sslpassword`, `sslcrl` or `sslcrldir`. [`PgDsn::parse`] takes those out of the string
//! (libpq `key=value` form or `postgresql://` URL), keeps them as [`TlsSettings`], and gives
//! tokio-postgres the rest with the nearest `sslmode` it knows: TLS is required whenever
//! libpq would require it, and the certificate checks libpq makes are made by our
//! verifiers (`tls.rs`).
//!
//! Errors never quote the DSN: it may hold a password.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use crate::conninfo::{parse_conninfo, unquote, url_rest};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// A plain session first; TLS only when the server refuses it (an error during the
    /// log-in, as libpq's `allow`). The certificate is checked as with `prefer`.
    Allow,
    /// TLS when the server offers it, else plain (libpq's default). The certificate is
    /// checked against root certificates when there are some, as libpq does.
    #[default]
    Prefer,
    /// TLS or no session; the certificate is checked only against root certificates
    /// given (as libpq does: then the same as `verify-ca`).
    Require,
    /// TLS, and the server's certificate must chain to a trusted root.
    VerifyCa,
    /// `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The mode as written in a DSN.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, DsnError> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "allow" => Ok(SslMode::Allow),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(DsnError::SslMode(format!(
                "`{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))),
        }
    }

    /// Whether a session without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// Whether the certificate must chain to a trusted root whatever the DSN says of roots.
    pub fn requires_roots(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// Whether the first session tried is plain (`disable`, and `allow`'s first try).
    pub fn plain_first(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Allow)
    }

    /// The nearest mode tokio-postgres knows (for `allow`, its first try).
    fn for_driver(self) -> &'static str {
        match self {
            SslMode::Disable | SslMode::Allow => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file of one or more certificates.
    File(PathBuf),
    /// The system's trust store (`sslrootcert=system`, as in libpq 16).
    System,
}

/// What a DSN asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`; without it, `~/.postgresql/root.crt` if that exists (`tls.rs`).
    pub root_certs: Option<RootCerts>,
    /// `sslcert`: the client certificate chain (PEM), for certificate authentication.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
    /// `sslpassword`: decrypts `sslkey` when it is encrypted; ignored when it is not.
    pub key_password: Option<KeyPassword>,
    /// `sslcrl`: certificate revocation lists (PEM) the server's chain is checked against;
    /// without it or `sslcrldir`, `~/.postgresql/root.crl` if that exists (`tls.rs`).
    pub crl_file: Option<PathBuf>,
    /// `sslcrldir`: a directory whose files hold revocation lists (PEM).
    pub crl_dir: Option<PathBuf>,
}

/// The password of an encrypted client key (`sslpassword`). Printed as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPassword(String);

impl KeyPassword {
    /// The password itself, for decrypting the key only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for KeyPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::control::secret::REDACTED)
    }
}

/// A DSN read for connecting: tokio-postgres' configuration and the TLS settings.
#[derive(Debug, Clone)]
pub struct PgDsn {
    pub config: tokio_postgres::Config,
    pub tls: TlsSettings,
}

/// What is wrong with a DSN. Never quotes the DSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("{0}")]
    Syntax(String),
    #[error("sslmode {0}")]
    SslMode(String),
    #[error("`{given}` is given without `{missing}`: a client certificate needs both")]
    HalfClientCert {
        given: &'static str,
        missing: &'static str,
    },
    #[error("sslnegotiation=direct (PostgreSQL 17's direct TLS) is not supported; leave it out")]
    DirectNegotiation,
}

/// The keys taken out of the DSN before tokio-postgres reads it.
const TLS_KEYS: [&str; 7] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
];

impl TlsSettings {
    /// The TLS settings `dsn` asks for; the rest of the DSN is not checked.
    pub fn of_dsn(dsn: &str) -> Result<TlsSettings, DsnError> {
        Ok(split_tls(dsn)?.1)
    }
}

impl PgDsn {
    /// Reads `dsn`.
    pub fn parse(dsn: &str) -> Result<PgDsn, DsnError> {
        let (rest, tls) = split_tls(dsn)?;
        let driver = with_ssl_mode(dsn, &rest, tls.mode.for_driver());
        let config: tokio_postgres::Config =
            driver.parse().map_err(|e: tokio_postgres::Error| {
                // tokio-postgres names the option in the error's source, never its value.
                let reason = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                DsnError::Syntax(format!("cannot parse: {reason}"))
            })?;
        if config.get_ssl_negotiation() == tokio_postgres::config::SslNegotiation::Direct {
            return Err(DsnError::DirectNegotiation);
        }
        Ok(PgDsn { config, tls })
    }
}

/// The DSN without its TLS keys, and the settings they make.
fn split_tls(dsn: &str) -> Result<(String, TlsSettings), DsnError> {
    let (rest, values) = match url_rest(dsn) {
        Some(_) => split_url(dsn),
        None => split_conninfo(dsn)?,
    };
    let mut tls = TlsSettings::default();
    for (key, value) in values {
        match key.as_str() {
            "sslmode" => tls.mode = SslMode::parse(&value)?,
            "sslrootcert" if value == "system" => tls.root_certs = Some(RootCerts::System),
            "sslrootcert" => tls.root_certs = Some(RootCerts::File(value.into())),
            "sslcert" => tls.client_cert = Some(value.into()),
            // Empty is unset, as in libpq.
            "sslcrl" => tls.crl_file = (!value.is_empty()).then(|| value.into()),
            "sslcrldir" => tls.crl_dir = (!value.is_empty()).then(|| value.into()),
            "sslpassword" => tls.key_password = (!value.is_empty()).then_some(KeyPassword(value)),
            _ => tls.client_key = Some(value.into()),
        }
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(_), None) => Err(DsnError::HalfClientCert {
            given: "sslcert",
            missing: "sslkey",
        }),
        (None, Some(_)) => Err(DsnError::HalfClientCert {
            given: "sslkey",
            missing: "sslcert",
        }),
        _ => Ok((rest, tls)),
    }
}

/// The DSN without its TLS keys, and their values in order (libpq keeps the last).
type Split = (String, Vec<(String, String)>);

fn split_conninfo(dsn: &str) -> Result<Split, DsnError> {
    let pairs = parse_conninfo(dsn).map_err(|e| DsnError::Syntax(format!("cannot parse: {e}")))?;
    let mut rest = Vec::with_capacity(pairs.len());
    let mut values = Vec::new();
    for pair in pairs {
        let key = &dsn[pair.key.clone()];
        if TLS_KEYS.contains(&key) {
            values.push((key.to_string(), unquote(&dsn[pair.value])));
        } else {
            rest.push(&dsn[pair.key.start..pair.value.end]);
        }
    }
    Ok((rest.join(" "), values))
}

/// A URL's query parameters are `&`-separated and percent-encoded; the part before `?`
/// is kept as written.
fn split_url(dsn: &str) -> Split {
    let (head, query) = match dsn.split_once('?') {
        Some((head, query)) => (head, query),
        None => (dsn, ""),
    };
    let mut rest = Vec::new();
    let mut values = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        if TLS_KEYS.contains(&key.as_ref()) {
            let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
            values.push((key.into_owned(), value));
        } else {
            rest.push(param);
        }
    }
    let mut out = head.to_string();
    if !rest.is_empty() {
        out.push('?');
        out.push_str(&rest.join("&"));
    }
    (out, values)
}

/// `rest` with `sslmode=<mode>` added, in the DSN's own form.
fn with_ssl_mode(dsn: &str, rest: &str, mode: &str) -> String {
    match url_rest(dsn) {
        Some(_) if rest.contains('?') => format!("{rest}&sslmode={mode}"),
        Some(_) => format!("{rest}?sslmode={mode}"),
        None => format!("{rest} sslmode={mode}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::quote;
    use proptest::prelude::*;
    use tokio_postgres::config::{Host, SslMode as DriverMode};

    fn tls_of(dsn: &str) -> TlsSettings {
        PgDsn::parse(dsn).expect("parses").tls
    }

    #[test]
    fn without_tls_keys_the_mode_is_libpq_s_default() {
        let dsn = PgDsn::parse("host=h port=5433 user=u dbname=d").expect("parses");
        assert_eq!(dsn.tls, TlsSettings::default());
        assert_eq!(dsn.tls.mode, SslMode::Prefer);
        assert_eq!(dsn.config.get_ssl_mode(), DriverMode::Prefer);
        assert_eq!(dsn.config.get_ports(), &[5433]);
        assert_eq!(dsn.config.get_dbname(), Some("d"));
    }

    #[test]
    fn revocation_list_keys_are_taken_out_in_both_forms_and_empty_is_unset() {
        let dsn = PgDsn::parse(
            "host=h user=u sslmode=verify-ca sslrootcert=/ca.pem sslcrl='/etc/my.crl' sslcrldir=/crls",
        )
        .expect("parses");
        assert_eq!(dsn.tls.crl_file, Some("/etc/my.crl".into()));
        assert_eq!(dsn.tls.crl_dir, Some("/crls".into()));
        let dsn = PgDsn::parse("postgresql://u@h/app?sslcrl=%2Fa.crl&sslcrldir=&sslmode=require")
            .expect("parses");
        assert_eq!(dsn.tls.crl_file, Some("/a.crl".into()));
        assert_eq!(dsn.tls.crl_dir, None);
        assert_eq!(dsn.config.get_dbname(), Some("app"));
    }

    #[test]
    fn the_key_password_is_taken_out_in_both_forms_never_printed_and_empty_is_unset() {
        let dsn =
            PgDsn::parse("host=h user=u sslcert=/c.pem sslkey=/k.pem sslpassword='s3cret pass'")
                .expect("parses");
        let password = dsn.tls.key_password.as_ref().expect("given");
        assert_eq!(password.expose(), "s3cret pass");
        let printed = format!("{:?}", dsn.tls);
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("key_password: Some(***)"), "{printed}");
        let dsn =
            PgDsn::parse("postgresql://u@h/app?sslpassword=a%26b&sslmode=require").expect("parses");
        assert_eq!(
            dsn.tls.key_password.as_ref().map(KeyPassword::expose),
            Some("a&b")
        );
        assert_eq!(dsn.config.get_dbname(), Some("app"));
        let dsn = PgDsn::parse("host=h sslpassword=''").expect("parses");
        assert_eq!(dsn.tls.key_password, None);
    }

    #[test]
    fn key_value_form_gives_up_its_tls_keys() {
        let dsn = PgDsn::parse(
            "host=db.example user=u sslmode=verify-full sslrootcert='/etc/my ca.pem' \
             sslcert=/c.pem sslkey=/k.pem password='p w'",
        )
        .expect("parses");
        assert_eq!(dsn.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            dsn.tls.root_certs,
            Some(RootCerts::File("/etc/my ca.pem".into()))
        );
        assert_eq!(dsn.tls.client_cert, Some("/c.pem".into()));
        assert_eq!(dsn.tls.client_key, Some("/k.pem".into()));
        assert_eq!(dsn.config.get_ssl_mode(), DriverMode::Require);
        assert_eq!(dsn.config.get_password(), Some(&b"p w"[..]));
        assert_eq!(
            dsn.config.get_hosts(),
            &[Host::Tcp("db.example".to_string())]
        );
    }

    #[test]
    fn url_form_gives_up_its_tls_keys() {
        let dsn = PgDsn::parse(
            "postgresql://u:pw@db.example:6543/app?sslrootcert=%2Fetc%2Fca.pem&sslmode=verify-ca&application_name=x",
        )
        .expect("parses");
        assert_eq!(dsn.tls.mode, SslMode::VerifyCa);
        assert_eq!(
            dsn.tls.root_certs,
            Some(RootCerts::File("/etc/ca.pem".into()))
        );
        assert_eq!(dsn.config.get_ssl_mode(), DriverMode::Require);
        assert_eq!(dsn.config.get_ports(), &[6543]);
        assert_eq!(dsn.config.get_application_name(), Some("x"));
        let bare = PgDsn::parse("postgres://u@h/app?sslmode=disable").expect("parses");
        assert_eq!(bare.tls.mode, SslMode::Disable);
        assert_eq!(bare.config.get_ssl_mode(), DriverMode::Disable);
        let none = PgDsn::parse("postgres://u@h/app").expect("parses");
        assert_eq!(none.config.get_dbname(), Some("app"));
    }

    #[test]
    fn allow_goes_plain_first_and_never_requires_tls() {
        let dsn = PgDsn::parse("postgres://u@h/d?sslmode=allow").expect("parses");
        assert_eq!(dsn.tls.mode, SslMode::Allow);
        assert_eq!(dsn.config.get_ssl_mode(), DriverMode::Disable);
        assert!(SslMode::Allow.plain_first() && SslMode::Disable.plain_first());
        assert!(!SslMode::Prefer.plain_first());
        assert!(!SslMode::Allow.requires_tls() && !SslMode::Allow.requires_roots());
    }

    #[test]
    fn system_roots_and_the_last_value_win() {
        let tls = tls_of("host=h sslrootcert=/a.pem sslrootcert=system sslmode=require");
        assert_eq!(tls.root_certs, Some(RootCerts::System));
        assert_eq!(
            tls_of("host=h sslmode=verify-full sslmode=disable").mode,
            SslMode::Disable
        );
    }

    #[test]
    fn bad_tls_keys_are_named_without_the_dsn() {
        let err = PgDsn::parse("host=h password=hunter2 sslmode=bogus").unwrap_err();
        assert_eq!(
            err.to_string(),
            "sslmode `bogus` is not one of disable, allow, prefer, require, verify-ca, verify-full"
        );
        let err = PgDsn::parse("host=h sslcert=/c.pem").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sslcert` is given without `sslkey`: a client certificate needs both"
        );
        let err = PgDsn::parse("host=h sslkey=/k.pem").unwrap_err();
        assert!(
            err.to_string().contains("`sslkey` is given without"),
            "{err}"
        );
        let err = PgDsn::parse("host=h sslnegotiation=direct sslmode=require").unwrap_err();
        assert_eq!(err, DsnError::DirectNegotiation);
        let err = PgDsn::parse("host=h password=hunter2 frobnicate=1").unwrap_err();
        assert!(err.to_string().contains("frobnicate"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = PgDsn::parse("host='h").unwrap_err();
        assert!(err.to_string().contains("unterminated"), "{err}");
    }

    fn mode() -> impl Strategy<Value = SslMode> {
        prop::sample::select(vec![
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ])
    }

    proptest! {
        /// Whatever the order and quoting of the keys, the TLS keys come out as written
        /// and tokio-postgres reads the rest unchanged.
        #[test]
        fn tls_keys_come_out_and_the_rest_stays(
            mode in mode(),
            root in proptest::option::of("[ -~]{1,16}"),
            password in "[ -~]{0,12}",
            port in 1u16..,
            url in any::<bool>(),
            tls_first in any::<bool>(),
        ) {
            let root = root.filter(|r| r != "system");
            let dsn = if url {
                let enc = |s: &str| percent_encoding::utf8_percent_encode(
                    s, percent_encoding::NON_ALPHANUMERIC).to_string();
                let mut params = vec![format!("sslmode={}", mode.name())];
                if let Some(r) = &root {
                    params.push(format!("sslrootcert={}", enc(r)));
                }
                params.push(format!("password={}", enc(&password)));
                if !tls_first {
                    params.reverse();
                }
                format!("postgresql://u@h:{port}/d?{}", params.join("&"))
            } else {
                let mut pairs = vec![format!("sslmode={}", mode.name())];
                if let Some(r) = &root {
                    pairs.push(format!("sslrootcert={}", quote(r)));
                }
                pairs.push(format!("password={}", quote(&password)));
                if !tls_first {
                    pairs.reverse();
                }
                format!("host=h port={port} user=u dbname=d {}", pairs.join(" "))
            };
            let parsed = PgDsn::parse(&dsn).expect("parses");
            prop_assert_eq!(parsed.tls.mode, mode);
            prop_assert_eq!(parsed.tls.root_certs, root.map(|r| RootCerts::File(r.into())));
            prop_assert_eq!(parsed.config.get_password(), Some(password.as_bytes()));
            prop_assert_eq!(parsed.config.get_ports(), &[port]);
            prop_assert_eq!(parsed.config.get_user(), Some("u"));
        }
    }
}
