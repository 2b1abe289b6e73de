//! A `kind = "nats"` sink: compressed columnar frames on NATS JetStream.
//!
//! ```toml
//! [[sinks]]
//! kind = "nats"
//! url = "nats://127.0.0.1:4222"
//! stream = "HELIOS_orders"        # default HELIOS_<job>; created if missing
//! subject_prefix = "helios"       # subjects <prefix>.<job>.<tenant>.<schema>.<table>
//! batch_max_rows = 1000           # most rows per frame group
//! batch_max_bytes = 4194304       # most Arrow bytes per frame
//! key_frame_every = 64            # a self-contained frame at least this often
//! duplicate_window_secs = 120     # JetStream's duplicate window for a created stream
//! max_encode_share = 0.5          # share of the sink's time encoding may take
//! tls_ca_file = "/etc/helios/nats-ca.pem"       # optional: roots to trust (TLS required)
//! tls_cert_file = "/etc/helios/nats-client.pem" # optional: client certificate ...
//! tls_key_file = "/etc/helios/nats-client.key"  # ... and its key
//! credentials_file = "/etc/helios/helios.creds" # optional: NATS user JWT + NKey seed
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobSpecError;
use crate::sinks::nats::access::{NatsAccess, NatsAccessError};
use crate::sinks::nats::subjects::default_stream_name;
use crate::sinks::nats::NatsSinkConfig;

/// Default `batch_max_rows` of a NATS sink.
pub const DEFAULT_NATS_BATCH_MAX_ROWS: usize = 1000;
/// Default `batch_max_bytes` (4 MiB of Arrow data per frame).
pub const DEFAULT_BATCH_MAX_BYTES: usize = 4 << 20;
/// Default `subject_prefix`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "helios";
/// Default `key_frame_every`.
pub const DEFAULT_KEY_FRAME_EVERY: u32 = 64;
/// Default `duplicate_window_secs`.
pub const DEFAULT_DUPLICATE_WINDOW_SECS: u64 = 120;
/// Default `max_encode_share`.
pub const DEFAULT_MAX_ENCODE_SHARE: f64 = 0.5;

/// A NATS JetStream sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatsSinkSpec {
    /// Server URL, `nats://host:port`.
    pub url: String,
    /// Stream name (default `HELIOS_<job>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// First token of every subject.
    pub subject_prefix: String,
    /// Most rows one group of frames takes, `1..=1_000_000`.
    pub batch_max_rows: usize,
    /// Most Arrow bytes one frame takes, `1024..=64 MiB`: a frame closes at this size
    /// even below `batch_max_rows`.
    pub batch_max_bytes: usize,
    /// A key frame at least every this many frames of a subject, `1..=65535`.
    pub key_frame_every: u32,
    /// Duplicate window of a stream the sink creates, seconds.
    pub duplicate_window_secs: u64,
    /// Share of the sink's time encoding may take before cheaper encodings are used
    /// (`0 < share <= 1`).
    pub max_encode_share: f64,
    /// The sink's bandwidth limits.
    #[serde(flatten)]
    pub limits: super::SinkLimitsSpec,
    /// TLS files and credentials for the server.
    #[serde(flatten)]
    pub access: NatsAccess,
}

impl Eq for NatsSinkSpec {}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl NatsSinkSpec {
    /// Checks the values; `at` is the sink's path (`sinks[1]`).
    pub fn validate(&self, at: &str) -> Result<(), JobSpecError> {
        let url = self.url.trim();
        if !(url.starts_with("nats://") || url.starts_with("tls://")) || url.len() <= 7 {
            return Err(JobSpecError::invalid(
                format!("{at}.url"),
                format!("must be a nats:// or tls:// URL, got `{}`", self.url),
            ));
        }
        if let Some(stream) = &self.stream {
            if !is_token(stream) || stream.len() > 255 {
                return Err(JobSpecError::invalid(
                    format!("{at}.stream"),
                    "must be 1 to 255 characters of A-Z, a-z, 0-9, _ and -",
                ));
            }
        }
        if !is_token(&self.subject_prefix) {
            return Err(JobSpecError::invalid(
                format!("{at}.subject_prefix"),
                "must be one subject token: A-Z, a-z, 0-9, _ and -",
            ));
        }
        if !(1..=u32::from(u16::MAX)).contains(&self.key_frame_every) {
            return Err(JobSpecError::invalid(
                format!("{at}.key_frame_every"),
                format!("must be between 1 and 65535, got {}", self.key_frame_every),
            ));
        }
        if !(1024..=64 << 20).contains(&self.batch_max_bytes) {
            return Err(JobSpecError::invalid(
                format!("{at}.batch_max_bytes"),
                format!(
                    "must be between 1024 and 67108864, got {}",
                    self.batch_max_bytes
                ),
            ));
        }
        if !(1..=86_400).contains(&self.duplicate_window_secs) {
            return Err(JobSpecError::invalid(
                format!("{at}.duplicate_window_secs"),
                format!(
                    "must be between 1 and 86400, got {}",
                    self.duplicate_window_secs
                ),
            ));
        }
        if let Err(e) = self.access.check() {
            let field = match &e {
                NatsAccessError::HalfClientCert { given, .. } => *given,
                NatsAccessError::EmptyPath(field) => *field,
                _ => "tls_cert_file",
            };
            return Err(JobSpecError::invalid(
                format!("{at}.{field}"),
                e.to_string(),
            ));
        }
        if !(self.max_encode_share > 0.0 && self.max_encode_share <= 1.0) {
            return Err(JobSpecError::invalid(
                format!("{at}.max_encode_share"),
                format!("must be in (0, 1], got {}", self.max_encode_share),
            ));
        }
        Ok(())
    }

    /// The sink's settings for job `job`.
    pub fn config(&self, job: &str) -> NatsSinkConfig {
        NatsSinkConfig {
            url: self.url.trim().to_string(),
            stream: self
                .stream
                .clone()
                .unwrap_or_else(|| default_stream_name(job)),
            subject_prefix: self.subject_prefix.clone(),
            key_frame_every: self.key_frame_every,
            max_frame_bytes: self.batch_max_bytes,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            max_encode_share: self.max_encode_share,
            access: self.access.clone(),
        }
    }
}
