//! The metric families of the server (one per metric name in [`super::names`]), their
//! histogram buckets, and their registration with help texts and units.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::labels::{
    JobLabels, PlaceLabels, PredictorLabels, RowLabels, SideLabels, SinkLabels, StageLabels,
    StateLabels, TenantLabels,
};
use super::names::*;

/// Upper bounds of `helios_apply_batch_seconds`: 1 ms doubling to 32.768 s (16 buckets,
/// plus `+Inf`).
pub fn apply_batch_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

/// Upper bounds of `helios_transaction_stage_seconds`: 50 µs doubling to 26.2 s (20
/// buckets, plus `+Inf`): a caught-up stage takes well under a millisecond.
pub fn transaction_stage_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 20)
}

pub(super) type GaugeF64 = Gauge<f64, AtomicU64>;
pub(super) type GaugeU64 = Gauge<u64, AtomicU64>;
pub(super) type HistogramFamily<L = SinkLabels> = Family<L, Histogram, fn() -> Histogram>;

fn new_apply_histogram() -> Histogram {
    Histogram::new(apply_batch_buckets())
}

fn new_stage_histogram() -> Histogram {
    Histogram::new(transaction_stage_buckets())
}

/// The metric families; clones share their series.
#[derive(Clone, Debug)]
pub(super) struct Families {
    pub(super) lag_seconds: Family<TenantLabels, GaugeF64>,
    pub(super) lag_bytes: Family<TenantLabels, GaugeU64>,
    pub(super) rows: Family<RowLabels, Counter>,
    pub(super) bytes_received: Family<JobLabels, Counter>,
    pub(super) streamed_txns: Family<JobLabels, Counter>,
    pub(super) socket_reads: Family<JobLabels, Counter>,
    pub(super) batched_reads: Family<JobLabels, Counter>,
    pub(super) bytes_sent: Family<SinkLabels, Counter>,
    pub(super) sink_errors: Family<SinkLabels, Counter>,
    pub(super) apply_batch: HistogramFamily,
    pub(super) stages: HistogramFamily<StageLabels>,
    pub(super) confirmed_lsn: Family<JobLabels, GaugeU64>,
    pub(super) slot_retained_wal: Family<JobLabels, GaugeU64>,
    pub(super) slot_safe_wal: Family<JobLabels, GaugeU64>,
    pub(super) job_state: Family<StateLabels, Gauge>,
    pub(super) tables_left_out: Family<JobLabels, GaugeU64>,
    pub(super) sequences_out_of_step: Family<JobLabels, GaugeU64>,
    pub(super) hotness: Family<TenantLabels, GaugeF64>,
    pub(super) prediction_error: Family<PredictorLabels, GaugeF64>,
    pub(super) predictor_in_use: Family<PredictorLabels, Gauge>,
    pub(super) access_events: Family<JobLabels, Counter>,
    pub(super) throttled: Family<SinkLabels, Counter<f64, AtomicU64>>,
    pub(super) encode_seconds: Family<SinkLabels, Counter<f64, AtomicU64>>,
    pub(super) codec_fast: Family<SinkLabels, Gauge>,
    pub(super) round_trip: Family<SinkLabels, GaugeF64>,
    pub(super) max_in_flight: Family<SinkLabels, Gauge>,
    pub(super) tables_in_error: Family<SinkLabels, Gauge>,
    pub(super) compaction_files: Family<SideLabels, Counter>,
    pub(super) compaction_bytes: Family<SideLabels, Counter>,
    pub(super) versions_held: Family<JobLabels, GaugeU64>,
    pub(super) row_bytes: Family<PlaceLabels, GaugeU64>,
    pub(super) row_walks: Family<JobLabels, Counter>,
    pub(super) backlog_rows: Family<JobLabels, GaugeU64>,
    pub(super) backlog_bytes: Family<JobLabels, GaugeU64>,
}

/// `name` without `suffix`: `prometheus-client` appends `_total` to counters and the unit
/// to metrics registered with one.
pub(super) fn stem<'a>(name: &'a str, suffix: &str) -> &'a str {
    name.strip_suffix(suffix)
        .unwrap_or_else(|| panic!("metric name {name} must end in {suffix}"))
}

impl Families {
    pub(super) fn new() -> Self {
        Families {
            lag_seconds: Family::default(),
            lag_bytes: Family::default(),
            rows: Family::default(),
            bytes_received: Family::default(),
            streamed_txns: Family::default(),
            socket_reads: Family::default(),
            batched_reads: Family::default(),
            bytes_sent: Family::default(),
            sink_errors: Family::default(),
            apply_batch: Family::new_with_constructor(new_apply_histogram),
            stages: Family::new_with_constructor(new_stage_histogram),
            confirmed_lsn: Family::default(),
            slot_retained_wal: Family::default(),
            slot_safe_wal: Family::default(),
            job_state: Family::default(),
            tables_left_out: Family::default(),
            sequences_out_of_step: Family::default(),
            hotness: Family::default(),
            prediction_error: Family::default(),
            predictor_in_use: Family::default(),
            access_events: Family::default(),
            throttled: Family::default(),
            encode_seconds: Family::default(),
            codec_fast: Family::default(),
            round_trip: Family::default(),
            max_in_flight: Family::default(),
            tables_in_error: Family::default(),
            compaction_files: Family::default(),
            compaction_bytes: Family::default(),
            versions_held: Family::default(),
            row_bytes: Family::default(),
            row_walks: Family::default(),
            backlog_rows: Family::default(),
            backlog_bytes: Family::default(),
        }
    }

    pub(super) fn register(&self, r: &mut Registry) {
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
            stem(SOURCE_STREAMED_TRANSACTIONS_TOTAL, "_total"),
            "Transactions the source streamed while they ran, applied at their commit",
            self.streamed_txns.clone(),
        );
        r.register(
            stem(SOURCE_SOCKET_READS_TOTAL, "_total"),
            "Reads of the replication socket that returned data",
            self.socket_reads.clone(),
        );
        r.register(
            stem(SOURCE_BATCHED_READS_TOTAL, "_total"),
            "Reads of the replication socket that waited for a batch while the source was behind",
            self.batched_reads.clone(),
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
        r.register_with_unit(
            stem(TRANSACTION_STAGE_SECONDS, "_seconds"),
            "Per source transaction, how long each stage of the data path took \
             (source_to_reader, reader_to_sink, reader_to_durable)",
            Unit::Seconds,
            self.stages.clone(),
        );
        r.register(
            SOURCE_CONFIRMED_LSN,
            "Position confirmed to the source (the LSN as a number)",
            self.confirmed_lsn.clone(),
        );
        r.register(
            SOURCE_SLOT_RETAINED_WAL_BYTES,
            "WAL bytes the source keeps for the job's replication slot (from its restart_lsn)",
            self.slot_retained_wal.clone(),
        );
        r.register(
            SOURCE_SLOT_SAFE_WAL_BYTES,
            "WAL bytes the source may still write before the job's slot is past max_slot_wal_keep_size and invalidated (no series without a limit)",
            self.slot_safe_wal.clone(),
        );
        r.register(
            JOB_STATE,
            "1 for the job's current state, 0 for the others",
            self.job_state.clone(),
        );
        r.register(
            JOB_TABLES_LEFT_OUT,
            "Tables the job's table patterns match on the source and leave out (no tenant column, no rights), as its last start found them",
            self.tables_left_out.clone(),
        );
        r.register(
            TARGET_SEQUENCES_OUT_OF_STEP,
            "Sequences of the job's tables its last sync round could not keep in step on the targets: a cutover would draw ids the source already gave",
            self.sequences_out_of_step.clone(),
        );
        r.register(
            PREDICTED_HOTNESS,
            "Predicted accesses of the tenant's rows in the next prediction window",
            self.hotness.clone(),
        );
        r.register(
            PREDICTION_ERROR,
            "Rolling mean absolute error of each predictor (accesses per key bucket and window)",
            self.prediction_error.clone(),
        );
        r.register(
            PREDICTOR_IN_USE,
            "1 for the predictor ordering the job's sinks (model, heuristic, round_robin)",
            self.predictor_in_use.clone(),
        );
        r.register(
            stem(ACCESS_EVENTS_TOTAL, "_total"),
            "Access events counted (POST /v1/access, NATS subject)",
            self.access_events.clone(),
        );
        r.register(
            stem(SINK_THROTTLED_SECONDS_TOTAL, "_total"),
            "Seconds sink tasks waited for bandwidth (rows/s or bytes/s limits)",
            self.throttled.clone(),
        );
        r.register(
            stem(SINK_ENCODE_SECONDS_TOTAL, "_total"),
            "Seconds compressed-stream sinks spent encoding frames",
            self.encode_seconds.clone(),
        );
        r.register(
            SINK_CODEC_FAST_MODE,
            "1 while a compressed-stream sink uses cheaper encodings (CPU budget exceeded)",
            self.codec_fast.clone(),
        );
        r.register_with_unit(
            stem(SINK_ROUND_TRIP_SECONDS, "_seconds"),
            "Round trip to the sink's target as last measured (max_in_flight = auto decides from it)",
            Unit::Seconds,
            self.round_trip.clone(),
        );
        r.register(
            SINK_MAX_IN_FLIGHT,
            "Target transactions a sink may have in flight (its setting, or auto's choice)",
            self.max_in_flight.clone(),
        );
        r.register(
            SINK_TABLES_IN_ERROR,
            "Tables a sink's targets keep in error state (their changes go to dead letters until a resync)",
            self.tables_in_error.clone(),
        );
        r.register(
            stem(COLD_COMPACTION_FILES_TOTAL, "_total"),
            "Cold-tier files compaction merged away (side=merged) and wrote (side=written)",
            self.compaction_files.clone(),
        );
        r.register(
            stem(COLD_COMPACTION_BYTES_TOTAL, "_total"),
            "Bytes of the cold-tier files compaction merged away and of those it wrote",
            self.compaction_bytes.clone(),
        );
        r.register(
            SINK_BACKLOG_ROWS,
            "Rows handed to the job's sinks and not yet applied (the reader pauses past qos.max_buffered_rows)",
            self.backlog_rows.clone(),
        );
        r.register(
            SINK_BACKLOG_BYTES,
            "Estimated bytes of the rows handed to the job's sinks and not yet applied (the reader pauses past qos.max_buffered_mib)",
            self.backlog_bytes.clone(),
        );
        r.register(
            HISTORY_VERSIONS_HELD,
            "Versions the job's history books hold in memory",
            self.versions_held.clone(),
        );
        r.register(
            HISTORY_ROW_BYTES,
            "Bytes of the history books' rows in memory (place=memory) and in their spill file (place=disk)",
            self.row_bytes.clone(),
        );
        r.register(
            stem(HISTORY_ROW_WALKS_TOTAL, "_total"),
            "Walks of the history books' rows (measure, then move some to the spill file)",
            self.row_walks.clone(),
        );
    }
}
