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
//! | `helios_bytes_sent_total` | counter | `job`, `sink` |
//! | `helios_sink_errors_total` | counter | `job`, `sink` |
//! | `helios_apply_batch_seconds` | histogram | `job`, `sink` |
//! | `helios_source_confirmed_lsn` | gauge | `job` |
//! | `helios_job_state` | gauge | `job`, `state` |
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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Metric names, label names and the fixed label values, in one place.
pub mod names {
    /// Age of the oldest change not yet durable at the sinks (0 when caught up).
    pub const REPLICATION_LAG_SECONDS: &str = "helios_replication_lag_seconds";
    /// WAL bytes between the source's current position and the confirmed one.
    pub const REPLICATION_LAG_BYTES: &str = "helios_replication_lag_bytes";
    /// Rows (changes) handled by the sinks, by tenant and [operation](OPS).
    pub const ROWS_REPLICATED_TOTAL: &str = "helios_rows_replicated_total";
    /// Bytes of replication stream read from the source.
    pub const BYTES_RECEIVED_TOTAL: &str = "helios_bytes_received_total";
    /// Bytes written to each sink.
    pub const BYTES_SENT_TOTAL: &str = "helios_bytes_sent_total";
    /// Failed apply attempts and failed (re)connections per sink.
    pub const SINK_ERRORS_TOTAL: &str = "helios_sink_errors_total";
    /// Duration of one apply call (one group of batches) per sink.
    pub const APPLY_BATCH_SECONDS: &str = "helios_apply_batch_seconds";
    /// Position confirmed to the source, as a number.
    pub const SOURCE_CONFIRMED_LSN: &str = "helios_source_confirmed_lsn";
    /// 1 for the job's current state, 0 for the others.
    pub const JOB_STATE: &str = "helios_job_state";

    /// Every metric name above.
    pub const ALL_METRICS: [&str; 9] = [
        REPLICATION_LAG_SECONDS,
        REPLICATION_LAG_BYTES,
        ROWS_REPLICATED_TOTAL,
        BYTES_RECEIVED_TOTAL,
        BYTES_SENT_TOTAL,
        SINK_ERRORS_TOTAL,
        APPLY_BATCH_SECONDS,
        SOURCE_CONFIRMED_LSN,
        JOB_STATE,
    ];

    /// Label: the job's name.
    pub const LABEL_JOB: &str = "job";
    /// Label: a tenant id the job names, or [`TENANT_ALL`].
    pub const LABEL_TENANT: &str = "tenant";
    /// Label: one of [`OPS`].
    pub const LABEL_OP: &str = "op";
    /// Label: the sink's kind (`Sink::kind()`).
    pub const LABEL_SINK: &str = "sink";
    /// Label: one of [`STATES`].
    pub const LABEL_STATE: &str = "state";

    /// Tenant label value for jobs over all tenants and for tenants outside the job's list.
    pub const TENANT_ALL: &str = "_all";

    /// Rows inserted or updated.
    pub const OP_UPSERT: &str = "upsert";
    /// Rows deleted (including per-tenant truncates).
    pub const OP_DELETE: &str = "delete";
    /// Changes skipped because the sink's checkpoint already covered them (replays).
    pub const OP_SKIPPED_REPLAY: &str = "skipped_replay";
    /// Changes kept in the dead-letter table because their table is in error.
    pub const OP_DEAD_LETTERED: &str = "dead_lettered";
    /// The `op` values the sinks report; each gets a series per tenant at registration.
    pub const OPS: [&str; 4] = [OP_UPSERT, OP_DELETE, OP_SKIPPED_REPLAY, OP_DEAD_LETTERED];

    /// Preparing the source and taking the initial snapshot.
    pub const STATE_SNAPSHOTTING: &str = "snapshotting";
    /// Replicating changes.
    pub const STATE_STREAMING: &str = "streaming";
    /// Stopped reading on request.
    pub const STATE_PAUSED: &str = "paused";
    /// Stopped by an error that needs a person.
    pub const STATE_FAILED: &str = "failed";
    /// Being removed.
    pub const STATE_STOPPING: &str = "stopping";
    /// The job states (`JobState` in snake_case); each gets a series at registration.
    pub const STATES: [&str; 5] = [
        STATE_SNAPSHOTTING,
        STATE_STREAMING,
        STATE_PAUSED,
        STATE_FAILED,
        STATE_STOPPING,
    ];
}

/// `Content-Type` of [`MetricsRegistry::encode`]'s output (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of `helios_apply_batch_seconds`: 1 ms doubling to 32.768 s (16 buckets,
/// plus `+Inf`).
pub fn apply_batch_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

type GaugeF64 = Gauge<f64, AtomicU64>;
type GaugeU64 = Gauge<u64, AtomicU64>;
type HistogramFamily = Family<SinkLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    job: Arc<str>,
    tenant: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    job: Arc<str>,
    tenant: Arc<str>,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    job: Arc<str>,
    sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    job: Arc<str>,
    state: &'static str,
}

fn new_apply_histogram() -> Histogram {
    Histogram::new(apply_batch_buckets())
}

/// The metric families; clones share their series.
#[derive(Clone, Debug)]
struct Families {
    lag_seconds: Family<TenantLabels, GaugeF64>,
    lag_bytes: Family<TenantLabels, GaugeU64>,
    rows: Family<RowLabels, Counter>,
    bytes_received: Family<JobLabels, Counter>,
    bytes_sent: Family<SinkLabels, Counter>,
    sink_errors: Family<SinkLabels, Counter>,
    apply_batch: HistogramFamily,
    confirmed_lsn: Family<JobLabels, GaugeU64>,
    job_state: Family<StateLabels, Gauge>,
}

/// `name` without `suffix`: `prometheus-client` appends `_total` to counters and the unit
/// to metrics registered with one.
fn stem<'a>(name: &'a str, suffix: &str) -> &'a str {
    name.strip_suffix(suffix)
        .unwrap_or_else(|| panic!("metric name {name} must end in {suffix}"))
}

impl Families {
    fn new() -> Self {
        Families {
            lag_seconds: Family::default(),
            lag_bytes: Family::default(),
            rows: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            sink_errors: Family::default(),
            apply_batch: Family::new_with_constructor(new_apply_histogram),
            confirmed_lsn: Family::default(),
            job_state: Family::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        use names::*;
        r.register_with_unit(
            stem(REPLICATION_LAG_SECONDS, "_seconds"),
            "Age of the oldest change not yet durable at the sinks (0 when caught up)",
            Unit::Seconds,
            self.lag_seconds.clone(),
        );
        r.register_with_unit(
            stem(REPLICATION_LAG_BYTES, "_bytes"),
            "WAL bytes between the source's current position and the confirmed one",
            Unit::Bytes,
            self.lag_bytes.clone(),
        );
        r.register(
            stem(ROWS_REPLICATED_TOTAL, "_total"),
            "Rows handled by the sinks (op: upsert, delete, skipped_replay, dead_lettered)",
            self.rows.clone(),
        );
        r.register(
            stem(BYTES_RECEIVED_TOTAL, "_total"),
            "Bytes of replication stream read from the source",
            self.bytes_received.clone(),
        );
        r.register(
            stem(BYTES_SENT_TOTAL, "_total"),
            "Bytes written to the sink",
            self.bytes_sent.clone(),
        );
        r.register(
            stem(SINK_ERRORS_TOTAL, "_total"),
            "Failed apply attempts and failed connections of the sink",
            self.sink_errors.clone(),
        );
        r.register_with_unit(
            stem(APPLY_BATCH_SECONDS, "_seconds"),
            "Duration of one apply call (a group of source transactions) at the sink",
            Unit::Seconds,
            self.apply_batch.clone(),
        );
        r.register(
            SOURCE_CONFIRMED_LSN,
            "Position confirmed to the source (the LSN as a number)",
            self.confirmed_lsn.clone(),
        );
        r.register(
            JOB_STATE,
            "1 for the job's current state, 0 for the others",
            self.job_state.clone(),
        );
    }
}

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
}

/// A sink's series.
#[derive(Debug)]
struct SinkSeries {
    bytes_sent: Counter,
    errors: Counter,
    apply_batch: Histogram,
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
    confirmed_lsn: Slots<(), GaugeU64>,
    sinks: Slots<&'static str, SinkSeries>,
    states: Slots<&'static str, Gauge>,
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
        let metrics = JobMetrics {
            tenant_list: tenants.map(|t| t.into_iter().map(Box::from).collect()),
            tenant_index,
            slots,
            bytes_received,
            confirmed_lsn: Slots::new(),
            sinks: Slots::new(),
            states: Slots::new(),
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
                    apply_batch: self.create(&self.families.apply_batch, labels)?,
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
        self.confirmed_lsn.with(
            (),
            || {
                let labels = JobLabels {
                    job: self.job.clone(),
                };
                self.create(&self.families.confirmed_lsn, labels)
            },
            |g| {
                g.set(lsn);
            },
        );
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

#[cfg(test)]
mod tests {
    use super::names::*;
    use super::*;
    use std::collections::BTreeMap;

    // ---------------------------------------------------------------------------------
    // A small validating reader of the OpenMetrics text format (no parser crate is
    // vendored). It checks what Prometheus relies on: HELP/TYPE before a family's samples,
    // families not interleaved, sample names that belong to their family's type, label
    // names and escaping, float values, unique series, cumulative histogram buckets and
    // the final `# EOF`.

    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    #[derive(Debug, Default)]
    struct Exposition {
        /// family name → type
        types: BTreeMap<String, String>,
        samples: Vec<Sample>,
    }

    impl Exposition {
        fn find<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
            self.samples.iter().filter(move |s| s.name == name)
        }

        /// The value of the one sample `name` whose labels include `labels`.
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let hits: Vec<_> = self
                .find(name)
                .filter(|s| {
                    labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .collect();
            assert!(hits.len() <= 1, "{name} {labels:?} matches {hits:?}");
            hits.first().map(|s| s.value)
        }

        /// Distinct values of label `label` among samples of `name` matching `labels`.
        fn label_values(&self, name: &str, label: &str, labels: &[(&str, &str)]) -> Vec<String> {
            let set: BTreeSet<String> = self
                .find(name)
                .filter(|s| {
                    labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .filter_map(|s| s.labels.get(label).cloned())
                .collect();
            set.into_iter().collect()
        }
    }

    fn is_metric_name(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }

    fn is_label_name(s: &str) -> bool {
        let mut c = s.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => {
                // Reject Rust-only spellings such as "inf" / "infinity".
                if s.chars()
                    .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
                {
                    return Err(format!("bad value {s:?}"));
                }
                s.parse::<f64>()
                    .map_err(|e| format!("bad value {s:?}: {e}"))
            }
        }
    }

    /// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
    fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let mut rest = s.strip_prefix('{').ok_or("expected {")?;
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        loop {
            let eq = rest.find('=').ok_or("label without =")?;
            let name = &rest[..eq];
            if !is_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, '\n')) => return Err("raw newline in label value".into()),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.insert(name.to_owned(), value).is_some() {
                return Err(format!("duplicate label {name}"));
            }
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix('}') {
                return Ok((labels, r));
            }
            rest = rest.strip_prefix(',').ok_or("expected , or }")?;
        }
    }

    fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
        match kind {
            "counter" => &["_total", "_created"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[],
        }
    }

    fn parse_exposition(text: &str) -> Result<Exposition, String> {
        let mut out = Exposition::default();
        let mut helps = BTreeSet::new();
        let mut finished = BTreeSet::new(); // families whose block has ended
        let mut current: Option<String> = None;
        let mut series = BTreeSet::new();
        let mut eof = false;
        for (n, line) in text.split_terminator('\n').enumerate() {
            let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if eof {
                return Err(err("content after # EOF".into()));
            }
            if line == "# EOF" {
                eof = true;
                continue;
            }
            if let Some(meta) = line.strip_prefix("# ") {
                let mut parts = meta.splitn(3, ' ');
                let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let arg = parts.next().unwrap_or("");
                if !is_metric_name(name) {
                    return Err(err(format!("bad family name {name:?}")));
                }
                if current.as_deref() != Some(name) {
                    if let Some(prev) = current.take() {
                        finished.insert(prev);
                    }
                    if finished.contains(name) {
                        return Err(err(format!("family {name} interleaved")));
                    }
                    current = Some(name.to_owned());
                }
                match kw {
                    "HELP" => {
                        if !helps.insert(name.to_owned()) {
                            return Err(err("second HELP".into()));
                        }
                    }
                    "TYPE" => {
                        if allowed_suffixes(arg).is_empty() {
                            return Err(err(format!("unknown type {arg:?}")));
                        }
                        if out.types.insert(name.to_owned(), arg.to_owned()).is_some() {
                            return Err(err("second TYPE".into()));
                        }
                    }
                    "UNIT" => {
                        if !name.ends_with(&format!("_{arg}")) {
                            return Err(err("family name does not end in its unit".into()));
                        }
                    }
                    _ => return Err(err(format!("unknown descriptor {kw:?}"))),
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                return Err(err("unexpected comment or empty line".into()));
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(err)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| err("no space before value".into()))?;
            // No exemplars or timestamps are written by this module.
            let value = parse_value(value).map_err(err)?;
            let family = current
                .as_deref()
                .ok_or_else(|| err("sample before TYPE".into()))?;
            let kind = out
                .types
                .get(family)
                .ok_or_else(|| err(format!("family {family} has no TYPE")))?;
            if !helps.contains(family) {
                return Err(err(format!("family {family} has no HELP")));
            }
            let suffix = name
                .strip_prefix(family)
                .ok_or_else(|| err(format!("sample outside family {family}")))?;
            if !allowed_suffixes(kind).contains(&suffix) {
                return Err(err(format!("suffix {suffix:?} not allowed for a {kind}")));
            }
            if (suffix == "_bucket") != labels.contains_key("le") {
                return Err(err("le label on a non-bucket or missing on a bucket".into()));
            }
            if !series.insert((name.to_owned(), labels.clone())) {
                return Err(err("duplicate series".into()));
            }
            out.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        if !eof {
            return Err("no # EOF".into());
        }
        check_histograms(&out)?;
        Ok(out)
    }

    /// Buckets are cumulative, end in `+Inf`, and `+Inf` equals `_count`.
    fn check_histograms(e: &Exposition) -> Result<(), String> {
        for (family, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
            let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> =
                BTreeMap::new();
            for s in e.find(&format!("{family}_bucket")) {
                let mut key = s.labels.clone();
                let le = parse_value(&key.remove("le").unwrap_or_default())?;
                by_series.entry(key).or_default().push((le, s.value));
            }
            for (key, buckets) in by_series {
                let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
                if !les.windows(2).all(|w| w[0] < w[1]) || les.last() != Some(&f64::INFINITY) {
                    return Err(format!("{family}{key:?}: bad bucket bounds {les:?}"));
                }
                if !buckets.windows(2).all(|w| w[0].1 <= w[1].1) {
                    return Err(format!("{family}{key:?}: buckets not cumulative"));
                }
                let count = e
                    .samples
                    .iter()
                    .find(|s| s.name == format!("{family}_count") && s.labels == key)
                    .ok_or(format!("{family}{key:?}: no _count"))?;
                if buckets.last().map(|b| b.1) != Some(count.value) {
                    return Err(format!("{family}{key:?}: +Inf bucket != _count"));
                }
            }
        }
        Ok(())
    }

    fn parse(reg: &MetricsRegistry) -> Exposition {
        let text = reg.encode();
        parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Records something in every metric of `job`.
    fn exercise(m: &JobMetrics) {
        m.rows("3", OP_UPSERT, 5);
        m.bytes_received(100);
        m.bytes_sent("postgres", 80);
        m.sink_error("postgres");
        m.apply_batch("postgres", 0.02);
        m.set_lag(None, 1.5, 4096);
        m.set_lag(Some("3"), 0.5, 10);
        m.set_confirmed_lsn(0x1_0000_0000 + 42);
        m.set_state(STATE_STREAMING);
    }

    // ---------------------------------------------------------------------------------

    #[test]
    fn the_reader_rejects_malformed_text() {
        let head = "# HELP a x.\n# TYPE a gauge\n";
        for (bad, why) in [
            ("b 1\n# EOF\n", "sample of a family without HELP/TYPE"),
            ("a{b=\"1} 1\n# EOF\n", "unterminated value"),
            ("a{b=\"\\q\"} 1\n# EOF\n", "bad escape"),
            ("a{1b=\"x\"} 1\n# EOF\n", "bad label name"),
            ("a one\n# EOF\n", "bad value"),
            ("a inf\n# EOF\n", "Rust spelling of +Inf"),
            ("a_total 1\n# EOF\n", "counter suffix on a gauge"),
            ("a 1\na 2\n# EOF\n", "duplicate series"),
            ("a 1\n", "no EOF"),
            ("# UNIT a seconds\na 1\n# EOF\n", "unit not a suffix"),
        ] {
            let text = format!("{head}{bad}");
            assert!(
                parse_exposition(&text).is_err(),
                "accepted ({why}): {text:?}"
            );
        }
        let good = format!("{head}a{{b=\"q\\\"\\\\\\n\"}} +Inf\n# EOF\n");
        let e = parse_exposition(&good).unwrap();
        assert_eq!(e.samples[0].labels["b"], "q\"\\\n");
        assert_eq!(e.samples[0].value, f64::INFINITY);
    }

    #[test]
    fn encode_is_valid_openmetrics_and_names_every_metric() {
        let reg = MetricsRegistry::new();
        assert_eq!(reg.encode(), "# EOF\n", "no series, no families");
        let a = reg.register_job("orders", Some(&strings(&["3", "7"])));
        let b = reg.register_job("all-tenants", None);
        exercise(&a);
        exercise(&b);
        let text = reg.encode();
        assert!(text.ends_with("# EOF\n"));
        let e = parse(&reg);
        for name in ALL_METRICS {
            assert!(text.contains(name), "{name} missing from\n{text}");
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(e.types.contains_key(family), "no TYPE for {name}");
        }
        assert_eq!(e.types[stem(ROWS_REPLICATED_TOTAL, "_total")], "counter");
        assert_eq!(e.types[APPLY_BATCH_SECONDS], "histogram");
        assert_eq!(e.types[JOB_STATE], "gauge");
        assert!(text.contains("# UNIT helios_replication_lag_seconds seconds\n"));
        // Every sample carries the job label.
        assert!(e.samples.iter().all(|s| s.labels.contains_key(LABEL_JOB)));
        assert_eq!(
            e.value(SOURCE_CONFIRMED_LSN, &[(LABEL_JOB, "orders")]),
            Some(4_294_967_338.0)
        );
        assert_eq!(
            e.value(
                REPLICATION_LAG_BYTES,
                &[(LABEL_JOB, "orders"), (LABEL_TENANT, TENANT_ALL)]
            ),
            Some(4096.0)
        );
        assert_eq!(
            e.value(
                REPLICATION_LAG_SECONDS,
                &[(LABEL_JOB, "orders"), (LABEL_TENANT, "3")]
            ),
            Some(0.5)
        );
        // Buckets: 1 ms doubling to 32.768 s, plus +Inf.
        let les = e.label_values(
            &format!("{APPLY_BATCH_SECONDS}_bucket"),
            "le",
            &[(LABEL_JOB, "orders")],
        );
        assert_eq!(les.len(), 17);
        assert!(les.contains(&"0.001".to_owned()) && les.contains(&"32.768".to_owned()));
        assert!(les.contains(&"+Inf".to_owned()));
    }

    #[test]
    fn label_values_are_escaped() {
        let reg = MetricsRegistry::new();
        let job = "we\"ird\\job\nname";
        let tenant = "t \"1\"\\";
        let m = reg.register_job(job, Some(&strings(&[tenant])));
        m.rows(tenant, OP_UPSERT, 2);
        let text = reg.encode();
        assert!(text.contains(r#"job="we\"ird\\job\nname""#), "{text}");
        let e = parse(&reg);
        assert_eq!(
            e.value(
                ROWS_REPLICATED_TOTAL,
                &[
                    (LABEL_JOB, job),
                    (LABEL_TENANT, tenant),
                    (LABEL_OP, OP_UPSERT)
                ]
            ),
            Some(2.0)
        );
    }

    #[test]
    fn counters_and_the_histogram_move() {
        let reg = MetricsRegistry::new();
        let m = reg.register_job("j", Some(&strings(&["3"])));
        m.rows("3", OP_UPSERT, 5);
        m.rows("3", OP_UPSERT, 7);
        m.rows("3", OP_DELETE, 1);
        m.rows(TENANT_ALL, OP_SKIPPED_REPLAY, 4);
        m.bytes_received(10);
        m.bytes_received(15);
        m.bytes_sent("postgres", 3);
        m.bytes_sent("postgres", 4);
        m.sink_error("postgres");
        m.sink_error("postgres");
        m.apply_batch("postgres", 0.0015);
        m.apply_batch("postgres", 0.5);
        m.apply_batch("postgres", 100.0);
        let e = parse(&reg);
        let rows = |tenant, op| {
            e.value(
                ROWS_REPLICATED_TOTAL,
                &[(LABEL_JOB, "j"), (LABEL_TENANT, tenant), (LABEL_OP, op)],
            )
        };
        assert_eq!(rows("3", OP_UPSERT), Some(12.0));
        assert_eq!(rows("3", OP_DELETE), Some(1.0));
        assert_eq!(
            rows("3", OP_SKIPPED_REPLAY),
            Some(0.0),
            "created at registration"
        );
        assert_eq!(rows(TENANT_ALL, OP_SKIPPED_REPLAY), Some(4.0));
        assert_eq!(rows(TENANT_ALL, OP_DEAD_LETTERED), Some(0.0));
        assert_eq!(e.value(BYTES_RECEIVED_TOTAL, &[]), Some(25.0));
        let sink = [(LABEL_JOB, "j"), (LABEL_SINK, "postgres")];
        assert_eq!(e.value(BYTES_SENT_TOTAL, &sink), Some(7.0));
        assert_eq!(e.value(SINK_ERRORS_TOTAL, &sink), Some(2.0));
        let h = |suffix: &str| e.value(&format!("{APPLY_BATCH_SECONDS}{suffix}"), &sink);
        assert_eq!(h("_count"), Some(3.0));
        assert!((h("_sum").unwrap() - 100.5015).abs() < 1e-9);
        let bucket = |le: &str| {
            e.value(
                &format!("{APPLY_BATCH_SECONDS}_bucket"),
                &[sink[0], sink[1], ("le", le)],
            )
        };
        assert_eq!(bucket("0.001"), Some(0.0));
        assert_eq!(bucket("0.002"), Some(1.0));
        assert_eq!(bucket("0.512"), Some(2.0));
        assert_eq!(bucket("32.768"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(3.0));
    }

    #[test]
    fn gauges_ignore_non_finite_and_clamp_negative_values() {
        let reg = MetricsRegistry::new();
        let m = reg.register_job("j", None);
        m.set_lag(None, 2.0, 7);
        m.set_lag(None, f64::NAN, 8);
        m.set_lag(None, f64::INFINITY, 9);
        m.apply_batch("postgres", f64::NAN);
        m.apply_batch("postgres", -1.0);
        let e = parse(&reg);
        assert_eq!(e.value(REPLICATION_LAG_SECONDS, &[]), Some(2.0));
        assert_eq!(e.value(REPLICATION_LAG_BYTES, &[]), Some(7.0));
        assert_eq!(
            e.value(&format!("{APPLY_BATCH_SECONDS}_count"), &[]),
            Some(1.0)
        );
        assert_eq!(
            e.value(&format!("{APPLY_BATCH_SECONDS}_sum"), &[]),
            Some(0.0)
        );
        m.set_lag(None, -3.0, 0);
        assert_eq!(parse(&reg).value(REPLICATION_LAG_SECONDS, &[]), Some(0.0));
    }

    #[test]
    fn tenant_label_is_bounded() {
        let reg = MetricsRegistry::new();
        let all = reg.register_job("all", None);
        let listed = reg.register_job("listed", Some(&strings(&["3", "7"])));
        let before = parse(&reg).samples.len();
        for i in 0..1000 {
            let tenant = format!("unknown-{i}");
            all.rows(&tenant, OP_UPSERT, 1);
            all.set_lag(Some(&tenant), 1.0, 1);
            listed.rows(&tenant, OP_DELETE, 1);
            listed.set_lag(Some(&tenant), 1.0, 1);
        }
        listed.rows("3", OP_UPSERT, 1);
        listed.rows("7", OP_UPSERT, 1);
        listed.set_lag(Some("3"), 1.0, 1);
        listed.set_lag(Some("7"), 1.0, 1);
        let e = parse(&reg);
        // Only the lag series (one for `all`, three for `listed`) are new.
        assert_eq!(e.samples.len(), before + 2 + 2 * 3);
        for name in [
            ROWS_REPLICATED_TOTAL,
            REPLICATION_LAG_SECONDS,
            REPLICATION_LAG_BYTES,
        ] {
            assert_eq!(
                e.label_values(name, LABEL_TENANT, &[(LABEL_JOB, "all")]),
                [TENANT_ALL]
            );
            assert_eq!(
                e.label_values(name, LABEL_TENANT, &[(LABEL_JOB, "listed")]),
                ["3", "7", TENANT_ALL]
            );
        }
        let tenants: BTreeSet<_> = e
            .samples
            .iter()
            .filter_map(|s| s.labels.get(LABEL_TENANT))
            .collect();
        assert_eq!(tenants.len(), 3, "{tenants:?}");
        assert_eq!(
            e.value(
                ROWS_REPLICATED_TOTAL,
                &[(LABEL_JOB, "all"), (LABEL_OP, OP_UPSERT)]
            ),
            Some(1000.0)
        );
        assert_eq!(
            e.value(
                ROWS_REPLICATED_TOTAL,
                &[
                    (LABEL_JOB, "listed"),
                    (LABEL_TENANT, TENANT_ALL),
                    (LABEL_OP, OP_DELETE)
                ]
            ),
            Some(1000.0)
        );
        // Series per job: ops × (listed tenants + _all), the states, bytes received, lag.
        let listed_series = e
            .samples
            .iter()
            .filter(|s| s.labels[LABEL_JOB] == "listed")
            .count();
        assert_eq!(listed_series, OPS.len() * 3 + STATES.len() + 1 + 2 * 3);
    }

    #[test]
    fn set_state_switches_the_one() {
        let reg = MetricsRegistry::new();
        let m = reg.register_job("j", None);
        let current = |e: &Exposition| -> Vec<String> {
            e.find(JOB_STATE)
                .filter(|s| s.value == 1.0)
                .map(|s| s.labels[LABEL_STATE].clone())
                .collect()
        };
        let e = parse(&reg);
        assert_eq!(
            e.label_values(JOB_STATE, LABEL_STATE, &[]).len(),
            STATES.len()
        );
        assert!(current(&e).is_empty(), "no state before set_state");
        for state in [
            STATE_SNAPSHOTTING,
            STATE_STREAMING,
            STATE_PAUSED,
            STATE_STREAMING,
        ] {
            m.set_state(state);
            let e = parse(&reg);
            assert_eq!(current(&e), [state]);
            assert_eq!(e.find(JOB_STATE).filter(|s| s.value == 0.0).count(), 4);
        }
        m.set_state(STATE_FAILED);
        m.set_state(STATE_FAILED);
        assert_eq!(current(&parse(&reg)), [STATE_FAILED]);
    }

    #[test]
    fn unregister_removes_only_that_job_and_the_old_handle_is_inert() {
        let reg = MetricsRegistry::new();
        let gone = reg.register_job("gone", Some(&strings(&["3"])));
        let kept = reg.register_job("kept", Some(&strings(&["3"])));
        exercise(&gone);
        exercise(&kept);
        let kept_before: Vec<Sample> = parse(&reg)
            .samples
            .into_iter()
            .filter(|s| s.labels[LABEL_JOB] == "kept")
            .collect();
        reg.unregister_job("gone");
        reg.unregister_job("never-registered");
        let e = parse(&reg);
        assert!(e.samples.iter().all(|s| s.labels[LABEL_JOB] == "kept"));
        assert_eq!(e.samples, kept_before);
        // A task still holding the handle records nowhere and creates nothing.
        exercise(&gone);
        gone.rows("3", OP_DELETE, 1);
        gone.sink_error("nats");
        assert_eq!(parse(&reg).samples, kept_before);
        // Registering the name again starts from zero.
        let again = reg.register_job("gone", Some(&strings(&["3"])));
        again.bytes_received(1);
        let e = parse(&reg);
        assert_eq!(
            e.value(BYTES_RECEIVED_TOTAL, &[(LABEL_JOB, "gone")]),
            Some(1.0)
        );
        reg.unregister_job("kept");
        reg.unregister_job("gone");
        assert_eq!(reg.encode(), "# EOF\n");
    }

    #[test]
    fn register_is_idempotent_per_job_name() {
        let reg = MetricsRegistry::new();
        let a = reg.register_job("j", Some(&strings(&["3", "7"])));
        let b = reg.register_job("j", Some(&strings(&["7", "3", "3"])));
        assert!(Arc::ptr_eq(&a, &b));
        a.rows("3", OP_UPSERT, 1);
        b.rows("3", OP_UPSERT, 1);
        let row3 = [(LABEL_JOB, "j"), (LABEL_TENANT, "3"), (LABEL_OP, OP_UPSERT)];
        assert_eq!(parse(&reg).value(ROWS_REPLICATED_TOTAL, &row3), Some(2.0));
        let n = reg.register_job("n", None);
        assert!(Arc::ptr_eq(&n, &reg.register_job("n", None)));
        // A different tenant list replaces the job's series.
        let c = reg.register_job("j", Some(&strings(&["3"])));
        assert!(!Arc::ptr_eq(&a, &c));
        a.rows("3", OP_UPSERT, 100);
        let e = parse(&reg);
        assert_eq!(e.value(ROWS_REPLICATED_TOTAL, &row3), Some(0.0));
        assert_eq!(
            e.label_values(ROWS_REPLICATED_TOTAL, LABEL_TENANT, &[(LABEL_JOB, "j")]),
            ["3", TENANT_ALL]
        );
    }

    #[test]
    fn recording_from_many_threads_adds_up() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<MetricsRegistry>();
        assert_send_sync::<JobMetrics>();
        let reg = MetricsRegistry::new();
        let m = reg.register_job("j", Some(&strings(&["3"])));
        std::thread::scope(|s| {
            for t in 0..8 {
                let m = m.clone();
                let reg = reg.clone();
                s.spawn(move || {
                    for i in 0..1000 {
                        m.rows(if i % 2 == 0 { "3" } else { "x" }, OP_UPSERT, 1);
                        m.sink_error(if t % 2 == 0 { "postgres" } else { "nats" });
                        m.set_state(STATES[i % STATES.len()]);
                        if i % 250 == 0 {
                            parse(&reg);
                        }
                    }
                });
            }
        });
        let e = parse(&reg);
        let rows = |tenant| {
            e.value(
                ROWS_REPLICATED_TOTAL,
                &[(LABEL_TENANT, tenant), (LABEL_OP, OP_UPSERT)],
            )
        };
        assert_eq!(rows("3"), Some(4000.0));
        assert_eq!(rows(TENANT_ALL), Some(4000.0));
        let errors: f64 = e.find(SINK_ERRORS_TOTAL).map(|s| s.value).sum();
        assert_eq!(errors, 8000.0);
        assert_eq!(e.find(JOB_STATE).filter(|s| s.value == 1.0).count(), 1);
    }

    // ---------------------------------------------------------------------------------

    const DASHBOARD: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/grafana-dashboard.json"
    );

    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_dashboard_parses_and_uses_every_metric() {
        let text =
            std::fs::read_to_string(DASHBOARD).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
        let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let var = |name: &str| vars.iter().find(|v| v["name"] == name);
        let ds = var("datasource").expect("datasource variable");
        assert_eq!(ds["type"], "datasource");
        assert_eq!(ds["query"], "prometheus");
        let job = var("job").expect("job variable");
        assert_eq!(job["type"], "query");

        let panels = d["panels"].as_array().expect("panels");
        let mut ids = BTreeSet::new();
        let mut exprs = Vec::new();
        for p in panels {
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "duplicate id"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            let mut mine = Vec::new();
            collect_exprs(&p["targets"], &mut mine);
            assert!(!mine.is_empty(), "panel {} has no query", p["title"]);
            for e in &mine {
                assert!(e.contains("job=~\"$job\""), "{e} ignores $job");
            }
            exprs.extend(mine);
        }
        for name in ALL_METRICS {
            assert!(
                exprs.iter().any(|e| e.contains(name)),
                "no panel queries {name}"
            );
        }
        let all = exprs.join("\n");
        for needle in [
            "histogram_quantile(0.5",
            "histogram_quantile(0.99",
            "helios_apply_batch_seconds_bucket",
            "rate(helios_rows_replicated_total",
        ] {
            assert!(all.contains(needle), "dashboard lacks {needle}");
        }
    }
}
