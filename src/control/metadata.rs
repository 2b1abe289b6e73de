//! The metadata store: a PostgreSQL database (`--meta-dsn`) holding submitted job specs
//! (versioned, with their desired state), per-tenant progress, job events and named
//! connection strings. Migrations live in `schemas/migrations/` and are applied at start.
//!
//! Secrets: a spec is stored with every DSN replaced by a `helios_connection=<name>` reference to
//! the `connections` table, so the spec column can be read, logged or shown without them.

use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::change::Lsn;
use crate::control::access::PredictionStatus;
use crate::control::history_query::Horizon;
use crate::control::job_control::{
    ExportRequest, ExportState, ExportStatus, JobEvent, RetentionPolicy,
};
use crate::control::job_spec::{JobSpec, SinkSpec};
use crate::control::secret::Dsn;
use crate::operators::access::{BucketKey, SavedModel};
use crate::sql_text::describe_pg_error;

/// The migrations, in order (version, SQL).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        include_str!("../../schemas/migrations/0001_metadata.sql"),
    ),
    (
        2,
        include_str!("../../schemas/migrations/0002_retention.sql"),
    ),
    (3, include_str!("../../schemas/migrations/0003_exports.sql")),
    (
        4,
        include_str!("../../schemas/migrations/0004_predictions.sql"),
    ),
];

/// Why the metadata store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The database could not be reached or refused the statement.
    #[error("metadata store: {0}")]
    Database(String),
    /// A stored spec no longer parses (edited by hand?).
    #[error("metadata store: stored spec of job `{job}` is invalid: {reason}")]
    BadSpec { job: String, reason: String },
}

fn db(what: &str) -> impl Fn(tokio_postgres::Error) -> MetadataError + '_ {
    move |e| MetadataError::Database(format!("{what}: {}", describe_pg_error(&e)))
}

/// A stored job and what its owner wants of it.
#[derive(Debug, Clone)]
pub struct StoredJob {
    /// The spec with its DSNs restored.
    pub spec: JobSpec,
    /// Its version.
    pub version: i32,
    /// `running` or `paused`.
    pub desired_state: String,
}

/// The metadata store.
pub struct MetadataStore {
    client: Client,
}

impl MetadataStore {
    /// Connects and applies pending migrations (under an advisory lock).
    pub async fn open(dsn: &str) -> Result<MetadataStore, MetadataError> {
        use crate::pg_connect::{self, OnClose};
        let client = pg_connect::connect(dsn, "metadata store", OnClose::Warn)
            .await
            .map_err(|e| MetadataError::Database(format!("connect: {e}")))?;
        let store = MetadataStore { client };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), MetadataError> {
        self.client
            .batch_execute(
                "SELECT pg_advisory_lock(7300);
                 CREATE SCHEMA IF NOT EXISTS helios_meta;
                 CREATE TABLE IF NOT EXISTS helios_meta.schema_migrations (
                     version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(db("prepare migrations"))?;
        let result = async {
            for (version, sql) in MIGRATIONS {
                let done = self
                    .client
                    .query_opt("SELECT 1 FROM helios_meta.schema_migrations WHERE version = $1", &[version])
                    .await
                    .map_err(db("read migrations"))?
                    .is_some();
                if !done {
                    self.client
                        .batch_execute(&format!("BEGIN; {sql}; INSERT INTO helios_meta.schema_migrations (version) VALUES ({version}); COMMIT;"))
                        .await
                        .map_err(db("apply migration"))?;
                    tracing::info!(version, "metadata store migrated");
                }
            }
            Ok(())
        }
        .await;
        let _ = self
            .client
            .batch_execute("SELECT pg_advisory_unlock(7300)")
            .await;
        result
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> bool {
        !self.client.is_closed() && self.client.simple_query("SELECT 1").await.is_ok()
    }

    /// Stores a new version of a job's spec with its desired state; returns the version.
    pub async fn save_job(
        &self,
        spec: &JobSpec,
        desired_state: &str,
    ) -> Result<i32, MetadataError> {
        let mut stored = spec.clone();
        self.save_connection(&format!("{}.source", spec.name), &spec.source.dsn)
            .await?;
        stored.source.dsn = Dsn::new(format!("helios_connection={}.source", spec.name));
        for (i, sink) in stored.sinks.iter_mut().enumerate() {
            match sink {
                SinkSpec::Postgres(p) => {
                    let name = format!("{}.sinks.{i}", spec.name);
                    self.save_connection(&name, &p.dsn).await?;
                    p.dsn = Dsn::new(format!("helios_connection={name}"));
                }
                SinkSpec::Parquet(_) | SinkSpec::Nats(_) => {}
            }
        }
        let json =
            serde_json::to_value(&stored).map_err(|e| MetadataError::Database(e.to_string()))?;
        let row = self
            .client
            .query_one(
                "INSERT INTO helios_meta.replication_configs (job, version, spec, desired_state)
                 SELECT $1, coalesce(max(version), 0) + 1, $2, $3 FROM helios_meta.replication_configs WHERE job = $1
                 RETURNING version",
                &[&spec.name, &tokio_postgres::types::Json(&json), &desired_state],
            )
            .await
            .map_err(db("save job"))?;
        Ok(row.get(0))
    }

    async fn save_connection(&self, name: &str, dsn: &Dsn) -> Result<(), MetadataError> {
        self.client
            .execute(
                "INSERT INTO helios_meta.connections (name, dsn) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET dsn = EXCLUDED.dsn",
                &[&name, &dsn.expose()],
            )
            .await
            .map_err(db("save connection"))?;
        Ok(())
    }

    /// Changes the desired state of a job's latest version.
    pub async fn set_desired_state(
        &self,
        job: &str,
        desired_state: &str,
    ) -> Result<(), MetadataError> {
        self.client
            .execute(
                "UPDATE helios_meta.replication_configs SET desired_state = $2, updated_at = now()
                 WHERE job = $1 AND version = (SELECT max(version) FROM helios_meta.replication_configs WHERE job = $1)",
                &[&job, &desired_state],
            )
            .await
            .map_err(db("update job state"))?;
        Ok(())
    }

    /// Creates or replaces a retention policy (its horizon is kept).
    pub async fn save_retention(&self, policy: &RetentionPolicy) -> Result<(), MetadataError> {
        self.client
            .execute(
                "INSERT INTO helios_meta.data_retention_policies (tenant, table_name, days) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant, table_name) DO UPDATE SET days = EXCLUDED.days, updated_at = now()",
                &[&policy.tenant, &policy.table, &(policy.days as i32)],
            )
            .await
            .map_err(db("save retention policy"))?;
        Ok(())
    }

    /// Saves a job's prediction model and how it fares (one row per job).
    pub async fn save_model(
        &self,
        job: &str,
        model: &SavedModel,
        status: &PredictionStatus,
    ) -> Result<(), MetadataError> {
        let model = serde_json::to_value(model)
            .map_err(|e| MetadataError::Database(format!("encode model: {e}")))?;
        self.client
            .execute(
                "INSERT INTO helios_meta.ml_models (job, model, in_use, model_error, heuristic_error, windows)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (job) DO UPDATE SET model = EXCLUDED.model, in_use = EXCLUDED.in_use,
                   model_error = EXCLUDED.model_error, heuristic_error = EXCLUDED.heuristic_error,
                   windows = EXCLUDED.windows, updated_at = now()",
                &[
                    &job,
                    &model,
                    &status.in_use,
                    &status.errors.model,
                    &status.errors.heuristic,
                    &(status.windows as i64),
                ],
            )
            .await
            .map_err(db("save model"))?;
        Ok(())
    }

    /// The model a job saved, if any. A stored model that no longer decodes is reported
    /// and ignored (a new one is trained).
    pub async fn load_model(&self, job: &str) -> Result<Option<SavedModel>, MetadataError> {
        let row = self
            .client
            .query_opt(
                "SELECT model FROM helios_meta.ml_models WHERE job = $1",
                &[&job],
            )
            .await
            .map_err(db("load model"))?;
        let Some(row) = row else { return Ok(None) };
        let value: serde_json::Value = row.get(0);
        match serde_json::from_value(value) {
            Ok(model) => Ok(Some(model)),
            Err(e) => {
                tracing::warn!(job, error = %e, "stored model does not decode; ignored");
                Ok(None)
            }
        }
    }

    /// Replaces a job's stored predictions with `top` (its hottest buckets).
    pub async fn save_predictions(
        &self,
        job: &str,
        top: &[(BucketKey, f32)],
    ) -> Result<(), MetadataError> {
        let tenants: Vec<&str> = top.iter().map(|(k, _)| &*k.tenant).collect();
        let tables: Vec<&str> = top.iter().map(|(k, _)| &*k.table).collect();
        let buckets: Vec<i64> = top.iter().map(|(k, _)| k.bucket).collect();
        let predicted: Vec<f64> = top.iter().map(|(_, v)| f64::from(*v)).collect();
        self.client
            .execute(
                "DELETE FROM helios_meta.access_predictions
                  WHERE job = $1 AND (tenant, table_name, bucket) NOT IN
                        (SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[]))",
                &[&job, &tenants, &tables, &buckets],
            )
            .await
            .map_err(db("drop old predictions"))?;
        self.client
            .execute(
                "INSERT INTO helios_meta.access_predictions (job, tenant, table_name, bucket, predicted)
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::float8[])
                 ON CONFLICT (job, tenant, table_name, bucket)
                 DO UPDATE SET predicted = EXCLUDED.predicted, predicted_at = now()",
                &[&job, &tenants, &tables, &buckets, &predicted],
            )
            .await
            .map_err(db("save predictions"))?;
        Ok(())
    }

    /// Records an export and where it is (insert or update by id).
    pub async fn save_export(
        &self,
        request: &ExportRequest,
        status: &ExportStatus,
    ) -> Result<(), MetadataError> {
        let request = serde_json::to_value(request)
            .map_err(|e| MetadataError::Database(format!("encode export request: {e}")))?;
        let files = serde_json::to_value(&status.files)
            .map_err(|e| MetadataError::Database(format!("encode export files: {e}")))?;
        self.client
            .execute(
                "INSERT INTO helios_meta.exports (id, request, job, state, rows_total, rows_written, files, error)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, rows_total = EXCLUDED.rows_total,
                   rows_written = EXCLUDED.rows_written, files = EXCLUDED.files, error = EXCLUDED.error,
                   updated_at = now()",
                &[
                    &status.id,
                    &request,
                    &status.job,
                    &status.state.as_str(),
                    &(status.rows_total as i64),
                    &(status.rows_written as i64),
                    &files,
                    &status.error,
                ],
            )
            .await
            .map_err(db("save export"))?;
        Ok(())
    }

    /// Every recorded export with its request, oldest first.
    pub async fn exports(&self) -> Result<Vec<(ExportRequest, ExportStatus)>, MetadataError> {
        let rows = self
            .client
            .query(
                "SELECT id, request, job, state, rows_total, rows_written, files, error
                 FROM helios_meta.exports ORDER BY created_at, id",
                &[],
            )
            .await
            .map_err(db("read exports"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.get(0);
            let request: ExportRequest = serde_json::from_value(r.get(1))
                .map_err(|e| MetadataError::Database(format!("export {id}: bad request: {e}")))?;
            let state = match r.get::<_, String>(3).as_str() {
                "done" => ExportState::Done,
                "failed" => ExportState::Failed,
                _ => ExportState::Running,
            };
            let files: Vec<String> = serde_json::from_value(r.get(6)).unwrap_or_default();
            let status = ExportStatus {
                id,
                state,
                job: r.get(2),
                tenant: request.tenant.clone(),
                table: request.table.clone(),
                output: request.output.clone(),
                rows_total: r.get::<_, i64>(4).max(0) as u64,
                rows_written: r.get::<_, i64>(5).max(0) as u64,
                files,
                error: r.get(7),
            };
            out.push((request, status));
        }
        Ok(out)
    }

    /// Every retention policy with the horizon its last pass reached.
    pub async fn retention_policies(
        &self,
    ) -> Result<Vec<(RetentionPolicy, Option<Horizon>)>, MetadataError> {
        let rows = self
            .client
            .query(
                "SELECT tenant, table_name, days, horizon_micros, (horizon_lsn - '0/0'::pg_lsn)::bigint
                 FROM helios_meta.data_retention_policies ORDER BY tenant, table_name",
                &[],
            )
            .await
            .map_err(db("read retention policies"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let policy = RetentionPolicy {
                    tenant: r.get(0),
                    table: r.get(1),
                    days: r.get::<_, i32>(2).max(0) as u32,
                };
                let horizon = match (r.get::<_, Option<i64>>(3), r.get::<_, Option<i64>>(4)) {
                    (Some(micros), Some(lsn)) => Some(Horizon {
                        micros,
                        lsn: lsn as u64,
                    }),
                    _ => None,
                };
                (policy, horizon)
            })
            .collect())
    }

    /// Records how far a retention pass moved history out of the history table.
    pub async fn set_retention_horizon(
        &self,
        tenant: &str,
        table: &str,
        horizon: &Horizon,
    ) -> Result<(), MetadataError> {
        self.client
            .execute(
                "UPDATE helios_meta.data_retention_policies
                 SET horizon_micros = greatest(horizon_micros, $3),
                     horizon_lsn = greatest(horizon_lsn, $4::text::pg_lsn), updated_at = now()
                 WHERE tenant = $1 AND table_name = $2",
                &[
                    &tenant,
                    &table,
                    &horizon.micros,
                    &crate::change::format_lsn(horizon.lsn),
                ],
            )
            .await
            .map_err(db("record retention horizon"))?;
        Ok(())
    }

    /// Jobs whose latest version is running or paused, with DSNs restored.
    pub async fn live_jobs(&self) -> Result<Vec<StoredJob>, MetadataError> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT ON (job) job, version, spec, desired_state FROM helios_meta.replication_configs
                 ORDER BY job, version DESC",
                &[],
            )
            .await
            .map_err(db("read jobs"))?;
        let mut jobs = Vec::new();
        for row in rows {
            let desired: String = row.get(3);
            if desired == "deleted" {
                continue;
            }
            let job: String = row.get(0);
            let tokio_postgres::types::Json(value): tokio_postgres::types::Json<serde_json::Value> =
                row.get(2);
            let bad = |reason: String| MetadataError::BadSpec {
                job: job.clone(),
                reason,
            };
            let mut spec =
                JobSpec::from_json_str(&value.to_string()).map_err(|e| bad(e.to_string()))?;
            spec.source.dsn = self.connection(&spec.source.dsn).await?;
            for sink in spec.sinks.iter_mut() {
                match sink {
                    SinkSpec::Postgres(p) => p.dsn = self.connection(&p.dsn).await?,
                    SinkSpec::Parquet(_) | SinkSpec::Nats(_) => {}
                }
            }
            jobs.push(StoredJob {
                spec,
                version: row.get(1),
                desired_state: desired,
            });
        }
        Ok(jobs)
    }

    async fn connection(&self, reference: &Dsn) -> Result<Dsn, MetadataError> {
        let Some(name) = reference.expose().strip_prefix("helios_connection=") else {
            return Ok(reference.clone());
        };
        let row = self
            .client
            .query_opt(
                "SELECT dsn FROM helios_meta.connections WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(db("read connection"))?
            .ok_or_else(|| MetadataError::Database(format!("connection `{name}` is missing")))?;
        Ok(Dsn::new(row.get(0)))
    }

    /// Records something that happened to a job now (a request made of it).
    pub async fn record_event(&self, job: &str, kind: &str, detail: Option<&str>) {
        self.record_event_at(job, kind, detail, std::time::SystemTime::now())
            .await;
    }

    /// Records something that happened to a job at `at` (a state it entered); logged, not
    /// an error, if the store refuses.
    pub async fn record_event_at(
        &self,
        job: &str,
        kind: &str,
        detail: Option<&str>,
        at: std::time::SystemTime,
    ) {
        let result = self
            .client
            .execute(
                "INSERT INTO helios_meta.replication_events (job, at, kind, detail) VALUES ($1, $2, $3, $4)",
                &[&job, &at, &kind, &detail],
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(job, error = %describe_pg_error(&e), "cannot record job event");
        }
    }

    /// Deletes every job's events but its newest `kept`; returns how many went.
    pub async fn prune_events(&self, kept: u32) -> Result<u64, MetadataError> {
        self.client
            .execute(
                "DELETE FROM helios_meta.replication_events e
                  USING (SELECT id, row_number() OVER (PARTITION BY job ORDER BY at DESC, id DESC) AS n
                           FROM helios_meta.replication_events) ranked
                  WHERE e.id = ranked.id AND ranked.n > $1",
                &[&i64::from(kept)],
            )
            .await
            .map_err(db("prune job events"))
    }

    /// A job's last `limit` events (state changes, errors, requests), newest first.
    pub async fn job_events(&self, job: &str, limit: u32) -> Result<Vec<JobEvent>, MetadataError> {
        let rows = self
            .client
            .query(
                "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), kind, detail
                   FROM helios_meta.replication_events WHERE job = $1
                  ORDER BY at DESC, id DESC LIMIT $2",
                &[&job, &i64::from(limit)],
            )
            .await
            .map_err(db("read job events"))?;
        Ok(rows
            .iter()
            .map(|r| JobEvent {
                at: r.get(0),
                kind: r.get(1),
                detail: r.get(2),
            })
            .collect())
    }

    /// Mirrors per-tenant durable positions.
    pub async fn record_checkpoints(
        &self,
        job: &str,
        tenants: &[(String, Lsn)],
    ) -> Result<(), MetadataError> {
        if tenants.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = tenants.iter().map(|(t, _)| t.as_str()).collect();
        let lsns: Vec<PgLsn> = tenants.iter().map(|(_, l)| PgLsn::from(*l)).collect();
        self.client
            .execute(
                "INSERT INTO helios_meta.replication_checkpoints (job, tenant, lsn, updated_at)
                 SELECT $1, t, l, now() FROM unnest($2::text[], $3::pg_lsn[]) AS u(t, l)
                 ON CONFLICT (job, tenant) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now()",
                &[&job, &names, &lsns],
            )
            .await
            .map_err(db("record checkpoints"))?;
        Ok(())
    }
}
