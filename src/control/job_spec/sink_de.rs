//! Reading `[[sinks]]`: each entry through the union of every kind's fields, so errors
//! name the field (`sinks[0].batch_max_rows`) and unknown keys by name.

use super::*;

/// The union of every sink kind's fields. Deserializing through a plain
/// struct (instead of serde's internally tagged enum, which buffers its
/// content) keeps `serde_path_to_error` paths such as
/// `sinks[0].batch_max_rows` and rejects unknown keys by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: SinkKind,
    #[serde(default, deserialize_with = "present")]
    dsn: Option<Dsn>,
    #[serde(default, deserialize_with = "present")]
    batch_max_rows: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    max_in_flight: Option<MaxInFlight>,
    #[serde(default, deserialize_with = "present")]
    root: Option<String>,
    #[serde(default, deserialize_with = "present")]
    compact_min_files: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    stream: Option<String>,
    #[serde(default, deserialize_with = "present")]
    subject_prefix: Option<String>,
    #[serde(default, deserialize_with = "present")]
    key_frame_every: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    batch_max_bytes: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    duplicate_window_secs: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    max_encode_share: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    tls_ca_file: Option<std::path::PathBuf>,
    #[serde(default, deserialize_with = "present")]
    tls_cert_file: Option<std::path::PathBuf>,
    #[serde(default, deserialize_with = "present")]
    tls_key_file: Option<std::path::PathBuf>,
    #[serde(default, deserialize_with = "present")]
    credentials_file: Option<std::path::PathBuf>,
    #[serde(default, deserialize_with = "present")]
    max_rows_per_sec: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    max_bytes_per_sec: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    tenant_max_rows_per_sec: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    tenant_max_bytes_per_sec: Option<u64>,
}

enum SinkKind {
    Postgres,
    Parquet,
    Nats,
}

impl<'de> Deserialize<'de> for SinkKind {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let kind = String::deserialize(de)?;
        match kind.as_str() {
            "postgres" => Ok(SinkKind::Postgres),
            "parquet" => Ok(SinkKind::Parquet),
            "nats" => Ok(SinkKind::Nats),
            other => Err(de::Error::custom(format_args!(
                "unknown sink kind `{other}`, known kinds: {}",
                SINK_KINDS.join(", ")
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for SinkSpec {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = RawSink::deserialize(de)?;
        let unexpected = |field: &str, kind: &str| {
            de::Error::custom(format_args!("unknown field `{field}` for a {kind} sink"))
        };
        let kind = match raw.kind {
            SinkKind::Postgres => "postgres",
            SinkKind::Parquet => "parquet",
            SinkKind::Nats => "nats",
        };
        // Fields that belong to one kind of sink, and that kind.
        let owned = [
            ("dsn", raw.dsn.is_some(), "postgres"),
            ("root", raw.root.is_some(), "parquet"),
            (
                "compact_min_files",
                raw.compact_min_files.is_some(),
                "parquet",
            ),
            ("max_in_flight", raw.max_in_flight.is_some(), "postgres"),
            ("url", raw.url.is_some(), "nats"),
            ("stream", raw.stream.is_some(), "nats"),
            ("subject_prefix", raw.subject_prefix.is_some(), "nats"),
            ("key_frame_every", raw.key_frame_every.is_some(), "nats"),
            ("batch_max_bytes", raw.batch_max_bytes.is_some(), "nats"),
            (
                "duplicate_window_secs",
                raw.duplicate_window_secs.is_some(),
                "nats",
            ),
            ("max_encode_share", raw.max_encode_share.is_some(), "nats"),
            ("tls_ca_file", raw.tls_ca_file.is_some(), "nats"),
            ("tls_cert_file", raw.tls_cert_file.is_some(), "nats"),
            ("tls_key_file", raw.tls_key_file.is_some(), "nats"),
            ("credentials_file", raw.credentials_file.is_some(), "nats"),
        ];
        if let Some((field, _, _)) = owned
            .iter()
            .find(|(_, present, owner)| *present && *owner != kind)
        {
            return Err(unexpected(field, kind));
        }
        let limits = SinkLimitsSpec {
            max_rows_per_sec: raw.max_rows_per_sec,
            max_bytes_per_sec: raw.max_bytes_per_sec,
            tenant_max_rows_per_sec: raw.tenant_max_rows_per_sec,
            tenant_max_bytes_per_sec: raw.tenant_max_bytes_per_sec,
        };
        match raw.kind {
            SinkKind::Postgres => Ok(SinkSpec::Postgres(PostgresSinkSpec {
                dsn: raw.dsn.ok_or_else(|| de::Error::missing_field("dsn"))?,
                batch_max_rows: raw.batch_max_rows.unwrap_or(DEFAULT_BATCH_MAX_ROWS),
                max_in_flight: raw.max_in_flight.unwrap_or_default(),
                limits,
            })),
            SinkKind::Parquet => Ok(SinkSpec::Parquet(ParquetSinkSpec {
                root: raw.root.ok_or_else(|| de::Error::missing_field("root"))?,
                batch_max_rows: raw.batch_max_rows.unwrap_or(DEFAULT_PARQUET_BATCH_MAX_ROWS),
                compact_min_files: raw
                    .compact_min_files
                    .unwrap_or_else(default_compact_min_files),
                limits,
            })),
            SinkKind::Nats => Ok(SinkSpec::Nats(NatsSinkSpec {
                url: raw.url.ok_or_else(|| de::Error::missing_field("url"))?,
                stream: raw.stream,
                subject_prefix: raw
                    .subject_prefix
                    .unwrap_or_else(|| nats::DEFAULT_SUBJECT_PREFIX.to_string()),
                batch_max_rows: raw
                    .batch_max_rows
                    .unwrap_or(nats::DEFAULT_NATS_BATCH_MAX_ROWS),
                key_frame_every: raw.key_frame_every.unwrap_or(nats::DEFAULT_KEY_FRAME_EVERY),
                batch_max_bytes: raw.batch_max_bytes.unwrap_or(nats::DEFAULT_BATCH_MAX_BYTES),
                duplicate_window_secs: raw
                    .duplicate_window_secs
                    .unwrap_or(nats::DEFAULT_DUPLICATE_WINDOW_SECS),
                max_encode_share: raw
                    .max_encode_share
                    .unwrap_or(nats::DEFAULT_MAX_ENCODE_SHARE),
                limits,
                access: crate::sinks::nats::access::NatsAccess {
                    tls_ca_file: raw.tls_ca_file,
                    tls_cert_file: raw.tls_cert_file,
                    tls_key_file: raw.tls_key_file,
                    credentials_file: raw.credentials_file,
                },
            })),
        }
    }
}
