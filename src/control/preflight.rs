//! `helios-repl check`: what a job needs of its source and its PostgreSQL targets, checked
//! before it runs, without creating or changing anything (no publication, no slot, no
//! table); for a target, also what its own rules and its copies of the tables would do
//! to the job, or the job to them. Each finding is `ok`, `warn` (the job runs, with a
//! consequence to know about) or `fail` (the job cannot run as it is), with what to do.

use std::fmt;

use tokio_postgres::Client;

use crate::cdc::catalog;
use crate::cdc::column_defaults::{self, LastValue};
use crate::cdc::error::CdcError;
use crate::cdc::slot_health::{self, SlotHealth};
use crate::change::TableInfo;
use crate::control::history_start::check_history_table;
use crate::control::job_spec::{JobSpec, SinkSpec, TableSpec};
use crate::control::table_patterns;
use crate::sinks::pg_apply::{target_rules, target_schema};
use crate::sinks::SinkError;

/// How a finding bears on the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// What was checked: `source`, a table, `sinks[1]`.
    pub subject: String,
    pub message: String,
}

impl Finding {
    fn new(level: Level, subject: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            level,
            subject: subject.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{level} {}: {}", self.subject, self.message)
    }
}

/// Replication slots a job uses at most at once: its own, and a temporary one while it
/// loads tables, tenants or targets added to it (or a resync).
const SLOTS_AT_MOST: i64 = 2;

/// Checks `spec`'s source and PostgreSQL targets.
pub async fn check(spec: &JobSpec) -> Vec<Finding> {
    let mut out = Vec::new();
    // The tables the job carries (its patterns resolved on the source), as the targets
    // name them; without the source, the ones the spec names.
    let mut carried = named_tables(spec);
    // Their shapes on the source, when every one could be read.
    let mut shapes = Vec::new();
    match catalog::connect(spec.source.dsn.expose()).await {
        Ok(source) => match check_source(spec, &source, &mut out).await {
            Ok(Some(resolved)) => {
                carried = named_tables(&resolved);
                let names: Vec<(&str, &str)> = carried
                    .iter()
                    .map(|(s, t)| (s.as_str(), t.as_str()))
                    .collect();
                // A table that cannot be read has its finding already.
                shapes = catalog::tables_info(&source, &names)
                    .await
                    .unwrap_or_default();
            }
            Ok(None) => {}
            Err(e) => out.push(Finding::new(Level::Fail, "source", e.to_string())),
        },
        Err(e) => out.push(Finding::new(Level::Fail, "source", e.to_string())),
    }
    for (i, sink) in spec.sinks.iter().enumerate() {
        if let SinkSpec::Postgres(p) = sink {
            let subject = format!("sinks[{i}]");
            match crate::pg_connect::connect_target(
                p.dsn.expose(),
                "target check",
                crate::pg_connect::OnClose::Debug,
            )
            .await
            {
                Ok(target) => {
                    out.push(check_target(&target, &subject).await);
                    out.push(check_target_rules(&target, &subject, &carried).await);
                    out.extend(check_target_tables(&target, &subject, &shapes).await);
                }
                Err(e) => out.push(Finding::new(
                    Level::Fail,
                    subject,
                    format!("cannot connect: {e}"),
                )),
            }
        }
    }
    out
}

/// One row of a catalog query (the check's queries return one row).
async fn one_row(
    client: &Client,
    what: &'static str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, CdcError> {
    client
        .query_one(sql, params)
        .await
        .map_err(CdcError::query(what))
}

/// The tables `spec` names (its patterns left out), as (schema, name).
fn named_tables(spec: &JobSpec) -> Vec<(String, String)> {
    spec.tables
        .iter()
        .filter(|t| !t.is_pattern())
        .map(|t| (t.schema().to_string(), t.table().to_string()))
        .collect()
}

/// Checks the source; the job's spec with its table patterns resolved, when they could be.
async fn check_source(
    spec: &JobSpec,
    source: &Client,
    out: &mut Vec<Finding>,
) -> Result<Option<JobSpec>, CdcError> {
    out.push(match catalog::check_wal_level(source).await {
        Ok(()) => Finding::new(Level::Ok, "source", "wal_level is logical"),
        Err(e) => Finding::new(Level::Fail, "source", e.to_string()),
    });
    let role = one_row(
        source,
        "read the role",
        "SELECT current_user::text, rolreplication OR rolsuper, rolsuper FROM pg_roles WHERE rolname = current_user",
        &[],
    )
    .await?;
    let (user, replicates, superuser): (String, bool, bool) =
        (role.get(0), role.get(1), role.get(2));
    out.push(if replicates {
        Finding::new(Level::Ok, "source", format!("role `{user}` may replicate"))
    } else {
        Finding::new(
            Level::Fail,
            "source",
            format!(
                "role `{user}` lacks the REPLICATION attribute: `ALTER ROLE {user} REPLICATION`"
            ),
        )
    });
    let slots = one_row(
        source,
        "count replication slots",
        "SELECT current_setting('max_replication_slots')::int8 - (SELECT count(*) FROM pg_replication_slots),
                EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                current_setting('max_wal_senders')::int8 - (SELECT count(*) FROM pg_stat_replication)",
        &[&spec.source.slot],
    )
    .await?;
    let (free, has_slot, senders): (i64, bool, i64) = (slots.get(0), slots.get(1), slots.get(2));
    let needed = if has_slot {
        SLOTS_AT_MOST - 1
    } else {
        SLOTS_AT_MOST
    };
    out.push(slot_finding(free, needed, has_slot, &spec.source.slot));
    if let Some(health) = slot_health::read(source, &spec.source.slot).await? {
        out.push(slot_health_finding(&spec.source.slot, &health));
    }
    out.push(if senders >= SLOTS_AT_MOST {
        Finding::new(Level::Ok, "source", format!("{senders} WAL senders free"))
    } else {
        Finding::new(
            Level::Fail,
            "source",
            format!(
                "{senders} WAL senders free, the job needs up to {SLOTS_AT_MOST}: raise max_wal_senders (a restart of the source)"
            ),
        )
    });
    let connections = one_row(
        source,
        "count free connections",
        "SELECT current_setting('max_connections')::int8
                - (SELECT count(*) FROM pg_stat_activity
                    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())
                - CASE WHEN $1 THEN 0 ELSE current_setting('superuser_reserved_connections')::int8 END",
        &[&superuser],
    )
    .await?;
    let loading = spec
        .source
        .snapshot_parallel_tables
        .unwrap_or_else(crate::control::initial_snapshot::snapshot_lanes);
    out.push(connections_finding(connections.get(0), loading));
    let publication = one_row(
        source,
        "look up the publication",
        "SELECT count(*) = 0 OR bool_and(pg_has_role(current_user, pubowner, 'USAGE')) FROM pg_publication WHERE pubname = $1",
        &[&spec.source.publication],
    )
    .await?;
    if !publication.get::<_, bool>(0) {
        out.push(Finding::new(
            Level::Fail,
            "source",
            format!(
                "publication `{}` belongs to another role: the job sets its tables at each start, so it must own it (or name another)",
                spec.source.publication
            ),
        ));
    }
    let resolution = match table_patterns::resolve(source, spec).await {
        Ok(resolution) => resolution,
        Err(e) => {
            out.push(Finding::new(Level::Fail, "tables", e.to_string()));
            return Ok(None);
        }
    };
    for pattern in &resolution.empty {
        out.push(Finding::new(
            Level::Warn,
            pattern,
            "no table on the source matches this pattern (tables created later join at the next start, or while the job runs)",
        ));
    }
    for left in &resolution.left_out {
        out.push(Finding::new(
            if left.needs_rights {
                Level::Warn
            } else {
                Level::Ok
            },
            &left.table,
            format!(
                "matches {} but is not carried: {}",
                left.pattern, left.reason
            ),
        ));
    }
    let spec = &resolution.spec;
    // Up to `TABLES_IN_FLIGHT` tables at once, pipelined on the session: a schema per
    // tenant makes thousands.
    let checks: Vec<_> = spec
        .tables
        .iter()
        .map(|table| check_table(source, spec, table, &user, superuser))
        .collect();
    let mut carried = Vec::new();
    for (table, (oid, findings)) in spec.tables.iter().zip(catalog::pipelined(checks).await?) {
        if let Some(oid) = oid {
            carried.push((table.name.clone(), oid));
        }
        out.extend(findings);
    }
    for (partition, ancestor) in catalog::partitions_of_each_other(source, &carried).await? {
        out.push(Finding::new(
            Level::Fail,
            partition,
            format!(
                "is a partition of {ancestor}, which the job also carries: name only one of them"
            ),
        ));
    }
    Ok(Some(resolution.spec))
}

/// What `check` finds of one carried table: its oid (`None`: it cannot be read) and the
/// findings (its shape and tenant key, the role's rights on it and its sequences).
async fn check_table(
    source: &Client,
    spec: &JobSpec,
    table: &TableSpec,
    user: &str,
    superuser: bool,
) -> Result<(Option<u32>, Vec<Finding>), CdcError> {
    let mut out = Vec::new();
    let info = match catalog::table_info(source, table.schema(), table.table()).await {
        Ok(info) => info,
        Err(e) => {
            out.push(Finding::new(Level::Fail, &table.name, e.to_string()));
            return Ok((None, out));
        }
    };
    let key = spec.tenant_key_of(table);
    let mut problems = Vec::new();
    if key.at(&info).is_none() {
        problems.push(format!("has no {}", key.describe()));
    }
    if let Some(problem) = check_history_table(table, &info) {
        problems.push(problem);
    }
    let rights = one_row(
        source,
        "read table privileges",
        "SELECT has_table_privilege($1::oid, 'SELECT'),
                pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = $1::oid), 'USAGE')",
        &[&info.oid],
    )
    .await?;
    if !rights.get::<_, bool>(0) {
        problems.push(format!(
            "role `{user}` may not read it (the snapshot copies it): GRANT SELECT"
        ));
    }
    if !superuser && !rights.get::<_, bool>(1) {
        problems.push(format!(
            "role `{user}` does not own it: only its owner may add it to a publication"
        ));
    }
    for sequence in column_defaults::sequences(source, info.oid).await? {
        let name = sequence.qualified();
        if column_defaults::last_value(source, &name).await? == LastValue::NotReadable {
            out.push(Finding::new(
                Level::Warn,
                &table.name,
                format!(
                    "role `{user}` may not read sequence {name}, so the job cannot keep it \
                     in step on the targets for a cutover: GRANT SELECT ON SEQUENCE {name}"
                ),
            ));
        }
    }
    if problems.is_empty() {
        let identity = catalog::refused_changes_warning(&info);
        out.push(match identity {
            Some(warning) => Finding::new(Level::Warn, &table.name, warning),
            None => Finding::new(Level::Ok, &table.name, "ready to publish"),
        });
    } else {
        out.push(Finding::new(Level::Fail, &table.name, problems.join("; ")));
    }
    Ok((Some(info.oid), out))
}

/// Plain sessions a running job holds on the source: the reader's catalog session and
/// the watchers' shared one (`cdc::watch_session`).
const SESSIONS_RUNNING: i64 = 2;

/// Whether the source has the plain sessions the job needs (`free` now): two while it
/// runs, and while a snapshot loads one more for the snapshot and one per table loaded
/// at once (`loading`). The replication session is a WAL sender, counted apart.
fn connections_finding(free: i64, loading: usize) -> Finding {
    let at_most = SESSIONS_RUNNING + 1 + loading as i64;
    let what = format!(
        "{free} connections free (a running job holds {SESSIONS_RUNNING}, up to {at_most} while a \
         snapshot loads {loading} tables at once)"
    );
    if free >= at_most {
        Finding::new(Level::Ok, "source", what)
    } else {
        Finding::new(
            Level::Warn,
            "source",
            format!(
                "{what}: raise max_connections, close idle sessions, or lower \
                 source.snapshot_parallel_tables"
            ),
        )
    }
}

/// Whether the source has the replication slots the job needs (`needed` new ones).
fn slot_finding(free: i64, needed: i64, has_slot: bool, slot: &str) -> Finding {
    let held = if has_slot {
        format!("slot `{slot}` exists (the job resumes from it); ")
    } else {
        String::new()
    };
    if free >= needed {
        Finding::new(
            Level::Ok,
            "source",
            format!("{held}{free} replication slots free, the job needs up to {needed} more"),
        )
    } else {
        Finding::new(
            Level::Fail,
            "source",
            format!(
                "{held}{free} replication slots free, the job needs up to {needed} more (one more \
                 while it loads added tables or tenants): raise max_replication_slots (a restart \
                 of the source), or drop slots no one reads"
            ),
        )
    }
}

/// What the job's existing slot costs the source, and whether it can still be read.
fn slot_health_finding(slot: &str, health: &SlotHealth) -> Finding {
    let kept = format!(
        "slot `{slot}` keeps {} bytes of WAL on the source ({})",
        health.retained_wal_bytes, health.wal_status
    );
    match health.wal_status.as_str() {
        "lost" => Finding::new(
            Level::Warn,
            "source",
            format!("{kept}: the source invalidated it, so the next start takes a new slot and snapshot"),
        ),
        "unreserved" => Finding::new(
            Level::Warn,
            "source",
            format!("{kept}: past max_slot_wal_keep_size, the source's next checkpoint invalidates it unless the job runs and catches up"),
        ),
        _ => Finding::new(Level::Ok, "source", kept),
    }
}

/// Whether the target lets the job create its tables and its `helios` schema.
async fn check_target(target: &Client, subject: &str) -> Finding {
    let row = target
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE')
                    OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'helios'
                               AND has_schema_privilege(oid, 'CREATE'))",
            &[],
        )
        .await;
    match row {
        Ok(row) if row.get::<_, bool>(0) => Finding::new(
            Level::Ok,
            subject,
            "reachable; may create the job's tables and its bookkeeping schema `helios`",
        ),
        Ok(_) => Finding::new(
            Level::Fail,
            subject,
            "the role may not create schemas in this database (the job keeps its bookkeeping in \
             schema `helios` and creates the tables it lacks): GRANT CREATE ON DATABASE",
        ),
        Err(e) => Finding::new(Level::Fail, subject, crate::sql_text::describe_pg_error(&e)),
    }
}

/// What the target's foreign keys, triggers and row-level security on the `carried`
/// tables do to the job's rows ([`target_rules`]).
async fn check_target_rules(
    target: &Client,
    subject: &str,
    carried: &[(String, String)],
) -> Finding {
    let rules = match target_rules::read(target, carried).await {
        Ok(rules) => rules,
        Err(e) => return Finding::new(Level::Fail, subject, e.to_string()),
    };
    if let Some(refusal) = rules.refusal() {
        Finding::new(Level::Fail, subject, refusal)
    } else if let Some(warning) = rules.warning() {
        Finding::new(Level::Warn, subject, warning)
    } else if rules.as_replica {
        let mut message = "applies as a replica: the target's foreign keys and ordinary \
             triggers do not fire on the job's rows (those marked ENABLE REPLICA or ENABLE \
             ALWAYS do)"
            .to_string();
        if let Some(silenced) = rules.silenced_triggers() {
            message = format!("{message}; {silenced}");
        }
        Finding::new(Level::Ok, subject, message)
    } else {
        Finding::new(
            Level::Ok,
            subject,
            format!(
                "no foreign key or trigger on the job's tables fires on its rows (role `{}` \
                 may not apply as a replica, so any added later would)",
                rules.role
            ),
        )
    }
}

/// What the job's start would do to, or meet in, the target's own copies of the carried
/// tables (`shapes`, as the source has them): columns whose type it changes, columns only
/// the target has that every insert must fill, and identity columns outside the key that
/// refuse the job's updates. Tables read pipelined.
async fn check_target_tables(target: &Client, subject: &str, shapes: &[TableInfo]) -> Vec<Finding> {
    let reads: Vec<_> = shapes
        .iter()
        .map(|table| async move {
            let Some(existing) =
                target_schema::target_columns(target, &table.schema, &table.name).await?
            else {
                return Ok(Vec::new());
            };
            let tripping = target_schema::tripping_columns(target, table).await?;
            Ok::<_, SinkError>(table_findings(subject, table, &existing, &tripping))
        })
        .collect();
    match catalog::pipelined(reads).await {
        Ok(findings) => findings.into_iter().flatten().collect(),
        Err(e) => vec![Finding::new(Level::Fail, subject, e.to_string())],
    }
}

/// The findings of [`check_target_tables`] for one table the target has.
fn table_findings(
    subject: &str,
    table: &TableInfo,
    existing: &target_schema::TargetColumns,
    tripping: &target_schema::TrippingColumns,
) -> Vec<Finding> {
    let about = format!("{subject} {}", table.qualified_name());
    let mut out = Vec::new();
    let retyped = target_schema::retyped_columns(table, existing);
    if !retyped.is_empty() {
        let changes: Vec<String> = retyped
            .iter()
            .map(|(name, from, to)| format!("{name} from {from} to {to}"))
            .collect();
        out.push(Finding::new(
            Level::Warn,
            &about,
            format!(
                "the target's table has other column types than the source's: the job's \
                 start changes {} (`ALTER COLUMN … TYPE`, which rewrites the table under a \
                 lock and fails if a value does not convert)",
                changes.join(", ")
            ),
        ));
    }
    if !tripping.required.is_empty() {
        out.push(Finding::new(
            Level::Warn,
            &about,
            format!(
                "the target's table has required columns the source lacks ({}: NOT NULL \
                 without a default), so each row the job inserts is refused (the table is \
                 put in error state) unless a trigger marked ENABLE ALWAYS fills them: give \
                 them a default or drop NOT NULL",
                tripping.required.join(", ")
            ),
        ));
    }
    if !tripping.always_identity.is_empty() {
        out.push(Finding::new(
            Level::Warn,
            &about,
            format!(
                "the target's table makes columns outside the key `GENERATED ALWAYS AS \
                 IDENTITY` ({}): the job's inserts give them the source's values, but each \
                 update of such a row is refused (\"can only be updated to DEFAULT\"; the \
                 table is put in error state): `ALTER TABLE … ALTER COLUMN … SET GENERATED \
                 BY DEFAULT`, as on the tables the job creates",
                tripping.always_identity.join(", ")
            ),
        ));
    }
    out
}

/// Whether the job can run: no finding failed.
pub fn passed(findings: &[Finding]) -> bool {
    findings.iter().all(|f| f.level != Level::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_count_the_running_sessions_and_the_snapshots() {
        let ok = connections_finding(7, 4);
        assert_eq!(ok.level, Level::Ok);
        assert!(ok
            .message
            .contains("7 connections free (a running job holds 2, up to 7"));
        let short = connections_finding(6, 4);
        assert_eq!(short.level, Level::Warn);
        assert!(short.message.contains("raise max_connections"));
        assert_eq!(connections_finding(3, 0).level, Level::Ok);
    }

    #[test]
    fn slots_needed_count_the_temporary_one() {
        assert_eq!(slot_finding(2, 2, false, "s").level, Level::Ok);
        let short = slot_finding(1, 2, false, "s");
        assert_eq!(short.level, Level::Fail);
        assert!(short.message.contains("raise max_replication_slots"));
        let resumed = slot_finding(1, 1, true, "s");
        assert_eq!(resumed.level, Level::Ok);
        assert!(resumed.message.starts_with("slot `s` exists"));
    }

    #[test]
    fn an_existing_slot_shows_its_wal_and_warns_when_it_is_going_or_gone() {
        let health = |status: &str| SlotHealth {
            wal_status: status.into(),
            retained_wal_bytes: 4096,
            safe_wal_bytes: None,
        };
        let reserved = slot_health_finding("s", &health("reserved"));
        assert_eq!(reserved.level, Level::Ok);
        assert_eq!(
            reserved.message,
            "slot `s` keeps 4096 bytes of WAL on the source (reserved)"
        );
        assert_eq!(
            slot_health_finding("s", &health("unreserved")).level,
            Level::Warn
        );
        let lost = slot_health_finding("s", &health("lost"));
        assert_eq!(lost.level, Level::Warn);
        assert!(lost
            .message
            .contains("the next start takes a new slot and snapshot"));
    }

    #[test]
    fn a_failure_fails_the_check_and_findings_print_their_level() {
        let ok = Finding::new(Level::Ok, "source", "wal_level is logical");
        let warn = Finding::new(Level::Warn, "public.log", "append-only");
        let fail = Finding::new(Level::Fail, "sinks[0]", "cannot connect");
        assert!(passed(&[ok.clone(), warn.clone()]));
        assert!(!passed(&[ok.clone(), fail.clone()]));
        assert_eq!(ok.to_string(), "ok   source: wal_level is logical");
        assert_eq!(fail.to_string(), "FAIL sinks[0]: cannot connect");
    }
}
