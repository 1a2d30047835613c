//! A plausibility check of a Parquet file's footer before the parquet crate decodes it.
//!
//! parquet 58 sizes its vectors from the lengths a footer declares before reading them, so
//! a damaged 733-byte file that declares a list of billions of entries makes it allocate
//! ~100 GB and abort the process (found by fuzzing: fuzz/corpus/corpus_parquet/crash-footer-list-length). This walks the footer's
//! Thrift compact encoding without interpreting it and refuses any declared length that the
//! bytes left could not hold (every list element, map entry or string byte takes at least
//! one byte). It also checks the one count the decoder trusts that is not a length: each schema
//! element's `num_children`, which it allocates for before reading the children (437-byte
//! files declaring 800 million children made it allocate 6.4 GB:
//! fuzz/corpus/corpus_parquet/crash-schema-children*), and that the schema's fields have the
//! wire types the format gives them (parquet reads them by id, so a damaged type byte made it
//! read a count from a name's bytes). Remove it once the decoder bounds its allocations itself.

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
    Walker { bytes: &metadata, at: 0 }.skip_struct(0)?;
    check_schema(&metadata)
}

/// Thrift wire types.
const TYPE_I32: u8 = 5;
const TYPE_I64: u8 = 6;
const TYPE_BINARY: u8 = 8;
const TYPE_LIST: u8 = 9;
const TYPE_STRUCT: u8 = 12;

/// The wire type of each `FileMetaData` field (parquet.thrift), by field id.
fn file_metadata_field(id: i16) -> Option<u8> {
    match id {
        1 => Some(TYPE_I32),              // version
        2 | 4 | 5 | 7 => Some(TYPE_LIST), // schema, row_groups, key_value_metadata, column_orders
        3 => Some(TYPE_I64),              // num_rows
        6 | 9 => Some(TYPE_BINARY),       // created_by, footer_signing_key_metadata
        8 => Some(TYPE_STRUCT),           // encryption_algorithm
        _ => None,
    }
}

/// The wire type of each `SchemaElement` field, by field id.
fn schema_element_field(id: i16) -> Option<u8> {
    match id {
        1..=3 | 5..=9 => Some(TYPE_I32), // type, type_length, repetition_type, num_children, converted_type, scale, precision, field_id
        4 => Some(TYPE_BINARY),          // name
        10 => Some(TYPE_STRUCT),         // logical_type
        _ => None,
    }
}

const FILE_METADATA_SCHEMA: i16 = 2;
const SCHEMA_ELEMENT_NUM_CHILDREN: i16 = 5;

/// The file's schema as parquet will read it: parquet's decoder reads a known field by the
/// type the format gives it, whatever type the bytes declare (a damaged byte turns a bool
/// into a count), so a known field with the wrong wire type is refused here; and every
/// schema element declares fewer children than the schema holds.
fn check_schema(metadata: &[u8]) -> Result<(), Reason> {
    let mut walker = Walker { bytes: metadata, at: 0 };
    let mut id = 0i16;
    while let Some((field, kind)) = walker.field_header(&mut id)? {
        check_wire_type("FileMetaData", field, kind, file_metadata_field(field))?;
        if field != FILE_METADATA_SCHEMA {
            walker.skip(kind, 0)?;
            continue;
        }
        let (n, element) = walker.list_header()?;
        if element != TYPE_STRUCT {
            return Err("the schema is not a list of schema elements".into());
        }
        for _ in 0..n {
            let mut id = 0i16;
            while let Some((field, kind)) = walker.field_header(&mut id)? {
                check_wire_type("a schema element", field, kind, schema_element_field(field))?;
                if field == SCHEMA_ELEMENT_NUM_CHILDREN {
                    let zigzag = walker.varint()?;
                    let children = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
                    if children < 0 || children as u64 >= n as u64 {
                        return Err(format!("a schema element declares {children} children in a schema of {n} elements"));
                    }
                } else {
                    walker.skip(kind, 1)?;
                }
            }
        }
    }
    Ok(())
}

fn check_wire_type(what: &str, field: i16, kind: u8, expected: Option<u8>) -> Result<(), Reason> {
    match expected {
        Some(expected) if expected != kind => Err(format!("field {field} of {what} has Thrift type {kind}, expected {expected}")),
        _ => Ok(()),
    }
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

    /// The next field's id and type in a struct (ids are deltas from the previous one), or
    /// None at the struct's end.
    fn field_header(&mut self, id: &mut i16) -> Result<Option<(i16, u8)>, Reason> {
        let header = self.byte()?;
        if header == 0 {
            return Ok(None);
        }
        *id = match header >> 4 {
            0 => {
                let zigzag = self.varint()?;
                ((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64)) as i16
            }
            delta => id.wrapping_add(i16::from(delta)),
        };
        Ok(Some((*id, header & 0x0f)))
    }

    /// A list's length and element type.
    fn list_header(&mut self) -> Result<(usize, u8), Reason> {
        let header = self.byte()?;
        let n = match header >> 4 {
            15 => self.varint()?,
            short => u64::from(short),
        };
        Ok((self.count(n, "list")?, header & 0x0f))
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
                let (n, element) = self.list_header()?;
                // Bools in a list take one byte each.
                let element = match element {
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
        let mut id = 0;
        while let Some((_, kind)) = self.field_header(&mut id)? {
            self.skip(kind, depth)?;
        }
        Ok(())
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

    #[test]
    fn schema_elements_may_not_declare_more_children_than_the_schema_holds() {
        // FileMetaData { 2: list<SchemaElement> [{ 5: num_children = c }, {}] } STOP
        let metadata = |c: u8| vec![0x29, 0x2c, 0x55, c, 0x00, 0x00, 0x00];
        assert!(check_schema(&metadata(2)).is_ok(), "1 child of 2 elements"); // zigzag 2 = 1
        let err = check_schema(&metadata(4)).unwrap_err(); // zigzag 4 = 2
        assert!(err.contains("declares 2 children in a schema of 2"), "{err}");
        assert!(check_schema(&metadata(1)).unwrap_err().contains("-1 children"));
        // repetition_type (field 3, an i32) sent as a bool: parquet would read the next
        // bytes as its value.
        let err = check_schema(&[0x29, 0x1c, 0x32, 0x00, 0x00]).unwrap_err();
        assert!(err.contains("field 3 of a schema element has Thrift type 2, expected 5"), "{err}");
    }
}
