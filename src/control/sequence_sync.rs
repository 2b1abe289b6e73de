//! Sequences kept in step: logical replication carries rows, not sequence values, so a
//! target cut over to take a tenant's writes would draw ids its replicated rows already
//! hold. While a job runs, every [`SYNC_EVERY`] and once more when it stops in order, each
//! sequence the job's tables draw from on the source (`cdc::column_defaults::sequences`)
//! is raised on every PostgreSQL target that has a sequence of that name to at least the
//! source's last value; never lowered, so one a target has drawn further keeps its place.
//! Sequences are shared by every tenant, so a target's is the source's, whoever drew it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use crate::cdc::catalog;
use crate::cdc::column_defaults::{self, LastValue};
use crate::cdc::error::CdcError;
use crate::cdc::watch_session::WatchSession;
use crate::control::job_spec::JobSpec;
use crate::sinks::pg_apply;
use crate::sql_text::quote_qualified;

/// How often a running job raises its sequences on its targets.
pub const SYNC_EVERY: Duration = Duration::from_secs(10);

/// How long a stopping job waits for its last sync.
pub const LAST_SYNC_LIMIT: Duration = Duration::from_secs(10);

/// The sequences (quoted `schema.name`) the columns of `spec`'s tables draw from on the
/// source (a table the source no longer has draws from none).
pub async fn job_sequences(source: &Client, spec: &JobSpec) -> Result<Vec<String>, CdcError> {
    let names: Vec<String> = spec
        .tables
        .iter()
        .map(|t| quote_qualified(t.schema(), t.table()))
        .collect();
    let rows = source
        .query(
            "SELECT to_regclass(name)::oid FROM unnest($1::text[]) AS t(name)
              WHERE to_regclass(name) IS NOT NULL",
            &[&names],
        )
        .await
        .map_err(CdcError::query("look up the job's tables"))?;
    let mut out = BTreeSet::new();
    for row in &rows {
        for s in column_defaults::sequences(source, row.get(0)).await? {
            out.insert(s.qualified());
        }
    }
    Ok(out.into_iter().collect())
}

/// Raises `sequence` on `target` to `value` unless it is already there or further (for a
/// descending sequence, lowers it unless it is already lower); returns whether the target
/// has such a sequence.
async fn raise(target: &Client, sequence: &str, value: i64) -> Result<bool, tokio_postgres::Error> {
    let row = target
        .query_opt(
            // A descending sequence (negative increment) is "raised" downwards.
            "SELECT setval(s, CASE WHEN q.seqincrement < 0
                                   THEN least($2::int8, coalesce(pg_sequence_last_value(s), $2::int8))
                                   ELSE greatest($2::int8, coalesce(pg_sequence_last_value(s), $2::int8)) END)
             FROM (SELECT to_regclass($1) AS s) found JOIN pg_sequence q ON q.seqrelid = s",
            &[&sequence, &value],
        )
        .await?;
    Ok(row.is_some())
}

/// What a job's syncs remember between rounds.
#[derive(Debug, Default)]
pub struct Synced {
    /// Per sequence, the source's value every target has been raised to.
    values: HashMap<String, i64>,
    /// Problems already warned about.
    warned: BTreeSet<String>,
}

impl Synced {
    /// Warns about each of `problems` not warned about before.
    fn warn_new(&mut self, job: &str, problems: &[String]) {
        for problem in problems {
            if self.warned.insert(problem.clone()) {
                tracing::warn!(job, "{problem}");
            }
        }
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Sequences raised on the targets (a sequence on two targets counts twice).
    pub raised: usize,
    /// Sequences it could not raise, each with why and what to do: a target that would
    /// then draw ids the source already gave.
    pub problems: Vec<String>,
}

/// One round: raises each of `sequences` whose source value moved since the last round on
/// every target. A sequence the source cannot show or a target refuses is a problem of
/// the round, tried again next round.
pub async fn sync_once(
    source: &Client,
    targets: &[Client],
    sequences: &[String],
    synced: &mut Synced,
) -> Result<Round, CdcError> {
    let mut round = Round::default();
    for sequence in sequences {
        let value = match column_defaults::last_value(source, sequence).await? {
            LastValue::Drawn(value) => value,
            LastValue::NeverDrawn => continue,
            LastValue::NotReadable => {
                round.problems.push(format!(
                    "sequence {sequence} is not kept in step on the targets: the job's role may \
                     not read it on the source (GRANT SELECT ON SEQUENCE {sequence})"
                ));
                continue;
            }
        };
        if synced.values.get(sequence) == Some(&value) {
            continue;
        }
        let mut everywhere = true;
        for (index, target) in targets.iter().enumerate() {
            match raise(target, sequence, value).await {
                Ok(true) => round.raised += 1,
                Ok(false) => {}
                Err(e) => {
                    everywhere = false;
                    round.problems.push(format!(
                        "sequence {sequence} is not kept in step on target {index} (its \
                         postgres sinks in order): the target refused to move it to {value}: {}",
                        crate::sql_text::describe_pg_error(&e)
                    ));
                }
            }
        }
        if everywhere {
            synced.values.insert(sequence.clone(), value);
        }
    }
    Ok(round)
}

/// The target sessions and the list a round needs, opened afresh after a failure.
struct Sessions {
    targets: Vec<Client>,
    sequences: Vec<String>,
}

/// Opens the sessions to `spec`'s PostgreSQL targets and lists its sequences on `source`
/// (`None`: no sequence, nothing to sync).
async fn open(spec: &JobSpec, source: &Client) -> Result<Option<Sessions>, String> {
    let sequences = job_sequences(source, spec)
        .await
        .map_err(|e| e.to_string())?;
    if sequences.is_empty() {
        return Ok(None);
    }
    let targets_dsns = crate::control::job_runner::postgres_dsns(spec);
    let mut targets = Vec::with_capacity(targets_dsns.len());
    for dsn in &targets_dsns {
        targets.push(
            pg_apply::sink::connect(dsn)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(Some(Sessions { targets, sequences }))
}

/// Keeps the job's sequences raised on its targets every [`SYNC_EVERY`] until aborted
/// (`spec`: the job's tables as it carries them; `source`: the job's shared session), with
/// each round's problems in `problems`. Ends at once for a job without PostgreSQL targets
/// or sequences.
pub async fn keep_up(spec: JobSpec, source: WatchSession, problems: Arc<Mutex<Vec<String>>>) {
    if crate::control::job_runner::postgres_dsns(&spec).is_empty() {
        return;
    }
    let mut synced = Synced::default();
    let mut sessions: Option<Sessions> = None;
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let client = match source.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(job = %spec.name, error = %e, "cannot open a source session to sync sequences");
                continue;
            }
        };
        if sessions.is_none() {
            match open(&spec, &client).await {
                Ok(None) => return,
                Ok(Some(s)) => sessions = Some(s),
                Err(e) => {
                    tracing::debug!(job = %spec.name, error = %e, "cannot open sessions to sync sequences");
                    source.failed(&client).await;
                    continue;
                }
            }
        }
        let Some(s) = &sessions else { continue };
        match sync_once(&client, &s.targets, &s.sequences, &mut synced).await {
            Ok(round) => {
                if round.raised > 0 {
                    tracing::debug!(job = %spec.name, raised = round.raised, "sequences raised on the targets");
                }
                synced.warn_new(&spec.name, &round.problems);
                if let Ok(mut current) = problems.lock() {
                    *current = round.problems;
                }
            }
            Err(e) => {
                tracing::debug!(job = %spec.name, error = %e, "cannot sync sequences");
                sessions = None;
                source.failed(&client).await;
            }
        }
    }
}

/// One round now, on sessions of its own.
pub async fn sync_now(spec: &JobSpec) -> Result<Round, String> {
    if crate::control::job_runner::postgres_dsns(spec).is_empty() {
        return Ok(Round::default());
    }
    let source = catalog::connect(spec.source.dsn.expose())
        .await
        .map_err(|e| e.to_string())?;
    let Some(s) = open(spec, &source).await? else {
        return Ok(Round::default());
    };
    sync_once(&source, &s.targets, &s.sequences, &mut Synced::default())
        .await
        .map_err(|e| e.to_string())
}

/// One last round as the job stops in order, so a target cut over right after holds
/// sequences past every replicated id. Logged, not an error, if it cannot be done in
/// [`LAST_SYNC_LIMIT`].
pub async fn sync_at_stop(spec: &JobSpec) {
    match tokio::time::timeout(LAST_SYNC_LIMIT, sync_now(spec)).await {
        Ok(Ok(round)) => {
            tracing::debug!(job = %spec.name, raised = round.raised, "sequences raised on the targets at stop");
            Synced::default().warn_new(&spec.name, &round.problems);
        }
        Ok(Err(e)) => {
            tracing::warn!(job = %spec.name, error = %e, "cannot raise the job's sequences on its targets as it stops");
        }
        Err(_) => {
            tracing::warn!(job = %spec.name, "the job's sequences were not raised on its targets within {LAST_SYNC_LIMIT:?} of its stop");
        }
    }
}
