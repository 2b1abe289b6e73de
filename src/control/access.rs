//! A running job's access signals and hotness predictions.
//!
//! The [`AccessHub`] of a job gathers the signals of each prediction window — writes
//! counted by the dataflow's observe operator, read events users send (`POST /v1/access`
//! or a NATS subject, both through [`AccessEvents`]), table reads polled from the source's
//! `pg_stat_user_tables` — and [`run_windows`] closes a window every `qos.window_secs`:
//! the predictor scores its last forecast, trains, forecasts the next window, and the
//! forecast is published to the sink tasks' [`HotnessMap`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cdc::watch_session::WatchSession;
use crate::control::job_spec::{JobSpec, PredictorChoice};
use crate::dataflow::worker::JobAccess;
use crate::operators::access::bucket::{bucket_of_key, buckets_of_range};
use crate::operators::access::hotness_map::{HotnessMap, HotnessSnapshot, HOT_FRACTION};
use crate::operators::access::ledger::AccessLedger;
use crate::operators::access::{
    BucketKey, PredictionErrors, Predictor, PredictorConfig, PredictorKind, PredictorMode,
    SavedModel,
};

/// Most events one request or message may carry.
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// Largest count one event may carry.
pub const MAX_EVENT_COUNT: u64 = 1_000_000_000;
/// Predictions kept per window for `access_predictions` and the API (the hottest).
pub const STORED_PREDICTIONS: usize = 1000;

/// A key as a user names it: JSON integer or string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyValue {
    /// An integer key.
    Int(i64),
    /// Any key's text form.
    Text(String),
}

impl KeyValue {
    fn text(&self) -> String {
        match self {
            KeyValue::Int(n) => n.to_string(),
            KeyValue::Text(t) => t.clone(),
        }
    }
}

/// One access event: rows of a tenant's table were read (or will be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEvent {
    /// Only this job (default: every running job that replicates the tenant and table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The tenant id.
    pub tenant: KeyValue,
    /// `schema.table`.
    pub table: String,
    /// One key (its text form; composite keys as their columns' texts in an array are not
    /// supported: name the first column's value or leave the key out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyValue>,
    /// An inclusive range of integer keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_range: Option<[i64; 2]>,
    /// How many accesses, `1..=1e9`. Default 1.
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// A batch of access events (the body of `POST /v1/access`, or one NATS message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEvents {
    /// 1 to 10000 events.
    pub events: Vec<AccessEvent>,
}

/// What became of a batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AccessAccepted {
    /// Events counted by at least one job.
    pub accepted: usize,
    /// Events no running job replicates (not an error: the job may be starting).
    pub unmatched: usize,
}

/// An access event that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct AccessEventError {
    /// The offending field (`events[3].count`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl AccessEvents {
    /// Parses and checks a JSON document; the error names the field.
    pub fn from_json(body: &[u8]) -> Result<AccessEvents, AccessEventError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let events: AccessEvents = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            AccessEventError {
                field: if path == "." {
                    "<document>".into()
                } else {
                    path
                },
                reason: e.inner().to_string(),
            }
        })?;
        de.end().map_err(|e| AccessEventError {
            field: "<document>".into(),
            reason: e.to_string(),
        })?;
        events.validate()?;
        Ok(events)
    }

    /// Checks counts, names and sizes.
    pub fn validate(&self) -> Result<(), AccessEventError> {
        let err = |field: String, reason: &str| AccessEventError {
            field,
            reason: reason.to_owned(),
        };
        if self.events.is_empty() || self.events.len() > MAX_EVENTS_PER_REQUEST {
            return Err(err(
                "events".into(),
                &format!(
                    "must hold 1 to {MAX_EVENTS_PER_REQUEST} events, got {}",
                    self.events.len()
                ),
            ));
        }
        for (i, e) in self.events.iter().enumerate() {
            let at = |f: &str| format!("events[{i}].{f}");
            if e.tenant.text().is_empty() {
                return Err(err(at("tenant"), "must not be empty"));
            }
            let parts: Vec<&str> = e.table.split('.').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(err(at("table"), "must be `schema.table`"));
            }
            if !(1..=MAX_EVENT_COUNT).contains(&e.count) {
                return Err(err(
                    at("count"),
                    &format!("must be between 1 and {MAX_EVENT_COUNT}"),
                ));
            }
            if e.key.is_some() && e.key_range.is_some() {
                return Err(err(at("key_range"), "give `key` or `key_range`, not both"));
            }
            if let Some([lo, hi]) = e.key_range {
                if lo > hi {
                    return Err(err(
                        at("key_range"),
                        "the first key must not exceed the second",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The metric label of a predictor kind.
pub fn kind_name(kind: PredictorKind) -> &'static str {
    match kind {
        PredictorKind::Model => "model",
        PredictorKind::Heuristic => "heuristic",
        PredictorKind::RoundRobin => "round_robin",
    }
}

/// Routes `events` to every hub that covers them.
pub fn record_in<'a>(
    hubs: impl IntoIterator<Item = &'a AccessHub>,
    events: &AccessEvents,
) -> AccessAccepted {
    let mut matched = vec![false; events.events.len()];
    for hub in hubs {
        hub.record(events, &mut matched);
    }
    let accepted = matched.iter().filter(|m| **m).count();
    AccessAccepted {
        accepted,
        unmatched: matched.len() - accepted,
    }
}

/// What `/metrics` and the API show of a job's prediction.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PredictionStatus {
    /// Windows closed.
    pub windows: u64,
    /// `model`, `heuristic` or `round_robin`.
    pub in_use: &'static str,
    /// Rolling mean absolute errors.
    pub errors: PredictionErrors,
    /// Predicted accesses in the next window, per tenant.
    pub tenant_hotness: BTreeMap<String, f32>,
}

/// A running job's access signals and predictor.
#[derive(Debug)]
pub struct AccessHub {
    /// The job's name.
    pub job: String,
    spec_tables: Vec<String>,
    spec: JobSpec,
    /// The window's counts.
    pub ledger: Arc<AccessLedger>,
    /// The published predictions.
    pub hotness: Arc<HotnessMap>,
    width: u64,
    window: Duration,
    predictor: Mutex<Predictor>,
    status: Mutex<PredictionStatus>,
}

impl AccessHub {
    /// The hub of a job starting now, with the model saved by an earlier run if any.
    pub fn new(spec: &JobSpec, saved: Option<SavedModel>) -> AccessHub {
        let mode = match spec.qos.predictor {
            PredictorChoice::Auto => PredictorMode::Auto,
            PredictorChoice::Model => PredictorMode::Model,
            PredictorChoice::Heuristic => PredictorMode::Heuristic,
            PredictorChoice::Off => PredictorMode::Off,
        };
        let mut predictor = Predictor::new(PredictorConfig {
            window_secs: spec.qos.window_secs,
            mode,
            ..PredictorConfig::default()
        });
        if let Some(saved) = saved {
            match predictor.restore_model(saved) {
                Ok(()) => tracing::info!(job = %spec.name, "prediction model restored"),
                Err(e) => {
                    tracing::warn!(job = %spec.name, error = %e, "saved model not usable; training a new one")
                }
            }
        }
        AccessHub {
            job: spec.name.clone(),
            spec_tables: spec.tables.iter().map(|t| t.name.clone()).collect(),
            spec: spec.clone(),
            ledger: Arc::default(),
            hotness: Arc::new(HotnessMap::new(
                spec.qos.key_bucket_width,
                crate::control::job_runner::tenant_plan(spec, 1).tenant_keys,
            )),
            width: spec.qos.key_bucket_width,
            window: Duration::from_secs(spec.qos.window_secs),
            predictor: Mutex::new(predictor),
            status: Mutex::new(PredictionStatus {
                in_use: kind_name(PredictorKind::RoundRobin),
                ..PredictionStatus::default()
            }),
        }
    }

    /// What the dataflow needs of the hub.
    pub fn dataflow_side(&self) -> JobAccess {
        JobAccess {
            ledger: self.ledger.clone(),
            hotness: self.hotness.clone(),
            width: self.width,
        }
    }

    /// Whether the job replicates `tenant`'s rows of `table` (and is `job`, if named).
    pub fn covers(&self, job: Option<&str>, tenant: &str, table: &str) -> bool {
        job.is_none_or(|j| j == self.job)
            && self.spec.includes_tenant(tenant)
            && self.spec_tables.iter().any(|t| t == table)
    }

    /// Counts the `events` this job covers and marks them in `matched`; returns how many.
    pub fn record(&self, events: &AccessEvents, matched: &mut [bool]) -> usize {
        let mut taken = 0;
        for (i, e) in events.events.iter().enumerate() {
            let tenant = e.tenant.text();
            if !self.covers(e.job.as_deref(), &tenant, &e.table) {
                continue;
            }
            taken += 1;
            if let Some(m) = matched.get_mut(i) {
                *m = true;
            }
            let (tenant, table): (Arc<str>, Arc<str>) = (tenant.into(), e.table.as_str().into());
            let key = |bucket| BucketKey {
                tenant: tenant.clone(),
                table: table.clone(),
                bucket,
            };
            match (&e.key, e.key_range) {
                (Some(k), _) => {
                    let text = k.text();
                    let b = bucket_of_key([Some(text.as_str())], self.width);
                    self.ledger.add([(key(b), e.count as f64)], true);
                }
                (None, Some([lo, hi])) => {
                    let range = buckets_of_range(lo, hi, self.width);
                    let n = (range.end() - range.start() + 1) as f64;
                    let each = e.count as f64 / n;
                    self.ledger.add(range.map(|b| (key(b), each)), true);
                }
                (None, None) => self.ledger.add_table_reads(&e.table, e.count as f64),
            }
        }
        taken
    }

    /// Closes the window ending at `end_unix_secs`: scores, trains, forecasts, publishes.
    pub fn close_window(&self, end_unix_secs: i64) {
        let counts = self.ledger.take();
        let Ok(mut p) = self.predictor.lock() else {
            return;
        };
        let report = p.close_window(end_unix_secs, &counts.buckets, &counts.table_reads);
        if report.model_reset {
            tracing::warn!(job = %self.job, "prediction model reset after a non-finite output; the heuristic is in use until it recovers");
        }
        let snapshot = HotnessSnapshot::hot_set(
            p.predictions()
                .map(|(k, v)| (&*k.tenant, &*k.table, k.bucket, v)),
            HOT_FRACTION,
        );
        let in_use = p.in_use();
        let status = PredictionStatus {
            windows: self.status.lock().map_or(0, |s| s.windows) + 1,
            in_use: kind_name(in_use),
            errors: p.errors(),
            tenant_hotness: p.tenant_hotness().into_iter().collect(),
        };
        drop(p);
        self.hotness
            .publish(if in_use == PredictorKind::RoundRobin {
                HotnessSnapshot::default()
            } else {
                snapshot
            });
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    /// The latest prediction figures.
    pub fn status(&self) -> PredictionStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The model's weights, for the metadata store.
    pub fn saved_model(&self) -> Option<SavedModel> {
        self.predictor.lock().ok().map(|p| p.save())
    }

    /// The hottest predicted buckets, hottest first.
    pub fn top_predictions(&self, n: usize) -> Vec<(BucketKey, f32)> {
        self.predictor.lock().map(|p| p.top(n)).unwrap_or_default()
    }

    /// Adds table reads polled from the source.
    pub fn add_table_reads(&self, reads: &HashMap<String, f64>) {
        for (table, n) in reads {
            if self.spec_tables.iter().any(|t| t == table) {
                self.ledger.add_table_reads(table, *n);
            }
        }
    }

    /// The job's spec.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }
}

/// Closes a window every `qos.window_secs` until aborted; polls the source's table
/// statistics on `source` (the job's shared session) when `qos.source_stats_poll_secs`
/// is set.
pub async fn run_windows(hub: Arc<AccessHub>, source: WatchSession) {
    if hub.spec.qos.source_stats_poll_secs > 0 {
        tokio::spawn(poll_source_stats(
            Arc::downgrade(&hub),
            Duration::from_secs(hub.spec.qos.source_stats_poll_secs),
            source,
        ));
    }
    let closer = WindowCloser::start(hub.clone());
    let mut tick = tokio::time::interval(hub.window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        closer.close(now).await;
    }
}

/// Where a job's windows are closed: training is CPU work, kept off the runtime's I/O
/// threads on a thread of its own that runs at background priority
/// ([`crate::thread_priority`]), so a window close yields to the replication path.
struct WindowCloser {
    hub: Arc<AccessHub>,
    /// Window ends to close, with who waits for it (`None`: the thread did not start).
    requests: Option<std::sync::mpsc::Sender<(i64, tokio::sync::oneshot::Sender<()>)>>,
}

impl WindowCloser {
    fn start(hub: Arc<AccessHub>) -> WindowCloser {
        let (tx, rx) = std::sync::mpsc::channel::<(i64, tokio::sync::oneshot::Sender<()>)>();
        let closing = hub.clone();
        let started = std::thread::Builder::new()
            .name("helios-predict".into())
            .spawn(move || {
                if !crate::thread_priority::lower_current_thread() {
                    tracing::debug!("prediction thread runs at normal priority");
                }
                // Ends when the sender goes (run_windows aborted with its job).
                while let Ok((end, done)) = rx.recv() {
                    closing.close_window(end);
                    let _ = done.send(());
                }
            });
        if let Err(e) = &started {
            tracing::warn!(job = %hub.job, error = %e, "cannot start the prediction thread; windows close on the blocking pool");
        }
        WindowCloser {
            hub,
            requests: started.ok().map(|_| tx),
        }
    }

    /// Closes the window ending at `end` and waits until it is closed.
    async fn close(&self, end: i64) {
        if let Some(requests) = &self.requests {
            let (done, closed) = tokio::sync::oneshot::channel();
            if requests.send((end, done)).is_ok() {
                let _ = closed.await;
                return;
            }
        }
        let hub = self.hub.clone();
        let _ = tokio::task::spawn_blocking(move || hub.close_window(end)).await;
    }
}

/// Adds the deltas of the source's `seq_scan + idx_scan` per table to the window's
/// table-level reads, until the hub is gone.
async fn poll_source_stats(hub: std::sync::Weak<AccessHub>, every: Duration, source: WatchSession) {
    let mut previous: HashMap<String, i64> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(h) = hub.upgrade() else { return };
        let c = match source.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(job = %h.job, error = %e, "cannot poll source table statistics");
                continue;
            }
        };
        match crate::cdc::source_stats::table_reads(&c, &h.spec_tables).await {
            Ok(now) => {
                let deltas = crate::cdc::source_stats::deltas(&previous, &now);
                h.add_table_reads(&deltas);
                previous = now;
            }
            Err(e) => {
                tracing::warn!(job = %h.job, error = %e, "polling source table statistics failed");
                source.failed(&c).await;
            }
        }
    }
}
