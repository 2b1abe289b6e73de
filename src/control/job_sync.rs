//! `POST /v1/jobs/{id}/sync` (`helios-repl jobs sync`): the step before a tenant is cut over
//! to a target. It reads the source's WAL position, waits until the job has confirmed it
//! (every change the source committed before the request is durable on every sink), then
//! raises the job's sequences on its PostgreSQL targets (`control::sequence_sync`). With
//! the tenant's writes stopped on the source, the target then holds all of them, and ids
//! it draws do not collide with replicated ones.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::cdc::catalog;
use crate::change::{format_lsn, parse_lsn};
use crate::control::job_control::{
    ControlError, JobState, SyncRequest, SyncResult, SYNC_TIMEOUT_DEFAULT_SECS,
    SYNC_TIMEOUT_MAX_SECS,
};
use crate::control::job_runner::JobStats;
use crate::control::job_spec::JobSpec;
use crate::control::sequence_sync;

/// How often the wait reads the job's confirmed position.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// The request's timeout, checked.
pub fn timeout_of(request: &SyncRequest) -> Result<Duration, ControlError> {
    let secs = request.timeout_secs.unwrap_or(SYNC_TIMEOUT_DEFAULT_SECS);
    if (1..=SYNC_TIMEOUT_MAX_SECS).contains(&secs) {
        Ok(Duration::from_secs(secs))
    } else {
        Err(ControlError::Invalid {
            field: "timeout_secs".into(),
            message: format!("must be 1..={SYNC_TIMEOUT_MAX_SECS} seconds, not {secs}"),
        })
    }
}

/// Why the job cannot catch up now, if it cannot.
fn not_running(stats: &JobStats) -> Option<ControlError> {
    match stats.state() {
        (JobState::Paused, _) => Some(ControlError::Conflict(
            "the job is paused: resume it, then sync".into(),
        )),
        (JobState::Failed, reason) => Some(ControlError::Conflict(format!(
            "the job failed{}",
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        ))),
        _ => None,
    }
}

/// Waits for `stats`' job (`spec`, its tables as it carries them) to confirm the source's
/// position at the call, within `timeout`, then raises its sequences.
pub async fn sync(
    spec: &JobSpec,
    stats: &JobStats,
    timeout: Duration,
) -> Result<SyncResult, ControlError> {
    let started = Instant::now();
    if let Some(e) = not_running(stats) {
        return Err(e);
    }
    let unavailable = |what: &str, e: String| {
        ControlError::Unavailable(format!("cannot {what} the job's source: {e}"))
    };
    let source = catalog::connect(spec.source.dsn.expose())
        .await
        .map_err(|e| unavailable("reach", e.to_string()))?;
    let row = source
        // A standby source (logical decoding on a standby) has no insert position.
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                          ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|e| unavailable("read the WAL position of", e.to_string()))?;
    let text: Option<String> = row.get(0);
    let goal = text
        .as_deref()
        .and_then(parse_lsn)
        .ok_or_else(|| unavailable("read the WAL position of", format!("{text:?}")))?;
    drop(source);
    loop {
        let confirmed = stats.reader.confirmed.load(Relaxed);
        if confirmed >= goal {
            break;
        }
        if let Some(e) = not_running(stats) {
            return Err(e);
        }
        if started.elapsed() >= timeout {
            return Err(ControlError::TimedOut(format!(
                "the job confirmed {} within {timeout:?}, short of the source's {} ({} bytes \
                 behind): it is still catching up; sync again, with a longer timeout_secs",
                format_lsn(confirmed),
                format_lsn(goal),
                goal - confirmed
            )));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let round = sequence_sync::sync_now(spec)
        .await
        .map_err(|e| ControlError::Unavailable(format!("cannot raise the job's sequences: {e}")))?;
    Ok(SyncResult {
        source_lsn: format_lsn(goal),
        confirmed_lsn: format_lsn(stats.reader.confirmed.load(Relaxed)),
        waited_secs: started.elapsed().as_secs_f64(),
        sequences_raised: round.raised as u64,
        sequence_problems: round.problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_defaults_to_a_minute_and_stays_within_an_hour() {
        assert_eq!(
            timeout_of(&SyncRequest::default()).unwrap(),
            Duration::from_secs(60)
        );
        let of = |secs| {
            timeout_of(&SyncRequest {
                timeout_secs: Some(secs),
            })
        };
        assert_eq!(of(3600).unwrap(), Duration::from_secs(3600));
        for bad in [0, 3601] {
            let e = of(bad).unwrap_err().to_string();
            assert!(e.contains("timeout_secs") && e.contains("1..=3600"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_paused_or_failed_job_is_refused_before_waiting() {
        let stats = JobStats::new(1);
        stats.set_state(JobState::Paused, None);
        let spec = crate::control::job_spec::JobSpec::from_toml_str(
            crate::control::job_spec::MINIMAL_SPEC,
        )
        .unwrap();
        let e = sync(&spec, &stats, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::Conflict(_)) && e.to_string().contains("paused"));
        stats.set_state(JobState::Failed, Some("target gone".into()));
        let e = sync(&spec, &stats, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("failed: target gone"), "{e}");
    }
}
