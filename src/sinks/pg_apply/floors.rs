//! Backfill floors: when a restarted job loads tenants or tables its targets lacked
//! (`control::backfill`), it loads them from a snapshot taken at LSN `S`, while the stream
//! resumes from the slot's older confirmed position. Every change of those rows that
//! commits before `S` is in that snapshot already, so the sink must not apply it again.
//! The load records, in its own target transaction, a floor per loaded (table, tenant) —
//! or per table when it loaded the whole table — in `helios.backfill_floors`; the sink
//! skips a change below its floor. A change that names no tenant (a TRUNCATE, or a
//! DELETE whose old key lacks the tenant column) still applies to the other tenants, and
//! spares those below their floor.

use std::collections::HashMap;

use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, GenericClient};

use crate::change::Lsn;
use crate::control::job_spec::TenantFilter;
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::SinkError;

/// The scope key of a floor over a whole table.
const WHOLE_TABLE: &str = "*";

/// The floors of one table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct TableFloors {
    /// Below this commit LSN, the table's every change was loaded.
    whole: Option<Lsn>,
    /// Below these, the tenant's changes were loaded.
    tenants: HashMap<String, Lsn>,
}

/// The floors a sink applies by (see the module doc).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Floors {
    /// By `schema.table`.
    tables: HashMap<String, TableFloors>,
    /// The highest floor: no change committed at or past it is below any.
    highest: Lsn,
}

impl Floors {
    /// Whether there are none (the usual case: then nothing is looked up per change).
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Whether a change committed at `lsn` may be below a floor (cheap: no lookup).
    pub fn may_cover(&self, lsn: Lsn) -> bool {
        lsn < self.highest
    }

    /// Adds a floor: `tenant` `None` for the whole table. A floor never moves back.
    pub fn insert(&mut self, table: &str, tenant: Option<&str>, lsn: Lsn) {
        self.highest = self.highest.max(lsn);
        let t = self.tables.entry(table.to_string()).or_default();
        let slot = match tenant {
            None => &mut t.whole,
            Some(id) => {
                let e = t.tenants.entry(id.to_string()).or_insert(lsn);
                *e = (*e).max(lsn);
                return;
            }
        };
        *slot = Some(slot.map_or(lsn, |l| l.max(lsn)));
    }

    /// Whether a change of `tenant` to `table` committed at `lsn` is in a backfill's
    /// snapshot already. `tenant` `None`: a change that names no tenant, covered only by
    /// a whole-table floor.
    pub fn covers(&self, table: &str, tenant: Option<&str>, lsn: Lsn) -> bool {
        let Some(t) = self.tables.get(table) else {
            return false;
        };
        t.whole.is_some_and(|w| lsn < w)
            || tenant.is_some_and(|id| t.tenants.get(id).is_some_and(|&f| lsn < f))
    }

    /// Where a version book of `table` resumes when the stream resumes at `resume`: at
    /// the table's floor when that is later (a whole-table load), else at `resume`.
    /// Tenants with floors of their own past that are [`Floors::tenants_past`].
    pub fn table_resume(&self, table: &str, resume: Lsn) -> Lsn {
        let whole = self.tables.get(table).and_then(|t| t.whole);
        resume.max(whole.unwrap_or(0))
    }

    /// The floor of `tenant`'s rows of `table` (a whole-table floor or its own, the
    /// later), if a backfill loaded them.
    pub fn floor_of(&self, table: &str, tenant: &str) -> Option<Lsn> {
        let t = self.tables.get(table)?;
        t.whole.max(t.tenants.get(tenant).copied())
    }

    /// Where the version book of `tenant`'s rows of `table` resumes when the stream
    /// resumes at `resume`: at the rows' floor when that is later, else at `resume`.
    pub fn book_point(&self, table: &str, tenant: &str, resume: Lsn) -> Lsn {
        resume.max(self.floor_of(table, tenant).unwrap_or(0))
    }

    /// The tenants of `table` whose floor is past `point`, with their floors (sorted).
    pub fn tenants_past(&self, table: &str, point: Lsn) -> Vec<(String, Lsn)> {
        let Some(t) = self.tables.get(table) else {
            return Vec::new();
        };
        let mut past: Vec<(String, Lsn)> = t
            .tenants
            .iter()
            .filter(|(_, &f)| f > point)
            .map(|(id, &f)| (id.clone(), f))
            .collect();
        past.sort_unstable();
        past
    }

    /// The tenants of `table` a change naming no tenant, committed at `lsn`, must spare:
    /// those whose floor is above it (sorted, so statements are stable).
    pub fn spared(&self, table: &str, lsn: Lsn) -> Vec<String> {
        let Some(t) = self.tables.get(table) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = t
            .tenants
            .iter()
            .filter(|(_, &f)| lsn < f)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// The job's floors on this target.
pub async fn load(client: &Client, job: &str) -> Result<Floors, SinkError> {
    let rows = client
        .query(
            "SELECT table_name, scope, floor_lsn FROM helios.backfill_floors WHERE job = $1",
            &[&job],
        )
        .await
        .map_err(|e| sink_error("read backfill floors", &e))?;
    let mut floors = Floors::default();
    for r in rows {
        let (table, scope): (String, String) = (r.get(0), r.get(1));
        let lsn = u64::from(r.get::<_, PgLsn>(2));
        let tenant = scope.strip_prefix("tenant:");
        if tenant.is_none() && scope != WHOLE_TABLE {
            return Err(SinkError::Definite(format!(
                "helios.backfill_floors: row of job `{job}` for {table} has scope `{scope}` (expected `*` or `tenant:<id>`)"
            )));
        }
        floors.insert(&table, tenant, lsn);
    }
    Ok(floors)
}

/// Records the floor of a load of `table`'s `loaded` tenants at `lsn` (inside the load's
/// transaction): one for the whole table when it loaded every tenant the job carries
/// (`whole`), else one per tenant.
pub async fn record(
    client: &impl GenericClient,
    job: &str,
    table: &str,
    loaded: &TenantFilter,
    whole: bool,
    lsn: Lsn,
) -> Result<(), SinkError> {
    let scopes: Vec<String> = match (whole, loaded) {
        (true, _) | (_, TenantFilter::All) => vec![WHOLE_TABLE.to_string()],
        (false, TenantFilter::Only(ids)) => ids.iter().map(|id| format!("tenant:{id}")).collect(),
    };
    client
        .execute(
            "INSERT INTO helios.backfill_floors (job, table_name, scope, floor_lsn)
             SELECT $1, $2, s, $4 FROM unnest($3::text[]) AS s
             ON CONFLICT (job, table_name, scope) DO UPDATE
                 SET floor_lsn = greatest(helios.backfill_floors.floor_lsn, EXCLUDED.floor_lsn)",
            &[&job, &table, &scopes, &PgLsn::from(lsn)],
        )
        .await
        .map_err(|e| sink_error("record backfill floor", &e))?;
    Ok(())
}

/// Forgets the floors the stream has passed: it resumes at `resume`, and sends no
/// change committed before it again. Returns how many went.
pub async fn forget_passed(client: &Client, job: &str, resume: Lsn) -> Result<u64, SinkError> {
    client
        .execute(
            "DELETE FROM helios.backfill_floors WHERE job = $1 AND floor_lsn <= $2",
            &[&job, &PgLsn::from(resume)],
        )
        .await
        .map_err(|e| sink_error("forget passed backfill floors", &e))
}

/// Forgets every floor of the job (a new snapshot replaces everything they guard).
pub async fn forget_all(client: &Client, job: &str) -> Result<(), SinkError> {
    client
        .execute("DELETE FROM helios.backfill_floors WHERE job = $1", &[&job])
        .await
        .map_err(|e| sink_error("forget backfill floors", &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_covers_what_committed_below_it() {
        let mut f = Floors::default();
        assert!(f.is_empty());
        assert!(!f.may_cover(0));
        f.insert("public.a", Some("7"), 100);
        assert!(f.may_cover(99) && !f.may_cover(100));
        f.insert("public.b", None, 50);
        f.insert("public.a", Some("7"), 80); // never moves back
        assert!(!f.is_empty());
        assert!(f.covers("public.a", Some("7"), 99));
        assert!(!f.covers("public.a", Some("7"), 100));
        assert!(!f.covers("public.a", Some("8"), 1));
        assert!(!f.covers("public.a", None, 1));
        assert!(f.covers("public.b", Some("anyone"), 49));
        assert!(f.covers("public.b", None, 49));
        assert!(!f.covers("public.b", None, 50));
        assert!(!f.covers("public.c", Some("7"), 1));
    }

    #[test]
    fn books_resume_at_the_latest_of_the_stream_and_the_floors() {
        let mut f = Floors::default();
        f.insert("public.a", Some("9"), 100);
        f.insert("public.a", Some("10"), 40);
        f.insert("public.b", None, 70);
        assert_eq!(f.table_resume("public.a", 50), 50);
        assert_eq!(f.tenants_past("public.a", 50), vec![("9".to_string(), 100)]);
        assert_eq!(f.table_resume("public.b", 50), 70);
        assert_eq!(f.table_resume("public.b", 80), 80);
        assert!(f.tenants_past("public.b", 70).is_empty());
        assert_eq!(f.table_resume("public.c", 5), 5);
        assert_eq!(f.floor_of("public.a", "9"), Some(100));
        assert_eq!(f.floor_of("public.a", "11"), None);
        assert_eq!(f.floor_of("public.b", "9"), Some(70));
        f.insert("public.b", Some("9"), 90);
        assert_eq!(f.floor_of("public.b", "9"), Some(90));
        assert_eq!(f.floor_of("public.c", "9"), None);
        assert_eq!(f.book_point("public.a", "9", 50), 100);
        assert_eq!(f.book_point("public.a", "10", 50), 50);
        assert_eq!(f.book_point("public.b", "11", 50), 70);
        assert_eq!(f.book_point("public.b", "9", 95), 95);
        assert_eq!(f.book_point("public.c", "9", 5), 5);
    }

    #[test]
    fn changes_without_a_tenant_spare_tenants_below_their_floor() {
        let mut f = Floors::default();
        f.insert("public.a", Some("9"), 100);
        f.insert("public.a", Some("10"), 100);
        f.insert("public.a", Some("11"), 40);
        assert_eq!(f.spared("public.a", 50), vec!["10", "9"]);
        assert!(f.spared("public.a", 100).is_empty());
        assert!(f.spared("public.b", 1).is_empty());
    }
}
