//! The predictions a sink task reads: predicted accesses in the next window per tenant,
//! table and key bucket, published whole at each window close. Looking a change up
//! allocates nothing (nested maps keyed by `&str`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::bucket::bucket_of_change;
use crate::change::Scope;
use crate::sinks::ApplyBatch;

type Tables = HashMap<String, HashMap<i64, f32>>;

/// One window's predictions.
#[derive(Debug, Default)]
pub struct HotnessSnapshot {
    tenants: HashMap<String, Tables>,
}

impl HotnessSnapshot {
    /// Builds a snapshot from `(tenant, table, bucket, predicted)` entries.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str, i64, f32)>,
    ) -> Self {
        let mut tenants: HashMap<String, Tables> = HashMap::new();
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
}

impl HotnessMap {
    /// An empty map for buckets of `width`.
    pub fn new(width: u64) -> Self {
        HotnessMap {
            current: RwLock::new(Arc::default()),
            width: width.into(),
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
            if let Some(b) = bucket_of_change(c, width) {
                if let Some(&h) = buckets.get(&b) {
                    hottest = hottest.max(h);
                }
            }
        }
        hottest
    }
}
