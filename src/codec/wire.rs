//! Byte-level building blocks of frames: LEB128 varints, a bounds-checked reader, and
//! "blobs" (bytes stored raw or zstd-compressed, optionally against a history prefix).
//!
//! Every read is bounds-checked and returns [`FrameError`]; nothing here may panic on
//! hostile input.

use super::error::FrameError;

/// Most rows one frame may hold (a format limit: it bounds what a corrupt header can make
/// the decoder allocate).
pub(crate) const MAX_ROWS: usize = 1 << 24;

/// Most decoded bytes one blob may declare.
pub(crate) const MAX_BLOB_BYTES: usize = 1 << 31;

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `bytes` preceded by their length.
pub(crate) fn put_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over a frame's bytes.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FrameError> {
        let b = *self.buf.get(self.pos).ok_or(FrameError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, FrameError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or_else(|| corrupt("varint overflows"))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("varint longer than 10 bytes"))
    }

    /// A varint that must be at most `max`.
    pub(crate) fn varint_max(&mut self, max: usize, what: &str) -> Result<usize, FrameError> {
        let v = self.varint()?;
        if v > max as u64 {
            return Err(corrupt(&format!("{what} {v} exceeds {max}")));
        }
        Ok(v as usize)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).ok_or(FrameError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(FrameError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn len_prefixed(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.varint_max(self.buf.len(), "length")?;
        self.bytes(n)
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self, what: &str) -> Result<(), FrameError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(corrupt(&format!(
                "{} trailing bytes after {what}",
                self.buf.len() - self.pos
            )))
        }
    }
}

/// A corrupt-frame error with a message.
pub(crate) fn corrupt(msg: &str) -> FrameError {
    FrameError::Corrupt(msg.to_string())
}

const BLOB_RAW: u8 = 0;
const BLOB_ZSTD: u8 = 1;

/// The 4 bytes every zstd frame starts with: dropped from blobs, put back to decode
/// (zstd's own magic-less format needs its "experimental" API).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// zstd frames without magic or content size (the frame layout stores lengths itself),
/// optionally against `history` as a raw-content dictionary.
fn zstd_compress(data: &[u8], level: i32, history: &[u8]) -> Option<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = if history.is_empty() {
        zstd::bulk::Compressor::new(level).ok()?
    } else {
        zstd::bulk::Compressor::with_dictionary(level, history).ok()?
    };
    c.set_parameter(CParameter::ContentSizeFlag(false)).ok()?;
    c.set_parameter(CParameter::DictIdFlag(false)).ok()?;
    let z = c.compress(data).ok()?;
    z.strip_prefix(&ZSTD_MAGIC[..]).map(<[u8]>::to_vec)
}

fn zstd_decompress(data: &[u8], len: usize, history: &[u8]) -> Result<Vec<u8>, FrameError> {
    let err = |e: std::io::Error| corrupt(&format!("zstd: {e}"));
    let mut d = if history.is_empty() {
        zstd::bulk::Decompressor::new().map_err(err)?
    } else {
        zstd::bulk::Decompressor::with_dictionary(history).map_err(err)?
    };
    let mut framed = Vec::with_capacity(data.len() + 4);
    framed.extend_from_slice(&ZSTD_MAGIC);
    framed.extend_from_slice(data);
    let out = d.decompress(&framed, len).map_err(err)?;
    if out.len() != len {
        return Err(corrupt("zstd block decodes to the wrong length"));
    }
    Ok(out)
}

/// Appends `data` (whose length the reader knows) as a blob: zstd at `level` against
/// `history` when that is smaller, else raw. Returns whether zstd was used.
pub(crate) fn put_blob(out: &mut Vec<u8>, data: &[u8], level: Option<i32>, history: &[u8]) -> bool {
    if let Some(level) = level.filter(|_| data.len() >= 16) {
        if let Some(z) = zstd_compress(data, level, history) {
            if z.len() < data.len() {
                out.push(BLOB_ZSTD);
                put_len_prefixed(out, &z);
                return true;
            }
        }
    }
    out.push(BLOB_RAW);
    put_len_prefixed(out, data);
    false
}

/// Reads a blob of `len` decoded bytes written by [`put_blob`] with the same `history`.
pub(crate) fn read_blob(
    r: &mut Reader<'_>,
    len: usize,
    history: &[u8],
) -> Result<Vec<u8>, FrameError> {
    if len > MAX_BLOB_BYTES {
        return Err(corrupt("blob too long"));
    }
    match r.u8()? {
        BLOB_RAW => {
            let b = r.len_prefixed()?;
            if b.len() != len {
                return Err(corrupt("raw blob has the wrong length"));
            }
            Ok(b.to_vec())
        }
        BLOB_ZSTD => zstd_decompress(r.len_prefixed()?, len, history),
        t => Err(corrupt(&format!("unknown blob tag {t}"))),
    }
}

/// Appends a self-sized blob: its decoded length, then the blob.
pub(crate) fn put_sized_blob(out: &mut Vec<u8>, data: &[u8], level: Option<i32>) {
    put_varint(out, data.len() as u64);
    put_blob(out, data, level, &[]);
}

/// Reads a blob written by [`put_sized_blob`].
pub(crate) fn read_sized_blob(r: &mut Reader<'_>) -> Result<Vec<u8>, FrameError> {
    let len = r.varint_max(MAX_BLOB_BYTES, "blob length")?;
    read_blob(r, len, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.is_empty());
        }
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert_eq!(Reader::new(&[0x80]).varint(), Err(FrameError::Truncated));
    }

    #[test]
    fn blobs_round_trip_with_history() {
        let history = b"the quick brown fox jumps over the lazy dog ".repeat(4);
        let data = b"the lazy dog jumps over the quick brown fox".to_vec();
        for (level, hist) in [
            (None, &[][..]),
            (Some(3), &[][..]),
            (Some(19), &history[..]),
        ] {
            let mut out = Vec::new();
            put_blob(&mut out, &data, level, hist);
            let mut r = Reader::new(&out);
            assert_eq!(read_blob(&mut r, data.len(), hist).unwrap(), data);
            assert!(r.is_empty());
        }
    }
}
