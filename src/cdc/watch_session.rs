//! One plain session to the source, shared by everything a running job reads there now and
//! then: its slot's health, its tables' partitions, its sequences, the tables its patterns
//! match and the source's scan statistics. Each of those used to open its own session, so a
//! job held five idle sessions against the source's `max_connections`; they now take turns
//! on one (tokio-postgres pipelines the queries of a shared client).
//!
//! The session is opened on first use and reopened after a failure: a watcher whose query
//! failed hands the client back with [`WatchSession::failed`], and the next caller opens a
//! new one, once for all of them.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::cdc::error::CdcError;
use crate::pg_connect::{self, OnClose};

/// The shared session (cheap to clone: clones share it).
#[derive(Clone)]
pub struct WatchSession {
    inner: Arc<Inner>,
}

struct Inner {
    dsn: String,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl WatchSession {
    /// A session to `dsn`, not opened until a watcher asks for it.
    pub fn new(dsn: impl Into<String>) -> WatchSession {
        WatchSession {
            inner: Arc::new(Inner {
                dsn: dsn.into(),
                client: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The open session, opening one if there is none (or the last one has closed).
    /// Callers asking at the same time wait for one opening rather than each opening one.
    pub async fn client(&self) -> Result<Arc<Client>, CdcError> {
        let mut slot = self.inner.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *slot = None;
        let client = pg_connect::connect_source(&self.inner.dsn, "job watch", OnClose::Debug)
            .await
            .map_err(CdcError::connect)?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Tells the session that a query on `client` failed, so the next [`client`] call
    /// opens a new session, unless another watcher has already replaced it. (A query
    /// refused by the server leaves the session usable, but a reopen costs little at these
    /// intervals and also clears a session the network has silently lost.)
    ///
    /// [`client`]: WatchSession::client
    pub async fn failed(&self, client: &Arc<Client>) {
        let mut slot = self.inner.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *slot = None;
        }
    }
}

impl std::fmt::Debug for WatchSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the DSN: it may hold a password.
        f.debug_struct("WatchSession").finish_non_exhaustive()
    }
}
