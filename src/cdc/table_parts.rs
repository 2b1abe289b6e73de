//! Splitting one large table's initial copy into parts that load side by side.
//!
//! - A plain table's part is a range of its heap pages, read with a `ctid` range
//!   condition (a TID range scan from PostgreSQL 14 on, which reads only those pages).
//!   The parts are taken from the table's size when the snapshot starts; the last part is
//!   open-ended, so rows on pages added since (or missed by the estimate) are still read,
//!   and every row of the snapshot is in exactly one part (a row's `ctid` is fixed within
//!   one snapshot).
//! - A partitioned table's part is a group of its leaf partitions, each read whole: the
//!   leaves are dealt into groups of about equal size, largest first. Every row of the
//!   snapshot is in exactly one leaf.

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

/// A leaf partition of a partitioned table, with its size when the snapshot started.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Leaf {
    pub schema: String,
    pub name: String,
    /// Its size in heap pages.
    pub pages: u64,
}

/// One part of a split table's initial copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TablePart {
    /// Some heap pages of a plain table.
    Pages(PageRange),
    /// Some leaf partitions of a partitioned table, each read whole.
    Partitions(Vec<Leaf>),
}

impl TablePart {
    /// About how many pages the part reads, with `pages` the table's size.
    pub fn len(&self, pages: u64) -> u64 {
        match self {
            TablePart::Pages(range) => range.len(pages),
            TablePart::Partitions(leaves) => leaves.iter().map(|l| l.pages).sum(),
        }
    }
}

/// How the leaf partitions `leaves` deal into at most `parts` groups of at least
/// [`MIN_PART_PAGES`] in all each (so a small partitioned table is one group): the
/// largest leaf first, each to the group with the fewest pages so far. Every leaf is in
/// exactly one group; no group is empty.
pub fn group_partitions(mut leaves: Vec<Leaf>, parts: usize) -> Vec<Vec<Leaf>> {
    let total: u64 = leaves.iter().map(|l| l.pages).sum();
    let parts = (parts as u64)
        .min(total / MIN_PART_PAGES)
        .min(leaves.len() as u64)
        .max(1) as usize;
    leaves.sort_by(|a, b| {
        b.pages
            .cmp(&a.pages)
            .then_with(|| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)))
    });
    let mut groups: Vec<(u64, Vec<Leaf>)> = vec![(0, Vec::new()); parts];
    for leaf in leaves {
        // `groups` has at least one entry (`parts` is at least 1).
        if let Some(smallest) = groups.iter_mut().min_by_key(|(pages, _)| *pages) {
            smallest.0 += leaf.pages;
            smallest.1.push(leaf);
        }
    }
    groups
        .into_iter()
        .map(|(_, group)| group)
        .filter(|group| !group.is_empty())
        .collect()
}

/// The table's size in pages and the parts its initial copy may load in (at most
/// `parts`; one part means the whole table in one load): its leaf partitions in groups
/// when it is partitioned, else ranges of its pages.
pub async fn plan_parts(
    client: &Client,
    table: &TableInfo,
    parts: usize,
) -> Result<(u64, Vec<TablePart>), CdcError> {
    let leaves = leaf_partitions(client, table).await?;
    if leaves.is_empty() {
        let pages = table_pages(client, table).await?;
        let ranges = split_pages(pages, parts);
        return Ok((pages, ranges.into_iter().map(TablePart::Pages).collect()));
    }
    let pages = leaves.iter().map(|l| l.pages).sum();
    let groups = group_partitions(leaves, parts);
    Ok((
        pages,
        groups.into_iter().map(TablePart::Partitions).collect(),
    ))
}

/// The leaf partitions of `table` with their sizes (none when it is not partitioned).
pub async fn leaf_partitions(client: &Client, table: &TableInfo) -> Result<Vec<Leaf>, CdcError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    pg_relation_size(c.oid) / current_setting('block_size')::int8
               FROM pg_partition_tree($1::text::regclass) AS p
               JOIN pg_class c ON c.oid = p.relid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE p.isleaf AND p.relid <> $1::text::regclass",
            &[&quote_qualified(&table.schema, &table.name)],
        )
        .await
        .map_err(CdcError::query("read a table's partitions"))?;
    Ok(rows
        .iter()
        .map(|r| Leaf {
            schema: r.get(0),
            name: r.get(1),
            pages: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
        })
        .collect())
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

    fn leaf(name: &str, pages: u64) -> Leaf {
        Leaf {
            schema: "app".into(),
            name: name.into(),
            pages,
        }
    }

    #[test]
    fn partitions_deal_into_groups_of_about_equal_size() {
        let leaves = vec![
            leaf("a", 5 * MIN_PART_PAGES),
            leaf("b", 4 * MIN_PART_PAGES),
            leaf("c", 3 * MIN_PART_PAGES),
            leaf("d", 2 * MIN_PART_PAGES),
            leaf("e", 0),
        ];
        let names = |groups: Vec<Vec<Leaf>>| -> Vec<Vec<String>> {
            groups
                .into_iter()
                .map(|g| g.into_iter().map(|l| l.name).collect())
                .collect()
        };
        assert_eq!(
            names(group_partitions(leaves.clone(), 2)),
            vec![vec!["a", "d", "e"], vec!["b", "c"]]
        );
        assert_eq!(
            names(group_partitions(leaves.clone(), 1)),
            vec![vec!["a", "b", "c", "d", "e"]]
        );
        assert_eq!(
            group_partitions(vec![leaf("a", 10), leaf("b", 10)], 4).len(),
            1,
            "a small partitioned table is one part"
        );
        assert_eq!(
            group_partitions(leaves, 20).len(),
            5,
            "no more groups than leaves"
        );
        assert_eq!(
            TablePart::Partitions(vec![leaf("a", 3), leaf("b", 4)]).len(0),
            7
        );
    }

    proptest! {
        /// Every leaf is in exactly one group; there are at most `parts` groups, none
        /// empty; and no group exceeds the smallest by more than the largest leaf (the
        /// largest-first dealing's bound).
        #[test]
        fn every_leaf_is_in_one_group(
            sizes in proptest::collection::vec(0u64..20 * MIN_PART_PAGES, 1..40),
            parts in 1usize..10,
        ) {
            let leaves: Vec<Leaf> = sizes
                .iter()
                .enumerate()
                .map(|(i, &pages)| leaf(&format!("p{i}"), pages))
                .collect();
            let groups = group_partitions(leaves.clone(), parts);
            prop_assert!(!groups.is_empty() && groups.len() <= parts);
            prop_assert!(groups.iter().all(|g| !g.is_empty()));
            let mut seen: Vec<String> = groups.iter().flatten().map(|l| l.name.clone()).collect();
            seen.sort();
            let mut expected: Vec<String> = leaves.iter().map(|l| l.name.clone()).collect();
            expected.sort();
            prop_assert_eq!(seen, expected);
            let sums: Vec<u64> = groups.iter().map(|g| g.iter().map(|l| l.pages).sum()).collect();
            let largest = sizes.iter().copied().max().unwrap_or(0);
            let (min, max) = (sums.iter().min().copied().unwrap_or(0), sums.iter().max().copied().unwrap_or(0));
            prop_assert!(max - min <= largest, "{:?}", sums);
        }

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
