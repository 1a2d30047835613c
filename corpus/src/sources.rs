//! Corpus readers: JSONL, Parquet (Hugging Face dataset exports) and plain text, file or
//! folder, streamed document by document. Plain text has one rule everywhere (indexing,
//! training, evaluation): paragraphs separated by blank lines are documents. Invalid UTF-8
//! and empty documents are counted and skipped; malformed JSON or a missing text column is
//! an error naming the file and line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{CorpusError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorpusFormat {
    /// One JSON object per line with a text field.
    Jsonl,
    /// A Parquet file with a text column.
    Parquet,
    /// Plain text; documents are separated by blank lines.
    Text,
}

/// One corpus input: a file, or a folder whose files are read in path order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusSource {
    pub path: PathBuf,
    /// Detected from the extension when absent (.jsonl/.json, .parquet, anything else text).
    // (Always serialized: checkpoints use bincode, which cannot skip fields.)
    #[serde(default)]
    pub format: Option<CorpusFormat>,
    /// JSONL field / Parquet column holding the text.
    #[serde(default = "default_text_field")]
    pub text_field: String,
}

fn default_text_field() -> String {
    "text".into()
}

impl CorpusSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CorpusSource { path: path.into(), format: None, text_field: default_text_field() }
    }

    /// The files of this source in reading order, with their formats.
    pub fn files(&self) -> Result<Vec<(PathBuf, CorpusFormat)>> {
        let meta = std::fs::metadata(&self.path).map_err(|e| CorpusError::io(&self.path, e))?;
        let mut files = Vec::new();
        if meta.is_dir() {
            collect_files(&self.path, &mut files)?;
            files.sort();
            if files.is_empty() {
                return Err(CorpusError::BadCorpus { path: self.path.clone(), reason: "the folder has no files".into() });
            }
        } else {
            files.push(self.path.clone());
        }
        Ok(files
            .into_iter()
            .map(|f| {
                let format = self.format.unwrap_or_else(|| detect_format(&f));
                (f, format)
            })
            .collect())
    }

    /// Total bytes of the source's files (for progress).
    pub fn total_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for (file, _) in self.files()? {
            total += std::fs::metadata(&file).map_err(|e| CorpusError::io(&file, e))?.len();
        }
        Ok(total)
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| CorpusError::io(dir, e))? {
        let path = entry.map_err(|e| CorpusError::io(dir, e))?.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

pub fn detect_format(path: &Path) -> CorpusFormat {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("jsonl" | "json" | "ndjson") => CorpusFormat::Jsonl,
        Some("parquet") => CorpusFormat::Parquet,
        _ => CorpusFormat::Text,
    }
}

/// Documents that were skipped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub invalid_utf8: u64,
    pub empty: u64,
}

impl Skipped {
    pub fn count(&mut self, reason: SkipReason) {
        match reason {
            SkipReason::InvalidUtf8 => self.invalid_utf8 += 1,
            SkipReason::Empty => self.empty += 1,
        }
    }
}

/// Why a document was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    InvalidUtf8,
    Empty,
}

/// What a reader hands out: a document's text, or a skipped one (which still takes a
/// document id, so ids stay equal to the position in the corpus). The reason lets a caller
/// that reads ahead count only the documents it used (the indexer stops at a token limit).
pub enum Document {
    Text(String),
    Skipped(SkipReason),
}

/// Reads every document of `source`, calling `visit` with each and the bytes read so far.
/// `visit` returns false to stop early.
/// `visit` may fail with its own error type (the caller's: tokenizing, sending), into which
/// the readers' errors convert.
pub fn read_documents<E: From<CorpusError>>(source: &CorpusSource, skipped: &mut Skipped, mut visit: impl FnMut(Document, u64) -> Result<bool, E>) -> Result<(), E> {
    let mut bytes_before = 0;
    for (file, format) in source.files()? {
        let size = std::fs::metadata(&file).map_err(|e| CorpusError::io(&file, e))?.len();
        let mut visit_file = |doc: Document, bytes: u64| visit(doc, bytes_before + bytes);
        let go_on = match format {
            CorpusFormat::Jsonl => read_jsonl(&file, &source.text_field, skipped, &mut visit_file)?,
            CorpusFormat::Text => read_text(&file, skipped, &mut visit_file)?,
            CorpusFormat::Parquet => read_parquet(&file, &source.text_field, skipped, &mut visit_file)?,
        };
        if !go_on {
            return Ok(());
        }
        bytes_before += size;
    }
    Ok(())
}

type Visit<'a, E> = dyn FnMut(Document, u64) -> Result<bool, E> + 'a;

fn classify(text: String, skipped: &mut Skipped) -> Document {
    if text.trim().is_empty() {
        skipped.count(SkipReason::Empty);
        Document::Skipped(SkipReason::Empty)
    } else {
        Document::Text(text)
    }
}

fn invalid(skipped: &mut Skipped, file: &Path, where_: String) -> Document {
    if skipped.invalid_utf8 < 5 {
        tracing::warn!("{}: {where_} is not valid UTF-8; skipping it", file.display());
    }
    skipped.count(SkipReason::InvalidUtf8);
    Document::Skipped(SkipReason::InvalidUtf8)
}

fn read_jsonl<E: From<CorpusError>>(file: &Path, field: &str, skipped: &mut Skipped, visit: &mut Visit<E>) -> Result<bool, E> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(file).map_err(|e| CorpusError::io(file, e))?);
    let (mut line, mut line_no, mut bytes) = (Vec::new(), 0u64, 0u64);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| CorpusError::io(file, e))?;
        if n == 0 {
            return Ok(true);
        }
        line_no += 1;
        bytes += n as u64;
        let doc = match std::str::from_utf8(&line) {
            Err(_) => invalid(skipped, file, format!("line {line_no}")),
            Ok(text) if text.trim().is_empty() => classify(String::new(), skipped),
            Ok(text) => classify(json_text(file, line_no, text, field)?, skipped),
        };
        if !visit(doc, bytes)? {
            return Ok(false);
        }
    }
}

fn json_text(file: &Path, line_no: u64, line: &str, field: &str) -> Result<String> {
    let bad = |reason: String| CorpusError::BadCorpus { path: file.into(), reason: format!("line {line_no}: {reason}") };
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    match value.get(field) {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(serde_json::Value::Null) => Ok(String::new()),
        Some(other) => Err(bad(format!("field {field:?} is {}, expected a string", kind_of(other)))),
        None => Err(bad(format!("no field {field:?} (set the corpus text_field to the field that holds the text)"))),
    }
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Plain text: paragraphs (separated by blank lines) are documents.
fn read_text<E: From<CorpusError>>(file: &Path, skipped: &mut Skipped, visit: &mut Visit<E>) -> Result<bool, E> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(file).map_err(|e| CorpusError::io(file, e))?);
    let (mut line, mut paragraph, mut bytes, mut line_no) = (Vec::new(), Vec::new(), 0u64, 0u64);
    let mut flush = |paragraph: &mut Vec<u8>, skipped: &mut Skipped, bytes: u64, line_no: u64| -> Result<bool, E> {
        if paragraph.is_empty() {
            return Ok(true);
        }
        let doc = match String::from_utf8(std::mem::take(paragraph)) {
            Ok(text) => classify(text.trim_end().to_string(), skipped),
            Err(_) => invalid(skipped, file, format!("the paragraph ending at line {line_no}")),
        };
        visit(doc, bytes)
    };
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| CorpusError::io(file, e))?;
        if n == 0 {
            return flush(&mut paragraph, skipped, bytes, line_no);
        }
        bytes += n as u64;
        line_no += 1;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            if !flush(&mut paragraph, skipped, bytes, line_no)? {
                return Ok(false);
            }
        } else {
            paragraph.extend_from_slice(&line);
        }
    }
}

/// Reads a Parquet file's text column. A damaged file must be an error, not a crash: the
/// Arrow schema that writers embed in the metadata is not read (arrow-ipc panicked on a
/// malformed one the fuzzer made; the Parquet schema says what is needed), and a panic
/// left in the decoders is caught and reported as a bad file.
fn read_parquet<E: From<CorpusError>>(file: &Path, column: &str, skipped: &mut Skipped, visit: &mut Visit<E>) -> Result<bool, E> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_parquet_unguarded(file, column, skipped, visit))) {
        Ok(result) => result,
        Err(_) => Err(CorpusError::BadCorpus { path: file.into(), reason: "not a readable Parquet file (its decoder failed on damaged data)".into() }.into()),
    }
}

fn read_parquet_unguarded<E: From<CorpusError>>(file: &Path, column: &str, skipped: &mut Skipped, visit: &mut Visit<E>) -> Result<bool, E> {
    let bad = |reason: String| CorpusError::BadCorpus { path: file.into(), reason };
    crate::parquet_footer::check(file).map_err(|why| bad(format!("not a readable Parquet file: {why}")))?;
    let handle = File::open(file).map_err(|e| CorpusError::io(file, e))?;
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(handle, options).map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    let total_rows = builder.metadata().file_metadata().num_rows().max(1) as u64;
    let size = std::fs::metadata(file).map_err(|e| CorpusError::io(file, e))?.len();
    // The decoders assert on column chunks outside the file (a damaged footer): check first.
    for (g, group) in builder.metadata().row_groups().iter().enumerate() {
        for chunk in group.columns() {
            let start = chunk.dictionary_page_offset().unwrap_or_else(|| chunk.data_page_offset());
            let length = chunk.compressed_size();
            if start < 0 || length < 0 || (start as u64).saturating_add(length as u64) > size {
                return Err(bad(format!("not a readable Parquet file: row group {g} has a column chunk at {start}+{length} bytes, outside the file's {size}")).into());
            }
        }
    }
    let reader = builder.with_batch_size(1024).build().map_err(|e| bad(e.to_string()))?;
    let mut rows_read = 0u64;
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| bad(e.to_string()))?;
        let array = batch.column_by_name(column).ok_or_else(|| {
            let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            bad(format!("no column {column:?} (columns: {}); set the corpus text_field", names.join(", ")))
        })?;
        let texts: Vec<Option<std::result::Result<String, ()>>> = if let Some(a) = array.as_string_opt::<i32>() {
            a.iter().map(|v| v.map(|s| Ok(s.to_string()))).collect()
        } else if let Some(a) = array.as_string_opt::<i64>() {
            a.iter().map(|v| v.map(|s| Ok(s.to_string()))).collect()
        } else if let Some(a) = array.as_string_view_opt() {
            a.iter().map(|v| v.map(|s| Ok(s.to_string()))).collect()
        } else if let Some(a) = array.as_binary_opt::<i32>() {
            a.iter().map(|v| v.map(|b| String::from_utf8(b.to_vec()).map_err(|_| ()))).collect()
        } else {
            return Err(bad(format!("column {column:?} has type {}, expected a string column", array.data_type())).into());
        };
        for text in texts {
            rows_read += 1;
            let doc = match text {
                None => classify(String::new(), skipped),
                Some(Ok(text)) => classify(text, skipped),
                Some(Err(())) => invalid(skipped, file, format!("row {rows_read}")),
            };
            if !visit(doc, size * rows_read / total_rows)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
