//! A job's version books at the stream's start position: restored from the progress
//! target's history tables, or for a job without a PostgreSQL sink from its Parquet cold
//! tier. A table whose history table refused versions while it was in error
//! (`history_missed_lsn`, not mended yet: `history_repair`) has its books from the cold
//! tier too, which took every version from the stream.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::change::{format_lsn, Lsn, TableInfo};
use crate::control::job_runner::{anchor_target, blocking, parquet_roots, Anchor, JobError};
use crate::control::job_spec::{JobSpec, TableSpec};
use crate::control::{cold_history, history_start};
use crate::operators::history::HistoryBooks;
use crate::operators::partition::TenantPlan;
use crate::operators::version::SysTime;
use crate::sinks::pg_apply::{self, store};

/// Restores the version books at `resume` (no-op when no table keeps history).
pub(super) async fn restore(
    spec: &JobSpec,
    plan: &TenantPlan,
    anchor: &Anchor,
    targets: &[tokio_postgres::Client],
    infos: &[(TableSpec, Arc<TableInfo>)],
    resume: Lsn,
    books: &Arc<HistoryBooks>,
) -> Result<(), JobError> {
    books.reset(
        SysTime {
            lsn: resume,
            micros: crate::change::pg_now_micros(),
        },
        Some(spec.history.row_memory_bytes()),
    );
    if spec.history_tables().next().is_none() {
        return Ok(());
    }
    let restored = match anchor {
        Anchor::Postgres(_) => {
            let target = anchor_target(targets)?;
            let floors = pg_apply::floors::load(target, &spec.name).await?;
            let (root, from_tier) = books_from_cold_tier(spec, target).await?;
            let (tier_infos, table_infos): (Vec<_>, Vec<_>) = infos
                .iter()
                .cloned()
                .partition(|(t, _)| from_tier.contains(&t.name));
            let mut restored =
                history_start::restore_books(plan, target, &table_infos, resume, &floors, books)
                    .await?;
            if let (Some(root), false) = (root, tier_infos.is_empty()) {
                let (plan, books) = (plan.clone(), books.clone());
                restored += blocking(move || {
                    let at = |table: &str, tenant: &str| floors.book_point(table, tenant, resume);
                    cold_history::restore_books(&plan, &root, &tier_infos, at, &books)
                })
                .await?;
            }
            restored
        }
        Anchor::Cold(root) => {
            let (plan, root, infos, books) =
                (plan.clone(), root.clone(), infos.to_vec(), books.clone());
            blocking(move || {
                cold_history::restore_books(&plan, &root, &infos, |_, _| resume, &books)
            })
            .await?
        }
    };
    tracing::info!(job = %spec.name, versions = restored, at = %format_lsn(resume), "history versions restored");
    Ok(())
}

/// The job's history tables whose books come from the cold tier (its first Parquet
/// sink's root) rather than their history tables: those whose history table refused
/// versions while the table was in error (`history_missed_lsn`). The cold tier took
/// every version from the stream, so books restored from the history table would name
/// versions the tier has closed already, and the next change would close them twice.
async fn books_from_cold_tier(
    spec: &JobSpec,
    target: &tokio_postgres::Client,
) -> Result<(Option<PathBuf>, BTreeSet<String>), JobError> {
    let Some(root) = parquet_roots(spec).into_iter().next() else {
        return Ok((None, BTreeSet::new()));
    };
    let with_history: BTreeSet<String> = spec.history_tables().map(|t| t.name.clone()).collect();
    let missed = store::load_history_missed(target, &spec.name, &with_history).await?;
    for (table, from) in &missed {
        tracing::warn!(
            job = %spec.name,
            table = %table,
            missed_from = %format_lsn(*from),
            "the history table refused versions while the table was in error; its version books are restored from the cold tier"
        );
    }
    Ok((Some(root), missed.into_iter().map(|(t, _)| t).collect()))
}
