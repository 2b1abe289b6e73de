//! Sessions with PostgreSQL servers (sources, targets, the metadata store), encrypted as
//! the DSN asks.
//!
//! A DSN asks for TLS the way libpq's do (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
//! `sslpassword`, `sslcrl`, `sslcrldir`):
//! [`PgDsn::parse`] reads those ([`dsn`]), [`connect`] opens a tokio-postgres session with
//! TLS as they say ([`tls`], through `tokio-postgres-rustls`). The replication session of
//! `cdc::transport` speaks the protocol itself and makes the same handshake with
//! [`tls::negotiate`].

pub mod dsn;
pub mod tls;

pub use dsn::{DsnError, PgDsn, RootCerts, SslMode, TlsSettings};
pub use tls::TlsError;

use tokio_postgres::Client;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The DSN itself is wrong (a retry cannot help).
    #[error("{0}")]
    Dsn(#[from] DsnError),
    /// The TLS settings cannot be met from here (a file, a missing root certificate).
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The server or the network said no (or a TLS handshake failed).
    #[error("{}", crate::sql_text::describe_pg_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

impl ConnectError {
    /// Whether the same DSN can work later without anyone editing it or its files.
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnectError::Postgres(_))
    }
}

/// How loudly a session's end is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClose {
    /// Sessions the caller reopens when they fail (sources, targets).
    Debug,
    /// A session the process cannot work without (the metadata store).
    Warn,
}

/// The time limits an operator may set on a database or role for applications
/// (`ALTER ROLE … SET statement_timeout`), which every session of ours lifts for itself:
/// they would cut a snapshot's `COPY`, a large transaction's apply, a lock wait behind a
/// user's DDL, or a replication session holding its exported snapshot while others load
/// short, and the retry would meet the same limit. `pg_dump` lifts the same.
pub const UNLIMITED: [&str; 3] = [
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// A limit like [`UNLIMITED`]'s that only PostgreSQL 14 and later know (a `SET` of it
/// fails on an older target): it ends a session idle that long between statements, and
/// ours are idle between changes (a target's sink sessions, the source's watch) and while
/// they wait on one another (with it set at 300 ms on both databases, a job loading and
/// then applying one large transaction never caught up). Lifted where the server knows it.
pub const IDLE_LIMIT: &str = "idle_session_timeout";

/// The value styles every session of ours reads and writes values in, whatever the
/// operator set on the server, database or role (as PostgreSQL's own apply worker asks of
/// its walsender): values cross from one server to the other as text, so the source must
/// print them as the target reads them, whoever set what. Under `SQL, DMY` the source
/// prints 1 March as `01/03/2026`, which a target under `SQL, MDY` reads as 3 January;
/// an interval printed in the SQL standard's style reads otherwise under PostgreSQL's;
/// `extra_float_digits` below 1 drops a float's last digits. ISO dates read the same under
/// every field order, and `extra_float_digits = 3` prints floats exactly (the shortest
/// exact form since PostgreSQL 12). [`crate::time_text`] parses ISO too. The last two
/// are `pg_dump`'s, for what a session reads: with `standard_conforming_strings` off, a
/// backslash in a quoted literal (an enum label, a default) is an escape; under
/// `xmloption = document`, an XML value that is content (`<a/><b/>`, plain text) is
/// refused. `money` prints in the session's `lc_monetary` (`1.234,56 €` under
/// `de_DE.UTF-8`, which a target under C refuses): C's form on both sides, with C's two
/// decimals, carries the stored amount as it is.
pub const VALUE_STYLES: [(&str, &str); 6] = [
    ("datestyle", "ISO"),
    ("intervalstyle", "postgres"),
    ("extra_float_digits", "3"),
    ("standard_conforming_strings", "on"),
    ("xmloption", "content"),
    ("lc_monetary", "C"),
];

/// What a session of ours commits with when the server, database or role says
/// `synchronous_commit = off`: `on`. Off, a commit returns before its WAL is flushed and a
/// crash of the server can lose it; the job confirms a source position to the slot once
/// the target's commit holding its changes has returned (DESIGN's first invariant), and
/// the source then drops that WAL, so a lost target commit cannot be streamed again: the
/// next start finds the slot ahead of the target's checkpoint and loads every table
/// anew. Any other value (`local`, `remote_write`, `on`, `remote_apply`) flushes locally
/// and is kept as the operator set it.
pub const DURABLE_COMMIT: &str = "SELECT set_config('synchronous_commit', 'on', false) \
     WHERE current_setting('synchronous_commit') = 'off'";

/// The statements that lift [`UNLIMITED`] and [`IDLE_LIMIT`], fix [`VALUE_STYLES`] and
/// [`DURABLE_COMMIT`] in a session (sent after login rather than in the startup packet's
/// `options`, which connection poolers such as PgBouncer refuse), and [`QUIET`].
pub fn session_settings() -> String {
    let mut sets: Vec<String> = UNLIMITED
        .iter()
        .map(|name| format!("SET {name} = 0"))
        .chain(
            VALUE_STYLES
                .iter()
                .map(|(name, value)| format!("SET {name} = '{value}'")),
        )
        .collect();
    sets.push(format!(
        "SELECT set_config('{IDLE_LIMIT}', '0', false) \
         WHERE current_setting('{IDLE_LIMIT}', true) IS NOT NULL"
    ));
    sets.push(DURABLE_COMMIT.to_string());
    sets.push(QUIET.to_string());
    sets.join("; ")
}

/// Keeps the server's notices out of our log: the `IF NOT EXISTS` and `IF EXISTS` of
/// every table load each sent one (three per table, thousands for a schema-per-tenant
/// job's first start); warnings and errors still come through.
pub const QUIET: &str = "SET client_min_messages = warning";

/// The startup packet's `options` that lift [`UNLIMITED`] and [`IDLE_LIMIT`] (sources
/// are PostgreSQL 15 or later) and fix [`VALUE_STYLES`] (for replication sessions, which
/// poolers do not carry, and which take no `SET` once streaming: the walsender prints the
/// stream's values in these styles).
pub fn startup_options() -> String {
    UNLIMITED
        .iter()
        .chain(std::iter::once(&IDLE_LIMIT))
        .map(|name| format!("-c {name}=0"))
        .chain(
            VALUE_STYLES
                .iter()
                .map(|(name, value)| format!("-c {name}={value}")),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens a session on `dsn` with [`session_settings`]; its connection task runs on the
/// current runtime until the client is dropped, and logs why it ended, naming the
/// session by `role`.
pub async fn connect(
    dsn: &str,
    role: &'static str,
    on_close: OnClose,
) -> Result<Client, ConnectError> {
    open_with(dsn, role, on_close, &session_settings()).await
}

/// Opens a session on `dsn` and runs `settings` in it (one round trip).
async fn open_with(
    dsn: &str,
    role: &'static str,
    on_close: OnClose,
    settings: &str,
) -> Result<Client, ConnectError> {
    let client = open(dsn, role, on_close).await?;
    client.batch_execute(settings).await?;
    Ok(client)
}

/// What a source session sets besides [`session_settings`]: a `search_path` of the
/// schemas that hold the source's extensions, and no other (empty where it has none, as
/// `pg_dump` runs). Names the source's catalog prints (`format_type`, `pg_get_expr`,
/// `pg_get_indexdef`, `pg_get_constraintdef`) leave out the schema of whatever the
/// session's path finds, and those names are run on a target whose path differs: with
/// the source database's path on `shop`, an enum of `shop` printed as `status` and a
/// default as `nextval('orders_id_seq'::regclass)`, which no target session found. So
/// names of other schemas come with their schema. An extension's functions and operator
/// classes go bare (`uuid_generate_v4()`, `gin_trgm_ops`), as its types do
/// ([`crate::cdc::type_names`]): a target may keep the extension in another schema
/// (Supabase keeps them in `extensions`), and its sessions put their extensions' schemas
/// on their path ([`EXTENSIONS_ON_PATH`]); with the path empty, a default of
/// `public.uuid_generate_v4()` was left out on such a target. Objects of their own in a
/// schema that also holds an extension (`public`, often) go bare too, and are found on
/// a target whose path has that schema (a role's default path has `public`). Target
/// sessions keep their path: the target's own triggers run in them.
pub const QUALIFIED_NAMES: &str = "SELECT set_config('search_path', \
     coalesce(string_agg(quote_ident(n.nspname), ', ' ORDER BY n.nspname), ''), false) \
     FROM pg_namespace n \
     WHERE n.oid IN (SELECT extnamespace FROM pg_extension) AND n.nspname <> 'pg_catalog'";

/// Opens a session on a source's `dsn` as [`connect`] does, with [`QUALIFIED_NAMES`].
pub async fn connect_source(
    dsn: &str,
    role: &'static str,
    on_close: OnClose,
) -> Result<Client, ConnectError> {
    let settings = format!("{}; {QUALIFIED_NAMES}", session_settings());
    open_with(dsn, role, on_close, &settings).await
}

/// What a target session of ours applies as where its role may say so: a replica
/// (`session_replication_role = replica`), as PostgreSQL's own apply worker does. The
/// target's foreign keys and ordinary triggers then do not fire on replicated rows;
/// triggers the operator marked `ENABLE REPLICA` or `ENABLE ALWAYS` do. The job loads its
/// tables apart and writes a batch table by table, so a foreign key between two of them
/// refused a child row written before its parent (the first snapshot of a target whose
/// schema an operator made with its keys failed), and a trigger that rewrites rows made
/// the target's values differ from the source's. Setting it needs a superuser or, from
/// PostgreSQL 15, `GRANT SET ON PARAMETER session_replication_role`: without either the
/// session stays `origin` (the exception is caught in the server, so its log does not
/// fill with one refusal per session), and [`crate::sinks::pg_apply::target_rules`] says
/// what that means for the job's tables.
pub const AS_REPLICA: &str = "DO $$BEGIN SET session_replication_role = replica; \
     EXCEPTION WHEN insufficient_privilege THEN NULL; END$$";

/// What a target session of ours sets so that row-level security never hides rows from
/// it: `row_security = off`, as `pg_dump` runs. Off, a statement that a policy would
/// filter fails ("query would be affected by row-level security policy") instead of
/// updating or deleting fewer rows than the source did without a word; a superuser, a
/// role with `BYPASSRLS` and a table's owner are not filtered and see no difference. The
/// job's start refuses tables whose policies apply to its role
/// ([`crate::sinks::pg_apply::target_rules`]); this covers a policy added while it runs.
pub const NO_HIDDEN_ROWS: &str = "SET row_security = off";

/// Puts the schemas that hold the server's extensions at the end of the session's
/// `search_path` where it lacks them: the job names an extension's types bare
/// ([`crate::cdc::type_names`]), since a target may keep an extension in another schema
/// than the source (Supabase keeps them all in `extensions`, off a plain role's path).
/// Run when a target session opens, and again after the job creates an extension.
pub const EXTENSIONS_ON_PATH: &str = "SELECT set_config('search_path', \
     concat_ws(', ', nullif(current_setting('search_path'), ''), \
               string_agg(quote_ident(n.nspname), ', ' ORDER BY n.nspname)), false) \
     FROM pg_namespace n \
     WHERE n.oid IN (SELECT extnamespace FROM pg_extension) \
       AND n.nspname <> ALL (current_schemas(true)) \
     HAVING count(*) > 0";

/// Opens a session on a target's `dsn` as [`connect`] does, applying [`AS_REPLICA`] where
/// the role may, with [`NO_HIDDEN_ROWS`] and [`EXTENSIONS_ON_PATH`].
pub async fn connect_target(
    dsn: &str,
    role: &'static str,
    on_close: OnClose,
) -> Result<Client, ConnectError> {
    let settings = format!(
        "{}; {AS_REPLICA}; {NO_HIDDEN_ROWS}; {EXTENSIONS_ON_PATH}",
        session_settings()
    );
    open_with(dsn, role, on_close, &settings).await
}

/// Names the session `helios-repl <role>` in the server's `pg_stat_activity`, unless the
/// DSN names it (`application_name`).
fn name_session(config: &mut tokio_postgres::Config, role: &str) {
    if config.get_application_name().is_none() {
        config.application_name(format!("helios-repl {role}"));
    }
}

/// Opens a session on `dsn` as it asks for TLS, named as [`name_session`] says.
async fn open(dsn: &str, role: &'static str, on_close: OnClose) -> Result<Client, ConnectError> {
    let mut dsn = PgDsn::parse(dsn)?;
    name_session(&mut dsn.config, role);
    if over_unix_socket(&dsn.config) {
        // The server never offers TLS on its Unix-domain socket, and libpq does not ask
        // there whatever `sslmode` says; a mode that requires TLS cannot be met.
        if dsn.tls.mode.requires_tls() {
            return Err(tls::TlsError::UnixSocket(dsn.tls.mode.name()).into());
        }
        let (client, connection) = dsn.config.connect(tokio_postgres::NoTls).await?;
        spawn_connection(connection, role, on_close);
        return Ok(client);
    }
    if !dsn.tls.mode.plain_first() {
        return connect_tls(&dsn.config, &dsn.tls, role, on_close).await;
    }
    let (client, connection) = match dsn.config.connect(tokio_postgres::NoTls).await {
        Ok(opened) => opened,
        // `allow`: the server refused the plain session (an error it sent, not a socket
        // that failed): try TLS.
        Err(e) if dsn.tls.mode == SslMode::Allow && e.as_db_error().is_some() => {
            tracing::info!(error = %crate::sql_text::describe_pg_error(&e),
                "{role}: the server refused a plain session; trying TLS (sslmode=allow)");
            let mut config = dsn.config.clone();
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            return connect_tls(&config, &dsn.tls, role, on_close).await;
        }
        Err(e) => return Err(e.into()),
    };
    spawn_connection(connection, role, on_close);
    Ok(client)
}

/// Whether every host `config` names is a Unix-domain socket directory.
fn over_unix_socket(config: &tokio_postgres::Config) -> bool {
    let hosts = config.get_hosts();
    !hosts.is_empty()
        && hosts
            .iter()
            .all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)))
}

/// Opens a session over TLS as `settings` ask, `config` saying whether it may go plain.
async fn connect_tls(
    config: &tokio_postgres::Config,
    settings: &TlsSettings,
    role: &'static str,
    on_close: OnClose,
) -> Result<Client, ConnectError> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls::client_config(settings)?);
    let (client, connection) = config.connect(tls).await?;
    spawn_connection(connection, role, on_close);
    Ok(client)
}

fn spawn_connection<C>(connection: C, role: &'static str, on_close: OnClose)
where
    C: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            match on_close {
                OnClose::Debug => tracing::debug!(error = %e, "{role} connection closed"),
                OnClose::Warn => tracing::warn!(error = %e, "{role} connection closed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_lifted_in_both_forms() {
        assert_eq!(
            session_settings(),
            "SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
             SET datestyle = 'ISO'; SET intervalstyle = 'postgres'; SET extra_float_digits = '3'; \
             SET standard_conforming_strings = 'on'; SET xmloption = 'content'; SET lc_monetary = 'C'; \
             SELECT set_config('idle_session_timeout', '0', false) \
             WHERE current_setting('idle_session_timeout', true) IS NOT NULL; \
             SELECT set_config('synchronous_commit', 'on', false) \
             WHERE current_setting('synchronous_commit') = 'off'; \
             SET client_min_messages = warning"
        );
        assert_eq!(
            startup_options(),
            "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 \
             -c idle_session_timeout=0 -c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 \
             -c standard_conforming_strings=on -c xmloption=content -c lc_monetary=C"
        );
    }

    /// A DSN naming the server's socket directory connects plain under the default
    /// `sslmode=prefer` (the server never offers TLS there), and a mode that requires TLS
    /// is refused with the reason.
    #[tokio::test(flavor = "current_thread")]
    async fn a_unix_socket_host_connects_plain_and_a_required_tls_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = crate::embedded::pg_cluster::PgCluster::scratch(&dir);
        let dsn = cluster.socket_dsn("postgres");
        let client = connect(&dsn, "test", OnClose::Debug)
            .await
            .expect("a plain session over the socket");
        let one: i32 = client
            .query_one("SELECT 1", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(one, 1);
        let Err(err) = connect(&format!("{dsn} sslmode=require"), "test", OnClose::Debug).await
        else {
            panic!("require cannot be met over a socket");
        };
        let err = err.to_string();
        assert!(err.contains("Unix-domain socket"), "{err}");
    }

    #[test]
    fn sessions_are_named_by_role_unless_the_dsn_names_them() {
        let mut unnamed = PgDsn::parse("host=h user=u").expect("dsn").config;
        name_session(&mut unnamed, "job watch");
        assert_eq!(
            unnamed.get_application_name(),
            Some("helios-repl job watch")
        );
        let mut named = PgDsn::parse("postgresql://u@h/app?application_name=billing-sync")
            .expect("dsn")
            .config;
        name_session(&mut named, "job watch");
        assert_eq!(named.get_application_name(), Some("billing-sync"));
    }
}
