//! One column in a frame: the choice of codec from the Arrow type (and, inside each codec,
//! from the batch's statistics), the codec id, and the length-prefixed payload.
//!
//! | id | codec | types |
//! |----|-------|-------|
//! | 0 | null | `Null` |
//! | 1 | fixed-width numbers | integers, floats, dates, times, timestamps, durations, Decimal32/64 |
//! | 2 | Boolean bits | `Boolean` |
//! | 3 | decimal | `Decimal128` |
//! | 4 | string (dictionary or text) | Utf8, LargeUtf8, Binary, LargeBinary, Utf8View, BinaryView |
//! | 5 | Arrow IPC + zstd | everything else |
//! | 6 | difference to an earlier column | integer-like types, when smaller than id 1 |

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, NullArray};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field};

use super::error::{CodecError, FrameError};
use super::fallback::{decode_fallback, encode_fallback};
use super::numbers::NumberOptions;
use super::primitive::{
    decode_boolean, decode_decimal128, decode_diff, decode_primitive, encode_boolean,
    encode_decimal128, encode_diff, encode_primitive, phys,
};
use super::strings::{decode_string, encode_string, is_string, TextOptions, TextState};
use super::wire::{corrupt, put_len_prefixed, Reader};
use super::Effort;

const NULL: u8 = 0;
const PRIMITIVE: u8 = 1;
const BOOLEAN: u8 = 2;
const DECIMAL128: u8 = 3;
const STRING: u8 = 4;
const FALLBACK: u8 = 5;
const DIFF: u8 = 6;

/// How many earlier columns of the same type a column is tried against (Best effort).
const DIFF_CANDIDATES: usize = 4;

/// What a column carries from frame to frame (only string columns use it).
pub(crate) type ColumnState = TextState;

/// The levels each effort encodes with.
pub(crate) fn text_options(effort: Effort) -> TextOptions {
    match effort {
        Effort::Best => TextOptions {
            zstd: 16,
            numbers: NumberOptions {
                level: 8,
                sorted: false,
                search: true,
            },
            bits_level: Some(19),
            force_dict: None,
        },
        Effort::Fast => TextOptions {
            zstd: 3,
            numbers: NumberOptions {
                level: 3,
                sorted: false,
                search: false,
            },
            bits_level: None,
            force_dict: None,
        },
    }
}

/// Appends `array` (of `field`): codec id, payload length, payload. Returns the codec's
/// name for [`ColumnChoice`](super::ColumnChoice).
pub(crate) fn encode_column(
    out: &mut Vec<u8>,
    field: &Field,
    array: &ArrayRef,
    earlier: &[ArrayRef],
    state: &mut ColumnState,
    effort: Effort,
) -> Result<String, CodecError> {
    let opts = text_options(effort);
    let dt = field.data_type();
    let data = array.to_data();
    let mut payload = Vec::new();
    let (id, name) = if *dt == DataType::Null {
        (NULL, "null".to_string())
    } else if let Some(p) = phys(dt) {
        let name = encode_primitive(&mut payload, &data, p, opts.numbers, opts.bits_level);
        let candidates: Vec<(usize, ArrayData)> = earlier
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, a)| a.data_type() == dt)
            .take(DIFF_CANDIDATES)
            .map(|(j, a)| (j, a.to_data()))
            .collect();
        match encode_diff(
            &data,
            p,
            &candidates,
            payload.len(),
            opts.numbers,
            opts.bits_level,
        ) {
            Some((diff, diff_name)) => {
                payload = diff;
                (DIFF, diff_name)
            }
            None => (PRIMITIVE, name),
        }
    } else if *dt == DataType::Boolean {
        (
            BOOLEAN,
            encode_boolean(&mut payload, &data, opts.bits_level),
        )
    } else if matches!(dt, DataType::Decimal128(_, _)) {
        let name = encode_decimal128(&mut payload, &data, opts.numbers, opts.bits_level);
        (DECIMAL128, name)
    } else if let Some(name) = is_string(dt)
        .then(|| encode_string(&mut payload, array, state, opts))
        .flatten()
    {
        (STRING, name)
    } else {
        payload.clear();
        let name =
            encode_fallback(&mut payload, field, array, opts.zstd).map_err(CodecError::Arrow)?;
        (FALLBACK, name)
    };
    out.push(id);
    put_len_prefixed(out, &payload);
    Ok(name)
}

/// Reads `n` rows of `field` written by [`encode_column`].
pub(crate) fn decode_column(
    r: &mut Reader<'_>,
    field: &Field,
    n: usize,
    earlier: &[ArrayRef],
    state: &mut ColumnState,
) -> Result<ArrayRef, FrameError> {
    let id = r.u8()?;
    let mut p = Reader::new(r.len_prefixed()?);
    let dt = field.data_type();
    let array = match id {
        NULL if *dt == DataType::Null => Arc::new(NullArray::new(n)) as ArrayRef,
        PRIMITIVE => match phys(dt) {
            Some(ph) => decode_primitive(&mut p, dt, ph, n)?,
            None => return Err(mismatch(id, dt)),
        },
        DIFF => match phys(dt) {
            Some(ph) => decode_diff(&mut p, dt, ph, n, earlier)?,
            None => return Err(mismatch(id, dt)),
        },
        BOOLEAN if *dt == DataType::Boolean => decode_boolean(&mut p, n)?,
        DECIMAL128 if matches!(dt, DataType::Decimal128(_, _)) => decode_decimal128(&mut p, dt, n)?,
        STRING if is_string(dt) => decode_string(&mut p, dt, n, state)?,
        FALLBACK => decode_fallback(&mut p, field, n)?,
        _ => return Err(mismatch(id, dt)),
    };
    p.finish("column")?;
    if array.len() != n {
        return Err(corrupt("column has the wrong row count"));
    }
    Ok(array)
}

fn mismatch(id: u8, dt: &DataType) -> FrameError {
    corrupt(&format!("codec id {id} does not fit type {dt}"))
}
