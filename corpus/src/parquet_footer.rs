//! A plausibility check of a Parquet file's footer before the parquet crate decodes it.
//!
//! parquet 58 sizes its vectors from the lengths a footer declares before reading them, so
//! a damaged 733-byte file that declares a list of billions of entries makes it allocate
//! ~100 GB and abort the process (found by fuzzing: fuzz/corpus/corpus_parquet/crash-footer-list-length). This walks the footer's
//! Thrift compact encoding without interpreting it and refuses any declared length that the
//! bytes left could not hold (every list element, map entry or string byte takes at least
//! one byte). Remove it once the decoder bounds its allocations itself.

/// Why a footer is refused.
pub type Reason = String;

const MAX_DEPTH: usize = 64;

/// Checks the footer of `file`'s bytes: `PAR1` at both ends, a metadata length inside the
/// file, and Thrift whose declared lengths fit in it.
pub fn check(file: &std::path::Path) -> Result<(), Reason> {
    use std::io::{Read, Seek, SeekFrom};
    let mut handle = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let size = handle.metadata().map_err(|e| e.to_string())?.len();
    if size < 12 {
        return Err(format!("{size} bytes is too short for a Parquet file"));
    }
    let mut tail = [0u8; 8];
    handle.seek(SeekFrom::End(-8)).and_then(|_| handle.read_exact(&mut tail)).map_err(|e| e.to_string())?;
    if &tail[4..] != b"PAR1" {
        return Err("no PAR1 marker at the end (an encrypted footer, PARE, is not supported)".into());
    }
    let length = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    if length + 12 > size {
        return Err(format!("the footer claims {length} bytes of metadata in a {size}-byte file"));
    }
    let mut metadata = vec![0u8; length as usize];
    handle.seek(SeekFrom::End(-8 - length as i64)).and_then(|_| handle.read_exact(&mut metadata)).map_err(|e| e.to_string())?;
    let mut walker = Walker { bytes: &metadata, at: 0 };
    walker.skip_struct(0)
}

struct Walker<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Walker<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn byte(&mut self) -> Result<u8, Reason> {
        let b = *self.bytes.get(self.at).ok_or("the metadata ends inside a value")?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, Reason> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 64 bits".into())
    }

    /// A declared count of items, each at least one byte.
    fn count(&mut self, n: u64, what: &str) -> Result<usize, Reason> {
        if n > self.left() as u64 {
            return Err(format!("a {what} declares {n} entries with {} bytes of metadata left", self.left()));
        }
        Ok(n as usize)
    }

    fn skip(&mut self, kind: u8, depth: usize) -> Result<(), Reason> {
        if depth > MAX_DEPTH {
            return Err("values nested too deeply".into());
        }
        match kind {
            1 | 2 => Ok(()), // a bool field's value is in its type nibble
            3 => self.byte().map(|_| ()),
            4..=6 => self.varint().map(|_| ()),
            7 => {
                if self.left() < 8 {
                    return Err("the metadata ends inside a double".into());
                }
                self.at += 8;
                Ok(())
            }
            8 => {
                let n = self.varint()?;
                let n = self.count(n, "string")?;
                self.at += n;
                Ok(())
            }
            9 | 10 => {
                let header = self.byte()?;
                let n = match header >> 4 {
                    15 => self.varint()?,
                    short => u64::from(short),
                };
                let n = self.count(n, "list")?;
                // Bools in a list take one byte each.
                let element = match header & 0x0f {
                    1 | 2 => 3,
                    other => other,
                };
                (0..n).try_for_each(|_| self.skip(element, depth + 1))
            }
            11 => {
                let n = self.varint()?;
                let n = self.count(n, "map")?;
                if n == 0 {
                    return Ok(());
                }
                let types = self.byte()?;
                let (key, value) = (types >> 4, types & 0x0f);
                (0..n).try_for_each(|_| self.skip(key, depth + 1).and_then(|_| self.skip(value, depth + 1)))
            }
            12 => self.skip_struct(depth + 1),
            other => Err(format!("unknown Thrift type {other}")),
        }
    }

    fn skip_struct(&mut self, depth: usize) -> Result<(), Reason> {
        if depth > MAX_DEPTH {
            return Err("structs nested too deeply".into());
        }
        loop {
            let header = self.byte()?;
            if header == 0 {
                return Ok(());
            }
            if header >> 4 == 0 {
                self.varint()?; // a field id in long form
            }
            self.skip(header & 0x0f, depth)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(bytes: &[u8]) -> Result<(), Reason> {
        Walker { bytes, at: 0 }.skip_struct(0)
    }

    #[test]
    fn plausible_metadata_passes_and_impossible_lengths_are_refused() {
        // struct { 1: i32 = 3, 2: list<i32> [1, 2], 3: string "ab" } STOP
        assert!(walk(&[0x15, 0x06, 0x19, 0x25, 0x02, 0x04, 0x18, 0x02, b'a', b'b', 0x00]).is_ok());
        // A list declaring 2^40 entries.
        let err = walk(&[0x19, 0xf5, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x00]).unwrap_err();
        assert!(err.contains("list declares"), "{err}");
        let err = walk(&[0x18, 0xff, 0x7f]).unwrap_err();
        assert!(err.contains("string declares"), "{err}");
        assert!(walk(&[0x1c; 200]).unwrap_err().contains("nested too deeply"));
        assert!(walk(&[0x15]).is_err(), "truncated");
    }
}
