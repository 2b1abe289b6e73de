//! Which key bucket a row falls in: the unit the predictor counts and predicts.
//!
//! A table whose key is one integer column is cut into ranges of `width` keys (bucket
//! `key.div_euclid(width)`), so a hot range of ids is one bucket and an access event for a
//! key range names the buckets it covers. Any other key (text, uuid, composite) is hashed
//! into [`HASHED_BUCKETS`] buckets with a fixed hash, the same in every process.
//!
//! A row's key leaves out the tenant column: the tenant is already part of a bucket's
//! name, and an access event names a row by its key within the tenant. So the usual
//! multi-tenant `PRIMARY KEY (tenant_id, id)` is bucketed by `id` ranges, where writes
//! and access events for the same id meet.

use std::hash::{Hash, Hasher};

use crate::change::{Cell, TenantAction, TenantChange};

/// Buckets of a table whose key is not a single integer.
pub const HASHED_BUCKETS: u64 = 4096;
/// Most buckets one access event for a key range may name (wider ranges are cut).
pub const MAX_RANGE_BUCKETS: i64 = 1024;

/// The bucket of a key given as its cells' text forms.
pub fn bucket_of_key<'a>(key: impl IntoIterator<Item = Option<&'a str>>, width: u64) -> i64 {
    // Keys of up to four columns stay on the stack (one allocation per change was most of
    // the cost); the hash of a slice is the same whatever holds it.
    let mut small: [Option<&str>; 4] = [None; 4];
    let mut spill: Vec<Option<&str>> = Vec::new();
    let mut n = 0;
    for cell in key {
        if n < small.len() {
            small[n] = cell;
        } else {
            if spill.is_empty() {
                spill.extend_from_slice(&small);
            }
            spill.push(cell);
        }
        n += 1;
    }
    let key: &[Option<&str>] = if n <= small.len() {
        &small[..n]
    } else {
        &spill
    };
    if let [Some(one)] = key {
        if let Ok(n) = one.trim().parse::<i64>() {
            return n.div_euclid(width.clamp(1, i64::MAX as u64) as i64);
        }
    }
    // std's SipHasher with its fixed default keys: stable across processes.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    key.hash(&mut h);
    (h.finish() % HASHED_BUCKETS) as i64
}

/// The buckets an integer key range `[low, high]` covers (at most [`MAX_RANGE_BUCKETS`]).
pub fn buckets_of_range(low: i64, high: i64, width: u64) -> std::ops::RangeInclusive<i64> {
    let w = width.clamp(1, i64::MAX as u64) as i64;
    let (low, high) = (low.min(high), low.max(high));
    let first = low.div_euclid(w);
    let last = high
        .div_euclid(w)
        .min(first.saturating_add(MAX_RANGE_BUCKETS - 1));
    first..=last
}

/// The bucket of the row a change touches (`None` for truncates and unroutable changes).
/// `tenant_column` (the table's) is left out of the key unless it is all of it.
pub fn bucket_of_change(
    change: &TenantChange,
    width: u64,
    tenant_column: Option<&str>,
) -> Option<i64> {
    let row = match &change.action {
        TenantAction::Upsert { new, .. } => new,
        TenantAction::Delete { old } => old,
        TenantAction::Truncate | TenantAction::Unroutable { .. } => return None,
    };
    let table = &change.table;
    // The primary key without allocating (a replica identity index is computed).
    let computed;
    let key: &[usize] = if table.primary_key.is_empty() {
        computed = table.key_columns();
        &computed
    } else {
        &table.primary_key
    };
    let cells = |i: &usize| row.get(*i).and_then(Cell::as_text);
    let not_tenant = |i: &&usize| {
        tenant_column.is_none_or(|t| table.columns.get(**i).is_none_or(|c| c.name != t))
    };
    let within_tenant = key.iter().filter(not_tenant);
    Some(if key.is_empty() {
        bucket_of_key(row.iter().map(Cell::as_text), width)
    } else if within_tenant.clone().next().is_some() {
        bucket_of_key(within_tenant.map(cells), width)
    } else {
        bucket_of_key(key.iter().map(cells), width)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_keys_fall_in_ranges() {
        assert_eq!(bucket_of_key([Some("0")], 1000), 0);
        assert_eq!(bucket_of_key([Some("999")], 1000), 0);
        assert_eq!(bucket_of_key([Some("1000")], 1000), 1);
        assert_eq!(bucket_of_key([Some("-1")], 1000), -1);
        assert_eq!(bucket_of_key([Some("42")], 0), 42);
    }

    /// The buckets are persisted with the models: the stack-held key must hash exactly as
    /// the `Vec` it replaced, for every key width.
    #[test]
    fn hashed_buckets_match_the_vec_hash_for_any_width() {
        for width in 1..=7usize {
            let key: Vec<Option<&str>> = (0..width)
                .map(|i| {
                    if i % 3 == 2 {
                        None
                    } else {
                        Some(["a", "bc", "x y"][i % 3])
                    }
                })
                .collect();
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new();
            key.hash(&mut h);
            let expected = (h.finish() % HASHED_BUCKETS) as i64;
            assert_eq!(
                bucket_of_key(key.iter().copied(), 1000),
                expected,
                "width {width}"
            );
        }
    }

    #[test]
    fn other_keys_are_hashed_stably() {
        let a = bucket_of_key([Some("abc")], 1000);
        assert_eq!(a, bucket_of_key([Some("abc")], 1000));
        assert!((0..HASHED_BUCKETS as i64).contains(&a));
        let composite = bucket_of_key([Some("1"), Some("2")], 1000);
        assert!((0..HASHED_BUCKETS as i64).contains(&composite));
        assert_ne!(bucket_of_key([None], 10), bucket_of_key([Some("")], 10));
    }

    /// `PRIMARY KEY (tenant_id, id)`: the tenant column is left out, so a write of id 1500
    /// lands in the id range an access event for key 1500 names; a key that is only the
    /// tenant column keeps it.
    #[test]
    fn the_tenant_column_is_left_out_of_the_key() {
        use crate::change::{fixtures, Scope};
        use std::sync::Arc;
        let change = |pk: &[usize]| TenantChange {
            scope: Scope::Tenant("7".into()),
            seq: 0,
            table: Arc::new(fixtures::table(
                "orders",
                &[("tenant_id", "int"), ("id", "bigint")],
                pk,
            )),
            action: TenantAction::Upsert {
                old: None,
                new: vec![Cell::text("7"), Cell::text("1500")],
                insert: true,
            },
        };
        let composite = change(&[0, 1]);
        assert_eq!(
            bucket_of_change(&composite, 1000, Some("tenant_id")),
            Some(1)
        );
        assert_eq!(
            bucket_of_change(&composite, 1000, Some("tenant_id")),
            Some(bucket_of_key([Some("1500")], 1000))
        );
        assert_eq!(
            bucket_of_change(&composite, 1000, None),
            Some(bucket_of_key([Some("7"), Some("1500")], 1000)),
            "without a tenant column the whole key is hashed"
        );
        let tenant_only = change(&[0]);
        assert_eq!(
            bucket_of_change(&tenant_only, 1000, Some("tenant_id")),
            Some(0)
        );
    }

    #[test]
    fn ranges_are_cut() {
        assert_eq!(buckets_of_range(0, 2500, 1000), 0..=2);
        assert_eq!(buckets_of_range(2500, 0, 1000), 0..=2);
        assert_eq!(
            buckets_of_range(i64::MIN, i64::MAX, 1).count(),
            MAX_RANGE_BUCKETS as usize
        );
    }
}
