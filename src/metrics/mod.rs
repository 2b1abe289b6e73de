//! Prometheus metrics of the replication jobs: one [`MetricsRegistry`] per server, one
//! [`JobMetrics`] handle per job, handed to the data path.
//!
//! # Names
//! Every metric name, label name and fixed label value is a constant in [`names`]; the
//! Grafana dashboard (`schemas/grafana-dashboard.json`) uses the same names, and a test
//! checks that it references each metric.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `helios_replication_lag_seconds` | gauge | `job`, `tenant` |
//! | `helios_replication_lag_bytes` | gauge | `job`, `tenant` |
//! | `helios_rows_replicated_total` | counter | `job`, `tenant`, `op` |
//! | `helios_bytes_received_total` | counter | `job` |
//! | `helios_source_streamed_transactions_total` | counter | `job` |
//! | `helios_source_socket_reads_total` | counter | `job` |
//! | `helios_source_batched_reads_total` | counter | `job` |
//! | `helios_bytes_sent_total` | counter | `job`, `sink` |
//! | `helios_sink_errors_total` | counter | `job`, `sink` |
//! | `helios_apply_batch_seconds` | histogram | `job`, `sink` |
//! | `helios_transaction_stage_seconds` | histogram | `job`, `sink`, `stage` |
//! | `helios_source_confirmed_lsn` | gauge | `job` |
//! | `helios_source_slot_retained_wal_bytes` | gauge | `job` |
//! | `helios_source_slot_safe_wal_bytes` | gauge | `job` |
//! | `helios_job_state` | gauge | `job`, `state` |
//! | `helios_job_tables_left_out` | gauge | `job` |
//! | `helios_target_sequences_out_of_step` | gauge | `job` |
//! | `helios_tenant_predicted_hotness` | gauge | `job`, `tenant` |
//! | `helios_prediction_error` | gauge | `job`, `predictor` |
//! | `helios_predictor_in_use` | gauge | `job`, `predictor` |
//! | `helios_access_events_total` | counter | `job` |
//! | `helios_sink_throttled_seconds_total` | counter | `job`, `sink` |
//! | `helios_sink_encode_seconds_total` | counter | `job`, `sink` |
//! | `helios_sink_codec_fast_mode` | gauge | `job`, `sink` |
//! | `helios_sink_round_trip_seconds` | gauge | `job`, `sink` |
//! | `helios_sink_max_in_flight` | gauge | `job`, `sink` |
//! | `helios_sink_tables_in_error` | gauge | `job`, `sink` |
//! | `helios_cold_compaction_files_total` | counter | `job`, `side` |
//! | `helios_cold_compaction_bytes_total` | counter | `job`, `side` |
//! | `helios_history_versions_held` | gauge | `job` |
//! | `helios_history_row_bytes` | gauge | `job`, `place` |
//! | `helios_history_row_walks_total` | counter | `job` |
//! | `helios_sink_backlog_rows` | gauge | `job` |
//! | `helios_sink_backlog_bytes` | gauge | `job` |
//!
//! Prometheus conventions: base units (seconds, bytes), counters end in `_total`, a
//! histogram's series are `_bucket{le}`, `_sum` and `_count`. The LSN gauge is the LSN as a
//! number (`X/Y` is `X << 32 | Y`); Prometheus stores samples as `f64`, which is exact up to
//! 2^53 (8 PiB of WAL).
//!
//! # Label values
//! - `op` (what the sink reports per apply, [`JobMetrics::rows`]): `upsert` (rows inserted
//!   or updated), `delete` (rows deleted, per-tenant truncates included), `skipped_replay`
//!   (changes skipped because the sink's checkpoint already covered them — replays after a
//!   restart) and `dead_lettered` (changes kept in the dead-letter table because their table
//!   is in error). See [`names::OPS`].
//! - `state` ([`JobMetrics::set_state`]): `snapshotting`, `streaming`, `paused`, `failed`,
//!   `stopping` — the snake_case names of `control::job_control::JobState`. The current
//!   state's series is 1, every other state's 0. See [`names::STATES`].
//! - `sink`: the sink's `Sink::kind()` (`postgres`, …).
//! - `side` (cold-tier compaction): `merged` (small files merged away) or `written`
//!   (the merged files). See [`names::SIDES`].
//! - `predictor`: `model`, `heuristic`, `last_window` (errors) and `model`, `heuristic`,
//!   `round_robin` (in use). See [`names::PREDICTORS`].
//!
//! # Bounded cardinality
//! The `tenant` label takes only the tenant ids a job was registered with, plus
//! [`names::TENANT_ALL`] (`_all`): a job over all tenants (registered with `None`) records
//! everything under `_all`, and a tenant outside a job's list is recorded under `_all` too,
//! so no series is ever created per unknown tenant. `op`, `sink` and `state` are
//! `&'static str`, i.e. fixed by the code. LSNs, keys, table names and error texts never
//! become labels.
//!
//! # Lifecycle
//! [`MetricsRegistry::register_job`] creates a job's fixed series at 0 (rows for every
//! [`names::OPS`] value × every listed tenant and `_all`, bytes received, one series per
//! [`names::STATES`] value), so `rate()`/`increase()` see the first increment; the others
//! (lag, LSN, per-sink series) appear on first use.
//! [`MetricsRegistry::unregister_job`] removes every series of the job; the job's
//! [`JobMetrics`] handle then becomes inert (calls on it record nowhere and never bring a
//! series back), so a task that still holds it cannot resurrect a deleted job.
//!
//! # Exposition format
//! [`MetricsRegistry::encode`] returns the **OpenMetrics 1.0 text format** (the only text
//! format `prometheus-client` writes), ending in `# EOF`; serve it with
//! [`CONTENT_TYPE`]. Prometheus (and Grafana Agent / Alloy, VictoriaMetrics) scrape it.
//! Served as `text/plain; version=0.0.4` instead, Prometheus still ingests every sample,
//! but the counters lose their type (the `# TYPE` line names the family without `_total`).
//!
//! Scrape configuration: the label `job` collides with the target label Prometheus adds to
//! every scraped series; set `honor_labels: true` on this scrape job, otherwise Prometheus
//! renames ours to `exported_job` and the dashboard's `$job` variable selects the scrape
//! job instead of the replication job.
//!
//! # Cost on hot paths
//! After a series exists, recording is a hash lookup of the tenant (rows only), a read
//! lock on a short per-job list and one atomic operation; no allocation. Creating a series
//! takes the job's locks once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::sinks::latency::LatencyStage;

mod families;
mod labels;
pub mod names;
mod sink_series;

pub use families::{apply_batch_buckets, transaction_stage_buckets};
use families::{Families, GaugeF64, GaugeU64};

use labels::{
    JobLabels, PlaceLabels, PredictorLabels, RowLabels, SideLabels, SinkLabels, StageLabels,
    StateLabels, TenantLabels,
};

/// `Content-Type` of [`MetricsRegistry::encode`]'s output (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The server's metrics: every job's series, encoded together for `GET /metrics`.
pub struct MetricsRegistry {
    registry: Registry,
    families: Families,
    jobs: Mutex<HashMap<String, Arc<JobMetrics>>>,
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let jobs = lock(&self.jobs);
        f.debug_struct("MetricsRegistry")
            .field("jobs", &jobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    /// An empty registry with every metric family registered.
    pub fn new() -> Arc<MetricsRegistry> {
        let families = Families::new();
        let mut registry = Registry::default();
        families.register(&mut registry);
        Arc::new(MetricsRegistry {
            registry,
            families,
            jobs: Mutex::new(HashMap::new()),
        })
    }

    /// The metrics handle of job `job`, carrying `tenants` (`None`: all tenants).
    ///
    /// Idempotent: registering a job again with the same tenants (in any order) returns the
    /// same handle. Registering it with a *different* tenant list replaces it, as
    /// [`unregister_job`](Self::unregister_job) followed by a fresh registration: its series
    /// start again from 0 (Prometheus treats that as a counter reset) and the old handle
    /// becomes inert.
    pub fn register_job(&self, job: &str, tenants: Option<&[String]>) -> Arc<JobMetrics> {
        let tenants: Option<BTreeSet<&str>> =
            tenants.map(|t| t.iter().map(String::as_str).collect());
        let mut jobs = lock(&self.jobs);
        if let Some(existing) = jobs.get(job) {
            if existing.same_tenants(tenants.as_ref()) {
                return existing.clone();
            }
            existing.retire();
        }
        let metrics = Arc::new(JobMetrics::new(job, tenants, self.families.clone()));
        jobs.insert(job.to_owned(), metrics.clone());
        metrics
    }

    /// Removes every series of job `job` (no-op for an unknown job). Handles to it become
    /// inert.
    pub fn unregister_job(&self, job: &str) {
        let mut jobs = lock(&self.jobs);
        if let Some(metrics) = jobs.remove(job) {
            metrics.retire();
        }
    }

    /// Every series in the OpenMetrics 1.0 text format, ending in `# EOF\n`; serve it with
    /// [`CONTENT_TYPE`]. Families without series are left out.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail, and every label value is escaped.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }
}

/// Locks `m`, ignoring poisoning: the data behind every lock here stays consistent at
/// every point a panic could interrupt it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A short list of series keyed by a small value (an `op`, a sink kind, a state, `()`),
/// created on first use.
#[derive(Debug)]
struct Slots<K, M>(RwLock<Vec<(K, M)>>);

impl<K: PartialEq + Copy, M> Slots<K, M> {
    fn new() -> Self {
        Slots(RwLock::new(Vec::new()))
    }

    /// Calls `f` on the series for `key`, creating it with `make` if missing; does nothing
    /// when `make` declines (retired job).
    fn with(&self, key: K, make: impl FnOnce() -> Option<M>, f: impl FnOnce(&M)) {
        {
            let slots = self.0.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, m)) = slots.iter().find(|(k, _)| *k == key) {
                f(m);
                return;
            }
        }
        let mut slots = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, m)) = slots.iter().find(|(k, _)| *k == key) {
            f(m);
            return;
        }
        if let Some(m) = make() {
            f(&m);
            slots.push((key, m));
        }
    }
}

/// One value of the tenant label within a job.
#[derive(Debug)]
struct TenantSlot {
    tenant: Arc<str>,
    rows: Slots<&'static str, Counter>,
    lag: Slots<(), (GaugeF64, GaugeU64)>,
    hotness: Slots<(), GaugeF64>,
}

/// A sink's series.
#[derive(Debug)]
struct SinkSeries {
    bytes_sent: Counter,
    errors: Counter,
    apply_batch: Histogram,
    /// By `LatencyStage::index`.
    stages: Vec<Histogram>,
}

type Remover = Box<dyn FnOnce() + Send>;

/// Whether the job is registered, and how to remove each series it created.
struct Lifecycle {
    alive: bool,
    removers: Vec<Remover>,
}

/// One job's metrics. Cheap to call from hot paths; see the [module doc](self).
pub struct JobMetrics {
    job: Arc<str>,
    families: Families,
    /// `None` for a job over all tenants.
    tenant_list: Option<BTreeSet<Box<str>>>,
    /// Listed tenant → index into `slots`.
    tenant_index: HashMap<Box<str>, usize>,
    /// `slots[0]` is `_all`.
    slots: Vec<TenantSlot>,
    bytes_received: Counter,
    streamed_txns: Counter,
    socket_reads: Counter,
    batched_reads: Counter,
    confirmed_lsn: Slots<(), GaugeU64>,
    slot_retained_wal: Slots<(), GaugeU64>,
    slot_safe_wal: Slots<(), GaugeU64>,
    tables_left_out: Slots<(), GaugeU64>,
    sequences_out_of_step: Slots<(), GaugeU64>,
    sinks: Slots<&'static str, SinkSeries>,
    states: Slots<&'static str, Gauge>,
    prediction_errors: Slots<&'static str, GaugeF64>,
    predictors_in_use: Slots<&'static str, Gauge>,
    access_events: Slots<(), Counter>,
    throttled: Slots<&'static str, Counter<f64, AtomicU64>>,
    encode_seconds: Slots<&'static str, Counter<f64, AtomicU64>>,
    codec_fast: Slots<&'static str, Gauge>,
    round_trip: Slots<&'static str, GaugeF64>,
    max_in_flight: Slots<&'static str, Gauge>,
    tables_in_error: Slots<&'static str, Gauge>,
    compaction_files: Slots<&'static str, Counter>,
    compaction_bytes: Slots<&'static str, Counter>,
    versions_held: Slots<(), GaugeU64>,
    row_bytes: Slots<&'static str, GaugeU64>,
    row_walks: Slots<(), Counter>,
    backlog_rows: Slots<(), GaugeU64>,
    backlog_bytes: Slots<(), GaugeU64>,
    /// Held while creating a series and while retiring, so none outlives the job.
    life: Mutex<Lifecycle>,
}

impl fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobMetrics")
            .field("job", &self.job)
            .field("tenants", &self.tenant_list)
            .field("alive", &lock(&self.life).alive)
            .finish_non_exhaustive()
    }
}

impl JobMetrics {
    fn new(job: &str, tenants: Option<BTreeSet<&str>>, families: Families) -> Self {
        let slot = |tenant: &str| TenantSlot {
            tenant: Arc::from(tenant),
            rows: Slots::new(),
            lag: Slots::new(),
            hotness: Slots::new(),
        };
        let mut slots = vec![slot(names::TENANT_ALL)];
        let mut tenant_index = HashMap::new();
        for t in tenants.iter().flatten() {
            if *t != names::TENANT_ALL {
                tenant_index.insert(Box::from(*t), slots.len());
                slots.push(slot(t));
            }
        }
        let job: Arc<str> = Arc::from(job);
        let bytes_received = families
            .bytes_received
            .get_or_create_owned(&JobLabels { job: job.clone() });
        let streamed_txns = families
            .streamed_txns
            .get_or_create_owned(&JobLabels { job: job.clone() });
        let socket_reads = families
            .socket_reads
            .get_or_create_owned(&JobLabels { job: job.clone() });
        let batched_reads = families
            .batched_reads
            .get_or_create_owned(&JobLabels { job: job.clone() });
        let metrics = JobMetrics {
            tenant_list: tenants.map(|t| t.into_iter().map(Box::from).collect()),
            tenant_index,
            slots,
            bytes_received,
            streamed_txns,
            socket_reads,
            batched_reads,
            confirmed_lsn: Slots::new(),
            slot_retained_wal: Slots::new(),
            slot_safe_wal: Slots::new(),
            tables_left_out: Slots::new(),
            sequences_out_of_step: Slots::new(),
            sinks: Slots::new(),
            states: Slots::new(),
            prediction_errors: Slots::new(),
            predictors_in_use: Slots::new(),
            access_events: Slots::new(),
            throttled: Slots::new(),
            encode_seconds: Slots::new(),
            codec_fast: Slots::new(),
            round_trip: Slots::new(),
            max_in_flight: Slots::new(),
            tables_in_error: Slots::new(),
            compaction_files: Slots::new(),
            compaction_bytes: Slots::new(),
            versions_held: Slots::new(),
            row_bytes: Slots::new(),
            row_walks: Slots::new(),
            backlog_rows: Slots::new(),
            backlog_bytes: Slots::new(),
            life: Mutex::new(Lifecycle {
                alive: true,
                removers: Vec::new(),
            }),
            families,
            job,
        };
        {
            let families = metrics.families.clone();
            let labels = JobLabels {
                job: metrics.job.clone(),
            };
            lock(&metrics.life).removers.push(Box::new(move || {
                families.bytes_received.remove(&labels);
                families.streamed_txns.remove(&labels);
                families.socket_reads.remove(&labels);
                families.batched_reads.remove(&labels);
            }));
        }
        // The fixed series exist from the start, so `rate()`/`increase()` see their first
        // increment and every state reads 0 until `set_state`.
        for slot in &metrics.slots {
            for op in names::OPS {
                metrics.rows_in(slot, op, 0);
            }
        }
        for state in names::STATES {
            metrics.states.with(
                state,
                || metrics.create(&metrics.families.job_state, metrics.state_labels(state)),
                |_| {},
            );
        }
        metrics
    }

    fn same_tenants(&self, tenants: Option<&BTreeSet<&str>>) -> bool {
        match (&self.tenant_list, tenants) {
            (None, None) => true,
            (Some(mine), Some(theirs)) => mine.iter().map(|t| &**t).eq(theirs.iter().copied()),
            _ => false,
        }
    }

    /// Removes every series of this job and makes the handle inert.
    fn retire(&self) {
        let mut life = lock(&self.life);
        life.alive = false;
        for remove in life.removers.drain(..) {
            remove();
        }
    }

    /// Gets or creates the series `labels` in `family` and records how to remove it;
    /// `None` once the job is retired.
    fn create<S, M, C>(&self, family: &Family<S, M, C>, labels: S) -> Option<M>
    where
        S: Clone + std::hash::Hash + Eq + Send + Sync + 'static,
        M: Clone + Send + Sync + 'static,
        C: MetricConstructor<M> + Clone + Send + Sync + 'static,
    {
        let mut life = lock(&self.life);
        if !life.alive {
            return None;
        }
        let metric = family.get_or_create_owned(&labels);
        let family = family.clone();
        life.removers.push(Box::new(move || {
            family.remove(&labels);
        }));
        Some(metric)
    }

    /// The slot of `tenant`: its own if the job lists it, `_all` otherwise.
    fn slot(&self, tenant: &str) -> &TenantSlot {
        let i = self.tenant_index.get(tenant).copied().unwrap_or(0);
        &self.slots[i]
    }

    fn state_labels(&self, state: &'static str) -> StateLabels {
        StateLabels {
            job: self.job.clone(),
            state,
        }
    }

    fn rows_in(&self, slot: &TenantSlot, op: &'static str, n: u64) {
        slot.rows.with(
            op,
            || {
                let labels = RowLabels {
                    job: self.job.clone(),
                    tenant: slot.tenant.clone(),
                    op,
                };
                self.create(&self.families.rows, labels)
            },
            |c| {
                c.inc_by(n);
            },
        );
    }

    fn with_sink(&self, sink: &'static str, f: impl FnOnce(&SinkSeries)) {
        self.sinks.with(
            sink,
            || {
                let labels = SinkLabels {
                    job: self.job.clone(),
                    sink,
                };
                Some(SinkSeries {
                    bytes_sent: self.create(&self.families.bytes_sent, labels.clone())?,
                    errors: self.create(&self.families.sink_errors, labels.clone())?,
                    apply_batch: self.create(&self.families.apply_batch, labels.clone())?,
                    stages: LatencyStage::ALL
                        .iter()
                        .map(|s| {
                            let labels = StageLabels {
                                job: labels.job.clone(),
                                sink,
                                stage: s.as_str(),
                            };
                            self.create(&self.families.stages, labels)
                        })
                        .collect::<Option<Vec<_>>>()?,
                })
            },
            f,
        );
    }

    /// Counts `n` rows of `tenant` with operation `op` (one of [`names::OPS`]). A tenant the
    /// job does not list — or [`names::TENANT_ALL`] for counts without a tenant breakdown,
    /// such as skipped replays — is counted under `_all`.
    pub fn rows(&self, tenant: &str, op: &'static str, n: u64) {
        self.rows_in(self.slot(tenant), op, n);
    }

    /// Counts `n` bytes read from the source's replication stream.
    pub fn bytes_received(&self, n: u64) {
        self.bytes_received.inc_by(n);
    }

    /// Counts `n` transactions the source streamed while they ran.
    pub fn streamed_transactions(&self, n: u64) {
        self.streamed_txns.inc_by(n);
    }

    /// Counts `reads` reads of the replication socket, `batched` of them after waiting for
    /// a batch.
    pub fn socket_reads(&self, reads: u64, batched: u64) {
        self.socket_reads.inc_by(reads);
        self.batched_reads.inc_by(batched);
    }

    /// Counts `n` bytes written to sink `sink` (its `Sink::kind()`).
    pub fn bytes_sent(&self, sink: &'static str, n: u64) {
        self.with_sink(sink, |s| {
            s.bytes_sent.inc_by(n);
        });
    }

    /// Counts one failed apply attempt or connection of sink `sink`.
    pub fn sink_error(&self, sink: &'static str) {
        self.with_sink(sink, |s| {
            s.errors.inc();
        });
    }

    /// Records how long one apply call of sink `sink` took. Negative values count as 0;
    /// NaN and infinities are ignored.
    pub fn apply_batch(&self, sink: &'static str, seconds: f64) {
        if !seconds.is_finite() {
            return;
        }
        self.with_sink(sink, |s| s.apply_batch.observe(seconds.max(0.0)));
    }

    /// Records how long one source transaction spent in `stage` on its way to sink
    /// `sink`. Negative values count as 0; NaN and infinities are ignored.
    pub fn transaction_stage(&self, sink: &'static str, stage: LatencyStage, seconds: f64) {
        if !seconds.is_finite() {
            return;
        }
        self.with_sink(sink, |s| s.stages[stage.index()].observe(seconds.max(0.0)));
    }

    /// Sets the lag of `tenant` (`None`, or a tenant the job does not list: the job's lag,
    /// under `_all`). The last call wins, so for a job over all tenants report only the
    /// job's lag (`None`), not one value per tenant. Negative seconds count as 0; a NaN or
    /// infinite `seconds` leaves the lag unchanged.
    pub fn set_lag(&self, tenant: Option<&str>, seconds: f64, bytes: u64) {
        if !seconds.is_finite() {
            return;
        }
        let slot = tenant.map_or(&self.slots[0], |t| self.slot(t));
        slot.lag.with(
            (),
            || {
                let labels = TenantLabels {
                    job: self.job.clone(),
                    tenant: slot.tenant.clone(),
                };
                Some((
                    self.create(&self.families.lag_seconds, labels.clone())?,
                    self.create(&self.families.lag_bytes, labels)?,
                ))
            },
            |(s, b)| {
                s.set(seconds.max(0.0));
                b.set(bytes);
            },
        );
    }

    /// Sets the position confirmed to the source (`X/Y` as `X << 32 | Y`).
    pub fn set_confirmed_lsn(&self, lsn: u64) {
        self.set_job_gauge(&self.confirmed_lsn, &self.families.confirmed_lsn, lsn);
    }

    /// Sets the WAL bytes the source keeps for the job's slot, and (when the source has a
    /// `max_slot_wal_keep_size`) those it may still write before it invalidates the slot.
    pub fn set_slot_wal(&self, retained: u64, safe: Option<u64>) {
        let families = &self.families;
        self.set_job_gauge(
            &self.slot_retained_wal,
            &families.slot_retained_wal,
            retained,
        );
        if let Some(safe) = safe {
            self.set_job_gauge(&self.slot_safe_wal, &families.slot_safe_wal, safe);
        }
    }

    /// Sets the tables the job's patterns leave out and the sequences it cannot keep in
    /// step on its targets.
    pub fn set_cutover_gaps(&self, tables_left_out: u64, sequences_out_of_step: u64) {
        let families = &self.families;
        self.set_job_gauge(
            &self.tables_left_out,
            &families.tables_left_out,
            tables_left_out,
        );
        self.set_job_gauge(
            &self.sequences_out_of_step,
            &families.sequences_out_of_step,
            sequences_out_of_step,
        );
    }

    /// Sets a gauge whose only label is the job.
    fn set_job_gauge(
        &self,
        slots: &Slots<(), GaugeU64>,
        family: &Family<JobLabels, GaugeU64>,
        value: u64,
    ) {
        slots.with(
            (),
            || {
                let labels = JobLabels {
                    job: self.job.clone(),
                };
                self.create(family, labels)
            },
            |g| {
                g.set(value);
            },
        );
    }

    /// Sets the versions the job's history books hold in memory.
    pub fn set_history_versions_held(&self, versions: u64) {
        self.set_job_gauge(&self.versions_held, &self.families.versions_held, versions);
    }

    /// Sets the rows and estimated bytes handed to the job's sinks and not yet applied.
    pub fn set_sink_backlog(&self, rows: u64, bytes: u64) {
        let families = &self.families;
        self.set_job_gauge(&self.backlog_rows, &families.backlog_rows, rows);
        self.set_job_gauge(&self.backlog_bytes, &families.backlog_bytes, bytes);
    }

    /// Sets the bytes of the history books' rows in memory and in their spill file.
    pub fn set_history_row_bytes(&self, memory: u64, disk: u64) {
        for (place, bytes) in [(names::PLACE_MEMORY, memory), (names::PLACE_DISK, disk)] {
            self.row_bytes.with(
                place,
                || {
                    let labels = PlaceLabels {
                        job: self.job.clone(),
                        place,
                    };
                    self.create(&self.families.row_bytes, labels)
                },
                |g| {
                    g.set(bytes);
                },
            );
        }
    }

    /// Makes `state` (one of [`names::STATES`]) the job's current state: its series reads 1,
    /// every other state's 0. (Another `&'static str` gets a series of its own, too.)
    pub fn set_state(&self, state: &'static str) {
        // Make sure the series exists before switching, then switch under the write lock so
        // concurrent calls cannot leave two states at 1.
        self.states.with(
            state,
            || self.create(&self.families.job_state, self.state_labels(state)),
            |_| {},
        );
        let states = self
            .states
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (s, g) in states.iter() {
            if *s != state {
                g.set(0);
            }
        }
        for (s, g) in states.iter() {
            if *s == state {
                g.set(1);
            }
        }
    }
}

impl JobMetrics {
    fn predictor_labels(&self, predictor: &'static str) -> PredictorLabels {
        PredictorLabels {
            job: self.job.clone(),
            predictor,
        }
    }

    /// Sets the predicted hotness per tenant: listed tenants get their own series, the
    /// rest (and every tenant of an all-tenants job) are summed under `_all`.
    pub fn set_hotness<'a>(&self, tenants: impl IntoIterator<Item = (&'a str, f64)>) {
        let mut values = vec![0.0f64; self.slots.len()];
        for (tenant, hot) in tenants {
            if hot.is_finite() {
                values[self.tenant_index.get(tenant).copied().unwrap_or(0)] += hot.max(0.0);
            }
        }
        for (slot, value) in self.slots.iter().zip(values) {
            slot.hotness.with(
                (),
                || {
                    let labels = TenantLabels {
                        job: self.job.clone(),
                        tenant: slot.tenant.clone(),
                    };
                    self.create(&self.families.hotness, labels)
                },
                |g| {
                    g.set(value);
                },
            );
        }
    }

    /// Sets a predictor's rolling error (`model`, `heuristic` or `last_window`); NaN and
    /// infinities are ignored.
    pub fn set_prediction_error(&self, predictor: &'static str, error: f64) {
        if !error.is_finite() {
            return;
        }
        self.prediction_errors.with(
            predictor,
            || {
                self.create(
                    &self.families.prediction_error,
                    self.predictor_labels(predictor),
                )
            },
            |g| {
                g.set(error.max(0.0));
            },
        );
    }

    /// Makes `predictor` (`model`, `heuristic` or `round_robin`) the one in use.
    pub fn set_predictor_in_use(&self, predictor: &'static str) {
        for p in ["model", "heuristic", "round_robin", predictor] {
            self.predictors_in_use.with(
                p,
                || self.create(&self.families.predictor_in_use, self.predictor_labels(p)),
                |g| {
                    g.set(i64::from(p == predictor));
                },
            );
        }
    }

    /// Counts `n` walks of the history books' rows.
    pub fn history_row_walks(&self, n: u64) {
        self.row_walks.with(
            (),
            || {
                let labels = JobLabels {
                    job: self.job.clone(),
                };
                self.create(&self.families.row_walks, labels)
            },
            |c| {
                c.inc_by(n);
            },
        );
    }

    /// Counts `n` access events.
    pub fn access_events(&self, n: u64) {
        self.access_events.with(
            (),
            || {
                let labels = JobLabels {
                    job: self.job.clone(),
                };
                self.create(&self.families.access_events, labels)
            },
            |c| {
                c.inc_by(n);
            },
        );
    }

    /// Counts `files` of `bytes` a cold-tier compaction merged away (`side` =
    /// [`names::SIDE_MERGED`]) or wrote ([`names::SIDE_WRITTEN`]).
    pub fn cold_compaction(&self, side: &'static str, files: u64, bytes: u64) {
        let labels = || SideLabels {
            job: self.job.clone(),
            side,
        };
        self.compaction_files.with(
            side,
            || self.create(&self.families.compaction_files, labels()),
            |c| {
                c.inc_by(files);
            },
        );
        self.compaction_bytes.with(
            side,
            || self.create(&self.families.compaction_bytes, labels()),
            |c| {
                c.inc_by(bytes);
            },
        );
    }
}

#[cfg(test)]
mod tests;
