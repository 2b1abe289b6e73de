//! Fixed-width columns: integers, floats, dates, times, timestamps, durations, decimals
//! and Booleans. The validity goes first, then only the non-null values (a number block, a
//! pair of them for 128-bit decimals, or a bit sequence for Booleans).

use std::borrow::Cow;

use arrow_array::{make_array, ArrayRef};
use arrow_buffer::{ArrowNativeType, BooleanBuffer, Buffer, NullBuffer};
use arrow_data::ArrayData;
use arrow_schema::{DataType, IntervalUnit};

use super::bits::{put_bits, put_validity, read_bits, read_validity};
use super::error::FrameError;
use super::numbers::{put_numbers, read_numbers, Num, NumberOptions};
use super::wire::{corrupt, put_varint, Reader};

/// The physical type a column's values are stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phys {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
}

/// The physical type of a fixed-width Arrow type the number codec stores, if any.
pub(crate) fn phys(dt: &DataType) -> Option<Phys> {
    use DataType::*;
    Some(match dt {
        Int8 => Phys::I8,
        Int16 => Phys::I16,
        Int32 | Date32 | Time32(_) | Decimal32(_, _) | Interval(IntervalUnit::YearMonth) => {
            Phys::I32
        }
        Int64 | Date64 | Time64(_) | Timestamp(_, _) | Duration(_) | Decimal64(_, _) => Phys::I64,
        UInt8 => Phys::U8,
        UInt16 => Phys::U16,
        UInt32 => Phys::U32,
        UInt64 => Phys::U64,
        Float32 => Phys::F32,
        Float64 => Phys::F64,
        _ => return None,
    })
}

macro_rules! dispatch {
    ($phys:expr, $f:ident :: <_> ($($arg:expr),*)) => {
        match $phys {
            Phys::I8 => $f::<i8>($($arg),*),
            Phys::I16 => $f::<i16>($($arg),*),
            Phys::I32 => $f::<i32>($($arg),*),
            Phys::I64 => $f::<i64>($($arg),*),
            Phys::U8 => $f::<u8>($($arg),*),
            Phys::U16 => $f::<u16>($($arg),*),
            Phys::U32 => $f::<u32>($($arg),*),
            Phys::U64 => $f::<u64>($($arg),*),
            Phys::F32 => $f::<f32>($($arg),*),
            Phys::F64 => $f::<f64>($($arg),*),
        }
    };
}

/// The values of the rows that are not null.
fn non_null<'a, T: ArrowNativeType>(vals: &'a [T], nulls: Option<&NullBuffer>) -> Cow<'a, [T]> {
    match nulls {
        Some(nb) if nb.null_count() > 0 => {
            Cow::Owned(nb.valid_indices().map(|i| vals[i]).collect())
        }
        _ => Cow::Borrowed(vals),
    }
}

/// Places `vals` at the valid rows of `n` (nulls get zero).
fn scatter<T: ArrowNativeType>(vals: Vec<T>, nulls: Option<&NullBuffer>, n: usize) -> Vec<T> {
    match nulls {
        None => vals,
        Some(nb) => {
            let mut full = vec![T::default(); n];
            for (i, v) in nb.valid_indices().zip(vals) {
                full[i] = v;
            }
            full
        }
    }
}

fn non_null_count(nulls: Option<&NullBuffer>, n: usize) -> usize {
    nulls.map_or(n, |nb| n - nb.null_count())
}

/// Whether the numbers never decrease (worth a first-order delta).
fn is_sorted<T: Num>(vals: &[T]) -> bool {
    vals.len() > 2 && vals.windows(2).all(|w| w[0].compare(w[1]).is_le())
}

fn encode_typed<T: Num>(
    out: &mut Vec<u8>,
    data: &ArrayData,
    opts: NumberOptions,
    bits_level: Option<i32>,
    integer: bool,
) -> String {
    let n = data.len();
    let validity = put_validity(out, data.nulls(), n, bits_level);
    let vals = non_null(data.buffer::<T>(0), data.nulls());
    let opts = NumberOptions {
        // Floats only through pco's own search.
        sorted: integer && is_sorted(&vals),
        ..opts
    };
    let name = put_numbers(out, &vals, opts);
    with_nulls(name, validity)
}

/// Whether `reference` is valid wherever `data` is.
fn covers(reference: &ArrayData, data: &ArrayData) -> bool {
    match (reference.nulls(), data.nulls()) {
        (None, _) => true,
        (Some(r), _) if r.null_count() == 0 => true,
        (Some(r), None) => r.null_count() == 0,
        (Some(r), Some(d)) => d.valid_indices().all(|i| r.is_valid(i)),
    }
}

fn diff_typed<T: Num>(
    out: &mut Vec<u8>,
    data: &ArrayData,
    reference: &ArrayData,
    opts: NumberOptions,
    bits_level: Option<i32>,
) -> String {
    let validity = put_validity(out, data.nulls(), data.len(), bits_level);
    let (vals, refs) = (data.buffer::<T>(0), reference.buffer::<T>(0));
    let diffs: Vec<T> = match data.nulls() {
        Some(nb) if nb.null_count() > 0 => nb
            .valid_indices()
            .map(|i| vals[i].sub_wrapping(refs[i]))
            .collect(),
        _ => vals
            .iter()
            .zip(refs)
            .map(|(v, r)| v.sub_wrapping(*r))
            .collect(),
    };
    let name = put_numbers(out, &diffs, opts);
    with_nulls(name, validity)
}

/// Appends an integer column as its differences to an earlier column of the same type
/// (`receiptdate - shipdate`, `arr_time - sched_arr_time`) when that is smaller than
/// encoding it alone with [`encode_primitive`]. `candidates` are the earlier columns
/// (index, data); returns the payload and name of the best, `None` when none is smaller
/// than `alone` bytes.
pub(crate) fn encode_diff(
    data: &ArrayData,
    p: Phys,
    candidates: &[(usize, ArrayData)],
    alone: usize,
    opts: NumberOptions,
    bits_level: Option<i32>,
) -> Option<(Vec<u8>, String)> {
    if matches!(p, Phys::F32 | Phys::F64) || !opts.search {
        return None;
    }
    let mut best: Option<(Vec<u8>, String)> = None;
    for (j, reference) in candidates {
        if reference.data_type() != data.data_type() || !covers(reference, data) {
            continue;
        }
        let mut out = Vec::new();
        put_varint(&mut out, *j as u64);
        let name = dispatch!(
            p,
            diff_typed::<_>(&mut out, data, reference, opts, bits_level)
        );
        let limit = best.as_ref().map_or(alone, |(b, _)| b.len());
        if out.len() < limit {
            best = Some((out, format!("diff(#{j}):{name}")));
        }
    }
    best
}

fn undiff_typed<T: Num>(
    r: &mut Reader<'_>,
    dt: &DataType,
    n: usize,
    reference: &ArrayData,
) -> Result<ArrayRef, FrameError> {
    let nulls = read_validity(r, n)?;
    let diffs: Vec<T> = read_numbers(r, non_null_count(nulls.as_ref(), n))?;
    let refs = reference.buffer::<T>(0);
    let mut full = scatter(diffs, nulls.as_ref(), n);
    for (v, r) in full.iter_mut().zip(refs) {
        *v = v.add_wrapping(*r);
    }
    build(dt, n, vec![Buffer::from_vec(full)], nulls)
}

/// Reads a column written by [`encode_diff`]; `earlier` are the frame's columns before it.
pub(crate) fn decode_diff(
    r: &mut Reader<'_>,
    dt: &DataType,
    p: Phys,
    n: usize,
    earlier: &[ArrayRef],
) -> Result<ArrayRef, FrameError> {
    let j = r.varint_max(earlier.len().saturating_sub(1), "reference column")?;
    let reference = earlier
        .get(j)
        .filter(|a| a.data_type() == dt && a.len() == n)
        .ok_or_else(|| corrupt("bad reference column"))?
        .to_data();
    dispatch!(p, undiff_typed::<_>(r, dt, n, &reference))
}

/// The codec name, with the validity's form when some row is null.
pub(crate) fn with_nulls(name: String, validity: &str) -> String {
    if validity == "all-set" {
        name
    } else {
        format!("{name}+nulls:{validity}")
    }
}

/// Appends a fixed-width column; returns the codec's name.
pub(crate) fn encode_primitive(
    out: &mut Vec<u8>,
    data: &ArrayData,
    p: Phys,
    opts: NumberOptions,
    bits_level: Option<i32>,
) -> String {
    let integer = !matches!(p, Phys::F32 | Phys::F64);
    dispatch!(p, encode_typed::<_>(out, data, opts, bits_level, integer))
}

fn decode_typed<T: Num>(
    r: &mut Reader<'_>,
    dt: &DataType,
    n: usize,
) -> Result<ArrayRef, FrameError> {
    let nulls = read_validity(r, n)?;
    let vals: Vec<T> = read_numbers(r, non_null_count(nulls.as_ref(), n))?;
    let full = scatter(vals, nulls.as_ref(), n);
    build(dt, n, vec![Buffer::from_vec(full)], nulls)
}

fn build(
    dt: &DataType,
    n: usize,
    buffers: Vec<Buffer>,
    nulls: Option<NullBuffer>,
) -> Result<ArrayRef, FrameError> {
    let data = ArrayData::builder(dt.clone())
        .len(n)
        .buffers(buffers)
        .nulls(nulls)
        .build()
        .map_err(|e| corrupt(&format!("column does not rebuild: {e}")))?;
    Ok(make_array(data))
}

/// Reads a column written by [`encode_primitive`].
pub(crate) fn decode_primitive(
    r: &mut Reader<'_>,
    dt: &DataType,
    p: Phys,
    n: usize,
) -> Result<ArrayRef, FrameError> {
    dispatch!(p, decode_typed::<_>(r, dt, n))
}

const DECIMAL_I64: u8 = 0;
const DECIMAL_SPLIT: u8 = 1;

/// Appends a `Decimal128` column: as i64 numbers when every value fits (the usual case),
/// else as low and high 64-bit halves.
pub(crate) fn encode_decimal128(
    out: &mut Vec<u8>,
    data: &ArrayData,
    opts: NumberOptions,
    bits_level: Option<i32>,
) -> String {
    let validity = put_validity(out, data.nulls(), data.len(), bits_level);
    let vals = non_null(data.buffer::<i128>(0), data.nulls());
    let name = match vals
        .iter()
        .map(|&v| i64::try_from(v).ok())
        .collect::<Option<Vec<i64>>>()
    {
        Some(small) => {
            out.push(DECIMAL_I64);
            let opts = NumberOptions {
                sorted: is_sorted(&small),
                ..opts
            };
            format!("i64:{}", put_numbers(out, &small, opts))
        }
        None => {
            out.push(DECIMAL_SPLIT);
            let lo: Vec<u64> = vals.iter().map(|&v| v as u64).collect();
            let hi: Vec<i64> = vals.iter().map(|&v| (v >> 64) as i64).collect();
            let a = put_numbers(out, &lo, opts);
            let b = put_numbers(out, &hi, opts);
            format!("split:{a}/{b}")
        }
    };
    with_nulls(name, validity)
}

/// Reads a column written by [`encode_decimal128`].
pub(crate) fn decode_decimal128(
    r: &mut Reader<'_>,
    dt: &DataType,
    n: usize,
) -> Result<ArrayRef, FrameError> {
    let nulls = read_validity(r, n)?;
    let k = non_null_count(nulls.as_ref(), n);
    let vals: Vec<i128> = match r.u8()? {
        DECIMAL_I64 => read_numbers::<i64>(r, k)?
            .into_iter()
            .map(i128::from)
            .collect(),
        DECIMAL_SPLIT => {
            let lo = read_numbers::<u64>(r, k)?;
            let hi = read_numbers::<i64>(r, k)?;
            lo.into_iter()
                .zip(hi)
                .map(|(l, h)| (i128::from(h) << 64) | i128::from(l))
                .collect()
        }
        t => return Err(corrupt(&format!("unknown decimal tag {t}"))),
    };
    let full = scatter(vals, nulls.as_ref(), n);
    build(dt, n, vec![Buffer::from_vec(full)], nulls)
}

/// Appends a Boolean column: validity, then the non-null values as a bit sequence.
pub(crate) fn encode_boolean(
    out: &mut Vec<u8>,
    data: &ArrayData,
    bits_level: Option<i32>,
) -> String {
    let n = data.len();
    let validity = put_validity(out, data.nulls(), n, bits_level);
    let values = BooleanBuffer::new(data.buffers()[0].clone(), data.offset(), n);
    let values = match data.nulls() {
        Some(nb) if nb.null_count() > 0 => {
            BooleanBuffer::from_iter(nb.valid_indices().map(|i| values.value(i)))
        }
        _ => values,
    };
    let name = put_bits(out, &values, bits_level);
    with_nulls(format!("bits:{name}"), validity)
}

/// Reads a column written by [`encode_boolean`].
pub(crate) fn decode_boolean(r: &mut Reader<'_>, n: usize) -> Result<ArrayRef, FrameError> {
    let nulls = read_validity(r, n)?;
    let k = non_null_count(nulls.as_ref(), n);
    let bits = read_bits(r, k)?;
    let values = match &nulls {
        None => bits,
        Some(nb) => {
            let mut full = vec![false; n];
            for (i, b) in nb.valid_indices().zip(bits.iter()) {
                full[i] = b;
            }
            BooleanBuffer::from(full)
        }
    };
    build(&DataType::Boolean, n, vec![values.sliced()], nulls)
}
