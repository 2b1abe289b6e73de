//! Bit sequences (validity bitmaps and Boolean values): all set, all unset, raw bitmap,
//! run lengths, or a zstd-compressed bitmap, whichever is smallest.
//!
//! Hand-written because no crate encodes Arrow bitmaps this way; it is a few loops over
//! `BooleanBuffer::set_slices`.

use arrow_buffer::{BooleanBuffer, Buffer, MutableBuffer, NullBuffer};

use super::error::FrameError;
use super::wire::{corrupt, put_blob, put_varint, read_blob, Reader};

const ALL_SET: u8 = 0;
const ALL_UNSET: u8 = 1;
const RAW: u8 = 2;
const RUNS: u8 = 3;
const ZSTD: u8 = 4;

/// The bitmap's bytes, bit 0 first, the bits past `len` cleared.
fn packed(bits: &BooleanBuffer) -> Vec<u8> {
    let mut v = bits.sliced().as_slice()[..bits.len().div_ceil(8)].to_vec();
    if !bits.len().is_multiple_of(8) {
        if let Some(last) = v.last_mut() {
            *last &= (1u8 << (bits.len() % 8)) - 1;
        }
    }
    v
}

/// Appends `bits` (the reader knows their count). `level` enables the zstd candidate.
pub(crate) fn put_bits(
    out: &mut Vec<u8>,
    bits: &BooleanBuffer,
    level: Option<i32>,
) -> &'static str {
    let n = bits.len();
    let ones = bits.count_set_bits();
    if ones == n {
        out.push(ALL_SET);
        return "all-set";
    }
    if ones == 0 {
        out.push(ALL_UNSET);
        return "all-unset";
    }
    let mut runs = vec![RUNS];
    let mut pos = 0;
    for (start, end) in bits.set_slices() {
        put_varint(&mut runs, (start - pos) as u64);
        put_varint(&mut runs, (end - start) as u64);
        pos = end;
    }
    if pos < n {
        put_varint(&mut runs, (n - pos) as u64);
        put_varint(&mut runs, 0);
    }
    let raw = packed(bits);
    let mut best = runs;
    let mut name = "runs";
    if 1 + raw.len() < best.len() {
        best = Vec::with_capacity(raw.len() + 1);
        best.push(RAW);
        best.extend_from_slice(&raw);
        name = "bitmap";
    }
    if level.is_some() && raw.len() > 16 {
        let mut z = vec![ZSTD];
        if put_blob(&mut z, &raw, level, &[]) && z.len() < best.len() {
            best = z;
            name = "bitmap+zstd";
        }
    }
    out.extend_from_slice(&best);
    name
}

/// Reads `n` bits written by [`put_bits`].
pub(crate) fn read_bits(r: &mut Reader<'_>, n: usize) -> Result<BooleanBuffer, FrameError> {
    match r.u8()? {
        ALL_SET => Ok(BooleanBuffer::new_set(n)),
        ALL_UNSET => Ok(BooleanBuffer::new_unset(n)),
        RAW => Ok(BooleanBuffer::new(
            Buffer::from(r.bytes(n.div_ceil(8))?.to_vec()),
            0,
            n,
        )),
        ZSTD => {
            let bytes = read_blob(r, n.div_ceil(8), &[])?;
            Ok(BooleanBuffer::new(Buffer::from(bytes), 0, n))
        }
        RUNS => {
            let mut buf = MutableBuffer::new_null(n);
            let bytes = buf.as_slice_mut();
            let mut pos = 0usize;
            while pos < n {
                let unset = r.varint_max(n - pos, "run")?;
                pos += unset;
                let set = r.varint_max(n - pos, "run")?;
                if unset == 0 && set == 0 {
                    return Err(corrupt("empty run"));
                }
                for i in pos..pos + set {
                    bytes[i / 8] |= 1 << (i % 8);
                }
                pos += set;
            }
            Ok(BooleanBuffer::new(buf.into(), 0, n))
        }
        t => Err(corrupt(&format!("unknown bit-sequence tag {t}"))),
    }
}

/// Appends a column's validity over `n` rows.
pub(crate) fn put_validity(
    out: &mut Vec<u8>,
    nulls: Option<&NullBuffer>,
    n: usize,
    level: Option<i32>,
) -> &'static str {
    match nulls {
        None => {
            out.push(ALL_SET);
            "all-set"
        }
        Some(nb) => {
            debug_assert_eq!(nb.len(), n);
            put_bits(out, nb.inner(), level)
        }
    }
}

/// Reads a validity written by [`put_validity`]: `None` when no row is null.
pub(crate) fn read_validity(
    r: &mut Reader<'_>,
    n: usize,
) -> Result<Option<NullBuffer>, FrameError> {
    let bits = read_bits(r, n)?;
    Ok(if bits.count_set_bits() == n {
        None
    } else {
        Some(NullBuffer::new(bits))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &[bool], level: Option<i32>) -> &'static str {
        let bits = BooleanBuffer::from(v.to_vec());
        let mut out = Vec::new();
        let name = put_bits(&mut out, &bits, level);
        let mut r = Reader::new(&out);
        assert_eq!(read_bits(&mut r, v.len()).unwrap(), bits, "{name}");
        assert!(r.is_empty());
        name
    }

    #[test]
    fn sequences_round_trip_in_every_form() {
        assert_eq!(round_trip(&[], None), "all-set");
        assert_eq!(round_trip(&[true; 9], None), "all-set");
        assert_eq!(round_trip(&[false; 9], None), "all-unset");
        let mut sparse = vec![true; 1000];
        sparse[500] = false;
        assert_eq!(round_trip(&sparse, Some(3)), "runs");
        let alternating: Vec<bool> = (0..1000).map(|i| (i * 7919) % 3 == 0).collect();
        assert_eq!(round_trip(&alternating, None), "bitmap");
        round_trip(&alternating, Some(19));
    }
}
