//! What the target's own rules do to the rows a job applies: its foreign keys, triggers
//! and row-level security on the job's tables, read at the job's start and by
//! `helios-repl check`.
//!
//! A target session of ours applies as a replica where its role may
//! ([`crate::pg_connect::AS_REPLICA`]): then no foreign key or ordinary trigger fires, as
//! under PostgreSQL's subscription, and only triggers marked `ENABLE REPLICA` or
//! `ENABLE ALWAYS` do. Where the role may not, the target's rules fire as for any client:
//! a foreign key between two of the job's tables refuses rows the job writes in another
//! order than the source did (it loads tables apart and writes a batch table by table), so
//! the job does not start and says what to grant; other foreign keys and the triggers that
//! fire are warned about. Row-level security that applies to the role (not a superuser,
//! without `BYPASSRLS`, not the table's owner or under `FORCE ROW LEVEL SECURITY`) would
//! hide rows from the job's updates and deletes, so such a table stops the start too, as
//! PostgreSQL's subscription refuses it; a policy added while the job runs meets our
//! sessions' `row_security = off` ([`crate::pg_connect::NO_HIDDEN_ROWS`]), which turns the
//! hidden rows into an error that puts the table in error state.

use std::fmt::Write as _;

use tokio_postgres::GenericClient;

use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::SinkError;

/// One foreign key on the target that touches the job's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The constraint's name.
    pub name: String,
    /// The referencing table, qualified.
    pub table: String,
    /// The referenced table, qualified.
    pub references: String,
    /// Whether both tables are the job's (and not the same one).
    pub between_job_tables: bool,
}

impl ForeignKey {
    /// `name on table referencing other`, for messages.
    fn describe(&self) -> String {
        format!(
            "{} on {} referencing {}",
            self.name, self.table, self.references
        )
    }
}

/// The target's rules that fire on the job's rows in a session of ours.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetRules {
    /// Whether the session applies as a replica.
    pub as_replica: bool,
    /// The role the session runs as.
    pub role: String,
    /// Foreign keys on or to the job's tables whose checks fire in the session.
    pub foreign_keys: Vec<ForeignKey>,
    /// User triggers on the job's tables (`name on table`) that fire in the session.
    pub triggers: Vec<String>,
    /// Ordinary user triggers on the job's tables that a replica's session does not fire
    /// (and a client's would).
    pub silenced: Vec<String>,
    /// The job's tables whose row-level security applies to the session's role.
    pub row_security: Vec<String>,
}

/// The target's rules on the tables named by `$1[i].$2[i]` and their partitions
/// (`pg_partition_tree` lists none for a plain table), one row each after the session's
/// mode and role: `f` a foreign key on or to them, when one of its triggers fires in the
/// session's `session_replication_role` (`O` and `A` triggers in `origin`, `R` and `A` in
/// `replica`); `t` a user trigger that fires, or an ordinary one the mode silences; `r` a
/// named table whose row-level security applies to the role; `-` always, for the mode and
/// role alone.
const RULES: &str = "
WITH named AS (
    SELECT c.oid
    FROM unnest($1::text[], $2::text[]) AS t(nsp, rel)
    JOIN pg_namespace n ON n.nspname = t.nsp
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.rel
), job AS (
    SELECT oid FROM named
    UNION SELECT p.relid FROM named, LATERAL pg_partition_tree(named.oid) p
), firing AS (
    SELECT CASE current_setting('session_replication_role')
        WHEN 'replica' THEN '{A,R}' ELSE '{O,A}' END::\"char\"[] AS states
)
SELECT current_setting('session_replication_role') = 'replica', current_user::text,
    'f', con.conname::text, con.conrelid::regclass::text, con.confrelid::regclass::text,
    con.conrelid <> con.confrelid
        AND EXISTS (SELECT 1 FROM job WHERE job.oid = con.conrelid)
        AND EXISTS (SELECT 1 FROM job WHERE job.oid = con.confrelid)
FROM pg_constraint con
WHERE con.contype = 'f' AND con.conparentid = 0
    AND (con.conrelid IN (SELECT oid FROM job) OR con.confrelid IN (SELECT oid FROM job))
    AND EXISTS (SELECT 1 FROM pg_trigger t, firing
                WHERE t.tgconstraint = con.oid AND t.tgenabled = ANY (firing.states))
UNION ALL
SELECT current_setting('session_replication_role') = 'replica', current_user::text,
    't', t.tgname::text, t.tgrelid::regclass::text, NULL, t.tgenabled = ANY (firing.states)
FROM pg_trigger t, firing
WHERE NOT t.tgisinternal AND t.tgrelid IN (SELECT oid FROM job)
    AND (t.tgenabled = ANY (firing.states) OR t.tgenabled = 'O')
UNION ALL
SELECT current_setting('session_replication_role') = 'replica', current_user::text,
    'r', NULL, c.oid::regclass::text, NULL, false
FROM pg_class c
WHERE c.oid IN (SELECT oid FROM named) AND c.relrowsecurity
    AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
    AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
UNION ALL
SELECT current_setting('session_replication_role') = 'replica', current_user::text,
    '-', NULL, NULL, NULL, false
ORDER BY 3, 5, 4";

/// Reads the rules of the target that fire on `tables` (schema, name) in `client`'s
/// session.
pub async fn read(
    client: &impl GenericClient,
    tables: &[(String, String)],
) -> Result<TargetRules, SinkError> {
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
    let rows = client
        .query(RULES, &[&schemas, &names])
        .await
        .map_err(|e| {
            sink_error(
                "read the target's foreign keys, triggers and row-level security",
                &e,
            )
        })?;
    let mut rules = TargetRules::default();
    for row in rows {
        rules.as_replica = row.get(0);
        rules.role = row.get(1);
        match row.get::<_, &str>(2) {
            "f" => rules.foreign_keys.push(ForeignKey {
                name: row.get(3),
                table: row.get(4),
                references: row.get(5),
                between_job_tables: row.get(6),
            }),
            "r" => rules.row_security.push(row.get(4)),
            "t" => {
                let trigger = format!("{} on {}", row.get::<_, &str>(3), row.get::<_, &str>(4));
                if row.get(6) {
                    rules.triggers.push(trigger);
                } else {
                    rules.silenced.push(trigger);
                }
            }
            _ => {}
        }
    }
    Ok(rules)
}

/// At a job's start: refuses a target where [`TargetRules::refusal`] says so, and logs
/// the rest. `subject` names the target in the job's spec (`sinks[0]`).
pub async fn check_at_start(
    job: &str,
    subject: &str,
    client: &impl GenericClient,
    tables: &[(String, String)],
) -> Result<(), SinkError> {
    let rules = read(client, tables).await?;
    if let Some(refusal) = rules.refusal() {
        return Err(SinkError::Definite(format!("{subject}: {refusal}")));
    }
    if let Some(warning) = rules.warning() {
        tracing::warn!(job, target = subject, "{warning}");
    }
    if let Some(triggers) = rules.replica_triggers() {
        tracing::info!(
            job,
            target = subject,
            triggers,
            "the target's triggers marked ENABLE REPLICA or ENABLE ALWAYS fire on the job's rows"
        );
    }
    if let Some(silenced) = rules.silenced_triggers() {
        tracing::info!(job, target = subject, "{silenced}");
    }
    Ok(())
}

/// At most this many names are listed in a message; the rest are counted.
const LISTED: usize = 5;

/// `items` joined by `, `, the first [`LISTED`] of them and a count of the rest.
fn listed(items: impl ExactSizeIterator<Item = String>) -> String {
    let total = items.len();
    let mut out = items.take(LISTED).collect::<Vec<_>>().join(", ");
    if total > LISTED {
        let _ = write!(out, " and {} more", total - LISTED);
    }
    out
}

/// What the role is to be granted, in the words of a message.
fn remedy(role: &str) -> String {
    format!(
        "let role `{role}` apply as a replica, as PostgreSQL's subscriptions do \
         (`GRANT SET ON PARAMETER session_replication_role TO \"{role}\"` on PostgreSQL 15 \
         or later, or a superuser)"
    )
}

impl TargetRules {
    /// Why the job cannot apply to this target as it is: a foreign key between two of its
    /// tables whose checks fire in our sessions, or row-level security that applies to
    /// its role.
    pub fn refusal(&self) -> Option<String> {
        let mut reasons = Vec::new();
        let between: Vec<&ForeignKey> = self
            .foreign_keys
            .iter()
            .filter(|k| k.between_job_tables)
            .collect();
        if !between.is_empty() {
            reasons.push(format!(
                "the target checks foreign keys between the job's tables ({}), which refuse \
                 rows the job writes in another order than the source did (it loads tables \
                 apart and writes a batch table by table): {}, or drop the keys on the target",
                listed(between.iter().map(|k| k.describe())),
                remedy(&self.role)
            ));
        }
        if !self.row_security.is_empty() {
            reasons.push(format!(
                "row-level security of the target's {} applies to role `{role}`: its policies \
                 would hide rows from the job's updates and deletes or refuse its inserts \
                 (PostgreSQL's subscriptions refuse such tables too): `ALTER ROLE \"{role}\" \
                 BYPASSRLS`, or have the role own the tables (without FORCE ROW LEVEL SECURITY)",
                listed(self.row_security.iter().cloned()),
                role = self.role
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// What the job should know, when it can apply: the other foreign keys and the
    /// triggers that fire on its rows because the session is not a replica.
    pub fn warning(&self) -> Option<String> {
        if self.as_replica {
            return None;
        }
        let others: Vec<String> = self
            .foreign_keys
            .iter()
            .filter(|k| !k.between_job_tables)
            .map(ForeignKey::describe)
            .collect();
        if others.is_empty() && self.triggers.is_empty() {
            return None;
        }
        let mut fired = Vec::new();
        if !self.triggers.is_empty() {
            fired.push(format!(
                "its triggers {} fire on every row the job writes",
                listed(self.triggers.iter().cloned())
            ));
        }
        if !others.is_empty() {
            fired.push(format!(
                "its foreign keys {} are checked, and a row they refuse puts its table in \
                 error state",
                listed(others.into_iter())
            ));
        }
        Some(format!(
            "the target does not take the job's rows as a replica's: {}; {}",
            fired.join("; "),
            remedy(&self.role)
        ))
    }

    /// The triggers that fire on the job's rows though the session is a replica (marked
    /// `ENABLE REPLICA` or `ENABLE ALWAYS` by the operator), for the log.
    pub fn replica_triggers(&self) -> Option<String> {
        (self.as_replica && !self.triggers.is_empty())
            .then(|| listed(self.triggers.iter().cloned()))
    }

    /// The ordinary triggers that do not fire on the job's rows because the session is a
    /// replica, and how to have one fire, for the log and `check`.
    pub fn silenced_triggers(&self) -> Option<String> {
        (self.as_replica && !self.silenced.is_empty()).then(|| {
            format!(
                "the target's triggers {} do not fire on the job's rows, as under PostgreSQL's \
                 subscription (`ALTER TABLE … ENABLE ALWAYS TRIGGER …` has one fire)",
                listed(self.silenced.iter().cloned())
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, table: &str, references: &str, between: bool) -> ForeignKey {
        ForeignKey {
            name: name.into(),
            table: table.into(),
            references: references.into(),
            between_job_tables: between,
        }
    }

    #[test]
    fn a_key_between_job_tables_refuses_outside_a_replica_and_names_the_grant() {
        let rules = TargetRules {
            as_replica: false,
            role: "applier".into(),
            foreign_keys: vec![
                key("lines_fkey", "lines", "orders", true),
                key("notes_fkey", "notes", "orders", false),
            ],
            triggers: vec!["touch on orders".into()],
            silenced: Vec::new(),
            row_security: Vec::new(),
        };
        let refusal = rules.refusal().expect("refused");
        assert!(
            refusal.contains("lines_fkey on lines referencing orders")
                && !refusal.contains("notes_fkey")
                && refusal
                    .contains("GRANT SET ON PARAMETER session_replication_role TO \"applier\""),
            "{refusal}"
        );
        let warning = rules.warning().expect("warned");
        assert!(
            warning.contains("its triggers touch on orders fire")
                && warning.contains("its foreign keys notes_fkey on notes referencing orders")
                && !warning.contains("lines_fkey"),
            "{warning}"
        );
        assert_eq!(rules.replica_triggers(), None);
    }

    #[test]
    fn a_replica_is_neither_refused_nor_warned_and_logs_the_triggers_that_fire() {
        let rules = TargetRules {
            as_replica: true,
            role: "postgres".into(),
            foreign_keys: Vec::new(),
            triggers: vec!["stamp on orders".into()],
            silenced: vec!["touch on orders".into()],
            row_security: Vec::new(),
        };
        assert_eq!(rules.refusal(), None);
        assert_eq!(rules.warning(), None);
        assert_eq!(rules.replica_triggers().as_deref(), Some("stamp on orders"));
        let silenced = rules.silenced_triggers().expect("silenced listed");
        assert!(
            silenced.contains("triggers touch on orders do not fire")
                && silenced.contains("ENABLE ALWAYS TRIGGER"),
            "{silenced}"
        );
        let plain = TargetRules {
            as_replica: false,
            ..TargetRules::default()
        };
        assert_eq!((plain.refusal(), plain.warning()), (None, None));
        assert_eq!(plain.silenced_triggers(), None);
    }

    #[test]
    fn row_security_that_applies_to_the_role_refuses_and_names_the_way_out() {
        let rules = TargetRules {
            as_replica: true,
            role: "applier".into(),
            row_security: vec!["orders".into()],
            ..TargetRules::default()
        };
        let refusal = rules.refusal().expect("refused");
        assert!(
            refusal.contains("row-level security of the target's orders applies to role `applier`")
                && refusal.contains("ALTER ROLE \"applier\" BYPASSRLS")
                && !refusal.contains("foreign keys"),
            "{refusal}"
        );
    }

    #[test]
    fn long_lists_are_cut_with_a_count() {
        let names = (1..9).map(|i| format!("t{i}"));
        assert_eq!(listed(names), "t1, t2, t3, t4, t5 and 3 more");
        assert_eq!(listed(["a".to_string()].into_iter()), "a");
    }
}
