//! Corpus readers on real files: JSONL, Parquet, plain text folders, and bad input.

use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray};
use loupe_corpus::{read_documents, CorpusError, CorpusSource, Document, Skipped};
use parquet::arrow::ArrowWriter;

fn documents(source: &CorpusSource) -> (Vec<Option<String>>, Skipped) {
    let mut skipped = Skipped::default();
    let mut by_reason = Skipped::default();
    let mut out = Vec::new();
    read_documents(source, &mut skipped, |doc, _| {
        out.push(match doc {
            Document::Text(t) => Some(t),
            Document::Skipped(reason) => {
                by_reason.count(reason);
                None
            }
        });
        Ok::<_, CorpusError>(true)
    })
    .unwrap();
    assert_eq!(by_reason, skipped, "each skipped document carries the reason the reader counted");
    (out, skipped)
}

#[test]
fn jsonl_counts_and_skips_invalid_utf8_and_empty_documents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    let mut bytes = b"{\"text\": \"first\"}\n{\"text\": \"\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"text\": \"bad \xff byte\"}\n\n{\"body\": 1, \"text\": \"second\"}\n{\"text\": null}\n");
    std::fs::write(&path, bytes).unwrap();
    let (docs, skipped) = documents(&CorpusSource::new(&path));
    assert_eq!(docs, vec![Some("first".into()), None, None, None, Some("second".into()), None]);
    assert_eq!(skipped, Skipped { invalid_utf8: 1, empty: 3 });
}

#[test]
fn jsonl_errors_name_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    std::fs::write(&path, "{\"text\": \"ok\"}\n{\"text\": 3}\n").unwrap();
    let mut skipped = Skipped::default();
    let err = read_documents(&CorpusSource::new(&path), &mut skipped, |_, _| Ok::<_, CorpusError>(true)).unwrap_err().to_string();
    assert!(err.contains("c.jsonl") && err.contains("line 2") && err.contains("a number"), "{err}");
    std::fs::write(&path, "{\"content\": \"ok\"}\n").unwrap();
    let err = read_documents(&CorpusSource::new(&path), &mut skipped, |_, _| Ok::<_, CorpusError>(true)).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("no field \"text\""), "{err}");
    std::fs::write(&path, "{not json\n").unwrap();
    let err = read_documents(&CorpusSource::new(&path), &mut skipped, |_, _| Ok::<_, CorpusError>(true)).unwrap_err().to_string();
    assert!(err.contains("not valid JSON"), "{err}");
    let mut content = CorpusSource::new(&path);
    content.text_field = "content".into();
    std::fs::write(&path, "{\"content\": \"ok\"}\n").unwrap();
    assert_eq!(documents(&content).0, vec![Some("ok".into())]);
}

#[test]
fn parquet_text_column_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-00000.parquet");
    let texts = StringArray::from(vec![Some("alpha"), None, Some("beta"), Some("  "), Some("gamma")]);
    let ids = arrow_array::UInt32Array::from(vec![1, 2, 3, 4, 5]);
    let batch = RecordBatch::try_from_iter(vec![("id", Arc::new(ids) as _), ("text", Arc::new(texts) as _)]).unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let (docs, skipped) = documents(&CorpusSource::new(&path));
    assert_eq!(docs, vec![Some("alpha".into()), None, Some("beta".into()), None, Some("gamma".into())]);
    assert_eq!(skipped.empty, 2);
    let mut wrong = CorpusSource::new(&path);
    wrong.text_field = "body".into();
    let err = read_documents(&wrong, &mut Skipped::default(), |_, _| Ok::<_, CorpusError>(true)).unwrap_err().to_string();
    assert!(err.contains("no column \"body\"") && err.contains("id, text"), "{err}");
    let not_parquet = dir.path().join("x.parquet");
    std::fs::write(&not_parquet, "hello").unwrap();
    let err = read_documents(&CorpusSource::new(&not_parquet), &mut Skipped::default(), |_, _| Ok::<_, CorpusError>(true)).unwrap_err().to_string();
    assert!(err.contains("x.parquet") && err.contains("Parquet"), "{err}");
}

#[test]
fn text_folders_read_paragraphs_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("b.txt"), "one line\nsame paragraph\n\n\nnext one\n").unwrap();
    std::fs::write(dir.path().join("sub").join("c.txt"), b"bad \xfe\n\nlast").unwrap();
    std::fs::write(dir.path().join("a.txt"), "first file").unwrap();
    std::fs::write(dir.path().join(".hidden"), "never read").unwrap();
    let (docs, skipped) = documents(&CorpusSource::new(dir.path()));
    assert_eq!(docs, vec![Some("first file".into()), Some("one line\nsame paragraph".into()), Some("next one".into()), None, Some("last".into())]);
    assert_eq!(skipped, Skipped { invalid_utf8: 1, empty: 0 });
    let empty = tempfile::tempdir().unwrap();
    assert!(CorpusSource::new(empty.path()).files().unwrap_err().to_string().contains("no files"));
}
