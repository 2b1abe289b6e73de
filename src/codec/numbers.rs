//! Blocks of fixed-width numbers: one constant, the plain little-endian values, or
//! pcodec (`pco`, wrapped format: no magic, one chunk of one page), whichever is smallest.
//!
//! pco does the real work for numeric columns: it picks frame-of-reference, delta orders
//! (delta-of-delta for timestamps), integer/float multiplier modes (decimal prices) and
//! entropy-codes the rest. The reader knows how many numbers a block holds.

use arrow_array::ArrowNativeTypeOp;
use arrow_buffer::{ArrowNativeType, Buffer, MutableBuffer, ScalarBuffer, ToByteSlice};
use pco::data_types::Number;
use pco::metadata::{ChunkMeta, DeltaEncoding, Mode};
use pco::wrapped::{FileCompressor, FileDecompressor};
use pco::{ChunkConfig, DeltaSpec, ModeSpec, PagingSpec};

use super::error::FrameError;
use super::wire::{corrupt, put_len_prefixed, Reader, MAX_ROWS};

const CONST: u8 = 0;
const PLAIN: u8 = 1;
const PCO: u8 = 2;

/// How hard pco works on a block and what the caller knows about the numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NumberOptions {
    /// pco compression level (0..=12).
    pub level: usize,
    /// The numbers never decrease: ask pco for first-order deltas directly.
    pub sorted: bool,
    /// Let pco search delta encodings and modes (else classic, no delta unless sorted).
    pub search: bool,
}

/// A number pco and Arrow both know: every fixed-width type the codec stores.
pub(crate) trait Num: Number + ArrowNativeTypeOp {}
impl<T: Number + ArrowNativeTypeOp> Num for T {}

/// Appends `vals` as a block; returns the encoding's name (e.g. `pco[delta1]`).
pub(crate) fn put_numbers<T: Num>(out: &mut Vec<u8>, vals: &[T], opts: NumberOptions) -> String {
    let Some(first) = vals.first() else {
        return "empty".into();
    };
    if vals
        .iter()
        .all(|v| v.to_byte_slice() == first.to_byte_slice())
    {
        out.push(CONST);
        out.extend_from_slice(first.to_byte_slice());
        return "const".into();
    }
    let plain_len = std::mem::size_of_val(vals);
    if let Some((bytes, name)) = pco_compress(vals, opts) {
        if bytes.len() < plain_len {
            out.push(PCO);
            put_len_prefixed(out, &bytes);
            return name;
        }
    }
    out.push(PLAIN);
    out.extend_from_slice(vals.to_byte_slice());
    "plain".into()
}

/// Reads `n` numbers written by [`put_numbers`].
pub(crate) fn read_numbers<T: Num>(r: &mut Reader<'_>, n: usize) -> Result<Vec<T>, FrameError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if n > MAX_ROWS {
        return Err(corrupt("too many numbers"));
    }
    let width = std::mem::size_of::<T>();
    match r.u8()? {
        CONST => {
            let v = from_le(r.bytes(width)?, 1)[0];
            Ok(vec![v; n])
        }
        PLAIN => Ok(from_le(r.bytes(n * width)?, n)),
        PCO => pco_decompress(r.len_prefixed()?, n),
        t => Err(corrupt(&format!("unknown number-block tag {t}"))),
    }
}

/// `n` numbers from their little-endian bytes (`bytes.len() == n * width`).
fn from_le<T: ArrowNativeType>(bytes: &[u8], n: usize) -> Vec<T> {
    let mut buf = MutableBuffer::from_len_zeroed(bytes.len());
    buf.as_slice_mut().copy_from_slice(bytes);
    ScalarBuffer::<T>::new(Buffer::from(buf), 0, n).to_vec()
}

fn config(opts: NumberOptions) -> ChunkConfig {
    let delta = match (opts.sorted, opts.search) {
        (true, _) => DeltaSpec::TryConsecutive(1),
        (false, true) => DeltaSpec::Auto,
        (false, false) => DeltaSpec::NoOp,
    };
    let mode = if opts.search {
        ModeSpec::Auto
    } else {
        ModeSpec::Classic
    };
    ChunkConfig::default()
        .with_compression_level(opts.level)
        .with_delta_spec(delta)
        .with_mode_spec(mode)
        .with_paging_spec(PagingSpec::EqualPagesUpTo(MAX_ROWS))
        .with_enable_8_bit(true)
}

fn pco_compress<T: Num>(vals: &[T], opts: NumberOptions) -> Option<(Vec<u8>, String)> {
    let fc = FileCompressor::default();
    let out = fc.write_header(Vec::new()).ok()?;
    let mut cc = fc.chunk_compressor(vals, &config(opts)).ok()?;
    let name = describe(cc.meta());
    let out = cc.write_meta(out).ok()?;
    let out = cc.write_page(0, out).ok()?;
    Some((out, name))
}

fn pco_decompress<T: Num>(src: &[u8], n: usize) -> Result<Vec<T>, FrameError> {
    let err = |e: pco::errors::PcoError| corrupt(&format!("pco: {e}"));
    let (fd, rest) = FileDecompressor::new(src).map_err(err)?;
    let (mut cd, rest) = fd.chunk_decompressor::<T, _>(rest).map_err(err)?;
    let mut pd = cd.page_decompressor(rest, n).map_err(err)?;
    let mut vals = vec![T::default(); n];
    let progress = pd.read(&mut vals).map_err(err)?;
    if progress.n_processed != n || !progress.finished {
        return Err(corrupt("pco page holds the wrong count"));
    }
    Ok(vals)
}

/// A short name of what pco chose, e.g. `pco[delta1]`, `pco[intmult]`.
fn describe(meta: &ChunkMeta) -> String {
    let mode = match &meta.mode {
        Mode::Classic => "",
        Mode::IntMult(_) => ",intmult",
        Mode::FloatMult(_) => ",floatmult",
        Mode::FloatQuant(_) => ",floatquant",
        Mode::Dict(_) => ",dict",
        _ => ",mode",
    };
    let delta = match &meta.delta_encoding {
        DeltaEncoding::NoOp => "".to_string(),
        DeltaEncoding::Consecutive { order, .. } => format!("delta{order}"),
        DeltaEncoding::Lookback { .. } => "lookback".into(),
        DeltaEncoding::Conv1(_) => "conv1".into(),
        _ => "delta".into(),
    };
    let inner = format!("{delta}{mode}");
    let inner = inner.trim_start_matches(',');
    if inner.is_empty() {
        "pco".into()
    } else {
        format!("pco[{inner}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEST: NumberOptions = NumberOptions {
        level: 8,
        sorted: false,
        search: true,
    };

    fn round_trip<T: Num + PartialEq + std::fmt::Debug>(vals: &[T], opts: NumberOptions) -> String {
        let mut out = Vec::new();
        let name = put_numbers(&mut out, vals, opts);
        let mut r = Reader::new(&out);
        let back: Vec<T> = read_numbers(&mut r, vals.len()).unwrap();
        assert!(r.is_empty());
        assert_eq!(
            back.iter()
                .map(|v| v.to_byte_slice().to_vec())
                .collect::<Vec<_>>(),
            vals.iter()
                .map(|v| v.to_byte_slice().to_vec())
                .collect::<Vec<_>>()
        );
        name
    }

    #[test]
    fn blocks_pick_const_plain_and_pco() {
        assert_eq!(round_trip::<i64>(&[], BEST), "empty");
        assert_eq!(round_trip(&[7i32; 100], BEST), "const");
        assert_eq!(round_trip(&[1u8, 200], BEST), "plain");
        let sorted: Vec<i64> = (0..1000).map(|i| 1_000_000 + i * 3 + i % 2).collect();
        let name = round_trip(
            &sorted,
            NumberOptions {
                sorted: true,
                ..BEST
            },
        );
        assert!(name.contains("delta1"), "{name}");
        let floats = [
            f64::NAN,
            -0.0,
            f64::INFINITY,
            1.5,
            f64::from_bits(0x7ff8_dead_beef_0001),
        ];
        round_trip(&floats.repeat(50), BEST);
        round_trip(&[i64::MIN, i64::MAX, 0].repeat(40), BEST);
    }
}
