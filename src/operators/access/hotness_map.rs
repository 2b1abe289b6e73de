//! The predictions a sink task reads: predicted accesses in the next window per tenant,
//! table and key bucket, published whole at each window close. Looking a change up
//! allocates nothing (nested maps keyed by `&str`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::bucket::bucket_of_change;
use crate::change::Scope;
use crate::control::job_spec::TenantKey;
use crate::sinks::ApplyBatch;

/// Foldhash: a sink task looks up every change of every transaction it orders.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Tables = Map<String, Map<i64, f32>>;

/// Share of the predicted buckets the scheduler treats as hot.
pub const HOT_FRACTION: f64 = 0.1;

/// One window's predictions.
#[derive(Debug, Default)]
pub struct HotnessSnapshot {
    tenants: Map<String, Tables>,
}

impl HotnessSnapshot {
    /// Builds a snapshot from `(tenant, table, bucket, predicted)` entries.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str, i64, f32)>,
    ) -> Self {
        let mut tenants: Map<String, Tables> = Map::default();
        for (tenant, table, bucket, hot) in entries {
            if !(hot.is_finite() && hot > 0.0) {
                continue;
            }
            let tables = tenants.entry(tenant.to_owned()).or_default();
            let buckets = match tables.get_mut(table) {
                Some(b) => b,
                None => tables.entry(table.to_owned()).or_default(),
            };
            buckets.insert(bucket, hot);
        }
        HotnessSnapshot { tenants }
    }

    /// The hot set of a prediction: the `fraction` of buckets predicted hottest (at least
    /// one) get hotness 1, the others none. The scheduler then serves predicted-hot rows
    /// first and everything else by age and round robin: ranking every bucket by its
    /// predicted count would let small prediction errors decide the order of the whole
    /// backlog (and starve the rows predicted slightly colder).
    pub fn hot_set<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str, i64, f32)>,
        fraction: f64,
    ) -> Self {
        let mut all: Vec<(&str, &str, i64, f32)> = entries
            .into_iter()
            .filter(|e| e.3.is_finite() && e.3 > 0.0)
            .collect();
        let keep = ((all.len() as f64 * fraction.clamp(0.0, 1.0)).ceil() as usize).max(1);
        if all.len() > keep {
            all.select_nth_unstable_by(keep - 1, |a, b| b.3.total_cmp(&a.3));
            all.truncate(keep);
        }
        Self::from_entries(all.into_iter().map(|(t, tb, b, _)| (t, tb, b, 1.0)))
    }

    /// The prediction for one bucket (0 when none).
    pub fn get(&self, tenant: &str, table: &str, bucket: i64) -> f32 {
        self.tenants
            .get(tenant)
            .and_then(|t| t.get(table))
            .and_then(|b| b.get(&bucket))
            .copied()
            .unwrap_or(0.0)
    }
}

/// The latest snapshot, swapped whole by the window closer.
#[derive(Debug, Default)]
pub struct HotnessMap {
    current: RwLock<Arc<HotnessSnapshot>>,
    /// Key bucket width of the job (integer keys).
    width: std::sync::atomic::AtomicU64,
    /// Where each `schema.table` keeps its tenant: a tenant column is left out of a row's
    /// key ([`bucket_of_change`]).
    tenant_keys: HashMap<String, TenantKey>,
}

impl HotnessMap {
    /// An empty map for buckets of `width` of tables whose tenants are kept as
    /// `tenant_keys` says (`schema.table` → key).
    pub fn new(width: u64, tenant_keys: HashMap<String, TenantKey>) -> Self {
        HotnessMap {
            current: RwLock::new(Arc::default()),
            width: width.into(),
            tenant_keys,
        }
    }

    /// Publishes a new snapshot.
    pub fn publish(&self, snapshot: HotnessSnapshot) {
        if let Ok(mut c) = self.current.write() {
            *c = Arc::new(snapshot);
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<HotnessSnapshot> {
        self.current.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// A transaction's hotness: the hottest bucket it touches (0 when nothing is known).
    pub fn hotness_of(&self, batch: &ApplyBatch) -> f32 {
        let snapshot = self.snapshot();
        if snapshot.tenants.is_empty() {
            return 0.0;
        }
        let width = self.width.load(std::sync::atomic::Ordering::Relaxed);
        let mut hottest = 0.0f32;
        let mut table_name = String::new();
        for c in &batch.changes {
            let Scope::Tenant(tenant) = &c.scope else {
                continue;
            };
            let Some(tables) = snapshot.tenants.get(tenant) else {
                continue;
            };
            table_name.clear();
            table_name.push_str(&c.table.schema);
            table_name.push('.');
            table_name.push_str(&c.table.name);
            let Some(buckets) = tables.get(table_name.as_str()) else {
                continue;
            };
            let tenant_column = self
                .tenant_keys
                .get(table_name.as_str())
                .and_then(TenantKey::column);
            if let Some(b) = bucket_of_change(c, width, tenant_column) {
                if let Some(&h) = buckets.get(&b) {
                    hottest = hottest.max(h);
                }
            }
        }
        hottest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_set_keeps_the_top_fraction_at_hotness_one() {
        let entries: Vec<(String, i64, f32)> =
            (0..20).map(|b| ("t".to_string(), b, b as f32)).collect();
        let s = HotnessSnapshot::hot_set(
            entries.iter().map(|(t, b, v)| ("1", t.as_str(), *b, *v)),
            0.1,
        );
        assert_eq!(s.get("1", "t", 19), 1.0);
        assert_eq!(s.get("1", "t", 18), 1.0);
        assert_eq!(s.get("1", "t", 17), 0.0);
        assert_eq!(s.get("1", "t", 0), 0.0, "zero predictions are never hot");
        let nan = HotnessSnapshot::hot_set([("1", "t", 1, f32::NAN)], 0.5);
        assert_eq!(nan.get("1", "t", 1), 0.0);
    }
}
