//! The NATS JetStream sink: each group of transactions becomes one compressed frame per
//! (tenant, table), published to that pair's subject on the job's stream.
//!
//! Exactly once across crashes, per subject:
//! - the stream itself is the checkpoint: each message carries the commit LSN of its last
//!   transaction (and, for a transaction split over several messages, how many of its rows
//!   are in), so after a (re)connect the sink reads each subject's last message before it
//!   publishes there again and skips what it covers;
//! - every publish states the subject's expected last sequence, so a message lost in
//!   flight makes the next one fail instead of leaving a gap (and a second replicator
//!   writing the same subjects is refused, not interleaved);
//! - each message has a deterministic `Nats-Msg-Id` (job/tenant/table/LSN range), so a
//!   retry JetStream already stored is dropped by its duplicate window.
//!
//! A transaction too large to hold (handed over in parts, DESIGN.md invariant 5) is
//! published part by part as the parts arrive, every frame marked partial; an empty frame
//! without the header then ends it on each subject it touched.
//!
//! The sink reports a group durable once JetStream has acknowledged every frame of it.
//! Frames of different subjects are published concurrently, frames of one subject in
//! order. After any failure every subject's state (its codec state too) is dropped: the
//! next frames are key frames that do not depend on anything the stream may lack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch, UInt64Array};
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use futures_util::future::join_all;

use super::compression_stats::CompressionStats;
use super::effort::EffortGovernor;
use super::subjects::{
    self, FIRST_LSN_HEADER, LAST_LSN_HEADER, PARTIAL_ROWS_HEADER, ROWS_HEADER, TABLE_HEADER,
    TENANT_HEADER,
};
use crate::cdc::stream::ReaderStats;
use crate::change::{format_lsn, Lsn, TenantAction};
use crate::codec::{EncoderConfig, StreamEncoder};
use crate::operators::columnar::{
    columnar_batches, ColumnarRows, ALL_TENANTS, LSN_COLUMN, OP_COLUMN,
};
use crate::sinks::large::{LiveParts, PartSource};
use crate::sinks::spill::SpilledTxn;
use crate::sinks::{ApplyBatch, ApplyReport, Sink, SinkError, TenantApplied};

/// Bytes kept free under the server's payload limit for headers.
const HEADER_ROOM: usize = 4096;

/// Settings of a NATS sink.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSinkConfig {
    /// Server URL (`nats://host:port`).
    pub url: String,
    /// The JetStream stream (created if missing).
    pub stream: String,
    /// First subject token.
    pub subject_prefix: String,
    /// A key frame at least every this many frames of a subject.
    pub key_frame_every: u32,
    /// Most Arrow bytes per frame: a group's rows of one subject are cut into frames of
    /// at most this size.
    pub max_frame_bytes: usize,
    /// The stream's duplicate window (only used when the sink creates the stream).
    pub duplicate_window: Duration,
    /// Share of the sink's time encoding may take before cheaper encodings are used.
    pub max_encode_share: f64,
    /// TLS files and credentials for the server.
    pub access: super::access::NatsAccess,
}

// `max_encode_share` is validated finite.
impl Eq for NatsSinkConfig {}

/// Where a subject stands on the server and the codec state of its stream.
struct SubjectState {
    /// Commit LSN of the last transaction published (0: none).
    last_lsn: Lsn,
    /// Rows of `last_lsn` published so far when it is not complete.
    partial_rows: Option<usize>,
    /// Stream sequence of the subject's last message (0: none).
    last_seq: u64,
    encoder: StreamEncoder,
}

/// A frame ready to publish.
struct Frame {
    payload: Vec<u8>,
    rows: usize,
    arrow_bytes: usize,
    first_lsn: Lsn,
    last_lsn: Lsn,
    partial_rows: Option<usize>,
    tenant: String,
    table: String,
    choices: Vec<crate::codec::ColumnChoice>,
}

impl Frame {
    /// Its `Nats-Msg-Id`: job, tenant, table and LSN range, plus the rows of the last
    /// transaction so far when that transaction goes on in the next message.
    fn message_id(&self, job: &str) -> String {
        let id = subjects::message_id(
            job,
            &self.tenant,
            &self.table,
            self.first_lsn,
            self.last_lsn,
        );
        match self.partial_rows {
            Some(p) => format!("{id}#{p}"),
            None => id,
        }
    }
}

/// How a segment's rows stand to what its subject already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentRole {
    /// Whole transactions of a group: rows the subject has are skipped; a frame is marked
    /// partial only when its last transaction goes on in the next frame.
    Group,
    /// A chunk of the initial copy: continues the subject's last (partial) transaction;
    /// nothing is skipped and every frame is marked partial.
    SnapshotChunk,
    /// A piece of one large transaction, of which the subject was handed `before` rows in
    /// earlier parts: rows the subject has are skipped, every frame is marked partial
    /// (the caller marks the subject's last frame complete once the last part is in).
    LargePart {
        /// Rows of the transaction for this subject in earlier parts.
        before: usize,
    },
}

/// How [`NatsSink::plan_frames`] treats the segments it encodes.
enum PlanMode<'a> {
    /// Whole transactions of a group.
    Group,
    /// A chunk of the initial copy.
    SnapshotChunk,
    /// A part of one large transaction; records each subject it touches.
    LargePart(&'a mut HashMap<String, LargeSubject>),
}

/// A subject one large transaction touches: its rows handed so far, and what its end
/// frame needs.
struct LargeSubject {
    handed: usize,
    tenant: String,
    table: String,
    schema: arrow_schema::SchemaRef,
}

/// What a plan publishes: each subject's frames, in order.
type Plan = Vec<(String, Vec<Frame>)>;

struct Connection {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    max_payload: usize,
}

/// The sink of one job on one worker.
pub struct NatsSink {
    job: String,
    worker: u32,
    config: NatsSinkConfig,
    reader: Arc<ReaderStats>,
    stats: Arc<CompressionStats>,
    governor: EffortGovernor,
    conn: Option<Connection>,
    subjects: HashMap<String, SubjectState>,
}

impl NatsSink {
    /// A sink for `job` on worker `worker`; connects on the first `reconnect`.
    pub fn new(
        job: &str,
        worker: u32,
        config: NatsSinkConfig,
        reader: Arc<ReaderStats>,
        stats: Arc<CompressionStats>,
    ) -> Self {
        NatsSink {
            job: job.to_string(),
            worker,
            governor: EffortGovernor::new(config.max_encode_share),
            config,
            reader,
            stats,
            conn: None,
            subjects: HashMap::new(),
        }
    }

    /// The subject of a segment's (tenant, table).
    fn subject_of(&self, segment: &ColumnarRows) -> String {
        subjects::subject(
            &self.config.subject_prefix,
            &self.job,
            &segment.tenant,
            &segment.table.schema,
            &segment.table.name,
        )
    }

    fn encoder_config(&self) -> EncoderConfig {
        EncoderConfig {
            key_frame_every: self.config.key_frame_every,
            effort: self.governor.effort(),
        }
    }

    /// Reads where `subject` stands on the server, unless known.
    async fn load_subject(&mut self, subject: &str) -> Result<(), SinkError> {
        if self.subjects.contains_key(subject) {
            return Ok(());
        }
        let conn = self.conn.as_ref().ok_or_else(not_connected)?;
        let (last_lsn, partial_rows, last_seq) = match conn
            .stream
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(msg) => {
                let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_string());
                let last = header(LAST_LSN_HEADER)
                        .and_then(|v| subjects::lsn_header(&v))
                        .ok_or_else(|| {
                            SinkError::Definite(format!(
                                "the last message on {subject} (sequence {}) has no valid {LAST_LSN_HEADER} header: \
                                 another writer uses this stream's subjects",
                                msg.sequence
                            ))
                        })?;
                let partial = header(PARTIAL_ROWS_HEADER).and_then(|v| v.parse().ok());
                (last, partial, msg.sequence)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                (0, None, 0)
            }
            Err(e) => {
                return Err(SinkError::Transient(format!(
                    "read the last message of {subject}: {e}"
                )))
            }
        };
        let encoder = StreamEncoder::new(self.encoder_config());
        self.subjects.insert(
            subject.to_string(),
            SubjectState {
                last_lsn,
                partial_rows,
                last_seq,
                encoder,
            },
        );
        Ok(())
    }

    /// Encodes the rows of `segment` the subject does not have yet (see [`SegmentRole`]).
    fn frames_of(
        &mut self,
        subject: &str,
        segment: &ColumnarRows,
        max_payload: usize,
        report: &mut ApplyReport,
        encode_secs: &mut f64,
        role: SegmentRole,
    ) -> Result<Vec<Frame>, SinkError> {
        let lsns = lsn_column(&segment.batch)?;
        let mut ordinals = ordinals_in_transaction(lsns);
        let fresh_encoder = self.encoder_config();
        let state = self
            .subjects
            .get_mut(subject)
            .ok_or_else(|| SinkError::Transient(format!("{subject}: state not loaded")))?;
        let before = match role {
            SegmentRole::Group => 0,
            SegmentRole::SnapshotChunk => match (state.last_lsn, state.partial_rows) {
                (last, Some(k)) if !lsns.is_empty() && last == lsns.value(0) => k,
                _ => 0,
            },
            SegmentRole::LargePart { before } => before,
        };
        ordinals.iter_mut().for_each(|o| *o += before);
        let skip = match role {
            SegmentRole::SnapshotChunk => 0,
            SegmentRole::Group | SegmentRole::LargePart { .. } => {
                covered_prefix(lsns, &ordinals, state.last_lsn, state.partial_rows)
            }
        };
        let all_partial = role != SegmentRole::Group;
        report.skipped += skip as u64;
        let mut frames = Vec::new();
        let mut start = skip;
        let n = lsns.len();
        let table = segment.table.qualified_name();
        // Frames close at `max_frame_bytes` of Arrow data (estimated from the segment's
        // average row size), and at the server's payload limit below.
        let row_bytes = (crate::codec::batch_data_bytes(&segment.batch) / n.max(1)).max(1);
        let rows_per_frame = (self.config.max_frame_bytes / row_bytes).max(1);
        while start < n {
            let mut len = (n - start).min(rows_per_frame);
            let (payload, choices, part) = loop {
                let part = segment.batch.slice(start, len);
                let began = Instant::now();
                let encoded = state.encoder.encode(&part);
                *encode_secs += began.elapsed().as_secs_f64();
                let payload = encoded.map_err(|e| {
                    SinkError::Definite(format!("encode a frame for {subject}: {e}"))
                })?;
                if payload.len() + HEADER_ROOM <= max_payload || len == 1 {
                    break (payload, state.encoder.last_choices().to_vec(), part);
                }
                // Too big for one message: the encoder's state assumed the frame was sent,
                // so start its stream again (a key frame) and try half the rows.
                state.encoder = StreamEncoder::new(fresh_encoder.clone());
                len = len.div_ceil(2);
            };
            if payload.len() + HEADER_ROOM > max_payload {
                return Err(SinkError::Definite(format!(
                    "one row of {table} for tenant {} encodes to {} bytes, over the server's max_payload {max_payload}",
                    segment.tenant,
                    payload.len()
                )));
            }
            let end = start + len;
            let (first_lsn, last_lsn) = (lsns.value(start), lsns.value(end - 1));
            let partial_rows = (all_partial || (end < n && lsns.value(end) == last_lsn))
                .then(|| ordinals[end - 1] + 1);
            let arrow_bytes = crate::codec::batch_data_bytes(&part);
            frames.push(Frame {
                payload,
                rows: len,
                arrow_bytes,
                first_lsn,
                last_lsn,
                partial_rows,
                tenant: segment.tenant.clone(),
                table: table.clone(),
                choices,
            });
            start = end;
        }
        Ok(frames)
    }

    /// Publishes each subject's frames (subjects concurrently, one subject's in order) and
    /// records where each subject now stands; returns the bytes published. On any failure
    /// every subject's state is dropped.
    async fn publish(&mut self, plan: &Plan) -> Result<u64, SinkError> {
        let conn = self.conn.as_ref().ok_or_else(not_connected)?;
        let results = join_all(plan.iter().map(|(subject, frames)| {
            let expected = self.subjects.get(subject).map_or(0, |s| s.last_seq);
            publish_subject(&conn.js, &self.job, subject, expected, frames)
        }))
        .await;
        if let Some(err) = results.iter().find_map(|r| r.as_ref().err()) {
            let err = SinkError::Transient(err.to_string());
            self.subjects.clear();
            return Err(err);
        }
        let mut bytes = 0;
        for ((subject, frames), sequences) in plan.iter().zip(results) {
            let sequences = sequences.unwrap_or_default();
            if let (Some(state), Some(last), Some(seq)) = (
                self.subjects.get_mut(subject),
                frames.last(),
                sequences.last(),
            ) {
                state.last_lsn = last.last_lsn;
                state.partial_rows = last.partial_rows;
                state.last_seq = *seq;
            }
            for f in frames {
                bytes += f.payload.len() as u64;
                // An end frame carries no rows: nothing to report of its encoding.
                if f.rows == 0 {
                    continue;
                }
                self.stats.record_frame(
                    subject,
                    f.rows,
                    f.arrow_bytes,
                    f.payload.len(),
                    &f.choices,
                );
            }
        }
        Ok(bytes)
    }

    /// Whether the job's stream on the server has never held a message (its last sequence
    /// is 0): created just now on a server new to the job, or deleted and created again.
    /// Connects first if not connected.
    pub async fn stream_never_written(&mut self) -> Result<bool, SinkError> {
        if self.conn.is_none() {
            self.reconnect().await?;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(SinkError::Transient("NATS sink not connected".into()));
        };
        let info = conn
            .stream
            .info()
            .await
            .map_err(|e| SinkError::Transient(format!("stream {}: {e}", self.config.stream)))?;
        Ok(info.state.last_sequence == 0)
    }

    /// Publishes one chunk of the initial copy: `batch` holds rows of the snapshot, all at
    /// the slot's consistent point. Chunks of one snapshot continue each other (every
    /// message says how many snapshot rows its subject has so far); the stream's first
    /// transaction, at a later LSN, follows them.
    pub async fn publish_snapshot_chunk(&mut self, batch: &ApplyBatch) -> Result<u64, SinkError> {
        let segments = columnar_batches(std::slice::from_ref(batch), |_| None)
            .map_err(|e| SinkError::Definite(format!("columnar batch: {e}")))?;
        let mut report = ApplyReport::default();
        let plan = self
            .plan_frames(
                &segments,
                PlanMode::SnapshotChunk,
                &mut report,
                &mut 0.0,
                &mut HashMap::new(),
            )
            .await?;
        self.publish(&plan).await
    }

    /// Encodes `segments` into each subject's frames (loading where each subject stands
    /// first), adds their rows to `report` and each tenant's last commit LSN to
    /// `tenant_lsn`. On an error every subject's state is dropped.
    async fn plan_frames(
        &mut self,
        segments: &[ColumnarRows],
        mut mode: PlanMode<'_>,
        report: &mut ApplyReport,
        encode_secs: &mut f64,
        tenant_lsn: &mut HashMap<String, Lsn>,
    ) -> Result<Plan, SinkError> {
        let max_payload = self.conn.as_ref().ok_or_else(not_connected)?.max_payload;
        let mut plan: Plan = Vec::new();
        for segment in segments {
            // Worker-scoped changes reach every worker; worker 0 publishes them.
            if self.worker != 0 && segment.tenant == ALL_TENANTS {
                report.skipped += segment.batch.num_rows() as u64;
                continue;
            }
            let subject = self.subject_of(segment);
            let lsn = tenant_lsn.entry(segment.tenant.clone()).or_default();
            *lsn = (*lsn).max(segment.last_lsn);
            let role = match &mut mode {
                PlanMode::Group => SegmentRole::Group,
                PlanMode::SnapshotChunk => SegmentRole::SnapshotChunk,
                PlanMode::LargePart(touched) => {
                    let large = touched
                        .entry(subject.clone())
                        .or_insert_with(|| LargeSubject {
                            handed: 0,
                            tenant: segment.tenant.clone(),
                            table: segment.table.qualified_name(),
                            schema: segment.batch.schema(),
                        });
                    let role = SegmentRole::LargePart {
                        before: large.handed,
                    };
                    large.handed += segment.batch.num_rows();
                    large.schema = segment.batch.schema();
                    role
                }
            };
            let frames = match self.load_subject(&subject).await.and_then(|()| {
                self.frames_of(&subject, segment, max_payload, report, encode_secs, role)
            }) {
                Ok(f) => f,
                Err(e) => {
                    self.subjects.clear();
                    return Err(e);
                }
            };
            count_ops(segment, &frames, report);
            match plan.iter_mut().find(|(s, _)| *s == subject) {
                Some((_, existing)) => existing.extend(frames),
                None => plan.push((subject, frames)),
            }
        }
        Ok(plan)
    }

    /// Encodes `batches` as `mode` says, publishes the frames and records the encoding
    /// time; adds to `report` and each tenant's last commit LSN to `tenant_lsn`.
    async fn publish_batches(
        &mut self,
        batches: &[ApplyBatch],
        mode: PlanMode<'_>,
        report: &mut ApplyReport,
        tenant_lsn: &mut HashMap<String, Lsn>,
    ) -> Result<(), SinkError> {
        let started = Instant::now();
        for batch in batches {
            self.count_unroutable(batch, report);
        }
        let segments = self.segments_of(batches)?;
        let mut encode_secs = 0.0;
        let plan = self
            .plan_frames(&segments, mode, report, &mut encode_secs, tenant_lsn)
            .await?;
        report.bytes += self.publish(&plan).await?;
        self.record_encoding(encode_secs, started);
        Ok(())
    }

    /// Counts the changes of `batch` that could not be routed to a tenant (not published).
    fn count_unroutable(&self, batch: &ApplyBatch, report: &mut ApplyReport) {
        for c in &batch.changes {
            if let TenantAction::Unroutable { reason } = &c.action {
                report.dead_lettered += 1;
                tracing::warn!(job = %self.job, table = %c.table.qualified_name(), %reason, "change not routable to a tenant; not published");
            }
        }
    }

    /// The columnar segments of `batches`, with their transactions' commit times.
    fn segments_of(&self, batches: &[ApplyBatch]) -> Result<Vec<ColumnarRows>, SinkError> {
        let reader = &self.reader;
        columnar_batches(batches, |lsn| reader.commit_times.get(lsn))
            .map_err(|e| SinkError::Definite(format!("columnar batch: {e}")))
    }

    /// Records the encoding time of an apply that took since `started`, and switches the
    /// encoders' effort when the governor says so.
    fn record_encoding(&mut self, encode_secs: f64, started: Instant) {
        self.stats.encode_micros.fetch_add(
            (encode_secs * 1e6) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let Some(effort) = self
            .governor
            .record(encode_secs, started.elapsed().as_secs_f64())
        else {
            return;
        };
        let fast = effort == crate::codec::Effort::Fast;
        self.stats
            .fast_mode
            .store(fast, std::sync::atomic::Ordering::Relaxed);
        if fast {
            self.stats
                .fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::warn!(job = %self.job, ?effort, encode_share = self.governor.share(), "encoding effort changed to stay within the CPU budget");
        for s in self.subjects.values_mut() {
            s.encoder.set_effort(effort);
        }
    }

    /// Publishes one large transaction part by part, as [`PartSource`] hands them out, so
    /// only a part and its frames are held at a time. Every frame is marked partial; once
    /// the last part is in, each subject the transaction touched whose last message is
    /// still partial gets an empty frame without the header, so a consumer sees the
    /// transaction end on every subject. After a crash or an error the transaction is
    /// published again from its first part and each subject skips the rows it has.
    async fn publish_large<F: FnMut(crate::sinks::backlog::Load) + Send>(
        &mut self,
        mut parts: PartSource<'_, '_, '_, F>,
    ) -> Result<ApplyReport, SinkError> {
        let mut report = ApplyReport::default();
        let mut touched: HashMap<String, LargeSubject> = HashMap::new();
        let mut tenant_lsn: HashMap<String, Lsn> = HashMap::new();
        let mut lsn = None;
        let outcome = async {
            while let Some(part) = parts.next_part().await? {
                lsn = Some(part.commit_lsn);
                let mode = PlanMode::LargePart(&mut touched);
                self.publish_batches(
                    std::slice::from_ref(&part),
                    mode,
                    &mut report,
                    &mut tenant_lsn,
                )
                .await?;
            }
            let Some(lsn) = lsn else {
                return Ok(());
            };
            let ends = self.end_frames(lsn, &touched)?;
            report.bytes += self.publish(&ends).await?;
            Ok::<_, SinkError>(())
        }
        .await;
        if let Err(e) = outcome {
            self.subjects.clear();
            return Err(e);
        }
        report.tenants = tenants_applied(tenant_lsn);
        Ok(report)
    }

    /// The empty frames ending transaction `lsn` on the subjects it touched whose last
    /// message says it goes on.
    fn end_frames(
        &mut self,
        lsn: Lsn,
        touched: &HashMap<String, LargeSubject>,
    ) -> Result<Plan, SinkError> {
        let mut plan = Vec::new();
        let mut names: Vec<&String> = touched.keys().collect();
        names.sort();
        for subject in names {
            let large = &touched[subject];
            let Some(state) = self.subjects.get_mut(subject) else {
                continue;
            };
            if state.last_lsn != lsn || state.partial_rows.is_none() {
                continue;
            }
            let empty = RecordBatch::new_empty(large.schema.clone());
            let payload = state.encoder.encode(&empty).map_err(|e| {
                SinkError::Definite(format!("encode the end frame for {subject}: {e}"))
            })?;
            let frame = Frame {
                payload,
                rows: 0,
                arrow_bytes: 0,
                first_lsn: lsn,
                last_lsn: lsn,
                partial_rows: None,
                tenant: large.tenant.clone(),
                table: large.table.clone(),
                choices: state.encoder.last_choices().to_vec(),
            };
            plan.push((subject.clone(), vec![frame]));
        }
        Ok(plan)
    }
}

fn not_connected() -> SinkError {
    SinkError::Transient("not connected to NATS".into())
}

fn lsn_column(batch: &RecordBatch) -> Result<&UInt64Array, SinkError> {
    batch
        .column_by_name(LSN_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        .ok_or_else(|| SinkError::Definite(format!("columnar batch without {LSN_COLUMN}")))
}

/// Each row's position among the rows of its transaction (rows are in LSN order).
pub fn ordinals_in_transaction(lsns: &UInt64Array) -> Vec<usize> {
    let mut out = Vec::with_capacity(lsns.len());
    for i in 0..lsns.len() {
        let same = i > 0 && lsns.value(i - 1) == lsns.value(i);
        out.push(if same { out[i - 1] + 1 } else { 0 });
    }
    out
}

/// How many leading rows the subject already has: every row of a transaction before
/// `last_lsn`, and of `last_lsn` all rows (complete) or the first `partial` ones.
pub fn covered_prefix(
    lsns: &UInt64Array,
    ordinals: &[usize],
    last_lsn: Lsn,
    partial: Option<usize>,
) -> usize {
    (0..lsns.len())
        .take_while(|&i| {
            let lsn = lsns.value(i);
            lsn < last_lsn || (lsn == last_lsn && partial.is_none_or(|p| ordinals[i] < p))
        })
        .count()
}

/// Publishes one subject's frames in order, each expecting the previous one's sequence.
async fn publish_subject(
    js: &jetstream::Context,
    job: &str,
    subject: &str,
    mut expected_seq: u64,
    frames: &[Frame],
) -> Result<Vec<u64>, SinkError> {
    let mut sequences = Vec::with_capacity(frames.len());
    for f in frames {
        let rows = f.rows.to_string();
        let mut msg = PublishMessage::build()
            .payload(f.payload.clone().into())
            .message_id(f.message_id(job))
            .expected_last_subject_sequence(expected_seq)
            .header(FIRST_LSN_HEADER, format_lsn(f.first_lsn).as_str())
            .header(LAST_LSN_HEADER, format_lsn(f.last_lsn).as_str())
            .header(ROWS_HEADER, rows.as_str())
            .header(TENANT_HEADER, f.tenant.as_str())
            .header(TABLE_HEADER, f.table.as_str());
        if let Some(p) = f.partial_rows {
            msg = msg.header(PARTIAL_ROWS_HEADER, p.to_string().as_str());
        }
        let publish_error = |e: jetstream::context::PublishError| {
            if matches!(e.kind(), PublishErrorKind::WrongLastSequence) {
                SinkError::Transient(format!(
                    "{subject}: the stream's last message is not the one this sink published \
                     (another writer, or a message lost in flight); re-reading where it stands"
                ))
            } else {
                SinkError::Transient(format!("publish to {subject}: {e}"))
            }
        };
        let ack = js
            .send_publish(subject.to_string(), msg)
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        expected_seq = ack.sequence;
        sequences.push(ack.sequence);
    }
    Ok(sequences)
}

impl Sink for NatsSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn reconnect(&mut self) -> Result<(), SinkError> {
        self.conn = None;
        self.subjects.clear();
        let client = self
            .config
            .access
            .connect(&self.config.url, Duration::from_secs(5))
            .await
            .map_err(|e| match e.is_transient() {
                true => SinkError::Transient(e.to_string()),
                false => SinkError::Definite(e.to_string()),
            })?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: self.config.stream.clone(),
                subjects: vec![subjects::job_filter(&self.config.subject_prefix, &self.job)],
                duplicate_window: self.config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| SinkError::Transient(format!("stream {}: {e}", self.config.stream)))?;
        self.conn = Some(Connection {
            js,
            stream,
            max_payload,
        });
        Ok(())
    }

    async fn apply(&mut self, batches: &[ApplyBatch]) -> Result<ApplyReport, SinkError> {
        let mut report = ApplyReport::default();
        let mut tenant_lsn: HashMap<String, Lsn> = HashMap::new();
        self.publish_batches(batches, PlanMode::Group, &mut report, &mut tenant_lsn)
            .await?;
        report.tenants = tenants_applied(tenant_lsn);
        Ok(report)
    }

    async fn apply_large(&mut self, txn: &mut SpilledTxn) -> Result<ApplyReport, SinkError> {
        self.publish_large(PartSource::<fn(crate::sinks::backlog::Load)>::spilled(txn)?)
            .await
    }

    async fn apply_large_live<F: FnMut(crate::sinks::backlog::Load) + Send>(
        &mut self,
        parts: &mut LiveParts<'_, F>,
    ) -> Result<ApplyReport, SinkError> {
        self.publish_large(PartSource::Live(parts)).await
    }
}

/// Each tenant's applied position.
fn tenants_applied(tenant_lsn: HashMap<String, Lsn>) -> Vec<TenantApplied> {
    tenant_lsn
        .into_iter()
        .map(|(tenant, lsn)| TenantApplied {
            tenant,
            lsn,
            ..TenantApplied::default()
        })
        .collect()
}

/// Adds the published rows' inserts/updates and deletes/truncates to the report.
fn count_ops(segment: &ColumnarRows, frames: &[Frame], report: &mut ApplyReport) {
    let published: usize = frames.iter().map(|f| f.rows).sum();
    let n = segment.batch.num_rows();
    let Some(ops) = segment
        .batch
        .column_by_name(OP_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>())
    else {
        return;
    };
    for i in n - published..n {
        match ops.value(i) {
            "D" | "T" => report.deleted += 1,
            _ => report.upserted += 1,
        }
    }
}
