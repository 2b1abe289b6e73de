//! Bi-temporal versioning of rows.
//!
//! Every row version lives on two time axes:
//! - **system time**: when the replicator learnt it, the commit LSN and commit time
//!   ([`SysTime`]) of the change that made it current, up to the change that replaced it;
//! - **valid time**: when the row is true in the world, taken from a column of the row or,
//!   when the table has none, from the commit time.
//!
//! A [`VersionBook`] keeps, per key, the *current* step function over valid time: one step
//! per change, from the change's valid time to the next change's, holding either a row or a
//! *tombstone* (a delete: nothing is valid there), plus the closed versions it still holds.
//! A change at valid time `V` never rewrites history in place: it closes the current version
//! containing `V` and opens its replacements, so that
//! - a retroactive correction splits an interval: `[vf, vt)` becomes `[vf, V)` with the old
//!   value and `[V, vt)` with the new one;
//! - a change before the first version opens `[V, first change)`;
//! - a delete does the same with a tombstone for `[V, vt)`.
//!
//! Seen from a system point, the row of a key at valid time `v` is thus given by the change
//! known at that point with the greatest valid time `<= v` (the later one on ties): its value
//! for an upsert, nothing for a delete. Tombstones are versions like rows, stored beside them
//! (the history table's and cold tier's `tombstone` column), so [`VersionBook::restore`]
//! gets back every step after a restart and the rule stays exact even when a change is
//! back-dated before a delete. The price: a deleted key keeps its tombstone in memory.
//!
//! Seen from system point `s` and valid time `v`, the rows are those of the versions visible
//! at both points ([`VersionBook::as_of`]). [`VersionDelta::diffs`] writes each delta as
//! multitemporal updates at [`Bt`] times (product order of commit LSN and valid time), so a
//! differential collection summed at the times `<= (s, v)` holds the same rows.
//!
//! A change costs `O(1)` expected in the number of keys (they are hashed) and `O(log n)`
//! in the versions of its key.

use std::collections::HashMap;
use std::hash::Hash;

use differential_dataflow::lattice::Lattice;
use serde::{Deserialize, Serialize};
use timely::order::PartialOrder;
use timely::progress::timestamp::Refines;
use timely::progress::{PathSummary, Timestamp};

use crate::change::Lsn;

/// When the source committed the change: its commit LSN and commit time (µs since 2000-01-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SysTime {
    /// Commit LSN of the transaction.
    pub lsn: Lsn,
    /// Commit time of the transaction, µs since 2000-01-01.
    pub micros: i64,
}

/// A point on the system axis as a user names it.
///
/// A version is visible at a point `P` iff `system_from <= P` and (`system_to` is `None` or
/// `P < system_to`), comparing the `lsn` for [`SystemPoint::Lsn`] and the `micros` for
/// [`SystemPoint::Micros`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemPoint {
    /// Everything committed at or before this LSN.
    Lsn(Lsn),
    /// Everything committed at or before this commit time (µs since 2000-01-01).
    Micros(i64),
}

impl SystemPoint {
    /// Whether a version known over the system interval `[from, to)` is visible at this point.
    fn sees(self, from: SysTime, to: Option<SysTime>) -> bool {
        match self {
            SystemPoint::Lsn(p) => from.lsn <= p && to.is_none_or(|t| p < t.lsn),
            SystemPoint::Micros(p) => from.micros <= p && to.is_none_or(|t| p < t.micros),
        }
    }
}

/// One version of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version<K, V> {
    /// The row's key.
    pub key: K,
    /// The row's value over this version's intervals.
    pub value: V,
    /// Start of the valid-time interval (inclusive).
    pub valid_from: i64,
    /// End of the valid-time interval (exclusive); `None` is open-ended.
    pub valid_to: Option<i64>,
    /// The change that made this version current.
    pub system_from: SysTime,
    /// The change that replaced it; `None` while it is current.
    pub system_to: Option<SysTime>,
    /// A deletion: no row is valid over the interval; `value` is what the delete recorded
    /// (for rows, the key and tenant cells).
    pub tombstone: bool,
}

impl<K, V> Version<K, V> {
    /// The same version with its key and value converted.
    pub fn map<K2, V2>(
        self,
        key: impl FnOnce(K) -> K2,
        value: impl FnOnce(V) -> V2,
    ) -> Version<K2, V2> {
        Version {
            key: key(self.key),
            value: value(self.value),
            valid_from: self.valid_from,
            valid_to: self.valid_to,
            system_from: self.system_from,
            system_to: self.system_to,
            tombstone: self.tombstone,
        }
    }

    /// Whether this version's intervals contain system point `system` and valid time
    /// `valid` (a tombstone then hides the row).
    pub fn visible_at(&self, system: SystemPoint, valid: i64) -> bool {
        system.sees(self.system_from, self.system_to)
            && self.valid_from <= valid
            && self.valid_to.is_none_or(|t| valid < t)
    }
}

/// What one change did to the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionDelta<K, V> {
    /// The current version of `key` valid from `valid_from` and known since `system_from`
    /// stops being current at `system_to`. `value` and `valid_to` repeat that version's, so
    /// the delta can retract it on its own ([`VersionDelta::diffs`]).
    Close {
        /// The row's key.
        key: K,
        /// The closed version's value.
        value: V,
        /// Start of the closed version's valid-time interval.
        valid_from: i64,
        /// End of the closed version's valid-time interval (`None` is open-ended).
        valid_to: Option<i64>,
        /// When the closed version became current.
        system_from: SysTime,
        /// When it stopped being current: the system time of the change.
        system_to: SysTime,
        /// Whether the closed version is a tombstone.
        tombstone: bool,
    },
    /// A new current version (its `system_to` is None), a row or a tombstone.
    Open(Version<K, V>),
}

/// Bi-temporal timestamp for differential: commit LSN and valid time, in the product order.
///
/// `(sys, valid) <= (sys', valid')` iff `sys <= sys'` and `valid <= valid'`; the minimum is
/// `(0, i64::MIN)`. Only usable with unordered inputs, as it is not totally ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bt {
    /// System time: the commit LSN.
    pub sys: Lsn,
    /// Valid time.
    pub valid: i64,
}

impl Default for Bt {
    /// The minimum, `(0, i64::MIN)`.
    fn default() -> Self {
        Self::minimum()
    }
}

impl PartialOrder for Bt {
    fn less_equal(&self, other: &Self) -> bool {
        self.sys <= other.sys && self.valid <= other.valid
    }
}

impl Refines<()> for Bt {
    fn to_inner(_: ()) -> Self {
        Self::minimum()
    }
    fn to_outer(self) {}
    fn summarize(_: ()) {}
}

impl PathSummary<Bt> for () {
    fn results_in(&self, time: &Bt) -> Option<Bt> {
        Some(*time)
    }
    fn followed_by(&self, _: &Self) -> Option<Self> {
        Some(())
    }
}

impl Timestamp for Bt {
    type Summary = ();
    fn minimum() -> Self {
        Bt {
            sys: 0,
            valid: i64::MIN,
        }
    }
}

impl Lattice for Bt {
    fn join(&self, other: &Self) -> Self {
        Bt {
            sys: self.sys.max(other.sys),
            valid: self.valid.max(other.valid),
        }
    }
    fn meet(&self, other: &Self) -> Self {
        Bt {
            sys: self.sys.min(other.sys),
            valid: self.valid.min(other.valid),
        }
    }
}

impl<K, V> VersionDelta<K, V> {
    /// The system time of the change that made the delta: when the version opened, or
    /// when it closed.
    pub fn changed_at(&self) -> SysTime {
        match self {
            VersionDelta::Open(v) => v.system_from,
            VersionDelta::Close { system_to, .. } => *system_to,
        }
    }

    /// The same delta with its key and value converted.
    pub fn map<K2, V2>(
        self,
        key: impl FnOnce(K) -> K2,
        value: impl FnOnce(V) -> V2,
    ) -> VersionDelta<K2, V2> {
        match self {
            VersionDelta::Open(v) => VersionDelta::Open(v.map(key, value)),
            VersionDelta::Close {
                key: k,
                value: v,
                valid_from,
                valid_to,
                system_from,
                system_to,
                tombstone,
            } => VersionDelta::Close {
                key: key(k),
                value: value(v),
                valid_from,
                valid_to,
                system_from,
                system_to,
                tombstone,
            },
        }
    }
}

impl<K: Clone, V: Clone> VersionDelta<K, V> {
    /// The delta as multitemporal updates: `Open` of `[vf, vt)` at system `S` is `+1` at
    /// `Bt{S.lsn, vf}` and `-1` at `Bt{S.lsn, vt}` (if `vt`); `Close` is the negation at its
    /// `system_to`. Summing the diffs of all updates at times `<= (s, v)` gives the rows as
    /// of `(s, v)`. Tombstones hold no row and give no diffs.
    pub fn diffs(&self) -> Vec<((K, V), Bt, i64)> {
        let (key, value, valid_from, valid_to, system, sign) = match self {
            VersionDelta::Close {
                tombstone: true, ..
            }
            | VersionDelta::Open(Version {
                tombstone: true, ..
            }) => return Vec::new(),
            VersionDelta::Close {
                key,
                value,
                valid_from,
                valid_to,
                system_to,
                ..
            } => (key, value, *valid_from, *valid_to, *system_to, -1),
            VersionDelta::Open(v) => (&v.key, &v.value, v.valid_from, v.valid_to, v.system_from, 1),
        };
        let at = |valid| Bt {
            sys: system.lsn,
            valid,
        };
        let mut out = vec![((key.clone(), value.clone()), at(valid_from), sign)];
        if let Some(to) = valid_to {
            out.push(((key.clone(), value.clone()), at(to), -sign));
        }
        out
    }
}

/// One step of a key's current valid-time line, from one change: it runs to the next
/// slot's start.
#[derive(Debug, Clone)]
struct Slot<V> {
    /// The row, or for a tombstone what the delete recorded.
    value: V,
    /// The change that made this step current.
    system_from: SysTime,
    /// Nothing is valid over this step: a delete starts it.
    tombstone: bool,
}

/// A key's current line over valid time: slots by start, sorted.
///
/// Most keys have one slot (rows whose valid time is never corrected), and a book holds
/// one line per key: the line keeps a single slot in place, with no allocation of its own
/// (a `Vec` of one slot cost a 48-byte allocation per key; a `BTreeMap` a whole node, room
/// for 11 slots, about 630 bytes), and moves to a sorted `Vec` from the second slot on.
#[derive(Debug, Clone)]
enum SlotLine<V> {
    /// Exactly one slot.
    One((i64, Slot<V>)),
    /// Any other number of slots, sorted by start.
    Many(Vec<(i64, Slot<V>)>),
}

impl<V> SlotLine<V> {
    fn new() -> Self {
        SlotLine::Many(Vec::new())
    }

    fn slots(&self) -> &[(i64, Slot<V>)] {
        match self {
            SlotLine::One(slot) => std::slice::from_ref(slot),
            SlotLine::Many(slots) => slots,
        }
    }

    fn slots_mut(&mut self) -> &mut [(i64, Slot<V>)] {
        match self {
            SlotLine::One(slot) => std::slice::from_mut(slot),
            SlotLine::Many(slots) => slots,
        }
    }

    /// Index of the first slot starting after `valid`.
    fn after_index(&self, valid: i64) -> usize {
        self.slots().partition_point(|(start, _)| *start <= valid)
    }

    /// The start and slot of the step containing `valid`.
    fn at_or_before(&self, valid: i64) -> Option<(i64, &Slot<V>)> {
        let i = self.after_index(valid).checked_sub(1)?;
        self.slots().get(i).map(|(start, slot)| (*start, slot))
    }

    /// The slots starting after `valid`, in order.
    fn after(&self, valid: i64) -> impl Iterator<Item = (i64, &Slot<V>)> {
        self.slots()[self.after_index(valid)..]
            .iter()
            .map(|(start, slot)| (*start, slot))
    }

    fn contains(&self, start: i64) -> bool {
        self.slots()
            .binary_search_by_key(&start, |(s, _)| *s)
            .is_ok()
    }

    /// Puts `slot` at `start`; returns the slot it replaced.
    fn insert(&mut self, start: i64, slot: Slot<V>) -> Option<Slot<V>> {
        let at = match self.slots().binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => return Some(std::mem::replace(&mut self.slots_mut()[i].1, slot)),
            Err(at) => at,
        };
        *self = match std::mem::replace(self, SlotLine::Many(Vec::new())) {
            SlotLine::Many(slots) if slots.is_empty() => SlotLine::One((start, slot)),
            SlotLine::Many(mut slots) => {
                slots.insert(at, (start, slot));
                SlotLine::Many(slots)
            }
            SlotLine::One(first) => {
                let mut slots = Vec::with_capacity(2);
                slots.push(first);
                slots.insert(at, (start, slot));
                SlotLine::Many(slots)
            }
        };
        None
    }

    fn remove(&mut self, start: i64) -> Option<Slot<V>> {
        let i = self
            .slots()
            .binary_search_by_key(&start, |(s, _)| *s)
            .ok()?;
        match std::mem::replace(self, SlotLine::Many(Vec::new())) {
            SlotLine::One((_, slot)) => Some(slot),
            SlotLine::Many(mut slots) => {
                let (_, removed) = slots.remove(i);
                *self = match slots.len() {
                    // Back in place: a key corrected once keeps no allocation for life.
                    1 => SlotLine::One(slots.remove(0)),
                    _ => SlotLine::Many(slots),
                };
                Some(removed)
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (i64, &Slot<V>)> {
        self.slots().iter().map(|(start, slot)| (*start, slot))
    }

    fn is_empty(&self) -> bool {
        self.slots().is_empty()
    }
}

/// What the book holds for one key: its current line. Closed versions still held are
/// kept beside the lines, in [`VersionBook::closed`], so that a key that never had one
/// (most keys of most tables) spends nothing on them.
type KeyBook<V> = SlotLine<V>;

/// One change of one key, as [`VersionBook::apply`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<V> {
    /// The row is this value from the change's valid time on.
    Upsert(V),
    /// No row from the change's valid time on; the value is what the tombstone records
    /// (for rows, the key and tenant cells).
    Delete(V),
}

/// The versions of a set of rows over system and valid time; see the module documentation.
///
/// Keys are hashed, not ordered: a change looks its key up once instead of comparing it
/// along a tree path (each comparison a cache miss into the row's message), and the few
/// readers that list keys in order (as-of, truncate, versions) sort them.
#[derive(Debug, Clone)]
pub struct VersionBook<K, V> {
    keys: HashMap<K, KeyBook<V>, foldhash::fast::RandomState>,
    /// Closed versions still held, by key, in the order they were closed.
    closed: HashMap<K, Vec<Version<K, V>>, foldhash::fast::RandomState>,
    complete_since: SysTime,
    len: usize,
}

impl<K: Ord + Hash + Clone, V: Clone> VersionBook<K, V> {
    /// An empty book whose in-memory history is complete from `start` on (versions closed
    /// before it are not held).
    pub fn new(start: SysTime) -> Self {
        VersionBook {
            keys: HashMap::default(),
            closed: HashMap::default(),
            complete_since: start,
            len: 0,
        }
    }

    /// An upsert or delete of `key` effective from valid time `valid`, known from `system`
    /// on.
    ///
    /// System times passed to apply are non-decreasing (the same lsn is allowed for several
    /// changes of one transaction, applied in order); versions opened and closed by one
    /// system time have an empty system interval and are never visible.
    ///
    /// Returns the deltas: the Close first (if a step contained `valid`), then the Opens by
    /// valid time. A change closes at most one version and opens at most two.
    pub fn apply(
        &mut self,
        key: K,
        valid: i64,
        system: SysTime,
        edit: Edit<V>,
    ) -> Vec<VersionDelta<K, V>> {
        let (value, tombstone) = match edit {
            Edit::Upsert(v) => (v, false),
            Edit::Delete(v) => (v, true),
        };
        let book = self.keys.entry(key.clone()).or_insert_with(SlotLine::new);
        let open = |value: V, valid_from: i64, valid_to: Option<i64>, tombstone: bool| {
            VersionDelta::Open(Version {
                key: key.clone(),
                value,
                valid_from,
                valid_to,
                system_from: system,
                system_to: None,
                tombstone,
            })
        };
        let mut deltas = Vec::with_capacity(3);
        let next = book.after(valid).next().map(|(start, _)| start);
        let containing = book.at_or_before(valid).map(|(s, _)| s);
        if let Some(old) = containing.and_then(|start| Some((start, book.remove(start)?))) {
            let (start, slot) = old;
            deltas.push(VersionDelta::Close {
                key: key.clone(),
                value: slot.value.clone(),
                valid_from: start,
                valid_to: next,
                system_from: slot.system_from,
                system_to: system,
                tombstone: slot.tombstone,
            });
            if start < valid {
                // The part before `valid` stays as it was, known anew from `system`.
                book.insert(
                    start,
                    Slot {
                        value: slot.value.clone(),
                        system_from: system,
                        tombstone: slot.tombstone,
                    },
                );
                self.len += 1;
                deltas.push(open(slot.value.clone(), start, Some(valid), slot.tombstone));
            }
            // The closed version moves to `closed`: `len` is unchanged by the close.
            self.closed.entry(key.clone()).or_default().push(Version {
                key: key.clone(),
                value: slot.value,
                valid_from: start,
                valid_to: next,
                system_from: slot.system_from,
                system_to: Some(system),
                tombstone: slot.tombstone,
            });
        }
        book.insert(
            valid,
            Slot {
                value: value.clone(),
                system_from: system,
                tombstone,
            },
        );
        self.len += 1;
        deltas.push(open(value, valid, next, tombstone));
        deltas
    }

    /// The current (latest known) row of `key` at valid time `valid` (used to fill
    /// unchanged TOAST columns); `None` where nothing or a tombstone is.
    pub fn current(&self, key: &K, valid: i64) -> Option<&V> {
        match self.keys.get(key)?.at_or_before(valid)? {
            (_, slot) if !slot.tombstone => Some(&slot.value),
            _ => None,
        }
    }

    /// Keys that have at least one current row version (to delete all of them on
    /// TRUNCATE), in key order.
    pub fn current_keys(&self) -> Vec<K> {
        self.in_key_order()
            .filter(|(_, book)| book.iter().any(|(_, slot)| !slot.tombstone))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The keys and their books, in key order.
    fn in_key_order(&self) -> impl Iterator<Item = (&K, &KeyBook<V>)> {
        let mut keys: Vec<(&K, &KeyBook<V>)> = self.keys.iter().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        keys.into_iter()
    }

    /// Where a TRUNCATE at valid time `at` deletes, so that no row of any key is valid from
    /// `at` on: `at` for each key with a row valid there, and the start of every row step
    /// after it. By key, then valid time.
    pub fn truncate_points(&self, at: i64) -> Vec<(K, i64)> {
        let mut points = Vec::new();
        for (key, book) in self.in_key_order() {
            if matches!(book.at_or_before(at), Some((_, slot)) if !slot.tombstone) {
                points.push((key.clone(), at));
            }
            points.extend(
                book.after(at)
                    .filter(|(_, slot)| !slot.tombstone)
                    .map(|(start, _)| (key.clone(), start)),
            );
        }
        points
    }

    /// Puts back a version read from a store at start-up.
    ///
    /// Only versions current at the resume point are restored (`system_to` None); others are
    /// ignored, as are versions with an empty valid interval (`valid_to <= valid_from`), which
    /// no book produces. Versions may come in any order; after restoring all current
    /// versions (rows and tombstones) of a book, this book behaves exactly as that one for
    /// every later change. A later version with the same key and `valid_from` replaces an
    /// earlier one.
    ///
    /// A store written without tombstones implies them by `valid_to`: a version `[1,5)`
    /// followed by one starting at 8 means nothing was valid in `[5,8)`; such a gap gets a
    /// tombstone at 5 (recording the row before it) unless a version starting there is
    /// restored.
    pub fn restore(&mut self, version: Version<K, V>) {
        if version.system_to.is_some() || version.valid_to.is_some_and(|t| t <= version.valid_from)
        {
            return;
        }
        let book = self.keys.entry(version.key).or_insert_with(SlotLine::new);
        if let Some(to) = version.valid_to {
            if !book.contains(to) {
                book.insert(
                    to,
                    Slot {
                        value: version.value.clone(),
                        system_from: version.system_from,
                        tombstone: true,
                    },
                );
                self.len += 1;
            }
        }
        let slot = Slot {
            value: version.value,
            system_from: version.system_from,
            tombstone: version.tombstone,
        };
        if book.insert(version.valid_from, slot).is_none() {
            self.len += 1;
        }
    }

    /// Rows as of (`system`, `valid`): every key with a version visible at both points,
    /// sorted by key. Answers only from what the book holds: complete for system points at
    /// or after [`complete_since`](Self::complete_since).
    pub fn as_of(&self, system: SystemPoint, valid: i64) -> Vec<(K, V)> {
        let mut rows = Vec::new();
        for (key, book) in self.in_key_order() {
            // At most one version of a key is visible at a point: the current step at
            // `valid` if it is known at `system`, else a closed one.
            let visible = match book.at_or_before(valid) {
                Some((_, slot)) if system.sees(slot.system_from, None) => {
                    (!slot.tombstone).then_some(&slot.value)
                }
                _ => self
                    .closed
                    .get(key)
                    .into_iter()
                    .flatten()
                    .find(|v| v.visible_at(system, valid))
                    .and_then(|v| (!v.tombstone).then_some(&v.value)),
            };
            if let Some(value) = visible {
                rows.push((key.clone(), value.clone()));
            }
        }
        rows
    }

    /// Every version held (current and closed, rows and tombstones): by key, then the closed versions in the
    /// order they were closed, then the current ones by `valid_from`.
    pub fn versions(&self) -> Vec<Version<K, V>> {
        let mut out = Vec::with_capacity(self.len);
        for (key, book) in self.in_key_order() {
            out.extend(self.closed.get(key).into_iter().flatten().cloned());
            let mut slots = book.iter().peekable();
            while let Some((start, slot)) = slots.next() {
                out.push(Version {
                    key: key.clone(),
                    value: slot.value.clone(),
                    valid_from: start,
                    valid_to: slots.peek().map(|(next, _)| *next),
                    system_from: slot.system_from,
                    system_to: None,
                    tombstone: slot.tombstone,
                });
            }
        }
        out
    }

    /// From which system time on `as_of` is complete: the `start` of `new`, raised by pruning.
    pub fn complete_since(&self) -> SysTime {
        self.complete_since
    }

    /// Forgets closed versions whose `system_to.micros < horizon_micros` (they live in the
    /// history table / cold tier); returns how many were dropped.
    ///
    /// `complete_since` rises to the component-wise maximum of itself and the `system_to` of
    /// every dropped version: no dropped version is visible at a point at or after it, on
    /// either axis. Costs `O(versions held)`.
    pub fn prune_closed_before(&mut self, horizon_micros: i64) -> usize {
        let mut dropped = 0;
        let mut since = self.complete_since;
        for closed in self.closed.values_mut() {
            closed.retain(|v| match v.system_to {
                Some(to) if to.micros < horizon_micros => {
                    dropped += 1;
                    since.lsn = since.lsn.max(to.lsn);
                    since.micros = since.micros.max(to.micros);
                    false
                }
                _ => true,
            });
        }
        self.closed.retain(|_, closed| !closed.is_empty());
        let closed = &self.closed;
        self.keys
            .retain(|key, book| !book.is_empty() || closed.contains_key(key));
        self.complete_since = since;
        self.len -= dropped;
        dropped
    }

    /// The values of the closed versions held, to move them (see `row_spill`).
    pub fn closed_values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.closed
            .values_mut()
            .flat_map(|versions| versions.iter_mut().map(|v| &mut v.value))
    }

    /// The values of the current steps (rows and tombstones), to move them.
    pub fn current_values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.keys
            .values_mut()
            .flat_map(|line| line.slots_mut().iter_mut().map(|(_, slot)| &mut slot.value))
    }

    /// Number of versions held (current + closed), for metrics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the book holds no version.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests;
