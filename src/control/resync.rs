//! Reloading tables of a job from the source ("resync"): the way out of a table's error
//! state once what made the target refuse its changes is mended, and a fresh copy of a
//! table a user suspects has drifted.
//!
//! A request is kept where the job's tables are, on every PostgreSQL target
//! (`helios.table_state`, state `resync`), so it outlives a crash: the job's next start
//! takes each requested table as one its targets lack (`control::backfill`) and loads it
//! whole from a snapshot of the source, in one target transaction that first deletes the
//! job's tenants' rows of it and clears its state; the stream then resumes with the
//! changes after that snapshot. NATS sinks are not sent it again (they were not in error).
//! A table the target still refuses goes back to error
//! state, with the reason, and the rest of the job runs on. Dead letters stay as a record,
//! those the reload covers marked with its floor (`superseded_lsn`).
//!
//! A table that keeps history gets the reloaded rows as versions known from the reload's
//! floor, only where a row differs from its version still open (as a backfill records
//! them): the changes the target refused since the table went into error (kept as dead
//! letters), and those committed while the job was stopped, are folded into one version
//! per row; the books restart from the floor. One set of books serves every target, so
//! such a table is reloaded on every PostgreSQL target when any of them asks. While a
//! table is in error its history table still records the stream's versions (the sink
//! writes them apart from the refused changes), so the changes folded are those of the
//! worker whose apply failed and those committed while the job was stopped; a Parquet
//! cold tier, which took the same versions from the stream, gets the reload's versions
//! as a backfill's. Refused in a job with a Parquet sink when the history table refused
//! versions too (`history_missed_lsn`): the cold tier holds versions the history table
//! lacks, and the reload's would close them a second time (the files are not rewritten);
//! each start writes them into the history table from the tier once it takes them
//! (`history_repair`), which lifts the refusal.
//!
//! At start, [`take_requests`] and [`take_tenant_requests`] turn what the targets hold
//! into what the backfill loads ([`Reloads`]), dropping requests the job no longer carries.
//!
//! A request may name tenants: then only their rows of the tables are reloaded (kept in
//! `helios.tenant_resync`), as a tenant added to the job is loaded (`control::backfill`,
//! a floor per tenant), on every PostgreSQL target: the way to mend one tenant's rows
//! that drifted on a target without reloading the others'. Such a reload leaves the
//! table's state as it is, so it is refused for a table in error state (a whole reload
//! takes it out). A target that refuses it keeps the tenants' rows as they were: the
//! error is logged and the request dropped, and the rest of the job streams on.

use std::collections::BTreeSet;

use crate::change::format_lsn;
use crate::control::coverage::{Coverage, Gap, Widening};
use crate::control::job_runner::{parquet_roots, postgres_dsns, JobError};
use crate::control::job_spec::{JobSpec, TenantFilter};
use crate::sinks::pg_apply::store::TenantResyncs;
use crate::sinks::pg_apply::{self, store};
use crate::sinks::SinkError;

/// Why a resync request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// The request named no table.
    #[error("resync: name at least one table of the job")]
    NoTables,
    /// A name that is not one of the job's tables.
    #[error("resync: `{name}` is not a table of job `{job}` (its tables: {tables})")]
    NotAJobTable {
        name: String,
        job: String,
        tables: String,
    },
    /// A bare table name that more than one of the job's tables has.
    #[error(
        "resync: `{name}` names more than one table of job `{job}` ({tables}); give its schema"
    )]
    Ambiguous {
        name: String,
        job: String,
        tables: String,
    },
    /// A table whose history table missed versions the job's Parquet sink holds (module
    /// doc).
    #[error(
        "resync: the history table of {table} on a target refused versions from {from} on, \
         which the job's Parquet sink holds and a reload would close there a second time; \
         once the history table takes them (mend what refused them), the job's next start \
         writes them into it from the cold tier, and a resync is taken after that"
    )]
    HistoryMissedWithColdTier { table: String, from: String },
    /// An empty tenant id.
    #[error("resync: a tenant id is empty")]
    EmptyTenant,
    /// A tenant the job does not carry.
    #[error("resync: tenant `{tenant}` is not one of job `{job}`'s tenants ({tenants})")]
    NotAJobTenant {
        tenant: String,
        job: String,
        tenants: String,
    },
    /// Tenants other than its own named for a one-tenant table.
    #[error(
        "resync: {table} holds tenant `{owner}`'s rows only; tenant `{tenant}` has none there \
         (name the table of its own schema)"
    )]
    NotTheTablesTenant {
        table: String,
        owner: String,
        tenant: String,
    },
    /// The job's table patterns could not be resolved on the source.
    #[error("resync: the job's table patterns: {0}")]
    Patterns(String),
    /// Tenants of a table in error state: a tenants' reload leaves the state as it is.
    #[error(
        "resync: {table} is in error state on a target; reload the whole table (name no \
         tenants) to take it out of error"
    )]
    TenantsOfTableInError { table: String },
    /// A job without a PostgreSQL sink has no table to reload.
    #[error(
        "resync: job `{0}` has no PostgreSQL sink; only PostgreSQL targets' tables can be reloaded"
    )]
    NoPostgresTarget(String),
    /// A target could not take the request.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// The job's tables `names` name, checked: each one a table of the job, given as in the
/// spec (`schema.table`) or by its bare name when only one of the job's tables has it;
/// the job with a PostgreSQL sink.
pub fn check(spec: &JobSpec, names: &[String]) -> Result<BTreeSet<String>, ResyncError> {
    if names.is_empty() {
        return Err(ResyncError::NoTables);
    }
    if postgres_dsns(spec).is_empty() {
        return Err(ResyncError::NoPostgresTarget(spec.name.clone()));
    }
    let all = || {
        spec.tables
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut tables = BTreeSet::new();
    for name in names {
        let name = name.trim();
        let matching: Vec<_> = if name.contains('.') {
            spec.tables.iter().filter(|t| t.name == name).collect()
        } else {
            spec.tables.iter().filter(|t| t.table() == name).collect()
        };
        let table = match matching.as_slice() {
            [one] => *one,
            [] => {
                return Err(ResyncError::NotAJobTable {
                    name: name.to_string(),
                    job: spec.name.clone(),
                    tables: all(),
                })
            }
            many => {
                return Err(ResyncError::Ambiguous {
                    name: name.to_string(),
                    job: spec.name.clone(),
                    tables: many
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        };
        tables.insert(table.name.clone());
    }
    Ok(tables)
}

/// The tenants `ids` name, checked: none empty, each one the job carries (any, for a job
/// of all tenants). Empty when `ids` is: the tables are reloaded whole.
pub fn check_tenants(spec: &JobSpec, ids: &[String]) -> Result<BTreeSet<String>, ResyncError> {
    let mut tenants = BTreeSet::new();
    for id in ids {
        let id = id.trim();
        if id.is_empty() {
            return Err(ResyncError::EmptyTenant);
        }
        if !spec.includes_tenant(id) {
            let listed = match &spec.tenants.include {
                TenantFilter::All => String::new(),
                TenantFilter::Only(ids) => ids.iter().cloned().collect::<Vec<_>>().join(", "),
            };
            return Err(ResyncError::NotAJobTenant {
                tenant: id.to_string(),
                job: spec.name.clone(),
                tenants: listed,
            });
        }
        tenants.insert(id.to_string());
    }
    Ok(tenants)
}

/// Refuses `tenants` (checked by [`check_tenants`]) for a one-tenant table among `tables`
/// (checked by [`check`]) when one of them is not the table's tenant: that tenant has no
/// rows there, and the request would reload nothing.
pub fn check_tenants_of_tables(
    spec: &JobSpec,
    tables: &BTreeSet<String>,
    tenants: &BTreeSet<String>,
) -> Result<(), ResyncError> {
    for table in spec.tables.iter().filter(|t| tables.contains(&t.name)) {
        let Some(owner) = &table.tenant else {
            continue;
        };
        if let Some(tenant) = tenants.iter().find(|t| *t != owner) {
            return Err(ResyncError::NotTheTablesTenant {
                table: table.name.clone(),
                owner: owner.clone(),
                tenant: tenant.clone(),
            });
        }
    }
    Ok(())
}

/// `spec` with its table patterns resolved on the source, the tables a resync may name
/// (`spec` itself when it has none).
pub async fn carried_spec(spec: &JobSpec) -> Result<JobSpec, ResyncError> {
    if !spec.has_table_patterns() {
        return Ok(spec.clone());
    }
    let failed = |e: crate::cdc::error::CdcError| ResyncError::Patterns(e.to_string());
    let source = crate::cdc::catalog::connect(spec.source.dsn.expose())
        .await
        .map_err(failed)?;
    let resolution = crate::control::table_patterns::resolve(&source, spec)
        .await
        .map_err(failed)?;
    Ok(resolution.spec)
}

/// Records on every PostgreSQL target of `spec` that its next start reloads `names`
/// (checked by [`check`], and refused when a history table missed versions a Parquet sink
/// holds), whole, or only the rows of `tenants` when it names any ([`check_tenants`];
/// refused for a table in error state); returns the tables. The job must not be running:
/// a running sink could put a table back in error state over the request.
pub async fn request(
    spec: &JobSpec,
    names: &[String],
    tenants: &[String],
) -> Result<BTreeSet<String>, ResyncError> {
    let tables = check(spec, names)?;
    let tenants = check_tenants(spec, tenants)?;
    check_tenants_of_tables(spec, &tables, &tenants)?;
    let mut clients = Vec::new();
    for dsn in postgres_dsns(spec) {
        let client = pg_apply::sink::connect(&dsn).await?;
        store::migrate(&client).await?;
        if has_cold_tier(spec) {
            let with_history: BTreeSet<String> = spec
                .history_tables()
                .map(|t| t.name.clone())
                .filter(|name| tables.contains(name))
                .collect();
            let missed = store::load_history_missed(&client, &spec.name, &with_history).await?;
            if let Some((table, from)) = missed.into_iter().next() {
                return Err(ResyncError::HistoryMissedWithColdTier {
                    table,
                    from: format_lsn(from),
                });
            }
        }
        if !tenants.is_empty() {
            let failed = store::load_failed_tables(&client, &spec.name).await?;
            if let Some(table) = tables.iter().find(|t| failed.contains_key(*t)) {
                return Err(ResyncError::TenantsOfTableInError {
                    table: table.clone(),
                });
            }
        }
        clients.push(client);
    }
    for client in &clients {
        if tenants.is_empty() {
            store::request_resync(client, &spec.name, &tables).await?;
        } else {
            store::request_tenant_resync(client, &spec.name, &tables, &tenants).await?;
        }
    }
    let list: Vec<&str> = tables.iter().map(String::as_str).collect();
    if tenants.is_empty() {
        tracing::info!(job = %spec.name, tables = %list.join(", "),
            "resync requested: the job's next start reloads these tables from the source");
    } else {
        let ids: Vec<&str> = tenants.iter().map(String::as_str).collect();
        tracing::info!(job = %spec.name, tables = %list.join(", "), tenants = %ids.join(", "),
            "resync requested: the job's next start reloads these tenants' rows of these tables from the source");
    }
    Ok(tables)
}

/// Sorts the tenant resync requests the targets hold for `spec` at start (`requested`,
/// per target): what to reload, the same on every target (their union: a request is
/// recorded on each), and what to drop (a table the job no longer carries, or a tenant).
pub fn sort_tenant_requests(
    spec: &JobSpec,
    requested: &[TenantResyncs],
) -> (TenantResyncs, TenantResyncs) {
    let mut reload = TenantResyncs::new();
    let mut dropped = TenantResyncs::new();
    for (table, tenants) in requested.iter().flatten() {
        let carried = spec.tables.iter().any(|t| &t.name == table);
        for tenant in tenants {
            let into = if carried && spec.includes_tenant(tenant) {
                &mut reload
            } else {
                &mut dropped
            };
            into.entry(table.clone())
                .or_default()
                .insert(tenant.clone());
        }
    }
    (reload, dropped)
}

/// Whether `spec` has a Parquet sink.
fn has_cold_tier(spec: &JobSpec) -> bool {
    !parquet_roots(spec).is_empty()
}

/// Sorts the resync requests each target holds for `spec` at start (`requested`, per
/// target): the tables to reload whole on each, and the requests to drop with why (a
/// table the job no longer carries). A table that keeps history is reloaded on every
/// target when one asks (module doc).
pub fn sort_requests(
    spec: &JobSpec,
    requested: &[BTreeSet<String>],
) -> (Vec<BTreeSet<String>>, Vec<(String, &'static str)>) {
    let why_not = |name: &str| {
        (!spec.tables.iter().any(|t| t.name == name)).then_some("not a table of the job")
    };
    let dropped: Vec<(String, &'static str)> = requested
        .iter()
        .flatten()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|name| why_not(name).map(|why| (name.clone(), why)))
        .collect();
    let kept = |name: &&String| !dropped.iter().any(|(d, _)| d == *name);
    let everywhere: BTreeSet<&String> = requested
        .iter()
        .flatten()
        .filter(kept)
        .filter(|name| spec.tables.iter().any(|t| t.history && &t.name == *name))
        .collect();
    let reload = requested
        .iter()
        .map(|asked| {
            asked
                .iter()
                .filter(kept)
                .chain(everywhere.iter().copied())
                .cloned()
                .collect()
        })
        .collect();
    (reload, dropped)
}

/// Takes each target's resync requests at start, in `targets`' order: the
/// tables to reload whole come out of what the target is taken to hold (`held`), so they
/// are loaded as gaps; requests for tables the job no longer carries are dropped with a
/// warning.
pub(crate) async fn take_requests(
    spec: &JobSpec,
    targets: &[tokio_postgres::Client],
    held: &mut [Coverage],
) -> Result<Vec<BTreeSet<String>>, JobError> {
    let mut requested = Vec::with_capacity(targets.len());
    for target in targets {
        requested.push(store::load_resync_requests(target, &spec.name).await?);
    }
    let (resyncs, dropped) = sort_requests(spec, &requested);
    for (index, (target, h)) in targets.iter().zip(held.iter_mut()).enumerate() {
        for (table, why) in &dropped {
            tracing::warn!(job = %spec.name, target = index, table = %table, why, "resync request dropped");
            store::clear_table_state(target, &spec.name, table).await?;
        }
        for table in &resyncs[index] {
            tracing::info!(job = %spec.name, target = index, table = %table, "resync requested: the table is loaded whole again");
            h.tables.remove(table);
        }
    }
    Ok(resyncs)
}

/// What the targets asked to reload ([`take_requests`], [`take_tenant_requests`]).
pub(crate) struct Reloads {
    /// Whole tables, per target (in `targets`' order).
    pub tables: Vec<BTreeSet<String>>,
    /// Tenants' rows of tables, on every target.
    pub tenants: TenantResyncs,
}

impl Reloads {
    /// Whether target `index`'s load of `gap` is one only a resync asked for, so a refusal
    /// of it leaves the job running: a whole table asked for, or tenants all asked for.
    pub(crate) fn asked_for(&self, index: usize, gap: &Widening) -> Option<ReloadAsked> {
        if self
            .tables
            .get(index)
            .is_some_and(|t| t.contains(&gap.table))
        {
            return Some(ReloadAsked::Table);
        }
        match (&gap.gap, self.tenants.get(&gap.table)) {
            (Gap::Tenants(loaded), Some(asked)) if loaded.is_subset(asked) => {
                Some(ReloadAsked::Tenants)
            }
            _ => None,
        }
    }
}

/// What a resync asked to reload.
pub(crate) enum ReloadAsked {
    Table,
    Tenants,
}

/// `gaps` (a target's, by table) with the tenants' rows `reloads` asks for: added to a
/// table's tenants gap, or a gap of their own; a table loaded whole takes them already.
pub(crate) fn with_tenant_reloads(
    mut gaps: Vec<Widening>,
    reloads: &TenantResyncs,
) -> Vec<Widening> {
    for (table, tenants) in reloads {
        match gaps.iter_mut().find(|w| &w.table == table) {
            Some(Widening {
                gap: Gap::Table, ..
            }) => {}
            Some(Widening {
                gap: Gap::Tenants(gap),
                ..
            }) => gap.extend(tenants.iter().cloned()),
            None => gaps.push(Widening {
                table: table.clone(),
                gap: Gap::Tenants(tenants.clone()),
            }),
        }
    }
    gaps.sort_by(|a, b| a.table.cmp(&b.table));
    gaps
}

/// Takes the targets' tenant resync requests at start: those for tables and
/// tenants the job carries, the same on every target; the others are dropped with a
/// warning.
pub(crate) async fn take_tenant_requests(
    spec: &JobSpec,
    targets: &[tokio_postgres::Client],
) -> Result<TenantResyncs, JobError> {
    let mut requested = Vec::with_capacity(targets.len());
    for target in targets {
        requested.push(store::load_tenant_resyncs(target, &spec.name).await?);
    }
    let (reload, dropped) = sort_tenant_requests(spec, &requested);
    for (table, tenants) in &dropped {
        let ids: Vec<&str> = tenants.iter().map(String::as_str).collect();
        tracing::warn!(job = %spec.name, table = %table, tenants = %ids.join(", "),
            "tenant resync request dropped: the job no longer carries the table or these tenants");
    }
    for target in targets {
        store::clear_tenant_resyncs(target, &spec.name, &dropped).await?;
    }
    for (table, tenants) in &reload {
        let ids: Vec<&str> = tenants.iter().map(String::as_str).collect();
        tracing::info!(job = %spec.name, table = %table, tenants = %ids.join(", "),
            "resync requested: these tenants' rows of the table are loaded again");
    }
    Ok(reload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job `j` of the tenants `include` with `tables_and_sinks` (TOML).
    fn job(include: &str, tables_and_sinks: &str) -> JobSpec {
        JobSpec::from_toml_str(&format!(
            "name = \"j\"\n[source]\ndsn = \"host=localhost\"\npublication = \"p\"\nslot = \"s\"\n\
             [tenants]\ninclude = {include}\n{tables_and_sinks}"
        ))
        .expect("valid spec")
    }

    /// The tables and sink of the tests' usual job (tenant 1).
    const JOB_TABLES: &str = r#"
[[tables]]
name = "public.items"
[[tables]]
name = "sales.items"
[[tables]]
name = "public.orders"
[[tables]]
name = "public.audit"
history = true
[[sinks]]
kind = "postgres"
dsn = "host=localhost dbname=t"
"#;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tables_are_named_as_in_the_spec_or_by_an_unambiguous_bare_name() {
        let spec = job("[1]", JOB_TABLES);
        let got = check(&spec, &names(&["orders", "public.items"])).expect("valid request");
        assert_eq!(
            got,
            BTreeSet::from(["public.items".to_string(), "public.orders".to_string()])
        );
    }

    #[test]
    fn a_bad_request_names_what_is_wrong() {
        let spec = job("[1]", JOB_TABLES);
        let err = check(&spec, &[]).unwrap_err().to_string();
        assert!(err.contains("at least one table"), "{err}");
        let err = check(&spec, &names(&["public.nope"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`public.nope` is not a table of job `j`")
                && err.contains("public.orders"),
            "{err}"
        );
        let err = check(&spec, &names(&["items"])).unwrap_err().to_string();
        assert!(
            err.contains("more than one table") && err.contains("sales.items"),
            "{err}"
        );
    }

    #[test]
    fn a_table_with_history_is_resynced_in_a_job_with_a_cold_tier_on_every_target() {
        // A Parquet sink asks every table to keep history.
        let spec = job(
            "[1]",
            r#"
[[tables]]
name = "public.audit"
history = true
[[sinks]]
kind = "postgres"
dsn = "host=localhost dbname=t"
[[sinks]]
kind = "postgres"
dsn = "host=localhost dbname=u"
[[sinks]]
kind = "parquet"
root = "/tmp/cold"
"#,
        );
        let got = check(&spec, &names(&["audit"])).expect("valid request");
        assert_eq!(got, set(&["public.audit"]));
        let (reload, dropped) = sort_requests(&spec, &[set(&["public.audit"]), set(&[])]);
        assert_eq!(reload, [set(&["public.audit"]), set(&["public.audit"])]);
        assert!(dropped.is_empty(), "{dropped:?}");
    }

    #[test]
    fn a_job_without_a_postgres_sink_has_nothing_to_resync() {
        let cold_only = job(
            "\"all\"",
            r#"
[[tables]]
name = "public.audit"
history = true
[[sinks]]
kind = "parquet"
root = "/tmp/cold"
"#,
        );
        let err = check(&cold_only, &names(&["public.audit"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PostgreSQL sink"), "{err}");
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_one_tenant_tables_resync_names_its_own_tenant_only() {
        let spec = job(
            "[1, 2]",
            r#"
[[tables]]
name = "tenant_1.orders"
tenant = 1
[[tables]]
name = "public.items"
[[sinks]]
kind = "postgres"
dsn = "host=localhost"
"#,
        );
        let one = set(&["tenant_1.orders"]);
        check_tenants_of_tables(&spec, &one, &set(&["1"])).expect("its own tenant");
        check_tenants_of_tables(&spec, &one, &set(&[])).expect("the whole table");
        check_tenants_of_tables(&spec, &set(&["public.items"]), &set(&["2"]))
            .expect("a shared table holds every tenant");
        let err = check_tenants_of_tables(&spec, &one, &set(&["1", "2"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tenant_1.orders holds tenant `1`'s rows only; tenant `2` has none"),
            "{err}"
        );
    }

    #[test]
    fn tenants_of_a_resync_are_ones_the_job_carries() {
        let spec = job("[1, \"b\"]", JOB_TABLES);
        assert_eq!(
            check_tenants(&spec, &names(&[" b", "1", "1"])).expect("valid tenants"),
            set(&["1", "b"])
        );
        assert!(check_tenants(&spec, &[]).expect("none").is_empty());
        let err = check_tenants(&spec, &names(&["1", "2"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tenant `2` is not one of job `j`'s tenants (1, b)"),
            "{err}"
        );
        let err = check_tenants(&spec, &names(&[""])).unwrap_err().to_string();
        assert!(err.contains("tenant id is empty"), "{err}");
        let all = job("\"all\"", JOB_TABLES);
        assert_eq!(
            check_tenants(&all, &names(&["42"])).expect("any tenant"),
            set(&["42"])
        );
    }

    #[test]
    fn tenant_requests_at_start_are_the_union_of_the_targets_less_what_the_job_dropped() {
        let spec = job("[1, 2]", JOB_TABLES);
        let of = |pairs: &[(&str, &[&str])]| -> TenantResyncs {
            pairs
                .iter()
                .map(|(table, tenants)| (table.to_string(), set(tenants)))
                .collect()
        };
        let requested = [
            of(&[("public.items", &["1"]), ("public.gone", &["1"])]),
            of(&[("public.items", &["2", "3"]), ("public.audit", &["2"])]),
        ];
        let (reload, dropped) = sort_tenant_requests(&spec, &requested);
        assert_eq!(
            reload,
            of(&[("public.audit", &["2"]), ("public.items", &["1", "2"])])
        );
        assert_eq!(
            dropped,
            of(&[("public.gone", &["1"]), ("public.items", &["3"])])
        );
        let (reload, dropped) = sort_tenant_requests(&spec, &[]);
        assert!(reload.is_empty() && dropped.is_empty());
    }

    #[test]
    fn requests_at_start_reload_job_tables_on_the_targets_that_ask_and_drop_the_rest() {
        let spec = job("[1]", JOB_TABLES);
        let requested = [
            set(&["public.orders", "public.gone"]),
            set(&["public.items", "public.audit"]),
            set(&[]),
        ];
        let (reload, dropped) = sort_requests(&spec, &requested);
        assert_eq!(
            dropped,
            [("public.gone".to_string(), "not a table of the job")]
        );
        // A table with history on every target; the others where asked.
        assert_eq!(
            reload,
            [
                set(&["public.orders", "public.audit"]),
                set(&["public.items", "public.audit"]),
                set(&["public.audit"]),
            ]
        );
        let (reload, dropped) = sort_requests(&spec, &[set(&[]), set(&[])]);
        assert!(dropped.is_empty() && reload.iter().all(BTreeSet::is_empty));
    }

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn tenants_gap(table: &str, tenants: &[&str]) -> Widening {
        Widening {
            table: table.into(),
            gap: Gap::Tenants(ids(tenants)),
        }
    }

    #[test]
    fn tenant_reloads_join_the_gaps_and_a_refusal_spares_the_job_only_when_all_were_asked() {
        let reloads: TenantResyncs = [
            ("public.a".to_string(), ids(&["1"])),
            ("public.b".to_string(), ids(&["2"])),
            ("public.c".to_string(), ids(&["3", "4"])),
        ]
        .into_iter()
        .collect();
        let whole_b = Widening {
            table: "public.b".into(),
            gap: Gap::Table,
        };
        let gaps = vec![tenants_gap("public.c", &["5"]), whole_b.clone()];
        let gaps = with_tenant_reloads(gaps, &reloads);
        assert_eq!(
            gaps,
            vec![
                tenants_gap("public.a", &["1"]),
                whole_b.clone(),
                tenants_gap("public.c", &["3", "4", "5"]),
            ],
            "a gap of its own, none beside a whole load, added to a tenants gap"
        );
        let reloads = Reloads {
            tables: vec![ids(&["public.b"]), ids(&[])],
            tenants: reloads,
        };
        assert!(matches!(
            reloads.asked_for(0, &whole_b),
            Some(ReloadAsked::Table)
        ));
        assert!(reloads.asked_for(1, &whole_b).is_none());
        assert!(matches!(
            reloads.asked_for(1, &tenants_gap("public.c", &["3"])),
            Some(ReloadAsked::Tenants)
        ));
        // Tenant 5 was added to the job: its load refused stops the job.
        assert!(reloads.asked_for(1, &gaps[2]).is_none());
        assert!(reloads
            .asked_for(0, &tenants_gap("public.d", &["1"]))
            .is_none());
    }
}
