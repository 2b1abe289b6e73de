//! A row packed into one shared allocation: the form the version books keep keys and rows
//! in.
//!
//! A decoded [`Row`] is a vector of cells of 32 bytes each, every text a slice of the
//! message it came from, so a row kept in memory also keeps its whole message alive. The
//! books hold every current version of every tenant's rows, so they keep them packed: one
//! reference-counted buffer holding the cells' kinds and ends followed by their texts,
//! about the size of the texts plus 5 bytes a cell, or those bytes inline when they fit
//! in 22 (most keys). Cloning is a reference count (or a copy of 24 bytes); reading a
//! cell is a slice.
//!
//! Layout: a little-endian `u32` word (the cell count; its top bit says the ends are
//! `u64`, for rows whose texts exceed 4 GiB), one end offset per cell (into the texts,
//! exclusive), one kind byte per cell, then the texts.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::change::{Cell, Row, Text};

const NULL: u8 = 0;
const UNCHANGED: u8 = 1;
const TEXT: u8 = 2;
/// Top bit of the count word: the ends are 8 bytes wide.
const WIDE: u32 = 1 << 31;

/// One cell of a [`PackedRow`], borrowed. Ordered as [`Cell`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CellRef<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change.
    Unchanged,
    /// The value's text form.
    Text(&'a str),
}

impl CellRef<'_> {
    /// An owned cell (the text copied).
    pub fn to_cell(self) -> Cell {
        match self {
            CellRef::Null => Cell::Null,
            CellRef::Unchanged => Cell::Unchanged,
            CellRef::Text(t) => Cell::text(t),
        }
    }
}

/// A row of cells in one shared buffer, or inline when its bytes fit in
/// [`INLINE_BYTES`] (a two-integer key does: its allocation cost more than the key). Equal
/// rows have equal bytes, so hashing and equality look at the bytes; ordering is the
/// ordering of the cells, as for [`Row`].
#[derive(Clone)]
pub struct PackedRow(Bytes);

/// Longest packed row kept inline, without an allocation.
pub const INLINE_BYTES: usize = 22;

/// Where a packed row's bytes are. A row is inline exactly when it fits, so equal rows
/// are held alike.
#[derive(Clone)]
enum Bytes {
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    Shared(Arc<[u8]>),
}

impl Bytes {
    fn of(buf: &[u8]) -> Bytes {
        match u8::try_from(buf.len()) {
            Ok(len) if buf.len() <= INLINE_BYTES => {
                let mut bytes = [0u8; INLINE_BYTES];
                bytes[..buf.len()].copy_from_slice(buf);
                Bytes::Inline { len, bytes }
            }
            _ => Bytes::Shared(Arc::from(buf)),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Bytes::Shared(shared) => shared,
        }
    }
}

impl PartialEq for PackedRow {
    fn eq(&self, other: &PackedRow) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PackedRow {}

impl std::hash::Hash for PackedRow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PackedRow {
    /// Packs `cells` (their texts are copied once, into the row's one allocation).
    pub fn pack(cells: &[Cell]) -> PackedRow {
        thread_local! {
            /// Where rows are laid out before their buffer is allocated at its size.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                Self::lay_out(cells, &mut buf, false);
                PackedRow(Bytes::of(&buf))
            }
            Err(_) => {
                let mut buf = Vec::new();
                Self::lay_out(cells, &mut buf, false);
                PackedRow(Bytes::of(&buf))
            }
        })
    }

    /// Appends the packed form of `cells` to `buf`, with 8-byte ends when the texts need
    /// them or `force_wide` (tests: such rows are too large to build).
    fn lay_out(cells: &[Cell], buf: &mut Vec<u8>, force_wide: bool) {
        let texts: usize = cells.iter().map(|c| c.as_text().map_or(0, str::len)).sum();
        let wide =
            force_wide || u32::try_from(texts).is_err() || u32::try_from(cells.len()).is_err();
        let end_width = if wide { 8 } else { 4 };
        let count = cells.len() as u32 & !WIDE;
        buf.reserve(4 + cells.len() * (end_width + 1) + texts);
        buf.extend_from_slice(&(count | if wide { WIDE } else { 0 }).to_le_bytes());
        let mut end = 0usize;
        for cell in cells {
            end += cell.as_text().map_or(0, str::len);
            if wide {
                buf.extend_from_slice(&(end as u64).to_le_bytes());
            } else {
                buf.extend_from_slice(&(end as u32).to_le_bytes());
            }
        }
        buf.extend(cells.iter().map(|c| match c {
            Cell::Null => NULL,
            Cell::Unchanged => UNCHANGED,
            Cell::Text(_) => TEXT,
        }));
        for cell in cells {
            if let Some(t) = cell.as_text() {
                buf.extend_from_slice(t.as_bytes());
            }
        }
    }

    fn count_word(&self) -> u32 {
        u32::from_le_bytes(
            self.as_bytes()[..4]
                .try_into()
                .expect("a packed row starts with its count"),
        )
    }

    /// The number of cells.
    pub fn len(&self) -> usize {
        (self.count_word() & !WIDE) as usize
    }

    /// Whether the row has no cells.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn end_width(&self) -> usize {
        if self.count_word() & WIDE != 0 {
            8
        } else {
            4
        }
    }

    /// The end of cell `i`'s text within the texts.
    fn end(&self, i: usize) -> usize {
        let w = self.end_width();
        let at = 4 + i * w;
        let bytes = &self.as_bytes()[at..at + w];
        match w {
            8 => u64::from_le_bytes(bytes.try_into().expect("8 bytes")) as usize,
            _ => u32::from_le_bytes(bytes.try_into().expect("4 bytes")) as usize,
        }
    }

    /// Cell `i`, `None` past the end.
    pub fn cell(&self, i: usize) -> Option<CellRef<'_>> {
        let n = self.len();
        if i >= n {
            return None;
        }
        let w = self.end_width();
        let kinds = 4 + n * w;
        let texts = kinds + n;
        Some(match self.as_bytes()[kinds + i] {
            NULL => CellRef::Null,
            UNCHANGED => CellRef::Unchanged,
            _ => {
                let start = if i == 0 { 0 } else { self.end(i - 1) };
                let bytes = &self.as_bytes()[texts + start..texts + self.end(i)];
                // Packed from `&str`s: always UTF-8.
                CellRef::Text(std::str::from_utf8(bytes).unwrap_or_default())
            }
        })
    }

    /// The cells in order.
    pub fn cells(&self) -> impl Iterator<Item = CellRef<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.cell(i))
    }

    /// The packed bytes, as [`PackedRow::from_bytes`] takes them back.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// The bytes the row keeps allocated: its buffer and the reference counts before it
    /// (none inline).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Bytes::Inline { .. } => 0,
            Bytes::Shared(shared) => shared.len() + 2 * std::mem::size_of::<usize>(),
        }
    }

    /// A row from bytes [`PackedRow::as_bytes`] gave, checked cell by cell: `None` when
    /// they are not a packed row (so reading them can never go out of bounds).
    pub fn from_bytes(bytes: &[u8]) -> Option<PackedRow> {
        let word = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
        let n = (word & !WIDE) as usize;
        let width = if word & WIDE != 0 { 8 } else { 4 };
        let kinds = n.checked_mul(width)?.checked_add(4)?;
        let texts_at = kinds.checked_add(n)?;
        let texts = std::str::from_utf8(bytes.get(texts_at..)?).ok()?;
        let mut previous = 0usize;
        for i in 0..n {
            let at = 4 + i * width;
            let end = match width {
                8 => {
                    usize::try_from(u64::from_le_bytes(bytes[at..at + 8].try_into().ok()?)).ok()?
                }
                _ => u32::from_le_bytes(bytes[at..at + 4].try_into().ok()?) as usize,
            };
            let sound = match bytes[kinds + i] {
                TEXT => end >= previous && texts.is_char_boundary(end),
                NULL | UNCHANGED => end == previous,
                _ => false,
            };
            if !sound {
                return None;
            }
            previous = end;
        }
        (previous == texts.len()).then(|| PackedRow(Bytes::of(bytes)))
    }

    /// The row as cells. The texts share one copy of this row's texts.
    pub fn to_row(&self) -> Row {
        let n = self.len();
        let texts_at = 4 + n * (self.end_width() + 1);
        let texts =
            Text::from(std::str::from_utf8(&self.as_bytes()[texts_at..]).unwrap_or_default());
        let mut start = 0;
        self.cells()
            .enumerate()
            .map(|(i, cell)| match cell {
                CellRef::Null => Cell::Null,
                CellRef::Unchanged => Cell::Unchanged,
                CellRef::Text(_) => {
                    let end = self.end(i);
                    let cell = Cell::Text(texts.slice_ref(&texts[start..end]));
                    start = end;
                    cell
                }
            })
            .collect()
    }
}

impl From<&Row> for PackedRow {
    fn from(row: &Row) -> PackedRow {
        PackedRow::pack(row)
    }
}

impl Ord for PackedRow {
    fn cmp(&self, other: &PackedRow) -> Ordering {
        self.cells().cmp(other.cells())
    }
}

impl PartialOrd for PackedRow {
    fn partial_cmp(&self, other: &PackedRow) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for PackedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.cells()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cell() -> impl Strategy<Value = Cell> {
        prop_oneof![
            Just(Cell::Null),
            Just(Cell::Unchanged),
            ".{0,12}".prop_map(|s| Cell::text(&s)),
        ]
    }

    proptest! {
        #[test]
        /// Both widths of ends read back every cell.
        fn packing_keeps_every_cell(row in prop::collection::vec(cell(), 0..12)) {
            let mut wide = Vec::new();
            PackedRow::lay_out(&row, &mut wide, true);
            for packed in [PackedRow::pack(&row), PackedRow(Bytes::of(&wide))] {
                prop_assert_eq!(packed.len(), row.len());
                prop_assert_eq!(packed.to_row(), row.clone());
                for (i, c) in row.iter().enumerate() {
                    prop_assert_eq!(packed.cell(i).map(CellRef::to_cell), Some(c.clone()));
                }
                prop_assert_eq!(packed.cell(row.len()), None);
            }
        }

        #[test]
        /// Bytes of a packed row read back as that row, in both widths.
        fn bytes_read_back(row in prop::collection::vec(cell(), 0..12)) {
            let mut wide = Vec::new();
            PackedRow::lay_out(&row, &mut wide, true);
            for packed in [PackedRow::pack(&row), PackedRow(Bytes::of(&wide))] {
                let back = PackedRow::from_bytes(packed.as_bytes());
                prop_assert_eq!(back.map(|b| b.to_row()), Some(row.clone()));
            }
        }

        #[test]
        /// Damaged bytes are refused or read as some row, never out of bounds.
        fn damaged_bytes_never_panic(
            row in prop::collection::vec(cell(), 0..8),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let packed = PackedRow::pack(&row);
            let mut bytes = packed.as_bytes().to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Some(r) = PackedRow::from_bytes(&bytes) {
                let _ = (r.to_row(), r.cells().count());
            }
            let cut = cut.index(bytes.len());
            prop_assert!(PackedRow::from_bytes(&packed.as_bytes()[..cut]).is_none());
        }

        #[test]
        fn order_and_equality_are_those_of_the_rows(
            a in prop::collection::vec(cell(), 0..4),
            b in prop::collection::vec(cell(), 0..4),
        ) {
            let (pa, pb) = (PackedRow::pack(&a), PackedRow::pack(&b));
            prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
            prop_assert_eq!(pa == pb, a == b);
        }
    }

    #[test]
    fn short_rows_are_inline_and_long_ones_shared() {
        // 4 + 2 × 4 + 2 + 8 bytes: a two-integer key fits.
        let key = PackedRow::pack(&[Cell::text("12"), Cell::text("123456")]);
        assert_eq!((key.as_bytes().len(), key.heap_bytes()), (22, 0));
        let row = PackedRow::pack(&[Cell::text("12"), Cell::text("1234567")]);
        assert_eq!((row.as_bytes().len(), row.heap_bytes()), (23, 23 + 16));
        for packed in [key, row] {
            let back = PackedRow::from_bytes(packed.as_bytes()).expect("reads back");
            assert_eq!(back, packed);
            assert_eq!(back.heap_bytes(), packed.heap_bytes(), "held alike");
            assert_eq!(back.cell(1), packed.cell(1));
        }
        assert_eq!(std::mem::size_of::<PackedRow>(), 24);
    }

    #[test]
    fn texts_split_at_the_right_places() {
        // Adjacent texts whose concatenations agree must still differ as rows.
        let a = PackedRow::pack(&[Cell::text("ab"), Cell::text("c")]);
        let b = PackedRow::pack(&[Cell::text("a"), Cell::text("bc")]);
        assert_ne!(a, b);
        assert_eq!(a.cell(1), Some(CellRef::Text("c")));
        assert_eq!(b.cell(0), Some(CellRef::Text("a")));
        let empty = PackedRow::pack(&[]);
        assert!(empty.is_empty());
        assert_eq!(empty.to_row(), Row::new());
    }
}
