//! The job's replication slot as the source sees it: how much WAL the source keeps for it
//! (from the slot's `restart_lsn`, which an open transaction can hold far behind the
//! confirmed position) and how much more it may write before it invalidates the slot
//! (`max_slot_wal_keep_size`). Read on a plain session while the job runs, so users see
//! the disk a slot costs and are warned before the source drops its WAL.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::cdc::error::CdcError;
use crate::cdc::watch_session::WatchSession;

/// How often a running job reads its slot's health.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The slot's state on the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotHealth {
    /// `pg_replication_slots.wal_status`: `reserved` (within `max_wal_size`), `extended`
    /// (beyond it, still kept), `unreserved` (beyond `max_slot_wal_keep_size`: the next
    /// checkpoint invalidates the slot unless it advances) or `lost` (invalidated).
    pub wal_status: String,
    /// WAL bytes the source keeps for the slot (its write position minus `restart_lsn`).
    pub retained_wal_bytes: u64,
    /// WAL bytes the source may still write before the slot is past
    /// `max_slot_wal_keep_size` (`None`: no limit set, the source keeps WAL for it
    /// without bound).
    pub safe_wal_bytes: Option<u64>,
}

/// Reads the slot's health (`None`: no such slot).
pub async fn read(client: &Client, slot: &str) -> Result<Option<SlotHealth>, CdcError> {
    let row = client
        .query_opt(
            // Clamped below in Rust: `greatest` would turn a NULL (no limit) into 0.
            "SELECT coalesce(wal_status, 'lost'),
                    (pg_current_wal_lsn() - restart_lsn)::int8,
                    safe_wal_size::int8
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(CdcError::query("read the replication slot's health"))?;
    Ok(row.map(|r| SlotHealth {
        wal_status: r.get(0),
        retained_wal_bytes: r
            .get::<_, Option<i64>>(1)
            .map_or(0, |b| u64::try_from(b).unwrap_or(0)),
        safe_wal_bytes: r
            .get::<_, Option<i64>>(2)
            .map(|b| u64::try_from(b).unwrap_or(0)),
    }))
}

/// Reads `slot`'s health every [`CHECK_EVERY`] into `into` until aborted, warning when the
/// source is about to invalidate it ([`warning`]). A failed read is logged and tried again
/// at the next check, on a new session.
pub async fn watch(
    job: String,
    source: WatchSession,
    slot: String,
    into: std::sync::Arc<std::sync::Mutex<Option<SlotHealth>>>,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let mut before: Option<String> = None;
    loop {
        tick.tick().await;
        let Ok(client) = source.client().await else {
            continue;
        };
        match read(&client, &slot).await {
            Ok(Some(health)) => {
                if let Some(warning) = warning(before.as_deref(), &health) {
                    tracing::warn!(job, slot, safe_wal_bytes = ?health.safe_wal_bytes, "{warning}");
                }
                before = Some(health.wal_status.clone());
                if let Ok(mut s) = into.lock() {
                    *s = Some(health);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(job, error = %e, "cannot read the replication slot's health");
                source.failed(&client).await;
            }
        }
    }
}

/// What to warn about when the slot's status went from `before` to `now`: entering
/// `unreserved` (the source will invalidate it) once, not at every check.
pub fn warning(before: Option<&str>, now: &SlotHealth) -> Option<String> {
    if now.wal_status != "unreserved" || before == Some("unreserved") {
        return None;
    }
    Some(format!(
        "the source keeps {} bytes of WAL for the replication slot, past max_slot_wal_keep_size: \
         its next checkpoint invalidates the slot unless the job catches up (the job would then \
         start over with a new snapshot); raise max_slot_wal_keep_size, or see why the job is \
         behind (its sinks, or a long-running transaction on the source holding the slot back)",
        now.retained_wal_bytes
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(status: &str) -> SlotHealth {
        SlotHealth {
            wal_status: status.into(),
            retained_wal_bytes: 5 << 20,
            safe_wal_bytes: Some(0),
        }
    }

    #[test]
    fn entering_unreserved_is_warned_about_once() {
        assert_eq!(warning(None, &health("reserved")), None);
        assert_eq!(warning(Some("reserved"), &health("extended")), None);
        let warned = warning(Some("extended"), &health("unreserved")).expect("warned");
        assert!(warned.contains("5242880 bytes"), "{warned}");
        assert!(warning(None, &health("unreserved")).is_some());
        assert_eq!(
            warning(Some("unreserved"), &health("unreserved")),
            None,
            "not again at every check"
        );
        assert_eq!(warning(Some("unreserved"), &health("lost")), None);
    }
}
