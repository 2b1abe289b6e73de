//! Backfilling what a restarted job's targets lack: when its spec carries tenants or
//! tables its snapshot did not load (`control::coverage`), those rows are loaded before
//! the stream resumes, with no gap and no overlap:
//!
//! 1. the publication already carries the wider spec (set at start, before this runs);
//! 2. a temporary slot is created with an exported snapshot: its consistent point `S` is
//!    past the publication change and past every transaction running then, so every
//!    transaction committing at or after `S` is decoded under the wider publication;
//! 3. each target loads the missing rows from that snapshot, per table in one
//!    transaction that first removes them (a rerun after a crash gives the same result)
//!    and records the load's floor (`pg_apply::floors`);
//! 4. the stream resumes from the slot's confirmed position, before `S`: the sinks skip
//!    the loaded rows' changes that commit before `S` (they are in the load) and apply
//!    the rest;
//! 5. each target's coverage is recorded last: a crash before it loads the gaps again at
//!    a new `S`.
//!
//! Each target records what it holds (`helios.job_coverage`), so a PostgreSQL target
//! added to the job's sinks holds nothing and has every table loaded the same way.
//!
//! NATS sinks get what the progress target lacked (before any resync, which reloads
//! PostgreSQL targets only) as the initial copy does: the rows as inserts at `S`, after
//! which each subject's checkpoint skips the older changes the stream sends again; a NATS
//! stream new to the job (`coverage::stream_identity`) gets every table that way.
//!
//! A table that keeps history gets the loaded rows as versions known from `S`, in the
//! same history table the stream writes (only rows that differ from versions still open
//! there: a tenant carried before, dropped and added again, keeps what did not change).
//! The history operator skips the loaded rows' changes that commit before `S` as the
//! sinks do (`operators::history`, by the progress target's floors), and its books hold
//! those rows as of `S` (`history_start::restore_books`). So that one set of books serves
//! every target, each PostgreSQL target must lack the same rows of such a table, and a
//! table it already carries cannot be loaded whole again (that would fold its tenants'
//! changes since the job stopped into one version each), unless a resync asks for it
//! (`control::resync`: there the folding is what the user asked for).
//!
//! Parquet sinks (the cold tier) get the loaded rows' versions from the progress target's
//! history table, opened or closed since the stream's resume point, as a snapshot's cold
//! write does (`history_start::publish_versions_since`); each tenant directory skips what
//! its manifest covers, so a load a crash cut short is completed by the next.
//!
//! Not supported, and a wider spec stops the job with a message saying what is missing
//! and what to do (the stream alone would never bring the missing rows): jobs whose
//! progress lives in the cold tier (no PostgreSQL sink; `control::cold_resume`), and the
//! history cases above.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crate::cdc::catalog;
use crate::cdc::column_defaults;
use crate::cdc::error::CdcError;
use crate::cdc::snapshot;
use crate::cdc::stream;
use crate::cdc::transport::ReplicationConnection;
use crate::change::{format_lsn, Lsn, TableInfo};
use crate::control::coverage::{stream_identity, Coverage, Gap, Widening};
use crate::control::history_start;
use crate::control::initial_snapshot::{self, SnapshotProgress};
use crate::control::job_runner::JobError;
use crate::control::job_spec::{JobSpec, RemovedTenants, SinkSpec, TableSpec, TenantFilter};
use crate::control::resync::{self, ReloadAsked, Reloads};
use crate::operators::version::SysTime;
use crate::sinks::nats::NatsSink;
use crate::sinks::pg_apply::history::record_snapshot_versions;
use crate::sinks::pg_apply::snapshot::{holds_tenant_rows, load_table, LoadFloor};
use crate::sinks::pg_apply::target_schema;
use crate::sinks::pg_apply::{floors, store};
use crate::sinks::SinkError;
use crate::sql_text::quote_qualified;

/// A coverage as the JSON kept in `helios.job_progress.coverage`.
pub fn coverage_json(coverage: &Coverage) -> Result<serde_json::Value, JobError> {
    serde_json::to_value(coverage)
        .map_err(|e| JobError::Dataflow(format!("write the job's coverage as JSON: {e}")))
}

/// Brings what a resuming job's PostgreSQL targets hold up to its spec (see the module
/// doc); `resume` is where the stream resumes. `targets` are the job's PostgreSQL
/// targets, the first of them keeping its progress. Each target records what it holds:
/// one new to the job holds nothing, and loads every table.
pub async fn widen(
    spec: &JobSpec,
    targets: &mut [tokio_postgres::Client],
    resume: Lsn,
    progress: &SnapshotProgress,
) -> Result<(), JobError> {
    for target in targets.iter() {
        let forgotten = floors::forget_passed(target, &spec.name, resume).await?;
        if forgotten > 0 {
            tracing::debug!(job = %spec.name, forgotten, "backfill floors the stream has passed forgotten");
        }
    }
    let wanted = Coverage::of(spec);
    let wanted_json = coverage_json(&wanted)?;
    let mut held = Vec::with_capacity(targets.len());
    for target in targets.iter() {
        held.push(store::load_coverage(target, &spec.name).await?);
    }
    if held.first().is_some_and(Option::is_none) {
        // The progress target has recorded nothing: the job was written by a version that
        // did not keep coverage. Take the spec as what the targets hold (what that
        // version assumed too).
        for target in targets.iter() {
            store::record_coverage(target, &spec.name, &wanted_json).await?;
        }
        tracing::info!(job = %spec.name, "what the job's targets hold is recorded from now on (tables and tenants of its spec)");
        return Ok(());
    }
    let mut held = held
        .into_iter()
        .map(|recorded| match recorded {
            None => Ok(Coverage::default()),
            Some(json) => serde_json::from_value::<Coverage>(json).map_err(|e| {
                CdcError::Definite(format!(
                    "helios.job_coverage of job `{}` is not readable ({e}); delete the job \
                     with its slot to take a new snapshot",
                    spec.name
                ))
            }),
        })
        .collect::<Result<Vec<Coverage>, CdcError>>()?;
    // The NATS sinks lack what the progress target lacked before any resync: a resync
    // reloads PostgreSQL targets, and the streams were not in error.
    let stream_gaps = held
        .first()
        .map(|h| h.widening_to(&wanted))
        .unwrap_or_default();
    let reloads = Reloads {
        tables: resync::take_requests(spec, targets, &mut held).await?,
        tenants: resync::take_tenant_requests(spec, targets).await?,
    };
    // What the progress target holds speaks for the job in the log.
    let Some(first) = held.first() else {
        return Ok(());
    };
    let narrower = first.narrowing_to(&wanted);
    if !narrower.is_empty() {
        match spec.tenants.removed {
            RemovedTenants::Keep => {
                tracing::warn!(job = %spec.name, no_longer_carried = %narrower.join("; "),
                "the job no longer carries these: their rows stay on the targets and are no longer kept up to date")
            }
            RemovedTenants::Delete => {
                tracing::info!(job = %spec.name, no_longer_carried = %narrower.join("; "),
                "the job no longer carries these: removed tenants' rows are deleted from the targets, a removed tenant's own tables emptied (another table no longer carried keeps its rows)")
            }
        }
    }
    if spec.tenants.removed == RemovedTenants::Delete {
        for (index, (target, h)) in targets.iter_mut().zip(&held).enumerate() {
            let removed = h.removed_rows(&wanted, &spec.tenants.include);
            purge_removed(spec, index, target, &removed).await?;
        }
    }
    let gaps: Vec<Vec<Widening>> = held
        .iter()
        .map(|h| resync::with_tenant_reloads(h.widening_to(&wanted), &reloads.tenants))
        .collect();
    let mut new_streams = first.new_streams(&wanted);
    let never = never_written_streams(spec).await?;
    if !never.is_empty() && !source_holds_job_rows(spec).await? {
        tracing::info!(job = %spec.name, streams = %never.iter().cloned().collect::<Vec<_>>().join("; "),
            "the NATS stream has never held a message, and the source holds none of the job's tenants' rows: nothing to publish to it");
    } else {
        for identity in never {
            tracing::info!(job = %spec.name, stream = %identity,
                "the NATS stream has never held a message (a server new to the job, or the stream created again): every table is published to it");
            new_streams.insert(identity);
        }
    }
    let streams = StreamGaps {
        gaps: stream_gaps,
        new: new_streams,
    };
    if gaps.iter().any(|g| !g.is_empty()) || !streams.new.is_empty() {
        check_history_gaps(spec, &held, &gaps)?;
        for (index, h) in held.iter().enumerate() {
            if h.tables.is_empty() && !gaps[index].is_empty() {
                tracing::info!(job = %spec.name, target = index, "a target new to the job: every table is loaded into it");
            }
        }
        load_gaps(spec, targets, &gaps, &reloads, &streams, resume, progress).await?;
    }
    for (target, h) in targets.iter().zip(&held) {
        if *h != wanted {
            store::record_coverage(target, &spec.name, &wanted_json).await?;
        }
        store::clear_tenant_resyncs(target, &spec.name, &reloads.tenants).await?;
    }
    Ok(())
}

/// The job's NATS streams ([`stream_identity`]) that have never held a message on their
/// server, whatever the recorded coverage says: a sink pointed at a server new to the job
/// (its stream created just now), or a stream deleted and created again. Every table is
/// published to them, as to a stream new to the job; without this they would get only
/// the changes from the resume position on.
pub(crate) async fn never_written_streams(spec: &JobSpec) -> Result<BTreeSet<String>, JobError> {
    let identities = nats_identities(spec);
    let mut never = BTreeSet::new();
    if identities.is_empty() {
        return Ok(never);
    }
    // In the order of the job's NATS sinks, as `identities`.
    let sinks = initial_snapshot::nats_snapshot_sinks(spec).await?;
    for (mut sink, identity) in sinks.into_iter().zip(identities) {
        if sink.stream_never_written().await? {
            never.insert(identity);
        }
    }
    Ok(never)
}

/// Whether any of the job's tables on the source holds a row of its tenants now. A NATS
/// stream that never held a message lacks nothing when none does: the rows there were at
/// the resume position have been deleted since, and the stream sends those deletes.
async fn source_holds_job_rows(spec: &JobSpec) -> Result<bool, JobError> {
    let source = catalog::connect(spec.source.dsn.expose()).await?;
    for table in &spec.tables {
        let info = catalog::table_info(&source, table.schema(), table.table()).await?;
        let key = spec.tenant_key_of(table);
        if holds_tenant_rows(&source, &info, &key, &spec.tenants.include).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The identities of the job's NATS sinks' streams ([`stream_identity`]), in their order.
fn nats_identities(spec: &JobSpec) -> Vec<String> {
    spec.sinks
        .iter()
        .filter_map(|s| match s {
            SinkSpec::Nats(n) => Some(stream_identity(&spec.name, n)),
            SinkSpec::Postgres(_) | SinkSpec::Parquet(_) => None,
        })
        .collect()
}

/// What a backfill publishes to the job's NATS sinks: the progress target's gaps as they
/// were before any resync, and every table to the streams new to the job.
struct StreamGaps {
    gaps: Vec<Widening>,
    /// The NATS streams new to the job (`coverage::stream_identity`).
    new: BTreeSet<String>,
}

/// Deletes, in one transaction on `target` (the job's target `index`), the rows each
/// `(table, condition)` names: those of tenants the job no longer carries
/// (`tenants.removed = "delete"`). A table the target lacks has none.
async fn purge_removed(
    spec: &JobSpec,
    index: usize,
    target: &mut tokio_postgres::Client,
    removed: &[(String, String)],
) -> Result<(), JobError> {
    if removed.is_empty() {
        return Ok(());
    }
    let failed = |what: &'static str| move |e: tokio_postgres::Error| store::sink_error(what, &e);
    let tx = target
        .transaction()
        .await
        .map_err(failed("begin deleting removed tenants' rows"))?;
    for (table, condition) in removed {
        // A name the coverage recorded from a spec: `schema.table`, both parts valid.
        let Some((schema, name)) = table.split_once('.') else {
            continue;
        };
        let name = quote_qualified(schema, name);
        let exists: Option<String> = tx
            .query_one("SELECT to_regclass($1)::text", &[&name])
            .await
            .map_err(failed(
                "look up a table before deleting removed tenants' rows",
            ))?
            .get(0);
        if exists.is_none() {
            continue;
        }
        let deleted = tx
            .execute(&format!("DELETE FROM {name} WHERE {condition}"), &[])
            .await
            .map_err(failed("delete removed tenants' rows"))?;
        tracing::info!(job = %spec.name, target = index, table = %table, deleted,
            "rows of tenants the job no longer carries deleted (tenants.removed = \"delete\")");
    }
    tx.commit()
        .await
        .map_err(failed("commit deleting removed tenants' rows"))?;
    Ok(())
}

/// What to do when a wider spec cannot be loaded into the running job.
pub(crate) const WHAT_TO_DO: &str = "delete the job with its slot (`helios-repl jobs stop <job> \
     --drop-slot`, or drop the slot) and start it again to take a new snapshot, or carry the \
     new tenants or tables in a job of their own";

/// Refuses a backfill of a table that keeps history which one set of version books
/// cannot serve (module doc): targets that lack different rows of it (one new to the
/// job, say), or a table already carried that would be loaded whole again. `held` and
/// `gaps` are per target, in the same order.
fn check_history_gaps(
    spec: &JobSpec,
    held: &[Coverage],
    gaps: &[Vec<Widening>],
) -> Result<(), JobError> {
    let refuse = |table: &str, why: String| -> Result<(), JobError> {
        Err(CdcError::Definite(format!(
            "the job now carries rows its targets lack of table {table}, which keeps history; \
             {why}: {WHAT_TO_DO}"
        ))
        .into())
    };
    for table in spec.history_tables() {
        let of_table = |target: &[Widening]| -> Vec<Widening> {
            target
                .iter()
                .filter(|w| w.table == table.name)
                .cloned()
                .collect()
        };
        let first = gaps.first().map(|g| of_table(g)).unwrap_or_default();
        if let Some(index) = gaps.iter().position(|g| of_table(g) != first) {
            let describe = |g: &[Widening]| match g.first() {
                Some(w) => w.describe(),
                None => "nothing".to_string(),
            };
            return refuse(
                &table.name,
                format!(
                    "its targets lack different rows of it (target 0: {}; target {index}: {}), \
                     and one history cannot be loaded into both",
                    describe(&first),
                    describe(&of_table(&gaps[index]))
                ),
            );
        }
        let whole = first.iter().any(|w| matches!(w.gap, Gap::Table));
        if whole && held.iter().any(|h| h.tables.contains_key(&table.name)) {
            return refuse(
                &table.name,
                "it is carried already and would be loaded whole again (its tenant column \
                 changed, or its tenants became \"all\"), which would fold its tenants' changes \
                 since the job stopped into one version each; list the new tenants instead"
                    .to_string(),
            );
        }
    }
    Ok(())
}

/// The temporary slot of a backfill of the job whose slot is `slot` (a slot name holds at
/// most 63 bytes; a job's slot name is ASCII).
fn backfill_slot_name(slot: &str) -> String {
    const SUFFIX: &str = "_backfill";
    let keep = slot.len().min(63 - SUFFIX.len());
    format!("{}{SUFFIX}", &slot[..keep])
}

/// Loads each target's `gaps` (in `targets`' order) from a snapshot of a temporary slot
/// (module doc), counting loads, rows and bytes in `progress` (the job's status shows
/// them as a snapshot's), and publishes to the NATS sinks the progress target's gaps, or
/// every table to those new to the job (`streams`). A table a target asked to resync
/// (`reloads`) that the target refuses goes back to error state, tenants' rows it refuses
/// stay as they were, and the rest go on; any other refused load stops the job.
async fn load_gaps(
    spec: &JobSpec,
    targets: &mut [tokio_postgres::Client],
    gaps: &[Vec<Widening>],
    reloads: &Reloads,
    streams: &StreamGaps,
    resume: Lsn,
    progress: &SnapshotProgress,
) -> Result<(), JobError> {
    let started = Instant::now();
    let dsn = spec.source.dsn.expose();
    let slot = backfill_slot_name(&spec.source.slot);
    let address = stream::replication_address(dsn, &slot, spec.source.receive_buffer())?;
    let mut repl = ReplicationConnection::connect(&address)
        .await
        .map_err(|e| CdcError::Connect(e.to_string()))?;
    let snap = snapshot::create_slot_exporting_snapshot(&mut repl, &slot, true).await?;
    let floor_at = snap.consistent_point;
    // The loaded rows of tables that keep history are versions known from the snapshot
    // (by the source's clock, before any change the stream applies after the floor).
    let known_from = SysTime {
        lsn: floor_at,
        micros: snap.taken_at_micros,
    };
    let mut described: Vec<String> = gaps
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(i, g)| {
            let list: Vec<String> = g.iter().map(Widening::describe).collect();
            format!("target {i}: {}", list.join("; "))
        })
        .collect();
    if !streams.new.is_empty() {
        let list: Vec<&str> = streams.new.iter().map(String::as_str).collect();
        described.push(format!("new NATS streams: {}", list.join(", ")));
    }
    tracing::info!(job = %spec.name, gaps = %described.join(" | "), snapshot_at = %format_lsn(floor_at),
        "the job carries rows its targets lack: loading them before the stream resumes");
    let copier = catalog::connect(dsn).await?;
    snapshot::begin_on_snapshot(&copier, &snap.snapshot_name).await?;
    progress.start(gaps.iter().map(Vec::len).sum::<usize>() as u64);
    let bytes_before = progress.bytes().load(Relaxed);
    let mut rows = 0u64;
    let mut shapes = prefetch_shapes(spec, &copier, gaps).await?;
    for (index, (target, gaps)) in targets.iter_mut().zip(gaps).enumerate() {
        for gap in gaps {
            let table = spec
                .tables
                .iter()
                .find(|t| t.name == gap.table)
                .ok_or_else(|| {
                    JobError::Dataflow(format!("backfill of {}: not a job table", gap.table))
                })?;
            let info = table_shape(&copier, &mut shapes, table).await?;
            let key = &spec.tenant_key_of(table);
            let filter = gap.load_filter(&spec.tenants.include);
            let floor = LoadFloor {
                job: &spec.name,
                whole: matches!(gap.gap, Gap::Table),
                lsn: floor_at,
            };
            // A table the target lacks gets the source's generated columns and indexes once
            // loaded.
            let lacked = matches!(gap.gap, Gap::Table)
                && target_schema::target_columns(&*target, &info.schema, &info.name)
                    .await?
                    .is_none();
            let (info, filter, copier) = (&*info, &filter, &copier);
            let open_source = move |binary| {
                let sql = snapshot::copy_out_sql(info, key, filter, None, binary);
                async move { copier.copy_out(&sql).await }
            };
            let loaded = load_table(
                target,
                info,
                key,
                filter,
                true,
                Some(&floor),
                open_source,
                progress.bytes(),
            )
            .await
            .map_err(JobError::from);
            if lacked && loaded.is_ok() {
                // Generated columns first (a rewrite of the loaded rows): an index may be on
                // one.
                let (generated, defaults, indexes) = futures_util::try_join!(
                    catalog::generated_columns(copier, info),
                    column_defaults::read_statements(copier, info),
                    catalog::secondary_indexes(copier, info),
                )?;
                let generated: Vec<String> = generated
                    .iter()
                    .map(|g| g.add_statement(&info.schema, &info.name))
                    .collect();
                target_schema::add_generated_columns(&spec.name, &*target, info, &generated).await;
                target_schema::set_defaults(&spec.name, &*target, info, &defaults).await;
                target_schema::build_indexes(&spec.name, &*target, info, &indexes).await;
            }
            let loaded = match loaded {
                Ok(loaded) if table.history => {
                    record_loaded_versions(spec, target, table, info, filter, known_from)
                        .await
                        .map(|()| loaded)
                }
                other => other,
            };
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(JobError::Sink(SinkError::Definite(reason))) => {
                    match reloads.asked_for(index, gap) {
                        Some(ReloadAsked::Table) => {
                            let reason = format!("resync failed: {reason}");
                            tracing::error!(job = %spec.name, target = index, table = %gap.table, error = %reason,
                                "the target refused the table's reload: it stays in error state, and its changes are kept in helios.dead_letters");
                            store::mark_table_failed(
                                &*target, &spec.name, &gap.table, &reason, floor_at,
                            )
                            .await?;
                        }
                        Some(ReloadAsked::Tenants) => {
                            tracing::error!(job = %spec.name, target = index, table = %gap.table, error = %reason,
                                "the target refused the reload of these tenants' rows: they stay as they were, and the resync request is dropped");
                        }
                        None => return Err(SinkError::Definite(reason).into()),
                    }
                    progress.done(0);
                    continue;
                }
                Err(e) => return Err(e),
            };
            progress.done(loaded.rows);
            rows += loaded.rows;
        }
    }
    // The NATS sinks get what the progress target lacked (before any resync), as the
    // initial copy does: inserts at the snapshot's point, so each subject's checkpoint
    // skips the older changes the stream sends again.
    let published = publish_gaps(
        spec,
        &copier,
        &mut shapes,
        &streams.gaps,
        &streams.new,
        floor_at,
    )
    .await?;
    copier
        .batch_execute("COMMIT")
        .await
        .map_err(CdcError::query("end backfill snapshot transaction"))?;
    // The temporary slot goes with its session.
    drop(repl);
    // The Parquet sinks get the versions of what the progress target lacked, from its
    // history table (the same on every target): opened or closed since the stream's
    // resume point (a load a crash cut short left some too), unless a directory has them.
    // Read after the source's snapshot is released: the history table has them all, and
    // the shapes were read in it by the loads.
    if let Some(anchor) = targets.first() {
        for gap in gaps.first().map_or(&[][..], Vec::as_slice) {
            let Some(table) = spec
                .tables
                .iter()
                .find(|t| t.history && t.name == gap.table)
            else {
                continue;
            };
            let info = table_shape(&copier, &mut shapes, table).await?;
            let loaded = gap.load_filter(&spec.tenants.include);
            let key = spec.tenant_key_of(table);
            let versions = history_start::publish_versions_since(
                spec, anchor, &info, &key, &loaded, resume, floor_at,
            )
            .await?;
            if versions > 0 {
                tracing::info!(job = %spec.name, table = %table.name, versions,
                    "backfilled history versions brought to the cold tier");
            }
        }
    }
    let bytes = progress.bytes().load(Relaxed) - bytes_before;
    tracing::info!(job = %spec.name, loads = gaps.iter().map(Vec::len).sum::<usize>(), rows, bytes, published,
        seconds = started.elapsed().as_secs_f32(), floor = %format_lsn(floor_at),
        "backfill loaded: the stream skips the loaded rows' changes committed before the floor");
    Ok(())
}

/// Records the rows a backfill just loaded into `target`'s `table` (the tenants of
/// `loaded`) as history versions known from `at`, in one transaction. A crash before it
/// leaves the job's coverage unrecorded, so the next start loads and records them again.
async fn record_loaded_versions(
    spec: &JobSpec,
    target: &mut tokio_postgres::Client,
    table: &TableSpec,
    info: &TableInfo,
    loaded: &TenantFilter,
    at: SysTime,
) -> Result<(), JobError> {
    let failed = |what: &'static str| move |e: tokio_postgres::Error| store::sink_error(what, &e);
    let tx = target
        .transaction()
        .await
        .map_err(failed("begin recording loaded rows as history versions"))?;
    let recorded = record_snapshot_versions(
        &tx,
        info,
        &spec.tenant_key_of(table),
        loaded,
        table.valid_time_column.as_deref(),
        at,
    )
    .await?;
    tx.commit()
        .await
        .map_err(failed("commit recording loaded rows as history versions"))?;
    tracing::info!(job = %spec.name, table = %table.name, opened = recorded.opened, closed = recorded.closed,
        "backfilled rows recorded as history versions");
    Ok(())
}

/// The shapes of the tables of `gaps` in the snapshot `copier` reads, read pipelined
/// (`catalog::pipelined`): tenants added to a schema-per-tenant job bring many tables.
async fn prefetch_shapes(
    spec: &JobSpec,
    copier: &tokio_postgres::Client,
    gaps: &[Vec<Widening>],
) -> Result<HashMap<String, Arc<TableInfo>>, JobError> {
    let mut names: Vec<&str> = gaps.iter().flatten().map(|g| g.table.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let tables: Vec<&TableSpec> = names
        .iter()
        .filter_map(|name| spec.tables.iter().find(|t| t.name == *name))
        .collect();
    let reads: Vec<_> = tables
        .iter()
        .map(|t| catalog::table_info(copier, t.schema(), t.table()))
        .collect();
    let infos = catalog::pipelined(reads).await?;
    Ok(tables
        .iter()
        .zip(infos)
        .map(|(t, info)| (t.name.clone(), Arc::new(info)))
        .collect())
}

/// `table`'s shape in the snapshot `copier` reads, read once per backfill.
async fn table_shape(
    copier: &tokio_postgres::Client,
    shapes: &mut HashMap<String, Arc<TableInfo>>,
    table: &TableSpec,
) -> Result<Arc<TableInfo>, JobError> {
    if let Some(info) = shapes.get(&table.name) {
        return Ok(Arc::clone(info));
    }
    let info = Arc::new(catalog::table_info(copier, table.schema(), table.table()).await?);
    shapes.insert(table.name.clone(), Arc::clone(&info));
    Ok(info)
}

/// Publishes, from the snapshot `copier` reads, as inserts at `at`: `gaps` (the progress
/// target's) to the job's NATS sinks that had its rows, and every table to those in
/// `new_streams` (added to the job). Returns the bytes published.
async fn publish_gaps(
    spec: &JobSpec,
    copier: &tokio_postgres::Client,
    shapes: &mut HashMap<String, Arc<TableInfo>>,
    gaps: &[Widening],
    new_streams: &BTreeSet<String>,
    at: Lsn,
) -> Result<u64, JobError> {
    let identities = nats_identities(spec);
    if identities.is_empty() || (gaps.is_empty() && new_streams.is_empty()) {
        return Ok(0);
    }
    // In the order of the job's NATS sinks, as `identities`.
    let sinks = initial_snapshot::nats_snapshot_sinks(spec).await?;
    let (fresh, known): (Vec<_>, Vec<_>) = sinks
        .into_iter()
        .zip(&identities)
        .partition(|(_, id)| new_streams.contains(*id));
    let mut bytes = 0;
    if !fresh.is_empty() {
        tracing::info!(job = %spec.name, streams = %fresh.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>().join(", "),
            "a NATS stream new to the job: every table is published to it");
        let every_table = spec
            .tables
            .iter()
            .map(|table| (table, spec.tenants.include.clone()));
        bytes += publish_tables(spec, copier, shapes, fresh, every_table, at).await?;
    }
    let gap_tables = gaps.iter().filter_map(|gap| {
        let table = spec.tables.iter().find(|t| t.name == gap.table)?;
        Some((table, gap.load_filter(&spec.tenants.include)))
    });
    bytes += publish_tables(spec, copier, shapes, known, gap_tables, at).await?;
    Ok(bytes)
}

/// Publishes each of `loads` (a table and the tenants to load of it) to `sinks` as
/// inserts at `at`; the bytes published.
async fn publish_tables<'a, I>(
    spec: &'a JobSpec,
    copier: &tokio_postgres::Client,
    shapes: &mut HashMap<String, Arc<TableInfo>>,
    sinks: Vec<(NatsSink, I)>,
    loads: impl Iterator<Item = (&'a TableSpec, TenantFilter)>,
    at: Lsn,
) -> Result<u64, JobError> {
    let mut sinks: Vec<NatsSink> = sinks.into_iter().map(|(sink, _)| sink).collect();
    if sinks.is_empty() {
        return Ok(0);
    }
    let mut bytes = 0;
    for (table, tenants) in loads {
        let info = table_shape(copier, shapes, table).await?;
        bytes += initial_snapshot::publish_snapshot(
            copier,
            &mut sinks,
            info,
            &spec.tenant_key_of(table),
            &tenants,
            at,
        )
        .await?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::{backfill_slot_name, check_history_gaps};
    use crate::control::coverage::Coverage;
    use crate::control::job_spec::JobSpec;

    /// A job into PostgreSQL whose `prices` keeps history and `notes` does not.
    fn history_job(tenants: &str) -> JobSpec {
        JobSpec::from_toml_str(&format!(
            "name = \"h\"\n[source]\ndsn = \"host=127.0.0.1 dbname=app\"\npublication = \"p\"\nslot = \"s\"\n\
             [tenants]\ninclude = {tenants}\n[[tables]]\nname = \"public.prices\"\nhistory = true\n\
             [[tables]]\nname = \"public.notes\"\n\
             [[sinks]]\nkind = \"postgres\"\ndsn = \"host=127.0.0.1 dbname=t1\"\n\
             [[sinks]]\nkind = \"postgres\"\ndsn = \"host=127.0.0.1 dbname=t2\"\n"
        ))
        .expect("spec")
    }

    /// Whether widening the targets holding `held` (one coverage per target) to `spec`
    /// is refused, and why.
    fn history_check(spec: &JobSpec, held: &[Coverage]) -> Result<(), String> {
        let wanted = Coverage::of(spec);
        let gaps: Vec<_> = held.iter().map(|h| h.widening_to(&wanted)).collect();
        check_history_gaps(spec, held, &gaps).map_err(|e| e.to_string())
    }

    #[test]
    fn history_tables_widen_only_the_same_way_on_every_target_and_never_whole_again() {
        let one = Coverage::of(&history_job("[1]"));
        let all = history_job("\"all\"");
        // A tenant added, both targets lacking it: loaded.
        history_check(&history_job("[1, 2]"), &[one.clone(), one.clone()]).expect("same gaps");
        // A table new to the job: loaded whole.
        let mut without_prices = one.clone();
        without_prices.tables.remove("public.prices");
        history_check(
            &history_job("[1]"),
            &[without_prices.clone(), without_prices],
        )
        .expect("a new table");
        // A target new to the job: it lacks everything, the first target nothing.
        let err = history_check(&history_job("[1]"), &[one.clone(), Coverage::default()])
            .expect_err("a new target");
        assert!(
            err.contains("table public.prices, which keeps history")
                && err.contains("target 0: nothing; target 1: public.prices (the whole table)")
                && err.contains("--drop-slot"),
            "{err}"
        );
        // Carried for tenant 1 and now for all: it would load whole again.
        let err = history_check(&all, &[one.clone(), one.clone()]).expect_err("whole again");
        assert!(err.contains("would be loaded whole again"), "{err}");
        // A table without history is no concern of this check.
        let mut without_notes = one.clone();
        without_notes.tables.remove("public.notes");
        history_check(&history_job("[1]"), &[one, without_notes]).expect("notes keep no history");
    }

    #[test]
    fn the_backfill_slot_name_fits_a_slot_name() {
        assert_eq!(backfill_slot_name("helios_a"), "helios_a_backfill");
        let long = "s".repeat(63);
        let name = backfill_slot_name(&long);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("_backfill"));
    }
}
