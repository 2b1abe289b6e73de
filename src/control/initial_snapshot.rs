//! The initial snapshot of a job: creates the slot with an exported snapshot, loads the
//! job's tenants' rows of every table into every PostgreSQL target (and the cold tier's
//! history, and NATS sinks), records that the snapshot is done, and starts streaming from
//! the slot's consistent point (see `cdc::snapshot` for why nothing is missed or doubled).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::cdc::catalog;
use crate::cdc::column_defaults;
use crate::cdc::error::CdcError;
use crate::cdc::snapshot;
use crate::cdc::stream;
use crate::cdc::table_parts::{self, PageRange, TablePart};
use crate::cdc::transport::{ReplicationConnection, ReplicationStream};
use crate::change::{format_lsn, Lsn, TableInfo};
use crate::control::cold_history;
use crate::control::history_start;
use crate::control::job_control::SnapshotStatus;
use crate::control::job_reader::start_stream;
use crate::control::job_runner::{
    anchor_target, parquet_roots, postgres_dsns, record_snapshot_done, Anchor, JobError,
};
use crate::control::job_spec::{JobSpec, SinkSpec, TenantFilter, TenantKey};
use crate::operators::partition::TenantPlan;
use crate::operators::version::SysTime;
use crate::sinks::nats::NatsSink;
use crate::sinks::pg_apply::{self, staged_table};
use crate::sinks::Sink;

/// How far the snapshot got, for the job's status and progress lines.
#[derive(Debug, Default)]
pub struct SnapshotProgress {
    loads_total: AtomicU64,
    loads_done: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
}

impl SnapshotProgress {
    /// A new snapshot (or backfill) of `loads` table loads begins.
    pub(super) fn start(&self, loads: u64) {
        self.loads_done.store(0, Relaxed);
        self.rows.store(0, Relaxed);
        self.bytes.store(0, Relaxed);
        self.loads_total.store(loads, Relaxed);
    }

    /// One load of `rows` rows is committed.
    pub(super) fn done(&self, rows: u64) {
        self.rows.fetch_add(rows, Relaxed);
        self.loads_done.fetch_add(1, Relaxed);
    }

    /// The bytes streamed so far, which loads add to as they go.
    pub(super) fn bytes(&self) -> &AtomicU64 {
        &self.bytes
    }

    /// The figures, `None` before any snapshot began.
    pub fn status(&self) -> Option<SnapshotStatus> {
        let loads_total = self.loads_total.load(Relaxed);
        (loads_total > 0).then(|| SnapshotStatus {
            loads_done: self.loads_done.load(Relaxed),
            loads_total,
            rows: self.rows.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        })
    }
}

/// Creates the slot with an exported snapshot, loads every table into every target, and
/// starts streaming from the consistent point. `recorded` is the last position the job
/// recorded before it (0 if none): every sink holds the history up to it.
pub(super) async fn take_snapshot(
    spec: &JobSpec,
    plan: &TenantPlan,
    anchor: &Anchor,
    targets: &mut [tokio_postgres::Client],
    infos: &[(
        crate::control::job_spec::TableSpec,
        Arc<crate::change::TableInfo>,
    )],
    progress: &SnapshotProgress,
    recorded: Lsn,
) -> Result<(ReplicationStream, Lsn), JobError> {
    let dsn = spec.source.dsn.expose();
    let slot = &spec.source.slot;
    let address = stream::replication_address(dsn, slot, spec.source.receive_buffer())?;
    let mut repl = ReplicationConnection::connect(&address)
        .await
        .map_err(|e| CdcError::Connect(e.to_string()))?;
    let snap = snapshot::create_slot_exporting_snapshot(&mut repl, slot, false).await?;
    // The versions the snapshot loads are known from the moment it was taken (by the
    // source's clock, before any change the slot streams).
    let at = SysTime {
        lsn: snap.consistent_point,
        micros: snap.taken_at_micros,
    };
    let started = Instant::now();
    let copier = catalog::connect(dsn).await?;
    snapshot::begin_on_snapshot(&copier, &snap.snapshot_name).await?;
    let mut bytes = 0u64;
    let mut streams = nats_snapshot_sinks(spec).await?;
    let wanted = spec
        .source
        .snapshot_parallel_tables
        .unwrap_or_else(snapshot_lanes);
    let split = spec.source.snapshot_split_tables
        && wanted > 1
        && !targets.is_empty()
        && table_parts::scans_tid_ranges(&copier).await?;
    let parts_wanted = if split { wanted } else { 1 };
    let loads_to_postgres = !targets.is_empty();
    // Each table's reads go out together and up to `TABLES_IN_FLIGHT` tables' at once,
    // pipelined on the snapshot session: a schema per tenant makes thousands of tables.
    let reads: Vec<_> = spec
        .tables
        .iter()
        .map(|table| {
            let column = plan.tenant_keys[&table.name].clone();
            plan_lane_table(&copier, table, column, loads_to_postgres, parts_wanted)
        })
        .collect();
    let shapes: Vec<LaneTable> = catalog::pipelined(reads).await?;
    for (table, shape) in spec.tables.iter().zip(&shapes) {
        if shape.parts.len() > 1 {
            tracing::info!(job = %spec.name, table = %table.name, pages = shape.pages, parts = shape.parts.len(), "initial copy of a large table split into parts loaded side by side");
        }
    }
    let tables: Vec<_> = spec
        .tables
        .iter()
        .zip(&shapes)
        .map(|(table, shape)| (table, shape.info.clone(), shape.column.clone()))
        .collect();
    let loads: usize = shapes.iter().map(|t| t.parts.len()).sum::<usize>() * targets.len();
    progress.start(loads as u64);
    // The PostgreSQL targets load on their lanes while the cold tier and NATS read the
    // main snapshot session: they share no connection, so they run side by side.
    let target_dsns = postgres_dsns(spec);
    let postgres = async {
        if loads == 0 {
            return Ok(0);
        }
        let load_lanes = LoadLanes {
            job: &spec.name,
            source_dsn: dsn,
            snapshot_name: &snap.snapshot_name,
            target_dsns: &target_dsns,
            include: &plan.include,
            progress,
        };
        load_lanes
            .load_all(targets, &shapes, wanted.min(loads))
            .await
    };
    let others = async {
        let mut bytes = 0u64;
        for (table, info, column) in &tables {
            if let (Anchor::Cold(_), true) = (anchor, table.history) {
                let rows = cold_history::snapshot_table(
                    &copier,
                    &parquet_roots(spec),
                    plan,
                    table,
                    info,
                    at,
                )
                .await?;
                tracing::info!(job = %spec.name, table = %table.name, versions = rows, "snapshot rows written to the cold tier as versions");
            }
            if !streams.is_empty() {
                bytes += publish_snapshot(
                    &copier,
                    &mut streams,
                    info.clone(),
                    column,
                    &plan.include,
                    snap.consistent_point,
                )
                .await?;
            }
        }
        Ok::<u64, JobError>(bytes)
    };
    let (loaded, published) = futures_util::future::try_join(postgres, others).await?;
    bytes += loaded + published;
    copier
        .batch_execute("COMMIT")
        .await
        .map_err(CdcError::query("end snapshot transaction"))?;
    if let Anchor::Postgres(_) = anchor {
        let target = anchor_target(targets)?;
        history_start::record_snapshot(spec, plan, target, infos, at, recorded).await?;
    }
    record_snapshot_done(spec, anchor, targets, snap.consistent_point).await?;
    let tenants = match &plan.include {
        TenantFilter::All => "all".to_string(),
        TenantFilter::Only(t) => t.len().to_string(),
    };
    tracing::info!(job = %spec.name, tables = spec.tables.len(), tenants, bytes, seconds = started.elapsed().as_secs_f32(),
        consistent_point = %format_lsn(snap.consistent_point), "initial snapshot loaded");
    let stream = start_stream(spec, repl, snap.consistent_point).await?;
    Ok((stream, snap.consistent_point))
}

/// Reads what the snapshot needs of `table` on `copier` (in the exported snapshot): its
/// shape, and when it loads into PostgreSQL targets (`to_postgres`) its size and parts (at
/// most `parts_wanted`), secondary indexes, generated columns and column defaults.
async fn plan_lane_table(
    copier: &tokio_postgres::Client,
    table: &crate::control::job_spec::TableSpec,
    column: TenantKey,
    to_postgres: bool,
    parts_wanted: usize,
) -> Result<LaneTable, JobError> {
    let info = Arc::new(catalog::table_info(copier, table.schema(), table.table()).await?);
    if !to_postgres {
        return Ok(LaneTable {
            info,
            column,
            pages: 0,
            parts: vec![TablePart::Pages(PageRange { from: 0, to: None })],
            indexes: Vec::new(),
            generated: Vec::new(),
            defaults: Vec::new(),
        });
    }
    let ((pages, parts), indexes, generated, defaults) = futures_util::try_join!(
        table_parts::plan_parts(copier, &info, parts_wanted),
        catalog::secondary_indexes(copier, &info),
        catalog::generated_columns(copier, &info),
        column_defaults::read_statements(copier, &info),
    )?;
    Ok(LaneTable {
        info,
        column,
        pages,
        parts,
        indexes,
        generated,
        defaults,
    })
}

/// How many table loads run at once when a snapshot has several (tables × PostgreSQL
/// targets) and the job does not say (`source.snapshot_parallel_tables`): one per core,
/// at most four. Each takes a source session importing the exported snapshot and a
/// connection to its target.
pub(crate) fn snapshot_lanes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
}

/// Loads one table (or, with `part`, one part of a split table that holds none of the
/// job's tenants' rows on the target) from `copier`'s snapshot into `into` on one target
/// (the table itself, or its staging table, `staged_table`); returns bytes loaded.
async fn load_one(
    job: &str,
    copier: &tokio_postgres::Client,
    target: &mut tokio_postgres::Client,
    load: &LaneLoad<'_>,
    include: &TenantFilter,
    progress: &SnapshotProgress,
) -> Result<u64, JobError> {
    let (info, column, part) = (&*load.info, &load.column, load.part.as_ref());
    let open_source = move |binary| {
        let sql = snapshot::copy_out_sql(info, column, include, part, binary);
        async move { copier.copy_out(&sql).await }
    };
    let loaded = pg_apply::snapshot::load_table(
        target,
        &load.into,
        column,
        include,
        part.is_none(),
        None,
        open_source,
        &progress.bytes,
    )
    .await?;
    progress.done(loaded.rows);
    tracing::debug!(job, table = %info.qualified_name(), into = %load.into.name, ?part, bytes = loaded.bytes, rows = loaded.rows, binary = loaded.binary, "table loaded into a target");
    Ok(loaded.bytes)
}

/// A table of a snapshot that loads in lanes.
struct LaneTable {
    info: Arc<TableInfo>,
    /// Where its rows keep their tenant.
    column: TenantKey,
    /// Its size in pages when the snapshot began (0 if not read).
    pages: u64,
    /// The parts it loads in (one: the whole table, in one transaction).
    parts: Vec<TablePart>,
    /// Its secondary indexes on the source, built on a target that lacked the table once
    /// it is loaded (`catalog::secondary_indexes`).
    indexes: Vec<String>,
    /// Its stored generated columns on the source, added to a target's staging table
    /// before the load (on an empty table: no rewrite).
    generated: Vec<catalog::GeneratedColumn>,
    /// The statements that give a target that lacked the table the source's column
    /// defaults and their sequences, once it is loaded (`cdc::column_defaults`).
    defaults: Vec<String>,
}

/// How a target takes a table of the snapshot.
enum TargetTable {
    /// It lacked the table: loaded into this staging table, published once loaded.
    Staged(Arc<TableInfo>),
    /// It lacked the table, which has no key: created in place; `whole` as for `Held`.
    Created { whole: bool },
    /// It has the table; `whole`: loaded in one transaction rather than in its parts.
    Held { whole: bool },
}

/// What a lane does on a target that lacked a table once the table's only load there is
/// committed: gives a staged table its key and name, then the source's column defaults
/// and indexes (a table loaded in parts gets these after every lane is done).
struct Finish<'t> {
    /// The staging table it was loaded into (`None`: a keyless table created in place).
    staging: Option<Arc<TableInfo>>,
    table: &'t LaneTable,
}

/// One load of a lane: a table, or a part of one, into one target.
struct LaneLoad<'t> {
    /// The source table.
    info: Arc<TableInfo>,
    column: TenantKey,
    /// Where its rows go on the target: the table, or its staging table.
    into: Arc<TableInfo>,
    /// The target's index in `LoadLanes::target_dsns`.
    target: usize,
    /// The part it loads (`None`: the whole table).
    part: Option<TablePart>,
    /// About how many pages it reads (the larger loads go first).
    pages: u64,
    /// What to do once it is committed, when it is the table's only load on a target that
    /// lacked the table.
    finish: Option<Finish<'t>>,
}

/// Table loads run side by side, each lane on a source session of its own that imports
/// the exported snapshot (so every lane reads the same consistent state) and on
/// connections of its own to the targets. Each table loads in one target transaction,
/// or a large one split into parts (`cdc::table_parts`) in one per part when the target
/// lacks it or holds none of the job's tenants' rows in it; the snapshot is recorded
/// done only after every lane has committed (a restart loads every table again).
struct LoadLanes<'a> {
    job: &'a str,
    source_dsn: &'a str,
    snapshot_name: &'a str,
    /// The job's PostgreSQL targets, in the order of the targets' indexes in the loads.
    target_dsns: &'a [String],
    include: &'a TenantFilter,
    progress: &'a SnapshotProgress,
}

impl LoadLanes<'_> {
    /// Loads every table of `tables` (each whole or in its parts) into every target on
    /// `lanes` lanes, the largest loads first; `targets` are the job's connections to
    /// them, in `target_dsns`' order. A table a target lacks is loaded under a staging
    /// name and published with its primary key once its loads are done
    /// (`pg_apply::staged_table`). Returns bytes loaded.
    async fn load_all(
        &self,
        targets: &mut [tokio_postgres::Client],
        tables: &[LaneTable],
        lanes: usize,
    ) -> Result<u64, JobError> {
        // Tables and types are created on one session per target first: two sessions
        // creating the same schema or type at once can fail on the catalog's unique
        // indexes.
        let mut loads = Vec::new();
        let mut staged = Vec::new();
        // Keyless tables the load creates in place (only keyed ones are staged).
        let mut created_in_place = Vec::new();
        let mut schemas: Vec<&str> = tables.iter().map(|t| t.info.schema.as_str()).collect();
        schemas.sort_unstable();
        schemas.dedup();
        for (index, target) in targets.iter_mut().enumerate() {
            let dropped = staged_table::drop_leftovers(target, self.job, &schemas).await?;
            if dropped > 0 {
                tracing::info!(
                    job = self.job,
                    target = index,
                    dropped,
                    "staging tables of an earlier attempt dropped"
                );
            }
            // Up to `TABLES_IN_FLIGHT` tables at once, pipelined on the one session: its
            // statements still run one after another on the target.
            let target_ref = &*target;
            let preparing: Vec<_> = tables
                .iter()
                .map(|table| self.prepare_target_table(target_ref, table))
                .collect();
            let prepared: Vec<TargetTable> = catalog::pipelined(preparing).await?;
            for (table, prepared) in tables.iter().zip(prepared) {
                // A table loaded whole that the target lacked is finished by the lane that
                // loads it; one loaded in parts once every lane is done.
                let (into, whole, mut finish) = match prepared {
                    TargetTable::Staged(staging) if table.parts.len() == 1 => {
                        let finish = Finish {
                            staging: Some(staging.clone()),
                            table,
                        };
                        (staging, true, Some(finish))
                    }
                    TargetTable::Staged(staging) => {
                        staged.push((index, table, staging.clone()));
                        (staging, false, None)
                    }
                    TargetTable::Created { whole: true } => {
                        let finish = Finish {
                            staging: None,
                            table,
                        };
                        (table.info.clone(), true, Some(finish))
                    }
                    TargetTable::Created { whole: false } => {
                        created_in_place.push((index, table));
                        (table.info.clone(), false, None)
                    }
                    TargetTable::Held { whole } => (table.info.clone(), whole, None),
                };
                let parts: Vec<Option<TablePart>> = if whole {
                    vec![None]
                } else {
                    table.parts.iter().cloned().map(Some).collect()
                };
                for part in parts {
                    loads.push(LaneLoad {
                        info: table.info.clone(),
                        column: table.column.clone(),
                        into: into.clone(),
                        target: index,
                        pages: part.as_ref().map_or(table.pages, |p| p.len(table.pages)),
                        part,
                        finish: finish.take(),
                    });
                }
            }
        }
        // Longest first: the lanes end closer together.
        loads.sort_by_key(|load| std::cmp::Reverse(load.pages));
        // Lanes set a target's column defaults one at a time: two sessions creating a
        // sequence that tables share (`IF NOT EXISTS`) at once can fail on the catalog's
        // unique index.
        let defaults_turns: Vec<tokio::sync::Mutex<()>> = targets
            .iter()
            .map(|_| tokio::sync::Mutex::new(()))
            .collect();
        let bytes = self.run(loads, lanes.max(1), &defaults_turns).await?;
        for (index, table, staging) in staged {
            let turn = &defaults_turns[index];
            self.finish(&mut targets[index], &Some(staging), table, turn)
                .await?;
        }
        for (index, table) in created_in_place {
            let turn = &defaults_turns[index];
            self.finish(&mut targets[index], &None, table, turn).await?;
        }
        Ok(bytes)
    }

    /// Finishes `table` on `target`, which lacked it, once its rows are loaded: publishes
    /// its `staging` table (`staged_table::publish`), then gives it the source's column
    /// defaults (on its turn: `defaults_turn`) and builds its indexes.
    async fn finish(
        &self,
        target: &mut tokio_postgres::Client,
        staging: &Option<Arc<TableInfo>>,
        table: &LaneTable,
        defaults_turn: &tokio::sync::Mutex<()>,
    ) -> Result<(), JobError> {
        if let Some(staging) = staging {
            staged_table::publish(target, staging, &table.info).await?;
            tracing::debug!(job = self.job, table = %table.info.qualified_name(), "loaded table published with its primary key");
        }
        if !table.defaults.is_empty() {
            let _turn = defaults_turn.lock().await;
            pg_apply::target_schema::set_defaults(self.job, &*target, &table.info, &table.defaults)
                .await;
        }
        pg_apply::target_schema::build_indexes(self.job, &*target, &table.info, &table.indexes)
            .await;
        Ok(())
    }

    /// Gets `target` ready to load `table`: stages it when the target lacks it and it has
    /// a key, else creates it in place or brings its shape to the source's.
    async fn prepare_target_table(
        &self,
        target: &tokio_postgres::Client,
        table: &LaneTable,
    ) -> Result<TargetTable, JobError> {
        if let Some(staging) = staged_table::stage_if_missing(target, &table.info, self.job).await?
        {
            self.add_generated(target, table, &staging).await;
            return Ok(TargetTable::Staged(Arc::new(staging)));
        }
        let created =
            pg_apply::target_schema::target_columns(target, &table.info.schema, &table.info.name)
                .await?
                .is_none();
        pg_apply::target_schema::ensure_shape(target, &table.info).await?;
        if created {
            // Still empty: the generated columns cost no rewrite.
            self.add_generated(target, table, &table.info).await;
        }
        let whole = self.loads_whole(target, table).await?;
        Ok(if created {
            TargetTable::Created { whole }
        } else {
            TargetTable::Held { whole }
        })
    }

    /// Adds `table`'s stored generated columns to `into` (its staging table, or the table
    /// itself, created empty) on `target`.
    async fn add_generated(
        &self,
        target: &tokio_postgres::Client,
        table: &LaneTable,
        into: &TableInfo,
    ) {
        let added: Vec<String> = table
            .generated
            .iter()
            .map(|g| g.add_statement(&into.schema, &into.name))
            .collect();
        pg_apply::target_schema::add_generated_columns(self.job, target, &table.info, &added).await;
    }

    /// Whether `table`, which the target has, loads in one transaction rather than in its
    /// parts: when it has one part, or when the target holds rows of the job's tenants
    /// (a re-sync, or an earlier attempt cut short). Parts commit one by one, so readers
    /// would see those rows missing until the last; one transaction replaces them at once.
    async fn loads_whole(
        &self,
        target: &tokio_postgres::Client,
        table: &LaneTable,
    ) -> Result<bool, JobError> {
        if table.parts.len() == 1 {
            return Ok(true);
        }
        let held =
            pg_apply::snapshot::holds_tenant_rows(target, &table.info, &table.column, self.include)
                .await?;
        if held {
            tracing::info!(job = self.job, table = %table.info.qualified_name(), parts = table.parts.len(),
                "the target holds rows of the job's tenants: the table loads in one transaction, not in parts, so readers never see them missing");
        }
        Ok(held)
    }

    /// Runs `loads` on `lanes` lanes, each taking the next load when it is done with one;
    /// returns bytes loaded. The first error ends every lane (their open target
    /// transactions roll back with their connections).
    async fn run(
        &self,
        loads: Vec<LaneLoad<'_>>,
        lanes: usize,
        defaults_turns: &[tokio::sync::Mutex<()>],
    ) -> Result<u64, JobError> {
        let queue = std::sync::Mutex::new(loads.into_iter());
        let next = || {
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next()
        };
        let lane = |_| async {
            let copier = catalog::connect(self.source_dsn).await?;
            snapshot::begin_on_snapshot(&copier, self.snapshot_name).await?;
            let mut targets: Vec<Option<tokio_postgres::Client>> =
                self.target_dsns.iter().map(|_| None).collect();
            let mut bytes = 0u64;
            while let Some(load) = next() {
                let index = load.target;
                let mut target = match targets[index].take() {
                    Some(client) => client,
                    None => pg_apply::sink::connect(&self.target_dsns[index]).await?,
                };
                bytes += load_one(
                    self.job,
                    &copier,
                    &mut target,
                    &load,
                    self.include,
                    self.progress,
                )
                .await?;
                if let Some(finish) = &load.finish {
                    let turn = &defaults_turns[index];
                    self.finish(&mut target, &finish.staging, finish.table, turn)
                        .await?;
                }
                targets[index] = Some(target);
            }
            copier
                .batch_execute("COMMIT")
                .await
                .map_err(CdcError::query("end snapshot transaction"))?;
            Ok::<u64, JobError>(bytes)
        };
        let done = futures_util::future::try_join_all((0..lanes).map(lane)).await?;
        Ok(done.into_iter().sum())
    }
}

/// Rows of the initial copy per chunk published to a NATS sink, at most.
const SNAPSHOT_CHUNK_ROWS: usize = 10_000;
/// Estimated bytes of the initial copy per chunk published to a NATS sink, at most.
const SNAPSHOT_CHUNK_BYTES: usize = 8 << 20;

/// A connected sink for each NATS sink of the job, to publish the initial copy with.
pub(super) async fn nats_snapshot_sinks(spec: &JobSpec) -> Result<Vec<NatsSink>, JobError> {
    let mut sinks = Vec::new();
    for s in &spec.sinks {
        if let SinkSpec::Nats(n) = s {
            let mut sink = NatsSink::new(
                &spec.name,
                0,
                n.config(&spec.name),
                Arc::default(),
                Arc::default(),
            );
            sink.reconnect().await?;
            sinks.push(sink);
        }
    }
    Ok(sinks)
}

/// Publishes the job's tenants' rows of `table` in the exported snapshot to every NATS
/// sink, as inserts at the consistent point, in chunks; returns the bytes published.
pub(super) async fn publish_snapshot(
    copier: &tokio_postgres::Client,
    sinks: &mut [NatsSink],
    table: Arc<crate::change::TableInfo>,
    tenant_key: &TenantKey,
    include: &TenantFilter,
    at: Lsn,
) -> Result<u64, JobError> {
    use futures_util::StreamExt;
    let Some(tenant_at) = tenant_key.at(&table) else {
        return Err(JobError::Dataflow(format!(
            "{}: no {}",
            table.qualified_name(),
            tenant_key.describe()
        )));
    };
    let sql = snapshot::select_text_sql(&table, tenant_key, include);
    let rows = snapshot::rows_as_text(copier, &sql).await?;
    futures_util::pin_mut!(rows);
    let mut bytes = 0;
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    loop {
        let next = rows.next().await;
        let done = next.is_none();
        if let Some(row) = next {
            let row = row?;
            let tenant = tenant_at.of(&row).unwrap_or_default().to_string();
            let change = crate::change::TenantChange {
                scope: crate::change::Scope::Tenant(tenant),
                seq: chunk.len() as u32,
                table: table.clone(),
                action: crate::change::TenantAction::Upsert {
                    old: None,
                    new: row,
                    insert: true,
                },
            };
            chunk_bytes += crate::footprint::Footprint::footprint(&change);
            chunk.push(change);
        }
        let full = chunk.len() >= SNAPSHOT_CHUNK_ROWS || chunk_bytes >= SNAPSHOT_CHUNK_BYTES;
        if full || (done && !chunk.is_empty()) {
            chunk_bytes = 0;
            let batch = crate::sinks::ApplyBatch {
                commit_lsn: at,
                changes: std::mem::take(&mut chunk),
                history: Vec::new(),
            };
            for sink in sinks.iter_mut() {
                bytes += sink.publish_snapshot_chunk(&batch).await?;
            }
        }
        if done {
            return Ok(bytes);
        }
    }
}
