//! Access events from NATS: each message on the subject (and its sub-subjects) carries the
//! same JSON document as `POST /v1/access`; it is checked the same way and handed to the
//! job control. A message that is not acceptable is logged with the field at fault and
//! counted, never silently dropped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use futures_util::StreamExt;

use crate::control::access::AccessEvents;
use crate::control::job_control::JobControl;
use crate::sinks::nats::access::NatsAccess;

/// Default subject (`<subject>.>` is subscribed too).
pub const DEFAULT_SUBJECT: &str = "helios.access";

/// Messages rejected since the server started (for logs and tests).
pub static REJECTED: AtomicU64 = AtomicU64::new(0);

/// Why the subscriber could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessSubscriberError {
    /// The server could not be reached.
    #[error("connect to NATS: {0}")]
    Connect(String),
    /// The subscription was refused.
    #[error("subscribe to `{subject}`: {reason}")]
    Subscribe { subject: String, reason: String },
}

/// Connects, subscribes to `subject` and `subject.>`, and feeds `control` until aborted.
pub async fn start(
    url: &str,
    access: &NatsAccess,
    subject: &str,
    control: Arc<dyn JobControl>,
) -> Result<tokio::task::JoinHandle<()>, AccessSubscriberError> {
    let client = access
        .connect(url, std::time::Duration::from_secs(5))
        .await
        .map_err(|e| AccessSubscriberError::Connect(e.to_string()))?;
    let subscribe = |s: String| {
        let client = client.clone();
        async move {
            client
                .subscribe(s.clone())
                .await
                .map_err(|e| AccessSubscriberError::Subscribe {
                    subject: s,
                    reason: e.to_string(),
                })
        }
    };
    let exact = subscribe(subject.to_owned()).await?;
    let nested = subscribe(format!("{subject}.>")).await?;
    // Make sure the server has the subscriptions before callers start publishing.
    client
        .flush()
        .await
        .map_err(|e| AccessSubscriberError::Connect(e.to_string()))?;
    let mut messages = futures_util::stream::select(exact, nested);
    tracing::info!(url, subject, "listening for access events");
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Some(message) = messages.next().await {
            match AccessEvents::from_json(&message.payload) {
                Ok(events) => {
                    if let Err(e) = control.record_access(events).await {
                        REJECTED.fetch_add(1, Relaxed);
                        tracing::warn!(subject = %message.subject, error = %e, "access events not recorded");
                    }
                }
                Err(e) => {
                    REJECTED.fetch_add(1, Relaxed);
                    tracing::warn!(subject = %message.subject, field = %e.field, reason = %e.reason, "access event message rejected");
                }
            }
        }
        tracing::warn!("access event subscription ended");
    }))
}
