//! What a job whose progress lives in the cold tier (no PostgreSQL sink) checks before it
//! resumes its stream. Such a job cannot load rows into a running job (`control::backfill`
//! needs a PostgreSQL target to keep the loads' floors and the loaded rows' versions), so
//! where the stream alone would leave a sink without rows, the start stops with a message
//! naming what is missing and what to do, instead of streaming on with a silent gap:
//!
//! - the spec carries tenants or tables the job's coverage lacks;
//! - the spec names a NATS stream the job never published to;
//! - a NATS stream of the job has never held a message although the job has published
//!   rows up to the resume position (they are in its cold tier, and every sink got them
//!   before that position was recorded): the sink points at a server new to the job, or
//!   the stream was deleted and created again. A stream that never held a message in a
//!   job that published nothing yet is what it should be, and the job resumes.

use std::collections::BTreeSet;
use std::path::Path;

use crate::cdc::error::CdcError;
use crate::change::{format_lsn, Lsn};
use crate::control::backfill::{coverage_json, never_written_streams, WHAT_TO_DO};
use crate::control::cold_history::{cold_error, tier_tenants};
use crate::control::coverage::{Coverage, Widening};
use crate::control::job_runner::{blocking, JobError};
use crate::control::job_spec::{JobSpec, SinkSpec};
use crate::sinks::parquet::{table_dir, Manifest, ParquetError};

/// What a resuming job whose progress lives in the cold tier does with its recorded
/// coverage `held`: the coverage to record (`None`: unchanged), or an error when the spec
/// carries rows the cold tier lacks or a NATS stream new to the job (it cannot load them).
pub fn cold_tier_coverage(
    spec: &JobSpec,
    held: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>, JobError> {
    let wanted = Coverage::of(spec);
    let Some(held) = held else {
        return Ok(Some(coverage_json(&wanted)?));
    };
    let held: Coverage = serde_json::from_value(held).map_err(|e| {
        CdcError::Definite(format!(
            "the coverage in job `{}`'s progress file is not readable ({e}); move the file \
             away to take a new snapshot",
            spec.name
        ))
    })?;
    if held == wanted {
        return Ok(None);
    }
    let narrower = held.narrowing_to(&wanted);
    if !narrower.is_empty() {
        tracing::warn!(job = %spec.name, no_longer_carried = %narrower.join("; "),
            "the job no longer carries these: their rows stay in the cold tier and are no longer kept up to date");
    }
    refuse_cold_tier_widening(spec, &held.widening_to(&wanted))?;
    refuse_streams(spec, &held.new_streams(&wanted), "new to the job")?;
    Ok(Some(coverage_json(&wanted)?))
}

/// Refuses a backfill of a job whose progress lives in the cold tier (no PostgreSQL sink),
/// naming what is missing and what to do: without a history table to record the loaded
/// rows' versions in, it cannot load them.
fn refuse_cold_tier_widening(spec: &JobSpec, gaps: &[Widening]) -> Result<(), JobError> {
    if gaps.is_empty() {
        return Ok(());
    }
    let missing = gaps
        .iter()
        .map(Widening::describe)
        .collect::<Vec<_>>()
        .join("; ");
    Err(CdcError::Definite(format!(
        "the job now carries rows its targets lack: {missing}; loading them into a running job \
         needs a PostgreSQL sink (the cold tier gets the versions its history table \
         records), and this job has a {} sink only: {WHAT_TO_DO}",
        cold_sink_kind(spec)
    ))
    .into())
}

/// Refuses to resume with NATS `streams` that lack the job's rows (`why` says how),
/// naming what to do.
fn refuse_streams(spec: &JobSpec, streams: &BTreeSet<String>, why: &str) -> Result<(), JobError> {
    if streams.is_empty() {
        return Ok(());
    }
    let names = streams.iter().cloned().collect::<Vec<_>>().join("; ");
    Err(CdcError::Definite(format!(
        "the job's NATS stream {names} is {why}, and lacks the rows the job published before; \
         publishing every table to it in a running job needs a PostgreSQL sink (it keeps where \
         the stream's rows start), and this job has a {} sink only: take the NATS sink out of \
         the spec, or point it at the stream that holds the job's rows, or {WHAT_TO_DO}",
        cold_sink_kind(spec)
    ))
    .into())
}

/// The kind of the sink a job without a PostgreSQL sink keeps its progress in.
fn cold_sink_kind(spec: &JobSpec) -> &'static str {
    spec.sinks
        .iter()
        .find(|s| matches!(s, SinkSpec::Parquet(_)))
        .map_or("parquet", SinkSpec::kind)
}

/// Refuses to resume at `resume` when one of the job's NATS streams has never held a
/// message although the job has published rows up to `resume` into its cold tier at
/// `root` (module doc).
pub async fn check_streams(spec: &JobSpec, root: &Path, resume: Lsn) -> Result<(), JobError> {
    let never = never_written_streams(spec).await?;
    if never.is_empty() {
        return Ok(());
    }
    let (root, tables, include) = (
        root.to_path_buf(),
        spec.tables
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>(),
        spec.tenants.include.clone(),
    );
    let published =
        blocking(move || published_by(&root, &tables, &include, resume).map_err(cold_error(&root)))
            .await?;
    if !published {
        tracing::info!(job = %spec.name, streams = %never.iter().cloned().collect::<Vec<_>>().join("; "),
            "the NATS stream has never held a message, and the job has published no row yet");
        return Ok(());
    }
    refuse_streams(
        spec,
        &never,
        &format!(
            "empty (it has never held a message: the sink points at a server new to the job, \
             or the stream was created again), although the job has published rows up to {} \
             into its cold tier",
            format_lsn(resume)
        ),
    )
}

/// Whether the cold tier at `root` holds a file of one of `tables` (of the tenants
/// `include` names) written at or before `resume`.
fn published_by(
    root: &Path,
    tables: &[String],
    include: &crate::control::job_spec::TenantFilter,
    resume: Lsn,
) -> Result<bool, ParquetError> {
    for table in tables {
        for tenant in tier_tenants(root, table, include)? {
            let manifest = Manifest::load(&table_dir(root, &tenant, table))?;
            if manifest.is_some_and(|m| m.files.iter().any(|f| f.lsn_min <= resume)) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::{cold_tier_coverage, published_by};
    use crate::control::backfill::coverage_json;
    use crate::control::coverage::Coverage;
    use crate::control::job_spec::{JobSpec, TenantFilter};

    fn cold_job(tenants: &str) -> JobSpec {
        cold_job_with(tenants, "")
    }

    /// A job into the cold tier only, with `sinks` (TOML) beside.
    fn cold_job_with(tenants: &str, sinks: &str) -> JobSpec {
        JobSpec::from_toml_str(&format!(
            "name = \"c\"\n[source]\ndsn = \"host=127.0.0.1 dbname=app\"\npublication = \"p\"\nslot = \"s\"\n\
             [tenants]\ninclude = {tenants}\n[[tables]]\nname = \"public.prices\"\nhistory = true\n\
             [[sinks]]\nkind = \"parquet\"\nroot = \"/tmp/cold\"\n{sinks}"
        ))
        .expect("spec")
    }

    #[test]
    fn a_cold_tier_job_records_its_coverage_and_refuses_to_widen() {
        let one = cold_job("[1]");
        let held = |spec: &JobSpec| Some(coverage_json(&Coverage::of(spec)).expect("json"));
        // Nothing recorded (an older file): the spec is recorded.
        assert_eq!(cold_tier_coverage(&one, None).expect("ok"), held(&one));
        assert_eq!(cold_tier_coverage(&one, held(&one)).expect("ok"), None);
        // Narrower: recorded; wider: refused, naming what is missing and what to do.
        let two = cold_job("[1, 2]");
        assert_eq!(
            cold_tier_coverage(&one, held(&two)).expect("ok"),
            held(&one)
        );
        let err = cold_tier_coverage(&two, held(&one))
            .expect_err("wider")
            .to_string();
        assert!(
            err.contains("public.prices (tenants 2)") && err.contains("parquet sink"),
            "{err}"
        );
        let err = cold_tier_coverage(&one, Some(serde_json::json!({"tables": 3})))
            .expect_err("garbage")
            .to_string();
        assert!(err.contains("progress file is not readable"), "{err}");
    }

    #[test]
    fn a_cold_tier_job_refuses_a_nats_stream_new_to_it() {
        let nats = |stream: &str| {
            format!("[[sinks]]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"{stream}\"\n")
        };
        let held = |spec: &JobSpec| Some(coverage_json(&Coverage::of(spec)).expect("json"));
        let one = cold_job_with("[1]", &nats("ONE"));
        assert_eq!(cold_tier_coverage(&one, held(&one)).expect("ok"), None);
        // A stream taken out: recorded.
        let none = cold_job("[1]");
        assert_eq!(
            cold_tier_coverage(&none, held(&one)).expect("ok"),
            held(&none)
        );
        // A stream added, or the sink pointed at another stream: refused.
        for spec in [
            cold_job_with("[1]", &(nats("ONE") + &nats("TWO"))),
            cold_job_with("[1]", &nats("TWO")),
        ] {
            let err = cold_tier_coverage(&spec, held(&one))
                .expect_err("a stream new to the job")
                .to_string();
            assert!(
                err.contains("NATS stream TWO")
                    && err.contains("new to the job")
                    && err.contains("parquet sink only")
                    && err.contains("--drop-slot"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_tier_has_published_what_a_file_written_by_the_resume_position_holds() {
        use crate::sinks::parquet::writer::ColdTableWriter;
        use crate::sinks::parquet::{ChangeOp, ColdColumn, ColdEvent, ColdRow};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let tables = ["public.prices".to_string()];
        let all = TenantFilter::All;
        assert!(!published_by(root, &tables, &all, 1000).expect("no tier yet"));
        let columns = [ColdColumn::new("id", "integer")];
        let mut writer =
            ColdTableWriter::open(root, "1", "public.prices", &columns).expect("tier opens");
        let row = ColdRow {
            event: ColdEvent::Open,
            op: ChangeOp::Insert,
            values: vec![Some("7".into())],
            valid_from: 0,
            valid_to: None,
            system_from: 0,
            system_from_lsn: 100,
            system_to: None,
            system_to_lsn: None,
            tombstone: false,
        };
        writer.write(&[row], 100, 100).expect("write");
        assert!(!published_by(root, &tables, &all, 99).expect("read"));
        assert!(published_by(root, &tables, &all, 100).expect("read"));
        let other_tenant = TenantFilter::Only(["2".to_string()].into());
        assert!(!published_by(root, &tables, &other_tenant, 100).expect("read"));
        let other_table = ["public.notes".to_string()];
        assert!(!published_by(root, &other_table, &all, 100).expect("read"));
    }
}
