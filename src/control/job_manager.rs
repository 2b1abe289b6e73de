//! The job manager behind `helios-repl serve`: keeps every job's runner, control channel and
//! figures, persists specs and desired states in the metadata store, and resumes the jobs
//! that were running when the server starts again.
//!
//! Each job runs in its own task on the shared [`DataflowHost`]: one job failing (source
//! down, sink error) changes only that job's state. A monitor task per job
//! (`job_monitor`) samples its figures into the metrics and the metadata store.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::cdc::catalog;
use crate::change::format_lsn;
use crate::control::access::{AccessHub, STORED_PREDICTIONS};
use crate::control::job_control::{
    AsOfQuery, AsOfRows, ControlError, ExportRequest, ExportState, ExportStatus, JobCompression,
    JobControl, JobEvents, JobId, JobState, JobStatus, Readiness, RenamedTable, ResyncRequest,
    RetentionPolicy, SinkCompression, SyncRequest, SyncResult, TableInError, TenantJob,
    TenantStatus, TimePoint,
};
use crate::control::job_runner::{self, Desired, JobStats};
use crate::control::job_spec::{JobSpec, SinkSpec, TenantFilter};
use crate::control::metadata::MetadataStore;
use crate::control::{exports, history_query, job_monitor, job_sync, resync};
use crate::dataflow::host::DataflowHost;
use crate::metrics::MetricsRegistry;
use crate::sinks::pg_apply::{self, staged_table};
use crate::sinks::worker::TenantProgress;

/// How long `DELETE` waits for a job to stop before dropping it anyway.
const STOP_LIMIT: Duration = Duration::from_secs(45);

struct ManagedJob {
    spec: JobSpec,
    version: i32,
    stats: Arc<JobStats>,
    control: watch::Sender<Desired>,
    task: tokio::task::JoinHandle<()>,
    monitor: tokio::task::JoinHandle<()>,
    rows_per_second: Arc<std::sync::Mutex<f64>>,
}

impl ManagedJob {
    /// The spec the job runs with: its table patterns as its last start resolved them (the
    /// submitted spec until then).
    fn carried(&self) -> Arc<JobSpec> {
        self.stats
            .carried()
            .unwrap_or_else(|| Arc::new(self.spec.clone()))
    }
}

/// Runs many jobs on one dataflow host.
pub struct JobManager {
    me: std::sync::Weak<JobManager>,
    host: Arc<DataflowHost>,
    pub(super) store: MetadataStore,
    metrics: Arc<MetricsRegistry>,
    jobs: Mutex<HashMap<JobId, ManagedJob>>,
    exports: Mutex<HashMap<String, Arc<std::sync::Mutex<ExportStatus>>>>,
}

impl JobManager {
    /// Starts the manager and every job the metadata store says is running or paused.
    pub async fn start(
        host: Arc<DataflowHost>,
        store: MetadataStore,
        metrics: Arc<MetricsRegistry>,
    ) -> Result<Arc<JobManager>, ControlError> {
        let stored = store.live_jobs().await?;
        let manager = Arc::new_cyclic(|me| JobManager {
            me: me.clone(),
            host,
            store,
            metrics,
            jobs: Mutex::new(HashMap::new()),
            exports: Mutex::new(HashMap::new()),
        });
        for job in stored {
            let desired = if job.desired_state == "paused" {
                Desired::Pause
            } else {
                Desired::Run
            };
            tracing::info!(job = %job.spec.name, version = job.version, state = %job.desired_state, "resuming job");
            let managed = manager.spawn(job.spec, job.version, desired);
            manager
                .jobs
                .lock()
                .await
                .insert(managed.spec.name.clone(), managed);
        }
        manager.resume_exports().await?;
        Ok(manager)
    }

    /// Runs an export to its end and records where it ended in the metadata store.
    fn launch_export(
        &self,
        spec: JobSpec,
        request: ExportRequest,
        range: (Option<TimePoint>, Option<TimePoint>),
        status: Arc<std::sync::Mutex<ExportStatus>>,
    ) {
        let me = self.me.clone();
        tokio::spawn(async move {
            exports::run_export(spec, request.clone(), range, status.clone()).await;
            let Ok(end) = status.lock().map(|s| s.clone()) else {
                return;
            };
            if let Some(manager) = me.upgrade() {
                if let Err(e) = manager.store.save_export(&request, &end).await {
                    tracing::warn!(export = %end.id, error = %e, "cannot record the export's end");
                }
            }
            tracing::info!(export = %end.id, state = end.state.as_str(), versions = end.rows_written, "export ended");
        });
    }

    /// Loads the recorded exports (their status answers after a restart) and resumes the
    /// ones that were running: the writer continues after what the output covers.
    async fn resume_exports(&self) -> Result<(), ControlError> {
        let recorded = self.store.exports().await?;
        for (request, mut status) in recorded {
            let resume = if status.state == ExportState::Running {
                let job = self
                    .history_job(&request.tenant, &request.table, Some(&status.job))
                    .await;
                match (job, exports::parse_range(&request)) {
                    (Ok((spec, _)), Ok(range)) => Some((spec, range)),
                    (Err(e), _) | (_, Err(e)) => {
                        status.state = ExportState::Failed;
                        status.error = Some(format!("not resumed after a restart: {e}"));
                        if let Err(e) = self.store.save_export(&request, &status).await {
                            tracing::warn!(export = %status.id, error = %e, "cannot record the export's end");
                        }
                        None
                    }
                }
            } else {
                None
            };
            let id = status.id.clone();
            let status = Arc::new(std::sync::Mutex::new(status));
            self.exports.lock().await.insert(id.clone(), status.clone());
            if let Some((spec, range)) = resume {
                tracing::info!(export = %id, job = %spec.name, "resuming export");
                self.launch_export(spec, request, range, status);
            }
        }
        Ok(())
    }

    /// Stops every job (they resume at the next start) and waits for them.
    pub async fn shutdown(&self) {
        let jobs: Vec<ManagedJob> = self.jobs.lock().await.drain().map(|(_, j)| j).collect();
        for job in &jobs {
            let _ = job.control.send(Desired::Stop);
        }
        for job in jobs {
            let _ = tokio::time::timeout(STOP_LIMIT, job.task).await;
            job.monitor.abort();
            self.record_state_changes(&job.spec.name, &job.stats).await;
        }
    }

    /// Records in the metadata store the states `stats`' job entered since the last call
    /// (its monitor calls this every tick; a stopped job's last ones are recorded as its
    /// monitor is stopped).
    pub(super) async fn record_state_changes(&self, job: &str, stats: &JobStats) {
        let (changes, dropped) = stats.take_state_changes();
        if dropped > 0 {
            let detail = format!("{dropped} state changes were not recorded (too many at once)");
            self.store
                .record_event(job, "events dropped", Some(&detail))
                .await;
        }
        for change in changes {
            self.store
                .record_event_at(
                    job,
                    change.state.name(),
                    change.reason.as_deref(),
                    change.at,
                )
                .await;
        }
    }

    /// Records the job's model and hottest predictions in the metadata store.
    pub(super) async fn save_prediction(&self, hub: &AccessHub) {
        let status = hub.status();
        if let Some(model) = hub.saved_model() {
            if let Err(e) = self.store.save_model(&hub.job, &model, &status).await {
                tracing::warn!(job = %hub.job, error = %e, "cannot save the prediction model");
            }
        }
        let top = hub.top_predictions(STORED_PREDICTIONS);
        if let Err(e) = self.store.save_predictions(&hub.job, &top).await {
            tracing::warn!(job = %hub.job, error = %e, "cannot save predictions");
        }
    }

    /// Stops a job's runner (waiting up to [`STOP_LIMIT`]) and its monitor, and drops its
    /// metrics; returns its spec.
    async fn stop_runner(&self, id: &str, job: ManagedJob) -> JobSpec {
        job.stats.set_state(JobState::Stopping, None);
        let _ = job.control.send(Desired::Stop);
        if tokio::time::timeout(STOP_LIMIT, job.task).await.is_err() {
            tracing::warn!(job = id, "job did not stop in time; dropped");
        }
        job.monitor.abort();
        self.record_state_changes(id, &job.stats).await;
        self.metrics.unregister_job(id);
        job.spec
    }

    /// What a job restarted on request (a new spec, a resync) is to do: stay paused if it
    /// was paused, else run (a failed job too); a job that is stopping cannot restart.
    fn desired_after_restart(id: &str, job: &ManagedJob) -> Result<Desired, ControlError> {
        let (state, _) = job.stats.state();
        if state == JobState::Stopping {
            return Err(ControlError::Conflict(format!("job `{id}` is stopping")));
        }
        Ok(match *job.control.borrow() {
            Desired::Pause if state != JobState::Failed => Desired::Pause,
            _ => Desired::Run,
        })
    }

    fn spawn(self: &Arc<Self>, spec: JobSpec, version: i32, desired: Desired) -> ManagedJob {
        let stats = Arc::new(JobStats::new(spec.sinks.len()));
        if desired == Desired::Pause {
            stats.set_state(JobState::Paused, None);
        }
        let (control, control_rx) = watch::channel(desired);
        let tenants = match &spec.tenants.include {
            TenantFilter::All => None,
            TenantFilter::Only(t) => Some(t.iter().cloned().collect::<Vec<_>>()),
        };
        let metrics = self.metrics.register_job(&spec.name, tenants.as_deref());
        let task = {
            let (host, stats, spec) = (self.host.clone(), stats.clone(), spec.clone());
            let me = self.clone();
            // The job's reader on the host's job runtime (see `job_runner::spawn_job`).
            self.host.job_runtime().spawn(async move {
                match me.store.load_model(&spec.name).await {
                    Ok(Some(model)) => stats.set_saved_model(model),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(job = %spec.name, error = %e, "cannot load the saved model; training a new one")
                    }
                }
                let _ = job_runner::run_job(spec, &host, stats, control_rx, None).await;
            })
        };
        let rows_per_second = Arc::new(std::sync::Mutex::new(0.0));
        let monitor = tokio::spawn(job_monitor::monitor(
            self.clone(),
            spec.name.clone(),
            stats.clone(),
            metrics,
            rows_per_second.clone(),
            spec.sinks.iter().map(|s| s.kind()).collect(),
            spec.tables.iter().any(|t| t.history),
        ));
        ManagedJob {
            spec,
            version,
            stats,
            control,
            task,
            monitor,
            rows_per_second,
        }
    }

    fn status(job: &ManagedJob) -> JobStatus {
        let (state, reason) = job.stats.state();
        // Over several sinks: the lowest durable LSN, the rows of all, the largest lag.
        let mut progress: HashMap<String, TenantProgress> = HashMap::new();
        for sink in &job.stats.sinks {
            for (tenant, p) in sink.tenant_progress() {
                let e = progress.entry(tenant).or_default();
                e.lsn = if e.lsn == 0 { p.lsn } else { e.lsn.min(p.lsn) };
                e.upserts += p.upserts;
                e.deletes += p.deletes;
                e.lag_seconds = e.lag_seconds.max(p.lag_seconds);
            }
        }
        let tenant_status = match &job.spec.tenants.include {
            TenantFilter::All => Vec::new(),
            TenantFilter::Only(tenants) => tenants
                .iter()
                .map(|t| {
                    let p = progress.get(t);
                    TenantStatus {
                        tenant: t.clone(),
                        durable_lsn: p.map(|p| format_lsn(p.lsn)),
                        rows: p.map(|p| p.upserts + p.deletes).unwrap_or(0),
                        lag_seconds: p.map(|p| p.lag_seconds).unwrap_or(0.0),
                    }
                })
                .collect(),
        };
        let tenants = match &job.spec.tenants.include {
            TenantFilter::All => vec!["all".to_string()],
            TenantFilter::Only(t) => t.iter().cloned().collect(),
        };
        let errors = job.stats.errors.load(Relaxed)
            + job
                .stats
                .sinks
                .iter()
                .map(|s| s.errors.load(Relaxed))
                .sum::<u64>();
        JobStatus {
            id: job.spec.name.clone(),
            state,
            reason,
            version: job.version,
            tenants,
            tables: job
                .carried()
                .tables
                .iter()
                .map(|t| t.name.clone())
                .collect(),
            confirmed_lsn: format_lsn(job.stats.reader.confirmed.load(Relaxed)),
            lag_bytes: job.stats.lag_bytes(),
            lag_seconds: job.stats.lag_seconds(),
            rows_per_second: job.rows_per_second.lock().map(|r| *r).unwrap_or(0.0),
            rows_total: job.stats.rows_applied(),
            errors,
            snapshot: job.stats.snapshot.status(),
            tenant_status,
            tables_in_error: tables_in_error(&job.stats),
            renamed_tables: renamed_tables(&job.stats),
            tables_left_out: job.stats.tables_left_out(),
            sequence_problems: job.stats.sequence_problems(),
            slot: job.stats.slot(),
            spec: redacted_spec(&job.spec),
        }
    }
}

/// The tables the job's sinks keep in error state, by sink and table.
pub fn tables_in_error(stats: &JobStats) -> Vec<TableInError> {
    let mut out = Vec::new();
    for (sink, s) in stats.sinks.iter().enumerate() {
        if let Ok(tables) = s.tables_in_error.lock() {
            out.extend(tables.iter().map(|(table, reason)| TableInError {
                sink,
                table: table.clone(),
                reason: reason.clone(),
            }));
        }
    }
    out
}

/// The job's tables renamed on the source while it runs.
pub fn renamed_tables(stats: &JobStats) -> Vec<RenamedTable> {
    stats
        .reader
        .renamed_tables
        .lock()
        .map(|renamed| {
            renamed
                .iter()
                .map(|(table, source_name)| RenamedTable {
                    table: table.clone(),
                    source_name: source_name.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The spec as JSON with every password shown as `***`.
pub fn redacted_spec(spec: &JobSpec) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
    value["source"]["dsn"] = spec.source.dsn.redacted().into();
    for (i, sink) in spec.sinks.iter().enumerate() {
        match sink {
            SinkSpec::Postgres(p) => value["sinks"][i]["dsn"] = p.dsn.redacted().into(),
            SinkSpec::Nats(n) => {
                value["sinks"][i]["url"] = crate::control::secret::redact_any_url(&n.url).into()
            }
            SinkSpec::Parquet(_) => {}
        }
    }
    value
}

#[async_trait::async_trait]
impl JobControl for JobManager {
    async fn compression(&self, id: &str) -> Result<JobCompression, ControlError> {
        let jobs = self.jobs.lock().await;
        let job = jobs
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
        Ok(job_compression(&job.spec, &job.stats))
    }

    async fn events(&self, id: &str, limit: u32) -> Result<JobEvents, ControlError> {
        let events = self.store.job_events(id, limit).await?;
        if events.is_empty() && !self.jobs.lock().await.contains_key(id) {
            return Err(ControlError::NotFound(id.to_string()));
        }
        Ok(JobEvents {
            job: id.to_string(),
            events,
        })
    }

    async fn record_access(
        &self,
        events: crate::control::access::AccessEvents,
    ) -> Result<crate::control::access::AccessAccepted, ControlError> {
        let hubs: Vec<Arc<AccessHub>> = {
            let jobs = self.jobs.lock().await;
            jobs.values().filter_map(|j| j.stats.access()).collect()
        };
        Ok(crate::control::access::record_in(
            hubs.iter().map(|h| &**h),
            &events,
        ))
    }

    async fn submit(&self, spec: JobSpec) -> Result<JobId, ControlError> {
        spec.validate()?;
        let mut jobs = self.jobs.lock().await;
        if jobs.contains_key(&spec.name) {
            return Err(ControlError::AlreadyExists(spec.name));
        }
        let version = self.store.save_job(&spec, "running").await?;
        self.store
            .record_event(&spec.name, "submitted", Some(&format!("version {version}")))
            .await;
        // `spawn` needs an Arc of the manager for the monitor; rebuild it from the map's owner.
        let me = self.self_arc().await?;
        let managed = me.spawn(spec.clone(), version, Desired::Run);
        jobs.insert(spec.name.clone(), managed);
        tracing::info!(job = %spec.name, version, "job submitted");
        Ok(spec.name)
    }

    async fn list(&self) -> Vec<JobStatus> {
        let jobs = self.jobs.lock().await;
        let mut out: Vec<JobStatus> = jobs.values().map(JobManager::status).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    async fn get(&self, id: &str) -> Result<JobStatus, ControlError> {
        let jobs = self.jobs.lock().await;
        jobs.get(id)
            .map(JobManager::status)
            .ok_or_else(|| ControlError::NotFound(id.to_string()))
    }

    async fn pause(&self, id: &str) -> Result<JobStatus, ControlError> {
        let jobs = self.jobs.lock().await;
        let job = jobs
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
        match job.stats.state().0 {
            JobState::Failed => {
                return Err(ControlError::Conflict(format!(
                    "job `{id}` has failed; resume restarts it"
                )))
            }
            JobState::Stopping => {
                return Err(ControlError::Conflict(format!("job `{id}` is stopping")))
            }
            _ => {}
        }
        if *job.control.borrow() == Desired::Pause {
            return Err(ControlError::Conflict(format!(
                "job `{id}` is already paused"
            )));
        }
        self.store.set_desired_state(id, "paused").await?;
        self.store.record_event(id, "pause requested", None).await;
        let _ = job.control.send(Desired::Pause);
        job.stats.set_state(JobState::Paused, None);
        Ok(JobManager::status(job))
    }

    async fn resume(&self, id: &str) -> Result<JobStatus, ControlError> {
        let mut jobs = self.jobs.lock().await;
        let job = jobs
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
        let failed = job.stats.state().0 == JobState::Failed;
        if !failed && *job.control.borrow() == Desired::Run {
            return Err(ControlError::Conflict(format!("job `{id}` is not paused")));
        }
        self.store.set_desired_state(id, "running").await?;
        self.store.record_event(id, "resume requested", None).await;
        if failed {
            // A failed job's runner has ended: start it again.
            let (spec, version) = (job.spec.clone(), job.version);
            if let Some(old) = jobs.remove(id) {
                old.monitor.abort();
                self.record_state_changes(id, &old.stats).await;
            }
            let me = self.self_arc().await?;
            let managed = me.spawn(spec, version, Desired::Run);
            let status = JobManager::status(&managed);
            jobs.insert(id.to_string(), managed);
            return Ok(status);
        }
        let _ = job.control.send(Desired::Run);
        Ok(JobManager::status(job))
    }

    async fn delete(&self, id: &str, drop_slot: bool) -> Result<(), ControlError> {
        let job = self
            .jobs
            .lock()
            .await
            .remove(id)
            .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
        let spec = self.stop_runner(id, job).await;
        self.store.set_desired_state(id, "deleted").await?;
        self.store
            .record_event(id, "deleted", drop_slot.then_some("slot dropped"))
            .await;
        if drop_slot {
            drop_replication_slot(&spec).await?;
        }
        // With the slot kept or not: a job of the same name would snapshot afresh, and the
        // first thing it would do is drop them.
        drop_staging_leftovers(&spec).await;
        tracing::info!(job = id, drop_slot, "job deleted");
        Ok(())
    }

    async fn replace(&self, id: &str, spec: JobSpec) -> Result<JobStatus, ControlError> {
        spec.validate()?;
        // Held until the new runner is in place: no other request sees the job missing.
        let mut jobs = self.jobs.lock().await;
        let job = jobs
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
        spec.check_replaces(&job.spec)?;
        if spec == job.spec {
            // The same spec again: nothing to replace, and no restart.
            return Ok(JobManager::status(job));
        }
        // A failed job runs again under the new spec (which may be what mends it).
        let desired = JobManager::desired_after_restart(id, job)?;
        let stored_state = if desired == Desired::Pause {
            "paused"
        } else {
            "running"
        };
        let version = self.store.save_job(&spec, stored_state).await?;
        self.store
            .record_event(id, "replaced", Some(&format!("version {version}")))
            .await;
        if let Some(old) = jobs.remove(id) {
            self.stop_runner(id, old).await;
        }
        let me = self.self_arc().await?;
        let managed = me.spawn(spec, version, desired);
        let status = JobManager::status(&managed);
        jobs.insert(id.to_string(), managed);
        tracing::info!(
            job = id,
            version,
            "job spec replaced; the job restarts under it"
        );
        Ok(status)
    }

    async fn resync(&self, id: &str, request: ResyncRequest) -> Result<JobStatus, ControlError> {
        // Held until the restarted runner is in place: no other request sees the job missing.
        let mut jobs = self.jobs.lock().await;
        let job = jobs
            .get(id)
            .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
        // Checked before the job stops: a bad request leaves it running.
        let carried = job.carried();
        let tables = resync::check(&carried, &request.tables)?;
        let tenants = resync::check_tenants(&job.spec, &request.tenants)?;
        resync::check_tenants_of_tables(&carried, &tables, &tenants)?;
        let desired = JobManager::desired_after_restart(id, job)?;
        let version = job.version;
        let Some(old) = jobs.remove(id) else {
            return Err(ControlError::NotFound(id.to_string()));
        };
        // With the runner stopped, no sink can put a table back in error over the request.
        let spec = self.stop_runner(id, old).await;
        let recorded = resync::request(&carried, &request.tables, &request.tenants).await;
        // The job runs on whether the request was recorded or not.
        let me = self.self_arc().await?;
        let managed = me.spawn(spec, version, desired);
        let status = JobManager::status(&managed);
        jobs.insert(id.to_string(), managed);
        recorded?;
        let mut what = tables
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if !tenants.is_empty() {
            let ids: Vec<&str> = tenants.iter().map(String::as_str).collect();
            what = format!("{what} (tenants {})", ids.join(", "));
        }
        self.store
            .record_event(id, "resync requested", Some(&what))
            .await;
        tracing::info!(job = id, tables = %what, "resync requested; the job restarts and reloads them");
        Ok(status)
    }

    async fn sync(&self, id: &str, request: SyncRequest) -> Result<SyncResult, ControlError> {
        let timeout = job_sync::timeout_of(&request)?;
        let (spec, stats) = {
            let jobs = self.jobs.lock().await;
            let job = jobs
                .get(id)
                .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
            (job.carried(), job.stats.clone())
        };
        let result = job_sync::sync(&spec, &stats, timeout).await?;
        tracing::info!(job = id, source_lsn = %result.source_lsn, waited_s = result.waited_secs, sequences_raised = result.sequences_raised, "synced: every change the source committed before the request is durable");
        Ok(result)
    }

    async fn tenant(&self, tenant: &str) -> Vec<TenantJob> {
        let jobs = self.jobs.lock().await;
        let mut out: Vec<TenantJob> = jobs
            .values()
            .filter(|j| j.spec.includes_tenant(tenant))
            .map(|j| {
                let status = JobManager::status(j);
                let mine = status.tenant_status.iter().find(|t| t.tenant == tenant);
                TenantJob {
                    job: status.id.clone(),
                    state: status.state,
                    lag_seconds: mine.map_or(status.lag_seconds, |t| t.lag_seconds),
                    lag_bytes: status.lag_bytes,
                    durable_lsn: mine.and_then(|t| t.durable_lsn.clone()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.job.cmp(&b.job));
        out
    }

    async fn readiness(&self) -> Readiness {
        let metadata_store = self.store.ping().await;
        let jobs = self.jobs.lock().await;
        let states: Vec<JobState> = jobs.values().map(|j| j.stats.state().0).collect();
        Readiness {
            metadata_store,
            jobs_running: states
                .iter()
                .filter(|s| matches!(s, JobState::Streaming | JobState::Snapshotting))
                .count(),
            jobs_failed: states.iter().filter(|s| **s == JobState::Failed).count(),
        }
    }

    fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    async fn rows_as_of(&self, query: AsOfQuery) -> Result<AsOfRows, ControlError> {
        let (spec, stats) = self
            .history_job(&query.tenant, &query.table, query.job.as_deref())
            .await?;
        let horizon = self.horizon(&query.tenant, &query.table).await?;
        history_query::rows_as_of(&spec, &stats, &query, horizon).await
    }

    async fn start_export(&self, request: ExportRequest) -> Result<ExportStatus, ControlError> {
        let range = exports::parse_range(&request)?;
        let (spec, _) = self
            .history_job(&request.tenant, &request.table, request.job.as_deref())
            .await?;
        let id = format!(
            "exp-{}-{}",
            crate::change::pg_now_micros(),
            self.exports.lock().await.len() + 1
        );
        let status = Arc::new(std::sync::Mutex::new(ExportStatus {
            id: id.clone(),
            state: ExportState::Running,
            job: spec.name.clone(),
            tenant: request.tenant.clone(),
            table: request.table.clone(),
            output: request.output.clone(),
            rows_total: 0,
            rows_written: 0,
            files: Vec::new(),
            error: None,
        }));
        let first = status
            .lock()
            .map(|s| s.clone())
            .map_err(|_| ControlError::Unavailable("export state lost".into()))?;
        self.store.save_export(&request, &first).await?;
        self.exports.lock().await.insert(id.clone(), status.clone());
        tracing::info!(export = %id, job = %spec.name, table = %request.table, "export started");
        self.launch_export(spec, request, range, status.clone());
        let snapshot = status
            .lock()
            .map(|s| s.clone())
            .map_err(|_| ControlError::Unavailable("export state lost".into()))?;
        Ok(snapshot)
    }

    async fn export_status(&self, id: &str) -> Result<ExportStatus, ControlError> {
        let exports = self.exports.lock().await;
        let status = exports
            .get(id)
            .ok_or_else(|| ControlError::Missing(format!("no export `{id}`")))?;
        status
            .lock()
            .map(|s| s.clone())
            .map_err(|_| ControlError::Unavailable("export state lost".into()))
    }

    async fn set_retention(
        &self,
        policy: RetentionPolicy,
    ) -> Result<RetentionPolicy, ControlError> {
        let (spec, _) = self
            .history_job(&policy.tenant, &policy.table, None)
            .await?;
        if history_query::history_places(&spec).1.is_none() {
            return Err(ControlError::Invalid {
                field: "table".into(),
                message: format!(
                    "job `{}` has no parquet sink: history older than the policy's age would have nowhere to live",
                    spec.name
                ),
            });
        }
        self.store.save_retention(&policy).await?;
        Ok(policy)
    }

    async fn retention_policies(&self) -> Result<Vec<RetentionPolicy>, ControlError> {
        Ok(self
            .store
            .retention_policies()
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }
}

impl JobManager {
    /// The job keeping `table`'s history for `tenant` (the one named, when several do).
    /// For as-of queries, exports and retention policies alike: a table that holds one
    /// other tenant's rows only is refused for `tenant` (422), naming that tenant.
    async fn history_job(
        &self,
        tenant: &str,
        table: &str,
        job: Option<&str>,
    ) -> Result<(JobSpec, Arc<JobStats>), ControlError> {
        let jobs = self.jobs.lock().await;
        let matching: Vec<&ManagedJob> = jobs
            .values()
            .filter(|j| job.is_none_or(|name| j.spec.name == name))
            .filter(|j| {
                j.spec.includes_tenant(tenant)
                    && j.carried().history_tables().any(|t| t.name == table)
            })
            .collect();
        match matching.as_slice() {
            [one] => {
                let carried = one.carried();
                if let Some(owner) = carried.table_owner(table).filter(|o| *o != tenant) {
                    return Err(ControlError::Invalid {
                        field: "tenant".into(),
                        message: format!(
                            "{table} holds tenant `{owner}`'s rows only: tenant `{tenant}` has none there"
                        ),
                    });
                }
                Ok(((*carried).clone(), one.stats.clone()))
            }
            [] => Err(ControlError::Missing(match job {
                Some(name) => {
                    format!("job `{name}` does not keep history of {table} for tenant {tenant}")
                }
                None => format!("no job keeps history of {table} for tenant {tenant}"),
            })),
            several => {
                let mut names: Vec<&str> = several.iter().map(|j| j.spec.name.as_str()).collect();
                names.sort();
                Err(ControlError::Conflict(format!(
                    "several jobs keep history of {table} for tenant {tenant} ({}); name one with job=",
                    names.join(", ")
                )))
            }
        }
    }

    /// How far retention moved the tenant's history of `table` out of the history table.
    async fn horizon(
        &self,
        tenant: &str,
        table: &str,
    ) -> Result<Option<history_query::Horizon>, ControlError> {
        Ok(self
            .store
            .retention_policies()
            .await?
            .into_iter()
            .find(|(p, _)| p.tenant == tenant && p.table == table)
            .and_then(|(_, h)| h))
    }

    /// Applies every retention policy once.
    pub async fn retention_pass(&self) {
        let policies = match self.store.retention_policies().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read retention policies");
                return;
            }
        };
        for (policy, _) in policies {
            let Ok((spec, _)) = self.history_job(&policy.tenant, &policy.table, None).await else {
                continue;
            };
            match exports::apply_retention(&spec, &policy, crate::change::pg_now_micros()).await {
                Ok(Some(horizon)) => {
                    if let Err(e) = self
                        .store
                        .set_retention_horizon(&policy.tenant, &policy.table, &horizon)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot record the retention horizon");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(table = %policy.table, error = %e, "retention pass failed")
                }
            }
        }
    }

    /// Runs [`JobManager::retention_pass`] every `every` until the manager is dropped.
    /// Each pass also prunes every job's events to its newest `events_kept`.
    pub fn start_retention(
        self: &Arc<Self>,
        every: Duration,
        events_kept: u32,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(manager) = me.upgrade() else { return };
                manager.retention_pass().await;
                match manager.store.prune_events(events_kept).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "old job events pruned"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune old job events"),
                }
            }
        })
    }

    /// The manager's own `Arc` (handed to monitors).
    async fn self_arc(&self) -> Result<Arc<JobManager>, ControlError> {
        self.me
            .upgrade()
            .ok_or_else(|| ControlError::Unavailable("the job manager is shutting down".into()))
    }
}

/// Drops the job's replication slot, retrying while its walsender is still exiting.
async fn drop_replication_slot(spec: &JobSpec) -> Result<(), ControlError> {
    let client = catalog::connect(spec.source.dsn.expose())
        .await
        .map_err(|e| ControlError::Unavailable(e.to_string()))?;
    let mut last = None;
    for _ in 0..20 {
        match catalog::drop_slot(&client, &spec.source.slot).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(ControlError::Unavailable(format!(
        "cannot drop replication slot `{}`: {}",
        spec.source.slot,
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Drops the staging tables an unfinished initial snapshot of the job left on its
/// PostgreSQL targets (`pg_apply::staged_table`). A target it cannot reach is logged, not
/// an error: the job is gone either way.
async fn drop_staging_leftovers(spec: &JobSpec) {
    let mut schemas: Vec<&str> = spec.tables.iter().map(|t| t.schema()).collect();
    schemas.sort_unstable();
    schemas.dedup();
    for (target, dsn) in job_runner::postgres_dsns(spec).iter().enumerate() {
        let dropped = match pg_apply::sink::connect(dsn).await {
            Ok(client) => staged_table::drop_leftovers(&client, &spec.name, &schemas).await,
            Err(e) => Err(e),
        };
        match dropped {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(job = %spec.name, target, dropped = n, "staging tables of an unfinished snapshot dropped")
            }
            Err(e) => {
                tracing::warn!(job = %spec.name, target, error = %e, "cannot drop the staging tables of an unfinished snapshot")
            }
        }
    }
}

/// The codec figures of a job's compressed-stream sinks.
pub fn job_compression(spec: &JobSpec, stats: &JobStats) -> JobCompression {
    use std::sync::atomic::Ordering::Relaxed;
    let sinks = spec
        .sinks
        .iter()
        .zip(&stats.sinks)
        .enumerate()
        .filter(|(_, (s, _))| matches!(s, SinkSpec::Nats(_)))
        .map(|(i, (s, st))| {
            let c = &st.compression;
            let (rows, frame_bytes) = (c.rows.load(Relaxed), c.frame_bytes.load(Relaxed));
            SinkCompression {
                sink: i,
                kind: s.kind().to_string(),
                frames: c.frames.load(Relaxed),
                rows,
                arrow_bytes: c.arrow_bytes.load(Relaxed),
                frame_bytes,
                bytes_per_row: if rows == 0 {
                    0.0
                } else {
                    frame_bytes as f64 / rows as f64
                },
                encode_seconds: c.encode_micros.load(Relaxed) as f64 / 1e6,
                fast_mode: c.fast_mode.load(Relaxed),
                fallbacks: c.fallbacks.load(Relaxed),
                streams: c.streams(),
            }
        })
        .collect();
    JobCompression {
        job: spec.name.clone(),
        sinks,
    }
}
