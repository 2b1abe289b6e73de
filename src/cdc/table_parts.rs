//! Splitting one large table's initial copy into parts that load side by side: each part
//! is a range of the table's heap pages, read with a `ctid` range condition (a TID range
//! scan from PostgreSQL 14 on, which reads only those pages).
//!
//! The parts are taken from the table's size when the snapshot starts; the last part is
//! open-ended, so rows on pages added since (or missed by the estimate) are still read,
//! and every row of the snapshot is in exactly one part (a row's `ctid` is fixed within
//! one snapshot).

use tokio_postgres::Client;

use crate::cdc::error::CdcError;
use crate::change::TableInfo;
use crate::sql_text::quote_qualified;

/// Fewest pages (8 KiB each by default: 8 MiB) a part of a split table holds: smaller
/// tables are not worth the extra transactions.
pub const MIN_PART_PAGES: u64 = 1024;

/// The first PostgreSQL release whose planner scans a `ctid` range as a range (older
/// ones would read the whole table for every part).
pub const TID_RANGE_SCAN_VERSION: u32 = 140_000;

/// The heap pages `[from, to)` of a table (`to == None`: to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRange {
    pub from: u64,
    pub to: Option<u64>,
}

impl PageRange {
    /// The condition that selects the rows on these pages.
    pub fn sql_condition(&self) -> String {
        let from = format!("ctid >= '({},0)'::tid", self.from);
        match self.to {
            Some(to) => format!("{from} AND ctid < '({to},0)'::tid"),
            None => from,
        }
    }

    /// Pages in the range, with `pages` the table's size (an open-ended range runs to it).
    pub fn len(&self, pages: u64) -> u64 {
        self.to
            .unwrap_or(pages)
            .min(pages)
            .saturating_sub(self.from)
    }
}

/// How a table of `pages` pages splits into at most `parts` ranges of at least
/// [`MIN_PART_PAGES`] each: contiguous from page 0, about equal, the last open-ended.
/// A table too small to split gives one range, the whole table.
pub fn split_pages(pages: u64, parts: usize) -> Vec<PageRange> {
    let parts = (parts as u64).min(pages / MIN_PART_PAGES).max(1);
    let step = pages.div_ceil(parts);
    (0..parts)
        .map(|i| PageRange {
            from: i * step,
            to: (i + 1 < parts).then(|| (i + 1) * step),
        })
        .collect()
}

/// Whether the server scans `ctid` ranges as ranges (PostgreSQL 14 or later).
pub async fn scans_tid_ranges(client: &Client) -> Result<bool, CdcError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(CdcError::query("read the server version"))?;
    let version: i32 = row.get(0);
    Ok(u32::try_from(version).is_ok_and(|v| v >= TID_RANGE_SCAN_VERSION))
}

/// The table's size in heap pages now (its main fork's size over the block size).
pub async fn table_pages(client: &Client, table: &TableInfo) -> Result<u64, CdcError> {
    let row = client
        .query_one(
            "SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::int8",
            &[&quote_qualified(&table.schema, &table.name)],
        )
        .await
        .map_err(CdcError::query("read a table's size"))?;
    let pages: i64 = row.get(0);
    Ok(u64::try_from(pages).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_small_table_is_one_part() {
        assert_eq!(split_pages(0, 4), vec![PageRange { from: 0, to: None }]);
        assert_eq!(
            split_pages(2 * MIN_PART_PAGES - 1, 4),
            vec![PageRange { from: 0, to: None }]
        );
        assert_eq!(
            split_pages(100 * MIN_PART_PAGES, 1),
            vec![PageRange { from: 0, to: None }]
        );
    }

    #[test]
    fn a_large_table_splits_evenly_with_an_open_end() {
        let parts = split_pages(10_000, 2);
        assert_eq!(
            parts,
            vec![
                PageRange {
                    from: 0,
                    to: Some(5000)
                },
                PageRange {
                    from: 5000,
                    to: None
                },
            ]
        );
        assert_eq!(
            parts[0].sql_condition(),
            "ctid >= '(0,0)'::tid AND ctid < '(5000,0)'::tid"
        );
        assert_eq!(parts[1].sql_condition(), "ctid >= '(5000,0)'::tid");
        assert_eq!(parts[1].len(10_000), 5000);
        assert_eq!(
            split_pages(3 * MIN_PART_PAGES, 8).len(),
            3,
            "parts of MIN_PART_PAGES at least"
        );
    }

    proptest! {
        /// The parts cover every page from 0 on exactly once, in order, the last
        /// open-ended; there are at most `parts` of them, each (but an open last one that
        /// would be past the end) at least MIN_PART_PAGES long.
        #[test]
        fn parts_cover_the_table_once(pages in 0u64..10_000_000, parts in 1usize..20) {
            let split = split_pages(pages, parts);
            prop_assert!(!split.is_empty() && split.len() <= parts);
            prop_assert_eq!(split[0].from, 0);
            prop_assert_eq!(split.last().and_then(|p| p.to), None);
            for pair in split.windows(2) {
                prop_assert_eq!(pair[0].to, Some(pair[1].from));
            }
            if split.len() > 1 {
                for part in &split[..split.len() - 1] {
                    prop_assert!(part.len(pages) >= MIN_PART_PAGES);
                }
                let covered: u64 = split.iter().map(|p| p.len(pages)).sum();
                prop_assert_eq!(covered, pages);
            }
        }
    }
}
