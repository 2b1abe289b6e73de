//! The sink's bookkeeping tables in the target database (schema `helios`): checkpoints
//! (job, scope, LSN) written in the same transaction as the rows they cover, the job's
//! snapshot and confirmed positions, what the target holds of the job
//! (`control::coverage`), backfill floors (`floors`), table error states, resync requests
//! and dead letters.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, GenericClient};

use crate::change::{format_lsn, Lsn, Scope};
use crate::sinks::pg_apply::statements::{Param, Statement};
use crate::sinks::SinkError;
use crate::sql_text::describe_pg_error;

/// Creates the bookkeeping schema; idempotent. Run once per job start, before workers.
pub const MIGRATION: &str = "
CREATE SCHEMA IF NOT EXISTS helios;
CREATE TABLE IF NOT EXISTS helios.checkpoints (
    job text NOT NULL,
    scope text NOT NULL,
    commit_lsn pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, scope)
);
CREATE TABLE IF NOT EXISTS helios.job_progress (
    job text PRIMARY KEY,
    slot text NOT NULL,
    snapshot_lsn pg_lsn,
    confirmed_lsn pg_lsn,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS helios.job_coverage (
    job text PRIMARY KEY,
    coverage jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS helios.backfill_floors (
    job text NOT NULL,
    table_name text NOT NULL,
    scope text NOT NULL,
    floor_lsn pg_lsn NOT NULL,
    PRIMARY KEY (job, table_name, scope)
);
CREATE TABLE IF NOT EXISTS helios.table_state (
    job text NOT NULL,
    table_name text NOT NULL,
    state text NOT NULL,
    error text,
    since_lsn pg_lsn,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, table_name)
);
-- Tenants whose rows of a table the job's next start reloads (`control::resync`).
CREATE TABLE IF NOT EXISTS helios.tenant_resync (
    job text NOT NULL,
    table_name text NOT NULL,
    tenant text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, table_name, tenant)
);
-- The target column each source column was last written to, by the column's number in
-- the source's catalog (which a rename keeps), so a column renamed on the source is
-- renamed on the target, not added beside it (`target_schema`).
CREATE TABLE IF NOT EXISTS helios.source_columns (
    table_name text NOT NULL,
    source_oid oid NOT NULL,
    attnum smallint NOT NULL,
    column_name text NOT NULL,
    PRIMARY KEY (table_name, source_oid, attnum)
);
CREATE TABLE IF NOT EXISTS helios.dead_letters (
    id bigserial PRIMARY KEY,
    job text NOT NULL,
    scope text NOT NULL,
    table_name text NOT NULL,
    commit_lsn pg_lsn NOT NULL,
    seq integer NOT NULL,
    change jsonb,
    reason text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Set when a whole load of the table at that LSN (a resync, a new snapshot) holds what
-- the change would have done: the dead letter is kept as a record, no longer pending.
-- Looked up first: ALTER TABLE would take its lock at every start, even with nothing to add.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'helios.dead_letters'::regclass
                     AND attname = 'superseded_lsn' AND NOT attisdropped) THEN
        ALTER TABLE helios.dead_letters ADD COLUMN superseded_lsn pg_lsn;
    END IF;
    -- Set on a table in error whose history table refused versions too: from that LSN
    -- the history table lacks versions the stream (and a Parquet cold tier) had.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'helios.table_state'::regclass
                     AND attname = 'history_missed_lsn' AND NOT attisdropped) THEN
        ALTER TABLE helios.table_state ADD COLUMN history_missed_lsn pg_lsn;
    END IF;
END
$$;
";

/// Maps a driver error to a sink error, transient when retrying can help.
pub fn sink_error(what: &str, err: &tokio_postgres::Error) -> SinkError {
    let transient = match err.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("57")
                || c == "40001"
                || c == "40P01"
                || c == "55P03"
        }
    };
    let text = format!("{what}: {}", describe_pg_error(err));
    if transient {
        SinkError::Transient(text)
    } else {
        SinkError::Definite(text)
    }
}

/// The text key of a checkpoint scope.
pub fn scope_key(scope: &Scope) -> String {
    match scope {
        Scope::Tenant(t) => format!("tenant:{t}"),
        Scope::Worker { index, peers } => format!("worker:{index}/{peers}"),
    }
}

/// The checkpoint key of worker `index`'s watermark when the job runs `peers` workers:
/// every transaction up to its LSN is applied for every scope the worker owns then.
pub fn watermark_key(index: u32, peers: u32) -> String {
    format!("applied:{index}/{peers}")
}

/// The (worker index, worker count) of a watermark key; `None` for other keys.
pub fn watermark_of(key: &str) -> Option<(u32, u32)> {
    let (index, peers) = key.strip_prefix("applied:")?.split_once('/')?;
    let (index, peers) = (index.parse().ok()?, peers.parse().ok()?);
    (index < peers).then_some((index, peers))
}

/// Whether worker `index` of `peers` owns the tenants of `route`
/// (`operators::partition::tenant_route`).
pub fn worker_owns(index: u32, peers: u32, route: u64) -> bool {
    route % u64::from(peers.max(1)) == u64::from(index)
}

/// The commit LSN up to which `tenant`'s changes are applied by `checkpoints` (as
/// [`load_checkpoints`] reads them): its own row, or the watermark of a worker that owned
/// it under any worker count the job ran with. A change committed at or below it is not
/// applied again when the stream sends it again.
pub fn tenant_applied(checkpoints: &HashMap<String, Lsn>, tenant: &str) -> Option<Lsn> {
    let own = checkpoints
        .get(&scope_key(&Scope::Tenant(tenant.into())))
        .copied();
    let route = crate::operators::partition::tenant_route(tenant);
    let by_watermark = checkpoints
        .iter()
        .filter_map(|(key, &lsn)| {
            let (index, peers) = watermark_of(key)?;
            worker_owns(index, peers, route).then_some(lsn)
        })
        .max();
    own.max(by_watermark)
}

/// Creates the bookkeeping tables.
pub async fn migrate(client: &Client) -> Result<(), SinkError> {
    client
        .batch_execute(MIGRATION)
        .await
        .map_err(|e| sink_error("create helios bookkeeping tables", &e))
}

/// The job's recorded positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// Where the completed initial snapshot was taken (`None`: no snapshot yet).
    pub snapshot_lsn: Option<Lsn>,
    /// The last position recorded before confirming it to the source.
    pub confirmed_lsn: Option<Lsn>,
}

/// Reads the job's progress row.
pub async fn load_progress(client: &Client, job: &str) -> Result<JobProgress, SinkError> {
    let row = client
        .query_opt(
            "SELECT snapshot_lsn, confirmed_lsn FROM helios.job_progress WHERE job = $1",
            &[&job],
        )
        .await
        .map_err(|e| sink_error("read job progress", &e))?;
    Ok(match row {
        None => JobProgress::default(),
        Some(r) => JobProgress {
            snapshot_lsn: r.get::<_, Option<PgLsn>>(0).map(u64::from),
            confirmed_lsn: r.get::<_, Option<PgLsn>>(1).map(u64::from),
        },
    })
}

/// Records a completed snapshot (and that the stream starts there).
pub async fn record_snapshot(
    client: &Client,
    job: &str,
    slot: &str,
    lsn: Lsn,
) -> Result<(), SinkError> {
    client
        .execute(
            "INSERT INTO helios.job_progress (job, slot, snapshot_lsn, confirmed_lsn, updated_at)
             VALUES ($1, $2, $3, $3, now())
             ON CONFLICT (job) DO UPDATE SET slot = $2, snapshot_lsn = $3, confirmed_lsn = $3, updated_at = now()",
            &[&job, &slot, &PgLsn::from(lsn)],
        )
        .await
        .map_err(|e| sink_error("record snapshot", &e))?;
    Ok(())
}

/// What this target holds of the job, as recorded (`None`: nothing recorded: a target
/// new to the job, or one written by a version before coverage was kept).
pub async fn load_coverage(
    client: &Client,
    job: &str,
) -> Result<Option<serde_json::Value>, SinkError> {
    let row = client
        .query_opt(
            "SELECT coverage FROM helios.job_coverage WHERE job = $1",
            &[&job],
        )
        .await
        .map_err(|e| sink_error("read what the target holds of the job", &e))?;
    Ok(row.map(|r| {
        r.get::<_, tokio_postgres::types::Json<serde_json::Value>>(0)
            .0
    }))
}

/// Records what this target holds of the job (`control::coverage::Coverage` as JSON).
pub async fn record_coverage(
    client: &Client,
    job: &str,
    coverage: &serde_json::Value,
) -> Result<(), SinkError> {
    client
        .execute(
            "INSERT INTO helios.job_coverage (job, coverage, updated_at) VALUES ($1, $2, now())
             ON CONFLICT (job) DO UPDATE SET coverage = $2, updated_at = now()",
            &[&job, &tokio_postgres::types::Json(coverage)],
        )
        .await
        .map_err(|e| sink_error("record what the target holds of the job", &e))?;
    Ok(())
}

/// Forgets the snapshot (a new one must be taken, e.g. after the slot was lost).
pub async fn clear_snapshot(client: &Client, job: &str) -> Result<(), SinkError> {
    client
        .execute(
            "UPDATE helios.job_progress SET snapshot_lsn = NULL, confirmed_lsn = NULL, updated_at = now() WHERE job = $1",
            &[&job],
        )
        .await
        .map_err(|e| sink_error("clear snapshot", &e))?;
    Ok(())
}

/// Records the position about to be confirmed to the source.
pub async fn record_confirmed(client: &Client, job: &str, lsn: Lsn) -> Result<(), SinkError> {
    client
        .execute(
            "UPDATE helios.job_progress SET confirmed_lsn = greatest(confirmed_lsn, $2), updated_at = now() WHERE job = $1",
            &[&job, &PgLsn::from(lsn)],
        )
        .await
        .map_err(|e| sink_error("record confirmed position", &e))?;
    Ok(())
}

/// All checkpoints of the job, by scope key.
pub async fn load_checkpoints(
    client: &Client,
    job: &str,
) -> Result<HashMap<String, Lsn>, SinkError> {
    let rows = client
        .query(
            "SELECT scope, commit_lsn FROM helios.checkpoints WHERE job = $1",
            &[&job],
        )
        .await
        .map_err(|e| sink_error("read checkpoints", &e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), u64::from(r.get::<_, PgLsn>(1))))
        .collect())
}

/// The statement that writes checkpoints (inside the caller's transaction); `None` when
/// there are none. A checkpoint never moves back (`greatest`).
pub fn checkpoints_statement(
    job: &str,
    checkpoints: &HashMap<String, Lsn>,
) -> Option<Statement<'static>> {
    if checkpoints.is_empty() {
        return None;
    }
    Some(Statement {
        text: "INSERT INTO helios.checkpoints (job, scope, commit_lsn, updated_at)
             SELECT $1, s, l::pg_lsn, now() FROM unnest($2::text[], $3::text[]) AS u(s, l)
             ON CONFLICT (job, scope) DO UPDATE SET commit_lsn = greatest(helios.checkpoints.commit_lsn, EXCLUDED.commit_lsn),
                                                  updated_at = now()"
            .into(),
        params: vec![
            Param::Value(Some(job.to_string())),
            Param::Column(checkpoints.keys().map(|k| Some(k.clone())).collect()),
            Param::Column(checkpoints.values().map(|&l| Some(format_lsn(l))).collect()),
        ],
    })
}

/// Writes checkpoints (inside the caller's transaction).
pub async fn store_checkpoints(
    client: &impl GenericClient,
    job: &str,
    checkpoints: &HashMap<String, Lsn>,
) -> Result<(), SinkError> {
    let Some(stmt) = checkpoints_statement(job, checkpoints) else {
        return Ok(());
    };
    let params: Vec<&(dyn ToSql + Sync)> = stmt.params.iter().map(Param::as_sql).collect();
    client
        .execute(stmt.text.as_str(), &params)
        .await
        .map_err(|e| sink_error("write checkpoints", &e))?;
    Ok(())
}

/// Tables of the job in error state, with their reasons (each followed by
/// [`history_missed_note`] when its history table refused versions too).
pub async fn load_failed_tables(
    client: &Client,
    job: &str,
) -> Result<HashMap<String, String>, SinkError> {
    let rows = client
        .query(
            "SELECT table_name, coalesce(error, ''), history_missed_lsn FROM helios.table_state \
             WHERE job = $1 AND state = 'error'",
            &[&job],
        )
        .await
        .map_err(|e| sink_error("read table states", &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut reason: String = r.get(1);
            if let Some(lsn) = r.get::<_, Option<PgLsn>>(2) {
                reason.push_str(&history_missed_note(u64::from(lsn)));
            }
            (r.get(0), reason)
        })
        .collect())
}

/// How [`history_missed_note`] begins.
pub const HISTORY_MISSED: &str = "; its history table refused the versions too";

/// What a table's error reason says once its history table refused versions too, from
/// `lsn` on ([`mark_history_missed`]).
pub fn history_missed_note(lsn: Lsn) -> String {
    format!("{HISTORY_MISSED}, from {} on", format_lsn(lsn))
}

/// Puts a table in error state (inside the caller's transaction).
pub async fn mark_table_failed(
    client: &impl GenericClient,
    job: &str,
    table: &str,
    error: &str,
    lsn: Lsn,
) -> Result<(), SinkError> {
    client
        .execute(
            "INSERT INTO helios.table_state (job, table_name, state, error, since_lsn, updated_at)
             VALUES ($1, $2, 'error', $3, $4, now())
             ON CONFLICT (job, table_name) DO UPDATE SET state = 'error', error = $3, since_lsn = $4, updated_at = now()",
            &[&job, &table, &error, &PgLsn::from(lsn)],
        )
        .await
        .map_err(|e| sink_error("record table error", &e))?;
    Ok(())
}

/// Records that the history table of `table` (in error state) refused the versions of
/// the change at `lsn` too, keeping the first such LSN.
pub async fn mark_history_missed(
    client: &impl GenericClient,
    job: &str,
    table: &str,
    lsn: Lsn,
) -> Result<(), SinkError> {
    client
        .execute(
            "UPDATE helios.table_state SET history_missed_lsn = coalesce(history_missed_lsn, $3) \
             WHERE job = $1 AND table_name = $2",
            &[&job, &table, &PgLsn::from(lsn)],
        )
        .await
        .map_err(|e| sink_error("record missed history versions", &e))?;
    Ok(())
}

/// Forgets that the history table of `table` missed versions (inside the caller's
/// transaction): they were written into it since.
pub async fn clear_history_missed(
    client: &impl GenericClient,
    job: &str,
    table: &str,
) -> Result<(), SinkError> {
    execute_for_table(
        client,
        "UPDATE helios.table_state SET history_missed_lsn = NULL \
         WHERE job = $1 AND table_name = $2",
        (job, table),
        "clear missed history versions",
    )
    .await
}

/// Runs `sql` with the job and the table as `$1` and `$2`; `what` names it in an error.
async fn execute_for_table(
    client: &impl GenericClient,
    sql: &str,
    (job, table): (&str, &str),
    what: &str,
) -> Result<(), SinkError> {
    client
        .execute(sql, &[&job, &table])
        .await
        .map_err(|e| sink_error(what, &e))?;
    Ok(())
}

/// The job's tables among `tables` whose history table missed versions while they were in
/// error state ([`mark_history_missed`]), with the first LSN missed.
pub async fn load_history_missed(
    client: &Client,
    job: &str,
    tables: &BTreeSet<String>,
) -> Result<Vec<(String, Lsn)>, SinkError> {
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let rows = client
        .query(
            "SELECT table_name, history_missed_lsn FROM helios.table_state \
             WHERE job = $1 AND table_name = ANY($2) AND history_missed_lsn IS NOT NULL \
             ORDER BY table_name",
            &[&job, &tables],
        )
        .await
        .map_err(|e| sink_error("read missed history versions", &e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), u64::from(r.get::<_, PgLsn>(1))))
        .collect())
}

/// Tenant resync requests: per table (`schema.table`), the tenants whose rows to reload.
pub type TenantResyncs = std::collections::BTreeMap<String, BTreeSet<String>>;

/// The `helios.table_state` state of a table whose reload was asked for (`control::resync`):
/// the next start loads it whole again; until then the sink applies its changes.
pub const RESYNC_REQUESTED: &str = "resync";

/// Asks, for each of `tables`, that the job's next start load it whole again
/// (`control::resync`), in one statement: a table in error state leaves it.
pub async fn request_resync(
    client: &Client,
    job: &str,
    tables: &BTreeSet<String>,
) -> Result<(), SinkError> {
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    client
        .execute(
            "INSERT INTO helios.table_state (job, table_name, state, error, since_lsn, updated_at)
             SELECT $1, t, $3, NULL, NULL, now() FROM unnest($2::text[]) AS u(t)
             ON CONFLICT (job, table_name) DO UPDATE SET state = $3, error = NULL, since_lsn = NULL, updated_at = now()",
            &[&job, &tables, &RESYNC_REQUESTED],
        )
        .await
        .map_err(|e| sink_error("record a resync request", &e))?;
    Ok(())
}

/// The tables of the job whose reload was asked for ([`request_resync`]).
pub async fn load_resync_requests(
    client: &Client,
    job: &str,
) -> Result<BTreeSet<String>, SinkError> {
    let rows = client
        .query(
            "SELECT table_name FROM helios.table_state WHERE job = $1 AND state = $2",
            &[&job, &RESYNC_REQUESTED],
        )
        .await
        .map_err(|e| sink_error("read resync requests", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Asks that the job's next start reload `tenants`' rows of each of `tables`
/// (`control::resync`); a request already there stays.
pub async fn request_tenant_resync(
    client: &Client,
    job: &str,
    tables: &BTreeSet<String>,
    tenants: &BTreeSet<String>,
) -> Result<(), SinkError> {
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let tenants: Vec<&str> = tenants.iter().map(String::as_str).collect();
    client
        .execute(
            "INSERT INTO helios.tenant_resync (job, table_name, tenant)
             SELECT $1, t, n FROM unnest($2::text[]) AS u(t), unnest($3::text[]) AS v(n)
             ON CONFLICT DO NOTHING",
            &[&job, &tables, &tenants],
        )
        .await
        .map_err(|e| sink_error("record a tenant resync request", &e))?;
    Ok(())
}

/// The job's tenant resync requests ([`request_tenant_resync`]): per table, the tenants
/// whose rows to reload.
pub async fn load_tenant_resyncs(client: &Client, job: &str) -> Result<TenantResyncs, SinkError> {
    let rows = client
        .query(
            "SELECT table_name, tenant FROM helios.tenant_resync WHERE job = $1",
            &[&job],
        )
        .await
        .map_err(|e| sink_error("read tenant resync requests", &e))?;
    let mut out = TenantResyncs::new();
    for r in &rows {
        out.entry(r.get(0)).or_default().insert(r.get(1));
    }
    Ok(out)
}

/// Forgets the job's tenant resync requests in `done` (loaded, or dropped).
pub async fn clear_tenant_resyncs(
    client: &Client,
    job: &str,
    done: &TenantResyncs,
) -> Result<(), SinkError> {
    for (table, tenants) in done {
        let tenants: Vec<&str> = tenants.iter().map(String::as_str).collect();
        client
            .execute(
                "DELETE FROM helios.tenant_resync WHERE job = $1 AND table_name = $2 AND tenant = ANY($3)",
                &[&job, table, &tenants],
            )
            .await
            .map_err(|e| sink_error("clear tenant resync requests", &e))?;
    }
    Ok(())
}

/// Forgets what `helios.table_state` says of the job's `table` (inside the caller's
/// transaction): its rows were just loaded whole, so an error state or a resync request
/// no longer applies.
pub async fn clear_table_state(
    client: &impl GenericClient,
    job: &str,
    table: &str,
) -> Result<(), SinkError> {
    execute_for_table(
        client,
        "DELETE FROM helios.table_state WHERE job = $1 AND table_name = $2",
        (job, table),
        "clear a table's state",
    )
    .await
}

/// Forgets every table state and tenant resync request of the job, and marks its pending
/// dead letters superseded at `lsn`: a new snapshot at `lsn` loaded all its tables whole.
pub async fn clear_table_states(client: &Client, job: &str, lsn: Lsn) -> Result<(), SinkError> {
    for table in ["helios.table_state", "helios.tenant_resync"] {
        client
            .execute(&format!("DELETE FROM {table} WHERE job = $1"), &[&job])
            .await
            .map_err(|e| sink_error("clear the job's table states", &e))?;
    }
    supersede_dead_letters(client, job, None, lsn).await?;
    Ok(())
}

/// Marks the job's pending dead letters committed before `lsn` superseded, of `table` or
/// (`None`) of every table (inside the caller's transaction): loaded whole at `lsn`.
pub async fn supersede_dead_letters(
    client: &impl GenericClient,
    job: &str,
    table: Option<&str>,
    lsn: Lsn,
) -> Result<u64, SinkError> {
    client
        .execute(
            "UPDATE helios.dead_letters SET superseded_lsn = $3 \
             WHERE job = $1 AND ($2::text IS NULL OR table_name = $2) \
               AND superseded_lsn IS NULL AND commit_lsn < $3",
            &[&job, &table, &PgLsn::from(lsn)],
        )
        .await
        .map_err(|e| sink_error("mark dead letters superseded", &e))
}

/// One change kept because it could not be applied.
pub struct DeadLetter<'a> {
    /// Checkpoint scope key of the change.
    pub scope: String,
    /// `schema.table`.
    pub table: &'a str,
    /// Commit LSN of its transaction.
    pub lsn: Lsn,
    /// Position in the transaction.
    pub seq: u32,
    /// The change as JSON (`None` when its values must not be stored).
    pub change: Option<serde_json::Value>,
    /// Why it was not applied.
    pub reason: &'a str,
}

/// Stores dead letters (inside the caller's transaction).
pub async fn store_dead_letters(
    client: &impl GenericClient,
    job: &str,
    letters: &[DeadLetter<'_>],
) -> Result<(), SinkError> {
    for l in letters {
        client
            .execute(
                "INSERT INTO helios.dead_letters (job, scope, table_name, commit_lsn, seq, change, reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &job,
                    &l.scope,
                    &l.table,
                    &PgLsn::from(l.lsn),
                    &(l.seq as i32),
                    &l.change.as_ref().map(tokio_postgres::types::Json),
                    &l.reason,
                ],
            )
            .await
            .map_err(|e| sink_error("store dead letter", &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::partition::tenant_route;

    #[test]
    fn a_tenant_is_applied_to_its_own_row_or_the_watermark_of_a_worker_that_owned_it() {
        let tenant = "7";
        let (owner, other) = if tenant_route(tenant).is_multiple_of(2) {
            (0, 1)
        } else {
            (1, 0)
        };
        let mut checkpoints = HashMap::new();
        assert_eq!(tenant_applied(&checkpoints, tenant), None);
        checkpoints.insert(watermark_key(other, 2), 90);
        assert_eq!(tenant_applied(&checkpoints, tenant), None, "not its worker");
        checkpoints.insert(watermark_key(owner, 2), 40);
        checkpoints.insert(watermark_key(0, 1), 30);
        assert_eq!(tenant_applied(&checkpoints, tenant), Some(40));
        checkpoints.insert(scope_key(&Scope::Tenant(tenant.into())), 60);
        assert_eq!(tenant_applied(&checkpoints, tenant), Some(60));
        checkpoints.insert(watermark_key(0, 1), 70);
        assert_eq!(
            tenant_applied(&checkpoints, tenant),
            Some(70),
            "one worker owns every tenant"
        );
        assert!(worker_owns(owner, 2, tenant_route(tenant)));
        assert!(!worker_owns(other, 2, tenant_route(tenant)));
    }
}
