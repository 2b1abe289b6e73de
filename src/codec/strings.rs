//! Variable-length columns (Utf8, LargeUtf8, Binary, LargeBinary and their view types):
//! a dictionary carried across the stream's frames for repetitive values, or
//! lengths (pco) plus the concatenated bytes compressed by zstd against the column's
//! recent history (the bytes of its previous frames) for free text.
//!
//! The history is what a stream allows and a file does not: at 1k rows a frame's text is
//! too short for zstd to find much, but the previous frames' text is full of matches.
//! Both sides update it the same way after every frame; a key frame starts it empty.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    ArrayRef, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray, StringArray,
};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::DataType;

use super::bits::{put_validity, read_validity};
use super::error::FrameError;
use super::numbers::{put_numbers, read_numbers, NumberOptions};
use super::primitive::with_nulls;
use super::wire::{corrupt, put_blob, put_varint, read_blob, Reader, MAX_BLOB_BYTES};

/// Most bytes of a column's previous text kept as zstd's history.
pub(crate) const HISTORY_BYTES: usize = 128 * 1024;
/// Most entries a carried dictionary may hold before it starts over.
pub(crate) const DICT_MAX_ENTRIES: usize = 1 << 16;
/// Most bytes a carried dictionary may hold before it starts over.
pub(crate) const DICT_MAX_BYTES: usize = 1 << 20;
/// Text-coded values this short on average also feed the dictionary.
const LEARN_MAX_AVG_BYTES: usize = 16;

/// What a string column carries from one frame to the next (both sides alike).
#[derive(Debug, Default, Clone)]
pub(crate) struct TextState {
    /// The column's most recent bytes (of its non-null values, in order).
    history: Vec<u8>,
    /// The dictionary, in code order.
    dict: Vec<Vec<u8>>,
    /// Code of each dictionary value (encoder side only).
    index: HashMap<Vec<u8>, u32>,
    dict_bytes: usize,
}

impl TextState {
    fn push_history(&mut self, values: &[&[u8]]) {
        for v in values {
            self.history.extend_from_slice(v);
        }
        if self.history.len() > HISTORY_BYTES {
            let cut = self.history.len() - HISTORY_BYTES;
            self.history.drain(..cut);
        }
    }

    /// Adds `v` to the dictionary unless it is there; returns its code.
    fn add(&mut self, v: &[u8]) -> u32 {
        if let Some(&c) = self.index.get(v) {
            return c;
        }
        let c = self.dict.len() as u32;
        self.dict.push(v.to_vec());
        self.index.insert(v.to_vec(), c);
        self.dict_bytes += v.len();
        c
    }

    /// After a text-coded frame of short values (identifiers, codes, names), both sides
    /// add its values to the dictionary, so that later frames can use it from their start.
    fn learn(&mut self, vals: &[&[u8]]) {
        let bytes: usize = vals.iter().map(|v| v.len()).sum();
        if bytes > vals.len() * LEARN_MAX_AVG_BYTES {
            return;
        }
        for v in vals {
            if self.dict.len() >= DICT_MAX_ENTRIES || self.dict_bytes >= DICT_MAX_BYTES {
                return;
            }
            self.add(v);
        }
    }

    fn reset_dict(&mut self) {
        self.dict.clear();
        self.index.clear();
        self.dict_bytes = 0;
    }
}

/// Whether the codec stores `dt` as a string column.
pub(crate) fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::Utf8View
            | DataType::BinaryView
    )
}

/// The non-null values' bytes, in row order.
fn values(array: &ArrayRef) -> Vec<&[u8]> {
    fn collect<'a, I: Iterator<Item = Option<&'a [u8]>>>(it: I) -> Vec<&'a [u8]> {
        it.flatten().collect()
    }
    match array.data_type() {
        DataType::Utf8 => collect(
            array
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::as_bytes)),
        ),
        DataType::LargeUtf8 => collect(
            array
                .as_string::<i64>()
                .iter()
                .map(|v| v.map(str::as_bytes)),
        ),
        DataType::Utf8View => collect(array.as_string_view().iter().map(|v| v.map(str::as_bytes))),
        DataType::Binary => collect(array.as_binary::<i32>().iter()),
        DataType::LargeBinary => collect(array.as_binary::<i64>().iter()),
        DataType::BinaryView => collect(array.as_binary_view().iter()),
        _ => Vec::new(),
    }
}

/// Codec levels a string column is encoded with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TextOptions {
    pub zstd: i32,
    pub numbers: NumberOptions,
    pub bits_level: Option<i32>,
    /// Forces the dictionary (`Some(true)`) or text (`Some(false)`) codec (tests).
    pub force_dict: Option<bool>,
}

const TEXT: u8 = 0;
const DICT: u8 = 1;

/// Appends a string column; `state` is updated as the decoder will update it.
/// Returns the codec's name, or `None` when a value is too long for the codec.
pub(crate) fn encode_string(
    out: &mut Vec<u8>,
    array: &ArrayRef,
    state: &mut TextState,
    opts: TextOptions,
) -> Option<String> {
    let vals = values(array);
    if vals.iter().any(|v| v.len() > u32::MAX as usize) {
        return None;
    }
    let validity = put_validity(out, array.nulls(), array.len(), opts.bits_level);
    let name = if opts.force_dict.unwrap_or_else(|| use_dict(&vals, state)) {
        out.push(DICT);
        encode_dict(out, &vals, state, opts)
    } else {
        out.push(TEXT);
        let name = encode_text(out, &vals, state, opts);
        state.learn(&vals);
        name
    };
    state.push_history(&vals);
    Some(with_nulls(name, validity))
}

/// Dictionary when values repeat: at most one distinct value in four rows, counting only
/// values the carried dictionary does not hold yet.
fn use_dict(vals: &[&[u8]], state: &TextState) -> bool {
    if vals.len() < 8 {
        return false;
    }
    let mut distinct: HashMap<&[u8], ()> = HashMap::new();
    let mut new_bytes = 0;
    for v in vals {
        if !state.index.contains_key(*v) && distinct.insert(v, ()).is_none() {
            new_bytes += v.len();
            if distinct.len() * 4 > vals.len() {
                return false;
            }
        }
    }
    // Values much longer than a code repeat rarely enough that text does as well.
    new_bytes <= DICT_MAX_BYTES
}

fn encode_dict(
    out: &mut Vec<u8>,
    vals: &[&[u8]],
    state: &mut TextState,
    opts: TextOptions,
) -> String {
    let added: usize = {
        let mut seen: HashMap<&[u8], ()> = HashMap::new();
        vals.iter()
            .filter(|v| !state.index.contains_key(**v) && seen.insert(v, ()).is_none())
            .count()
    };
    let reset = state.dict.len() + added > DICT_MAX_ENTRIES || state.dict_bytes > DICT_MAX_BYTES;
    if reset {
        state.reset_dict();
    }
    out.push(u8::from(reset));
    let first_new = state.dict.len();
    let mut codes = Vec::with_capacity(vals.len());
    for v in vals {
        codes.push(state.add(v));
    }
    let new = &state.dict[first_new..];
    put_varint(out, new.len() as u64);
    if !new.is_empty() {
        let lens: Vec<u32> = new.iter().map(|v| v.len() as u32).collect();
        put_numbers(out, &lens, opts.numbers);
        put_blob(out, &new.concat(), Some(opts.zstd), &state.history);
    }
    let codes_name = put_numbers(
        out,
        &codes,
        NumberOptions {
            sorted: false,
            ..opts.numbers
        },
    );
    format!("dict({})+{codes_name}", state.dict.len())
}

fn encode_text(out: &mut Vec<u8>, vals: &[&[u8]], state: &TextState, opts: TextOptions) -> String {
    let lens: Vec<u32> = vals.iter().map(|v| v.len() as u32).collect();
    let lens_name = put_numbers(out, &lens, opts.numbers);
    let zstd = put_blob(out, &vals.concat(), Some(opts.zstd), &state.history);
    let bytes = match (zstd, state.history.is_empty()) {
        (false, _) => "plain",
        (true, true) => "zstd",
        (true, false) => "zstd+history",
    };
    format!("lengths:{lens_name}+{bytes}")
}

/// Reads a column written by [`encode_string`] and updates `state` alike.
pub(crate) fn decode_string(
    r: &mut Reader<'_>,
    dt: &DataType,
    n: usize,
    state: &mut TextState,
) -> Result<ArrayRef, FrameError> {
    let nulls = read_validity(r, n)?;
    let k = nulls.as_ref().map_or(n, |nb| n - nb.null_count());
    let codec = r.u8()?;
    let (lens, bytes) = match codec {
        TEXT => {
            let lens: Vec<u32> = read_numbers(r, k)?;
            let total = total_len(&lens)?;
            let bytes = read_blob(r, total, &state.history)?;
            (lens, bytes)
        }
        DICT => decode_dict(r, k, state)?,
        t => return Err(corrupt(&format!("unknown string codec {t}"))),
    };
    let mut vals = Vec::with_capacity(k);
    let mut pos = 0;
    for &l in &lens {
        vals.push(&bytes[pos..pos + l as usize]);
        pos += l as usize;
    }
    if codec == TEXT {
        state.learn(&vals);
    }
    state.push_history(&vals);
    build(dt, n, &lens, &bytes, nulls)
}

fn total_len(lens: &[u32]) -> Result<usize, FrameError> {
    let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
    if total > MAX_BLOB_BYTES as u64 {
        return Err(corrupt("string column too long"));
    }
    Ok(total as usize)
}

fn decode_dict(
    r: &mut Reader<'_>,
    k: usize,
    state: &mut TextState,
) -> Result<(Vec<u32>, Vec<u8>), FrameError> {
    match r.u8()? {
        0 => {}
        1 => state.reset_dict(),
        t => return Err(corrupt(&format!("bad dictionary reset flag {t}"))),
    }
    let added = r.varint_max(DICT_MAX_ENTRIES, "dictionary additions")?;
    if state.dict.len() + added > DICT_MAX_ENTRIES {
        return Err(corrupt("dictionary overflows"));
    }
    if added > 0 {
        let lens: Vec<u32> = read_numbers(r, added)?;
        let bytes = read_blob(r, total_len(&lens)?, &state.history)?;
        let mut pos = 0;
        for l in lens {
            state.add(&bytes[pos..pos + l as usize]);
            pos += l as usize;
        }
    }
    let codes: Vec<u32> = read_numbers(r, k)?;
    let mut lens = Vec::with_capacity(k);
    let mut bytes = Vec::new();
    for c in codes {
        let v = state
            .dict
            .get(c as usize)
            .ok_or_else(|| corrupt("dictionary code out of range"))?;
        if bytes.len() + v.len() > MAX_BLOB_BYTES {
            return Err(corrupt("string column too long"));
        }
        lens.push(v.len() as u32);
        bytes.extend_from_slice(v);
    }
    Ok((lens, bytes))
}

/// The Arrow array of type `dt` with the non-null values `lens`/`bytes` at the valid rows.
fn build(
    dt: &DataType,
    n: usize,
    lens: &[u32],
    bytes: &[u8],
    nulls: Option<NullBuffer>,
) -> Result<ArrayRef, FrameError> {
    let bad =
        |e: arrow_schema::ArrowError| corrupt(&format!("string column does not rebuild: {e}"));
    // Row lengths (0 at null rows).
    let mut row_lens = Vec::with_capacity(n);
    match &nulls {
        None => row_lens.extend(lens.iter().map(|&l| l as usize)),
        Some(nb) => {
            let mut it = lens.iter();
            for valid in nb.iter() {
                row_lens.push(if valid {
                    it.next().map_or(0, |&l| l as usize)
                } else {
                    0
                });
            }
        }
    }
    let values = Buffer::from(bytes.to_vec());
    Ok(match dt {
        DataType::Utf8 | DataType::Binary => {
            if bytes.len() > i32::MAX as usize {
                return Err(corrupt("string column exceeds i32 offsets"));
            }
            let offsets = OffsetBuffer::<i32>::from_lengths(row_lens);
            if *dt == DataType::Utf8 {
                Arc::new(StringArray::try_new(offsets, values, nulls).map_err(bad)?)
            } else {
                Arc::new(BinaryArray::try_new(offsets, values, nulls).map_err(bad)?)
            }
        }
        DataType::LargeUtf8 => Arc::new(
            LargeStringArray::try_new(OffsetBuffer::from_lengths(row_lens), values, nulls)
                .map_err(bad)?,
        ),
        DataType::LargeBinary => Arc::new(
            LargeBinaryArray::try_new(OffsetBuffer::from_lengths(row_lens), values, nulls)
                .map_err(bad)?,
        ),
        DataType::Utf8View | DataType::BinaryView => {
            let offsets: ScalarBuffer<i64> =
                OffsetBuffer::<i64>::from_lengths(row_lens).into_inner();
            let binary = LargeBinaryArray::try_new(OffsetBuffer::new(offsets), values, nulls)
                .map_err(bad)?;
            let view = BinaryViewArray::from_iter(binary.iter());
            if *dt == DataType::BinaryView {
                Arc::new(view)
            } else {
                Arc::new(view.to_string_view().map_err(bad)?)
            }
        }
        other => return Err(corrupt(&format!("{other} is not a string type"))),
    })
}
