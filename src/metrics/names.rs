//! Metric names, label names and the fixed label values, in one place.

/// Age of the oldest change not yet durable at the sinks (0 when caught up).
pub const REPLICATION_LAG_SECONDS: &str = "helios_replication_lag_seconds";
/// WAL bytes between the source's current position and the confirmed one.
pub const REPLICATION_LAG_BYTES: &str = "helios_replication_lag_bytes";
/// Rows (changes) handled by the sinks, by tenant and [operation](OPS).
pub const ROWS_REPLICATED_TOTAL: &str = "helios_rows_replicated_total";
/// Bytes of replication stream read from the source.
pub const BYTES_RECEIVED_TOTAL: &str = "helios_bytes_received_total";
/// Transactions the source streamed while they ran (pgoutput protocol version 2),
/// applied at their commit.
pub const SOURCE_STREAMED_TRANSACTIONS_TOTAL: &str = "helios_source_streamed_transactions_total";
/// Reads of the replication socket that returned data.
pub const SOURCE_SOCKET_READS_TOTAL: &str = "helios_source_socket_reads_total";
/// Of them, reads that waited for a batch while the source was behind
/// (`cdc::transport::read_batching`).
pub const SOURCE_BATCHED_READS_TOTAL: &str = "helios_source_batched_reads_total";
/// Bytes written to each sink.
pub const BYTES_SENT_TOTAL: &str = "helios_bytes_sent_total";
/// Failed apply attempts and failed (re)connections per sink.
pub const SINK_ERRORS_TOTAL: &str = "helios_sink_errors_total";
/// Duration of one apply call (one group of batches) per sink.
pub const APPLY_BATCH_SECONDS: &str = "helios_apply_batch_seconds";
/// Per source transaction, how long each stage of the data path took
/// (`sinks::latency::LatencyStage`).
pub const TRANSACTION_STAGE_SECONDS: &str = "helios_transaction_stage_seconds";
/// Position confirmed to the source, as a number.
pub const SOURCE_CONFIRMED_LSN: &str = "helios_source_confirmed_lsn";
/// WAL bytes the source keeps for the job's replication slot (its write position minus
/// the slot's `restart_lsn`).
pub const SOURCE_SLOT_RETAINED_WAL_BYTES: &str = "helios_source_slot_retained_wal_bytes";
/// WAL bytes the source may still write before the job's slot is past
/// `max_slot_wal_keep_size` and is invalidated (no series when no limit is set).
pub const SOURCE_SLOT_SAFE_WAL_BYTES: &str = "helios_source_slot_safe_wal_bytes";
/// 1 for the job's current state, 0 for the others.
pub const JOB_STATE: &str = "helios_job_state";
/// Tables the job's table patterns match on the source and leave out (no tenant column,
/// no rights), as its last start found them.
pub const JOB_TABLES_LEFT_OUT: &str = "helios_job_tables_left_out";
/// Sequences of the job's tables its last sync round could not keep in step on the
/// targets (`control::sequence_sync`): a cutover would draw ids the source already gave.
pub const TARGET_SEQUENCES_OUT_OF_STEP: &str = "helios_target_sequences_out_of_step";

/// Predicted accesses of the tenant's rows in the next prediction window.
pub const PREDICTED_HOTNESS: &str = "helios_tenant_predicted_hotness";
/// Rolling mean absolute error of each predictor (accesses per key bucket and window).
pub const PREDICTION_ERROR: &str = "helios_prediction_error";
/// 1 for the predictor ordering the job's sinks, 0 for the others.
pub const PREDICTOR_IN_USE: &str = "helios_predictor_in_use";
/// Access events counted (POST /v1/access, NATS).
pub const ACCESS_EVENTS_TOTAL: &str = "helios_access_events_total";
/// Time sink tasks waited for bandwidth (their rows/s or bytes/s limit).
pub const SINK_THROTTLED_SECONDS_TOTAL: &str = "helios_sink_throttled_seconds_total";
/// Time compressed-stream sinks spent encoding frames.
pub const SINK_ENCODE_SECONDS_TOTAL: &str = "helios_sink_encode_seconds_total";
/// 1 while a compressed-stream sink uses its cheaper encodings (CPU budget exceeded).
pub const SINK_CODEC_FAST_MODE: &str = "helios_sink_codec_fast_mode";
/// The round trip to a sink's target as last measured (`max_in_flight = "auto"` decides
/// from it).
pub const SINK_ROUND_TRIP_SECONDS: &str = "helios_sink_round_trip_seconds";
/// Target transactions a sink may have in flight: its setting, or `auto`'s choice.
pub const SINK_MAX_IN_FLIGHT: &str = "helios_sink_max_in_flight";
/// Tables the job's PostgreSQL targets keep in error state (their changes go to dead
/// letters until a resync reloads them).
pub const SINK_TABLES_IN_ERROR: &str = "helios_sink_tables_in_error";
/// Files the cold tier's compaction merged away (`side="merged"`) and wrote.
pub const COLD_COMPACTION_FILES_TOTAL: &str = "helios_cold_compaction_files_total";
/// Bytes of the files the cold tier's compaction merged away and of those it wrote.
pub const COLD_COMPACTION_BYTES_TOTAL: &str = "helios_cold_compaction_bytes_total";

/// Versions the job's history books hold in memory (every current row of its tables
/// with history, plus closed versions in the hot window): their memory grows with it.
pub const HISTORY_VERSIONS_HELD: &str = "helios_history_versions_held";
/// Bytes of the version books' rows in memory (`place="memory"`, counted as they are
/// held and measured at each walk) and in their spill file (`place="disk"`, at the last
/// walk): `history.row_memory_mib` bounds the first.
pub const HISTORY_ROW_BYTES: &str = "helios_history_row_bytes";

/// Walks of the history books' rows (each measures them and moves some to the spill
/// file once they pass `history.row_memory_mib`): a high rate says the budget is small
/// for the job's rows.
pub const HISTORY_ROW_WALKS_TOTAL: &str = "helios_history_row_walks_total";

/// Rows handed to the job's sinks and not yet applied: the reader pauses while they pass
/// `qos.max_buffered_rows`.
pub const SINK_BACKLOG_ROWS: &str = "helios_sink_backlog_rows";
/// Bytes (estimated) of the rows handed to the job's sinks and not yet applied: the reader
/// pauses while they pass `qos.max_buffered_mib`.
pub const SINK_BACKLOG_BYTES: &str = "helios_sink_backlog_bytes";

/// Label: where a job's history rows are.
pub const LABEL_PLACE: &str = "place";
/// `place`: in memory.
pub const PLACE_MEMORY: &str = "memory";
/// `place`: in the job's spill file.
pub const PLACE_DISK: &str = "disk";

/// Label: which files of a compaction.
pub const LABEL_SIDE: &str = "side";
/// `side`: the small files a compaction merged away.
pub const SIDE_MERGED: &str = "merged";
/// `side`: the files a compaction wrote.
pub const SIDE_WRITTEN: &str = "written";
/// Values of the `side` label.
pub const SIDES: [&str; 2] = [SIDE_MERGED, SIDE_WRITTEN];

/// Values of the `predictor` label.
pub const PREDICTORS: [&str; 4] = ["model", "heuristic", "last_window", "round_robin"];

/// Every metric name above.
pub const ALL_METRICS: [&str; 34] = [
    REPLICATION_LAG_SECONDS,
    REPLICATION_LAG_BYTES,
    ROWS_REPLICATED_TOTAL,
    BYTES_RECEIVED_TOTAL,
    SOURCE_STREAMED_TRANSACTIONS_TOTAL,
    SOURCE_SOCKET_READS_TOTAL,
    SOURCE_BATCHED_READS_TOTAL,
    BYTES_SENT_TOTAL,
    SINK_ERRORS_TOTAL,
    APPLY_BATCH_SECONDS,
    TRANSACTION_STAGE_SECONDS,
    SOURCE_CONFIRMED_LSN,
    SOURCE_SLOT_RETAINED_WAL_BYTES,
    SOURCE_SLOT_SAFE_WAL_BYTES,
    JOB_STATE,
    JOB_TABLES_LEFT_OUT,
    TARGET_SEQUENCES_OUT_OF_STEP,
    PREDICTED_HOTNESS,
    PREDICTION_ERROR,
    PREDICTOR_IN_USE,
    ACCESS_EVENTS_TOTAL,
    SINK_THROTTLED_SECONDS_TOTAL,
    SINK_ENCODE_SECONDS_TOTAL,
    SINK_CODEC_FAST_MODE,
    SINK_ROUND_TRIP_SECONDS,
    SINK_MAX_IN_FLIGHT,
    SINK_TABLES_IN_ERROR,
    COLD_COMPACTION_FILES_TOTAL,
    COLD_COMPACTION_BYTES_TOTAL,
    HISTORY_VERSIONS_HELD,
    HISTORY_ROW_BYTES,
    HISTORY_ROW_WALKS_TOTAL,
    SINK_BACKLOG_ROWS,
    SINK_BACKLOG_BYTES,
];

/// Label: the job's name.
pub const LABEL_JOB: &str = "job";
/// Label: a tenant id the job names, or [`TENANT_ALL`].
pub const LABEL_TENANT: &str = "tenant";
/// Label: one of [`OPS`].
pub const LABEL_OP: &str = "op";
/// Label: the sink's kind (`Sink::kind()`).
pub const LABEL_SINK: &str = "sink";
/// Label: a stage of the data path (`sinks::latency::LatencyStage::as_str`).
pub const LABEL_STAGE: &str = "stage";
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
