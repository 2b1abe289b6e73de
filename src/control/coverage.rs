//! What a job's targets hold: the tables and tenants its snapshot (and any backfill
//! since) loaded. It is recorded with the job's progress, so a job restarted with a wider
//! spec (a tenant or a table added) knows what the targets lack, and loads it
//! (`control::backfill`) rather than streaming on as if they held it. Pure logic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::control::job_spec::{
    JobSpec, NatsSinkSpec, SinkSpec, TableSpec, TenantFilter, TenantKey,
};

/// Per table (`schema.table`), its tenant column and the tenants the targets hold
/// (the default: nothing, a target new to the job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub tables: BTreeMap<String, TableCoverage>,
    /// The NATS streams that got the job's rows ([`stream_identity`]); `None`: not
    /// recorded (by a version before streams were), taken as the spec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<BTreeSet<String>>,
}

/// What names a NATS sink's copy of the job: its stream and subject prefix (not its URL,
/// which may hold a password; a stream on another server that never held a message is
/// told apart at start instead: `backfill` publishes every table to it).
pub fn stream_identity(job: &str, sink: &NatsSinkSpec) -> String {
    let config = sink.config(job);
    format!("{} {}", config.stream, config.subject_prefix)
}

/// One table's share of a [`Coverage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCoverage {
    /// The tenant column the rows were chosen by (empty for a one-tenant table).
    pub column: String,
    /// The tenant whose rows the whole table holds (a one-tenant table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tenants whose rows were loaded.
    pub include: TenantFilter,
}

impl TableCoverage {
    /// What `spec` loads of `table`: its tenants' rows by its tenant column, or a
    /// one-tenant table whole (for that tenant only, so a tenant added to the job is no
    /// gap in another tenant's table).
    pub fn of(spec: &JobSpec, table: &TableSpec) -> TableCoverage {
        match spec.tenant_key_of(table) {
            TenantKey::Column(column) => TableCoverage {
                column,
                tenant: None,
                include: spec.tenants.include.clone(),
            },
            TenantKey::Table(id) => TableCoverage {
                column: String::new(),
                tenant: Some(id.clone()),
                include: TenantFilter::Only(BTreeSet::from([id])),
            },
        }
    }

    /// Where the rows keep their tenant.
    pub fn key(&self) -> TenantKey {
        match &self.tenant {
            Some(id) => TenantKey::Table(id.clone()),
            None => TenantKey::Column(self.column.clone()),
        }
    }

    /// Whether both chose their rows the same way (the same column, or the same tenant's
    /// whole table).
    fn same_key(&self, other: &TableCoverage) -> bool {
        self.column == other.column && self.tenant == other.tenant
    }
}

/// What a target lacks of one table under a wider spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// The whole table, for the spec's tenants: the table is new to the job, its tenant
    /// column changed, or the job went from a list of tenants to all of them.
    Table,
    /// These tenants' rows only (the table was carried for other tenants).
    Tenants(BTreeSet<String>),
}

/// A table whose rows a backfill must load, and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Widening {
    /// `schema.table`.
    pub table: String,
    pub gap: Gap,
}

impl Widening {
    /// The tenants a backfill loads for this gap, given the spec's `include`.
    pub fn load_filter(&self, include: &TenantFilter) -> TenantFilter {
        match &self.gap {
            Gap::Table => include.clone(),
            Gap::Tenants(new) => TenantFilter::Only(new.clone()),
        }
    }

    /// How the gap reads in a log line or an error: `public.orders (tenants 51, 52)`
    /// or `public.orders (the whole table)`.
    pub fn describe(&self) -> String {
        match &self.gap {
            Gap::Table => format!("{} (the whole table)", self.table),
            Gap::Tenants(t) => format!("{} (tenants {})", self.table, list(t)),
        }
    }
}

impl Coverage {
    /// What a snapshot of `spec` loads: each table with its tenant column (the table's
    /// own, or the job's) and the job's tenants.
    pub fn of(spec: &JobSpec) -> Coverage {
        Coverage {
            tables: spec
                .tables
                .iter()
                .map(|t| (t.name.clone(), TableCoverage::of(spec, t)))
                .collect(),
            streams: Some(
                spec.sinks
                    .iter()
                    .filter_map(|s| match s {
                        SinkSpec::Nats(n) => Some(stream_identity(&spec.name, n)),
                        SinkSpec::Postgres(_) | SinkSpec::Parquet(_) => None,
                    })
                    .collect(),
            ),
        }
    }

    /// The NATS streams of `next` that got none of the job's rows: every table is
    /// published to them. None when the streams were not recorded.
    pub fn new_streams(&self, next: &Coverage) -> BTreeSet<String> {
        match (&self.streams, &next.streams) {
            (Some(had), Some(want)) => want.difference(had).cloned().collect(),
            _ => BTreeSet::new(),
        }
    }

    /// What the targets lack for `next`, table by table (tables in `next` order by name).
    pub fn widening_to(&self, next: &Coverage) -> Vec<Widening> {
        next.tables
            .iter()
            .filter_map(|(table, wanted)| {
                let gap = match self.tables.get(table) {
                    None => Some(Gap::Table),
                    Some(held) if !held.same_key(wanted) => Some(Gap::Table),
                    Some(held) => match (&held.include, &wanted.include) {
                        (TenantFilter::All, _) => None,
                        (TenantFilter::Only(_), TenantFilter::All) => Some(Gap::Table),
                        (TenantFilter::Only(had), TenantFilter::Only(want)) => {
                            let new: BTreeSet<String> = want.difference(had).cloned().collect();
                            (!new.is_empty()).then_some(Gap::Tenants(new))
                        }
                    },
                };
                gap.map(|gap| Widening {
                    table: table.clone(),
                    gap,
                })
            })
            .collect()
    }

    /// What the targets hold that `next` no longer carries, for the log: tables dropped
    /// from the job, and tenants dropped from a table. Their rows stay on the targets and
    /// are no longer kept up to date.
    pub fn narrowing_to(&self, next: &Coverage) -> Vec<String> {
        self.tables
            .iter()
            .filter_map(|(table, held)| match next.tables.get(table) {
                None => Some(format!("{table} (the whole table)")),
                Some(wanted) if !wanted.same_key(held) => None,
                Some(wanted) => match (&held.include, &wanted.include) {
                    (_, TenantFilter::All) => None,
                    (TenantFilter::All, TenantFilter::Only(_)) => {
                        Some(format!("{table} (tenants other than those listed)"))
                    }
                    (TenantFilter::Only(had), TenantFilter::Only(want)) => {
                        let gone: BTreeSet<String> = had.difference(want).cloned().collect();
                        (!gone.is_empty()).then(|| format!("{table} (tenants {})", list(&gone)))
                    }
                },
            })
            .collect()
    }
}

impl Coverage {
    /// For each table that `next` still carries by the same column, the SQL condition
    /// true for rows of tenants it no longer carries (`tenants.removed = "delete"`); and
    /// for each one-tenant table `next` drops because its tenant is not in `include` (the
    /// job's), `true`: the whole table was that tenant's. Other tables `next` drops are not
    /// listed: their rows are not the job's to delete.
    pub fn removed_rows(&self, next: &Coverage, include: &TenantFilter) -> Vec<(String, String)> {
        self.tables
            .iter()
            .filter_map(|(table, held)| {
                let Some(wanted) = next.tables.get(table) else {
                    let removed = held.tenant.as_ref().is_some_and(|id| !include.includes(id));
                    return removed.then(|| (table.clone(), "true".to_string()));
                };
                if !wanted.same_key(held) {
                    return None;
                }
                let key = held.key();
                let condition = match (&held.include, &wanted.include) {
                    (_, TenantFilter::All) => None,
                    (TenantFilter::All, kept @ TenantFilter::Only(_)) => {
                        kept.sql_condition(&key).map(|c| format!("NOT ({c})"))
                    }
                    (TenantFilter::Only(had), TenantFilter::Only(want)) => {
                        let gone: BTreeSet<String> = had.difference(want).cloned().collect();
                        if gone.is_empty() {
                            None
                        } else {
                            TenantFilter::Only(gone).sql_condition(&key)
                        }
                    }
                }?;
                Some((table.clone(), condition))
            })
            .collect()
    }
}

/// `a, b, c`, at most ten, then `… (N in all)`.
fn list(ids: &BTreeSet<String>) -> String {
    const SHOWN: usize = 10;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(", … ({} in all)", ids.len()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn only(ids: &[&str]) -> TenantFilter {
        TenantFilter::Only(ids.iter().map(|s| s.to_string()).collect())
    }

    fn coverage(tables: &[(&str, &str, TenantFilter)]) -> Coverage {
        Coverage {
            tables: tables
                .iter()
                .map(|(t, c, i)| {
                    (
                        t.to_string(),
                        TableCoverage {
                            column: c.to_string(),
                            tenant: None,
                            include: i.clone(),
                        },
                    )
                })
                .collect(),
            streams: None,
        }
    }

    #[test]
    fn new_tenants_new_tables_and_changed_columns_are_gaps() {
        let held = coverage(&[
            ("public.a", "tenant_id", only(&["1", "2"])),
            ("public.b", "tenant_id", only(&["1", "2"])),
            ("public.c", "org", only(&["1", "2"])),
        ]);
        let next = coverage(&[
            ("public.a", "tenant_id", only(&["1", "2", "3", "4"])),
            ("public.b", "tenant_id", only(&["2"])),
            ("public.c", "tenant_id", only(&["1", "2"])),
            ("public.d", "tenant_id", only(&["1", "2"])),
        ]);
        let gaps = held.widening_to(&next);
        assert_eq!(
            gaps,
            vec![
                Widening {
                    table: "public.a".into(),
                    gap: Gap::Tenants(["3", "4"].map(String::from).into()),
                },
                Widening {
                    table: "public.c".into(),
                    gap: Gap::Table,
                },
                Widening {
                    table: "public.d".into(),
                    gap: Gap::Table,
                },
            ]
        );
        assert_eq!(gaps[0].describe(), "public.a (tenants 3, 4)");
        assert_eq!(
            gaps[0].load_filter(&only(&["1", "2", "3", "4"])),
            only(&["3", "4"])
        );
        assert_eq!(gaps[1].load_filter(&TenantFilter::All), TenantFilter::All);
        assert_eq!(
            held.narrowing_to(&next),
            vec!["public.b (tenants 1)".to_string()]
        );
    }

    #[test]
    fn all_tenants_lack_nothing_and_a_list_to_all_reloads_the_table() {
        let all = coverage(&[("public.a", "t", TenantFilter::All)]);
        let some = coverage(&[("public.a", "t", only(&["1"]))]);
        assert!(all.widening_to(&some).is_empty());
        assert_eq!(
            all.narrowing_to(&some),
            vec!["public.a (tenants other than those listed)".to_string()]
        );
        assert_eq!(
            some.widening_to(&all),
            vec![Widening {
                table: "public.a".into(),
                gap: Gap::Table
            }]
        );
        assert!(all.widening_to(&all).is_empty());
        assert_eq!(
            all.narrowing_to(&coverage(&[])),
            vec!["public.a (the whole table)".to_string()]
        );
    }

    #[test]
    fn removed_rows_are_those_of_tenants_no_longer_carried_by_the_same_column() {
        let held = coverage(&[
            ("public.a", "t", only(&["1", "2", "3"])),
            ("public.b", "t", TenantFilter::All),
            ("public.c", "t", only(&["1"])),
            ("public.d", "t", only(&["1", "2"])),
            ("public.e", "t", only(&["1", "2"])),
        ]);
        let next = coverage(&[
            ("public.a", "t", only(&["2"])),
            ("public.b", "t", only(&["5"])),
            ("public.c", "t", only(&["1", "9"])),
            ("public.d", "u", only(&["1"])),
        ]);
        let include = only(&["2", "5", "1", "9"]);
        assert_eq!(
            held.removed_rows(&next, &include),
            vec![
                (
                    "public.a".to_string(),
                    r#""t"::text IN ('1', '3')"#.to_string()
                ),
                (
                    "public.b".to_string(),
                    r#"NOT ("t"::text IN ('5'))"#.to_string()
                ),
            ]
        );
        assert!(next.removed_rows(&next, &include).is_empty());
    }

    #[test]
    fn a_removed_tenants_own_table_is_removed_whole_and_only_for_a_removed_tenant() {
        let one_tenant = |id: &str| TableCoverage {
            column: String::new(),
            tenant: Some(id.into()),
            include: only(&[id]),
        };
        let held = Coverage {
            tables: [
                ("t_1.a".to_string(), one_tenant("1")),
                ("t_2.a".to_string(), one_tenant("2")),
                ("t_3.a".to_string(), one_tenant("3")),
            ]
            .into(),
            streams: None,
        };
        // Tenant 2 left the job; tenant 3's table is gone from the source, tenant 3 kept.
        let next = Coverage {
            tables: [("t_1.a".to_string(), one_tenant("1"))].into(),
            streams: None,
        };
        assert_eq!(
            held.removed_rows(&next, &only(&["1", "3"])),
            vec![("t_2.a".to_string(), "true".to_string())]
        );
        assert!(held.removed_rows(&next, &TenantFilter::All).is_empty());
        assert!(held.widening_to(&next).is_empty());
        assert!(
            next.widening_to(&held).len() == 2,
            "tenants 2 and 3 are whole tables"
        );
    }

    #[test]
    fn streams_new_to_the_job_are_those_not_recorded() {
        let with = |streams: Option<&[&str]>| Coverage {
            streams: streams.map(|s| s.iter().map(|x| x.to_string()).collect()),
            ..coverage(&[("public.a", "t", TenantFilter::All)])
        };
        let one = with(Some(&["HELIOS_j helios"]));
        let two = with(Some(&["HELIOS_j helios", "OTHER helios"]));
        assert_eq!(one.new_streams(&two), ["OTHER helios".to_string()].into());
        assert!(two.new_streams(&one).is_empty());
        // Not recorded: taken as the spec's.
        assert!(with(None).new_streams(&two).is_empty());
        let json = serde_json::to_value(&two).expect("json");
        assert_eq!(serde_json::from_value::<Coverage>(json).expect("read"), two);
        let old = serde_json::json!({"tables": {"public.a": {"column": "t", "include": "all"}}});
        assert_eq!(
            serde_json::from_value::<Coverage>(old)
                .expect("read")
                .streams,
            None
        );
    }

    #[test]
    fn long_tenant_lists_are_cut_in_messages() {
        let ids: BTreeSet<String> = (10..40).map(|i| i.to_string()).collect();
        let w = Widening {
            table: "s.t".into(),
            gap: Gap::Tenants(ids),
        };
        assert_eq!(
            w.describe(),
            "s.t (tenants 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, … (30 in all))"
        );
    }

    #[test]
    fn coverage_reads_back_from_json() {
        let c = coverage(&[
            ("public.a", "tenant_id", only(&["1", "x"])),
            ("public.b", "org", TenantFilter::All),
        ]);
        let json = serde_json::to_value(&c).expect("serialize");
        assert_eq!(serde_json::from_value::<Coverage>(json).expect("read"), c);
    }

    fn filter() -> impl Strategy<Value = TenantFilter> {
        prop_oneof![
            1 => Just(TenantFilter::All),
            4 => prop::collection::btree_set("[0-9]{1,2}", 0..6).prop_map(TenantFilter::Only),
        ]
    }

    fn any_coverage() -> impl Strategy<Value = Coverage> {
        prop::collection::btree_map("[a-c]", (prop_oneof![Just("t"), Just("u")], filter()), 0..4)
            .prop_map(|tables| Coverage {
                tables: tables
                    .into_iter()
                    .map(|(t, (c, include))| {
                        (
                            t,
                            TableCoverage {
                                column: c.to_string(),
                                tenant: None,
                                include,
                            },
                        )
                    })
                    .collect(),
                streams: None,
            })
    }

    /// Whether `c` holds `tenant`'s rows of `table` by `column`.
    fn holds(c: &Coverage, table: &str, column: &str, tenant: &str) -> bool {
        c.tables.get(table).is_some_and(|t| {
            t.column == column
                && match &t.include {
                    TenantFilter::All => true,
                    TenantFilter::Only(s) => s.contains(tenant),
                }
        })
    }

    proptest! {
        /// After loading every gap, the targets hold every (table, tenant) the next spec
        /// carries; and a gap never reloads what the targets hold already unless it must
        /// reload the whole table.
        #[test]
        fn loading_the_gaps_covers_the_next_spec(held in any_coverage(), next in any_coverage()) {
            let gaps = held.widening_to(&next);
            for (table, wanted) in &next.tables {
                let gap = gaps.iter().find(|g| &g.table == table);
                for tenant in (0..100).map(|i| i.to_string()) {
                    let carried = match &wanted.include {
                        TenantFilter::All => true,
                        TenantFilter::Only(s) => s.contains(&tenant),
                    };
                    if !carried {
                        continue;
                    }
                    let loaded = gap.is_some_and(|g| match &g.load_filter(&wanted.include) {
                        TenantFilter::All => true,
                        TenantFilter::Only(s) => s.contains(&tenant),
                    });
                    prop_assert!(holds(&held, table, &wanted.column, &tenant) || loaded,
                        "{table} tenant {tenant} neither held nor loaded");
                    if let Some(Gap::Tenants(new)) = gap.map(|g| &g.gap) {
                        prop_assert_eq!(new.contains(&tenant), !holds(&held, table, &wanted.column, &tenant));
                    }
                }
            }
            prop_assert!(next.widening_to(&next).is_empty());
        }
    }
}
