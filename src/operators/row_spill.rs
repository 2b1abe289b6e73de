//! The row values of a job's version books: in memory up to a budget, beyond it in a
//! local file.
//!
//! A history job's books hold every current row of its tables (and the closed versions of
//! the hot window), so without a bound its memory grows with its tables. A [`RowStore`]
//! counts the bytes of the rows the books hold in memory. Once they pass the budget, the
//! next walk ([`RowStore::shrink`]) measures them exactly and moves rows into an unlinked
//! temporary file (`$TMPDIR`) until half the budget is left: the closed versions first
//! (only as-of queries read them), then current rows. Books keep a [`HeldRow`] per
//! version, the row itself or where it is in the file ([`SpillRef`], 8 bytes); a version
//! whose row was moved reads it back when it closes (an update or delete of its key), when
//! an update leaves TOASTed values to fill from it, and for as-of queries. Keys stay in
//! memory: the books still grow with the number of rows, by about the size of a key and
//! 110 bytes a version, but no longer with their width.
//!
//! Rows are only appended to the file; a row the books stopped holding leaves its bytes
//! behind. The walk also measures the rows still in the file and, when they are less than
//! half of it (and it is past [`COMPACT_MIN_BYTES`]), copies them into a new file and drops
//! the old one. Both happen while the books' lock is held, between transactions: a walk
//! costs a pass over every version held, once per half budget of rows added.
//!
//! A row that cannot be written stays in memory (the budget is then exceeded, never a
//! row lost). A row that cannot be read back is an error the caller must not go past:
//! the history operator stops the job on it, and a restart rebuilds the books from the
//! history table or the cold tier. The file is unlinked from the start, so a crash leaves
//! nothing behind.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::operators::packed_row::PackedRow;

/// Bits of a [`SpillRef`] that hold the row's length.
const LEN_BITS: u32 = 24;

/// Longest row the file takes (16 MiB); longer ones stay in memory.
pub const MAX_SPILLED_ROW: usize = (1 << LEN_BITS) - 1;

/// Size of the file past which a walk considers copying its rows into a new one.
pub const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Rows written are gathered up to this many bytes before they go to the file.
const WRITE_BUFFER: usize = 1 << 20;

/// Environment variable that, set to [`READ_FAULT`], makes every read of a moved row fail:
/// for tests of what a job does then (as `HELIOS_CRASH_AT` is for crashes).
pub const FAULT_ENV: &str = "HELIOS_FAULT_AT";

/// The [`FAULT_ENV`] value that fails reads of moved rows.
pub const READ_FAULT: &str = "row-spill-read";

/// Whether this process was started with reads of moved rows failing.
fn read_fault() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| std::env::var_os(FAULT_ENV).is_some_and(|v| v == READ_FAULT))
}

/// Where a row is in the file: offset (40 bits, up to 1 TiB) and length (24 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpillRef(u64);

impl SpillRef {
    pub(crate) fn new(offset: u64, len: usize) -> Option<SpillRef> {
        let len = u64::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_SPILLED_ROW as u64)?;
        (offset < 1 << (64 - LEN_BITS)).then_some(SpillRef((offset << LEN_BITS) | len))
    }

    fn offset(self) -> u64 {
        self.0 >> LEN_BITS
    }

    fn len(self) -> usize {
        (self.0 & ((1 << LEN_BITS) - 1)) as usize
    }
}

/// A version's row as the books hold it. 16 bytes, as a [`PackedRow`] alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldRow {
    /// In memory.
    Memory(PackedRow),
    /// In the job's spill file.
    Spilled(SpillRef),
}

/// Why a row could not be moved to the file or read back from it.
#[derive(Debug, thiserror::Error)]
pub enum RowSpillError {
    /// The file could not be created, written or read.
    #[error("history spill file: {0}")]
    Io(#[from] std::io::Error),
    /// What was read back is not the row that was written.
    #[error("history spill file: the {len} bytes at offset {offset} do not read back as a row")]
    Damaged {
        /// Where the row was written.
        offset: u64,
        /// Its length.
        len: usize,
    },
    /// The file reached the largest offset a [`SpillRef`] holds.
    #[error("history spill file is full at {0} bytes")]
    Full(u64),
    /// A row's place in a file the books no longer have (a bug, reported, not a panic).
    #[error("history spill file: a row at offset {0} was asked for, but no file is open")]
    NoFile(u64),
}

/// An unlinked temporary file rows are appended to.
struct SpillFile {
    file: File,
    /// Bytes written to the file.
    flushed: u64,
    /// Bytes after them, not yet written.
    pending: Vec<u8>,
}

impl SpillFile {
    fn create() -> Result<SpillFile, RowSpillError> {
        Ok(SpillFile {
            file: crate::spill_dir::spill_file()?,
            flushed: 0,
            pending: Vec::new(),
        })
    }

    fn len(&self) -> u64 {
        self.flushed + self.pending.len() as u64
    }

    fn append(&mut self, row: &PackedRow) -> Result<SpillRef, RowSpillError> {
        let bytes = row.as_bytes();
        let at = SpillRef::new(self.len(), bytes.len()).ok_or(RowSpillError::Full(self.len()))?;
        if self.pending.len() + bytes.len() > WRITE_BUFFER {
            self.flush()?;
        }
        self.pending.extend_from_slice(bytes);
        Ok(at)
    }

    fn flush(&mut self) -> Result<(), RowSpillError> {
        if !self.pending.is_empty() {
            self.file.write_all_at(&self.pending, self.flushed)?;
            self.flushed += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }

    fn read(&self, at: SpillRef) -> Result<PackedRow, RowSpillError> {
        let (offset, len) = (at.offset(), at.len());
        if read_fault() {
            return Err(RowSpillError::Io(std::io::Error::other(format!(
                "{FAULT_ENV}={READ_FAULT}: the read of {len} bytes at offset {offset} fails"
            ))));
        }
        let damaged = RowSpillError::Damaged { offset, len };
        let bytes = if offset >= self.flushed {
            let start = usize::try_from(offset - self.flushed).map_err(|_| damaged)?;
            let range = start..start + len;
            self.pending
                .get(range)
                .ok_or(RowSpillError::Damaged { offset, len })?
                .to_vec()
        } else {
            let mut buf = vec![0u8; len];
            self.file.read_exact_at(&mut buf, offset)?;
            buf
        };
        PackedRow::from_bytes(&bytes).ok_or(RowSpillError::Damaged { offset, len })
    }
}

/// What one walk found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkReport {
    /// Bytes of rows in memory when it started.
    pub resident_before: u64,
    /// Bytes of rows it moved to the file.
    pub moved: u64,
    /// Whether it copied the file's rows into a new file.
    pub compacted: bool,
}

/// The row memory of one job's books; see the module documentation.
pub struct RowStore {
    /// Bytes of rows the books may keep in memory (`None`: no bound).
    budget: Option<u64>,
    /// Bytes of rows in memory: measured at the last walk, plus those held since.
    resident: u64,
    /// Bytes of rows in the file that versions pointed to at the last walk.
    spilled: u64,
    /// The next walk runs once `resident` passes this.
    walk_at: u64,
    /// Size past which a walk considers compacting the file.
    compact_min: u64,
    /// Files compacted so far.
    compactions: u64,
    /// Walks so far.
    walks: u64,
    file: Option<SpillFile>,
}

impl std::fmt::Debug for RowStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStore")
            .field("budget", &self.budget)
            .field("resident", &self.resident)
            .field("spilled", &self.spilled)
            .field("file_bytes", &self.file.as_ref().map(SpillFile::len))
            .finish()
    }
}

impl Default for RowStore {
    fn default() -> Self {
        RowStore::new(None)
    }
}

impl RowStore {
    /// A store that keeps up to `budget` bytes of rows in memory (`None`: every row).
    pub fn new(budget: Option<u64>) -> RowStore {
        RowStore {
            budget,
            resident: 0,
            spilled: 0,
            walk_at: budget.unwrap_or(u64::MAX),
            compact_min: COMPACT_MIN_BYTES,
            compactions: 0,
            walks: 0,
            file: None,
        }
    }

    /// Takes a row for the books to hold (in memory: a walk may move it later).
    pub fn hold(&mut self, row: PackedRow) -> HeldRow {
        self.resident += row.heap_bytes() as u64;
        HeldRow::Memory(row)
    }

    /// The row `held` stands for, read back from the file if it was moved there.
    pub fn row(&self, held: &HeldRow) -> Result<PackedRow, RowSpillError> {
        match held {
            HeldRow::Memory(row) => Ok(row.clone()),
            HeldRow::Spilled(at) => match &self.file {
                Some(file) => file.read(*at),
                None => Err(RowSpillError::NoFile(at.offset())),
            },
        }
    }

    /// Whether rows held since the last walk call for the next one.
    pub fn walk_due(&self) -> bool {
        self.resident > self.walk_at
    }

    /// Bytes of rows in memory (measured at the last walk, plus those held since).
    pub fn resident_bytes(&self) -> u64 {
        self.resident
    }

    /// Bytes of rows in the file that versions pointed to at the last walk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled
    }

    /// How many walks ran.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// How many times a walk copied the file's rows into a new one.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Makes walks compact the file from `bytes` on (tests: the default is 64 MiB).
    #[cfg(test)]
    pub(crate) fn set_compact_min(&mut self, bytes: u64) {
        self.compact_min = bytes;
    }

    /// Size of the file (rows no longer held included).
    pub fn file_bytes(&self) -> u64 {
        self.file.as_ref().map_or(0, SpillFile::len)
    }

    /// Walks every row the books hold: `each` must call its visitor on every [`HeldRow`]
    /// of the books, in the same order each time, those least likely to be read first. It
    /// is called up to four times.
    pub fn shrink(&mut self, mut each: impl FnMut(&mut dyn FnMut(&mut HeldRow))) -> WalkReport {
        let Some(budget) = self.budget else {
            return WalkReport::default();
        };
        self.walks += 1;
        let (mut resident, mut spilled) = (0u64, 0u64);
        each(&mut |held| match held {
            HeldRow::Memory(row) => resident += row.heap_bytes() as u64,
            HeldRow::Spilled(at) => spilled += at.len() as u64,
        });
        let mut report = WalkReport {
            resident_before: resident,
            ..WalkReport::default()
        };
        let target = budget / 2;
        if resident > target {
            let (freed, written) = self.move_out(resident - target, &mut each);
            report.moved = freed;
            resident -= freed;
            spilled += written;
        }
        if let Some(file) = &mut self.file {
            if let Err(e) = file.flush() {
                tracing::warn!(error = %e, "history rows stay in memory: the spill file cannot be written");
            }
        }
        if self.file_bytes() > self.compact_min && spilled * 2 < self.file_bytes() {
            match self.compact(&mut each) {
                Ok(()) => {
                    report.compacted = true;
                    self.compactions += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the history spill file keeps its unused rows: they cannot be copied to a new file")
                }
            }
        }
        self.resident = resident;
        self.spilled = spilled;
        // Half a budget of rows held before the next walk; more when rows could not move.
        self.walk_at = resident.max(target) + budget.div_ceil(2);
        report
    }

    /// Moves rows into the file, in walk order, until `excess` bytes of memory are freed
    /// or a write fails; returns the bytes of memory freed and of the file written.
    fn move_out(
        &mut self,
        excess: u64,
        each: &mut impl FnMut(&mut dyn FnMut(&mut HeldRow)),
    ) -> (u64, u64) {
        let file = match &mut self.file {
            Some(file) => file,
            None => match SpillFile::create() {
                Ok(file) => self.file.insert(file),
                Err(e) => {
                    tracing::warn!(error = %e, "history rows stay in memory: no spill file");
                    return (0, 0);
                }
            },
        };
        let (mut freed, mut written) = (0u64, 0u64);
        let mut failed = false;
        each(&mut |held| {
            let HeldRow::Memory(row) = held else { return };
            // An inline row holds no memory of its own: moving it would free nothing.
            let weight = row.heap_bytes() as u64;
            if freed >= excess || failed || weight == 0 || row.as_bytes().len() > MAX_SPILLED_ROW {
                return;
            }
            match file.append(row) {
                Ok(at) => {
                    freed += weight;
                    written += at.len() as u64;
                    *held = HeldRow::Spilled(at);
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(error = %e, "history rows stay in memory: the spill file cannot be written");
                }
            }
        });
        (freed, written)
    }

    /// Copies every row the books point to into a new file, which replaces the old one;
    /// nothing changes when a read or write fails.
    fn compact(
        &mut self,
        each: &mut impl FnMut(&mut dyn FnMut(&mut HeldRow)),
    ) -> Result<(), RowSpillError> {
        let Some(old) = &self.file else {
            return Ok(());
        };
        let mut new = SpillFile::create()?;
        let mut places = Vec::new();
        let mut failure = None;
        each(&mut |held| {
            if let (HeldRow::Spilled(at), None) = (&*held, &failure) {
                match old.read(*at).and_then(|row| new.append(&row)) {
                    Ok(place) => places.push(place),
                    Err(e) => failure = Some(e),
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        new.flush()?;
        let mut places = places.into_iter();
        each(&mut |held| {
            if let HeldRow::Spilled(at) = held {
                if let Some(place) = places.next() {
                    *at = place;
                }
            }
        });
        self.file = Some(new);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
