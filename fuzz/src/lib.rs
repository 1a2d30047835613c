//! Fuzz targets: each takes arbitrary bytes, hands them to one of loupe's parsers of outside
//! input the way a user's file or request would reach it, and must return (with an error or
//! a value) without panicking, hanging or allocating without bound. libFuzzer runs them
//! through `fuzz/libfuzzer` (`scripts/fuzz.sh`); `tests/replay.rs` runs every committed
//! corpus input and seeded mutations of it on stable Rust in CI.
//!
//! Inputs that stand for several files (a dictionary folder: config + weights) are split
//! at [`SEPARATOR`], so the fuzzer can vary each part.

pub mod mutate;

/// Separates the files of a multi-file input.
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

/// A target: its name (the libFuzzer binary and the corpus folder) and its function.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, light ones first.
pub fn targets() -> Vec<Target> {
    vec![
        Target { name: "gguf", run: gguf },
        Target { name: "hf_model", run: hf_model },
        Target { name: "saelens", run: saelens },
        Target { name: "sparsify", run: sparsify },
        Target { name: "gemma_scope_npz", run: gemma_scope_npz },
        Target { name: "monitor_json", run: monitor_json },
        Target { name: "corpus_jsonl", run: corpus_jsonl },
        Target { name: "corpus_parquet", run: corpus_parquet },
        Target { name: "corpus_text", run: corpus_text },
        Target { name: "job_config", run: job_config },
        Target { name: "search_query", run: search_query },
    ]
}

/// The parts of a multi-file input (missing parts are empty).
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 0..n - 1 {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                out.push(rest);
                rest = &[];
            }
        }
    }
    out.push(rest);
    out
}

/// A temporary folder holding `files`.
fn folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).expect("writing a fuzz input");
    }
    dir
}

/// A GGUF model file (header, metadata, tensor infos, weights, tokenizer in the metadata).
pub fn gguf(data: &[u8]) {
    let dir = folder(&[("model.gguf", data)]);
    let _ = loupe_engine::Model::load(&dir.path().join("model.gguf"));
}

/// A Hugging Face model folder: config.json, model.safetensors, tokenizer.json.
pub fn hf_model(data: &[u8]) {
    let p = parts(data, 3);
    let dir = folder(&[("config.json", p[0]), ("model.safetensors", p[1]), ("tokenizer.json", p[2])]);
    let _ = loupe_engine::Model::load(dir.path());
}

/// A SAELens dictionary folder: cfg.json and sae_weights.safetensors.
pub fn saelens(data: &[u8]) {
    let p = parts(data, 2);
    let dir = folder(&[("cfg.json", p[0]), ("sae_weights.safetensors", p[1])]);
    let _ = loupe_engine::Dictionary::load(dir.path());
}

/// A sparsify dictionary folder: cfg.json and sae.safetensors.
pub fn sparsify(data: &[u8]) {
    let p = parts(data, 2);
    let dir = folder(&[("cfg.json", p[0]), ("sae.safetensors", p[1])]);
    let _ = loupe_engine::Dictionary::load(dir.path());
}

/// A Gemma Scope params.npz (a zip of .npy arrays).
pub fn gemma_scope_npz(data: &[u8]) {
    let dir = folder(&[("params.npz", data)]);
    let _ = loupe_engine::Dictionary::load(&dir.path().join("params.npz"));
}

/// A monitor definition file (`loupe score --monitor`, `loupe generate --monitor`).
pub fn monitor_json(data: &[u8]) {
    if let Ok(monitor) = serde_json::from_slice::<loupe_engine::monitor::Monitor>(data) {
        let _ = monitor.validate();
    }
}

fn corpus(name: &str, data: &[u8]) {
    let dir = folder(&[(name, data)]);
    let source = loupe_corpus::CorpusSource::new(dir.path().join(name));
    let mut skipped = loupe_corpus::Skipped::default();
    let mut documents = 0usize;
    let _ = loupe_corpus::read_documents::<loupe_corpus::CorpusError>(&source, &mut skipped, |_, _| {
        documents += 1;
        Ok(documents < 10_000)
    });
}

pub fn corpus_jsonl(data: &[u8]) {
    corpus("corpus.jsonl", data);
}

pub fn corpus_parquet(data: &[u8]) {
    corpus("corpus.parquet", data);
}

pub fn corpus_text(data: &[u8]) {
    corpus("corpus.txt", data);
}

/// An index job's TOML config, then its validation.
pub fn job_config(data: &[u8]) {
    let dir = folder(&[("job.toml", data)]);
    if let Ok(config) = loupe_indexer::JobConfig::from_file(&dir.path().join("job.toml")) {
        let _ = config.validate();
    }
}

/// A search query (tantivy's syntax plus loupe's prefixes and filters) against the feature
/// index of a small synthetic dictionary, built once.
pub fn search_query(data: &[u8]) {
    use loupe_store::search::{FeatureSite, IndexBuilder, SearchIndex};
    static INDEX: std::sync::OnceLock<(tempfile::TempDir, SearchIndex)> = std::sync::OnceLock::new();
    let (_, index) = INDEX.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let commit = loupe_store::synthetic::synthetic_dictionary("fuzz", 64, 4, 1);
        let path = dir.path().join("search");
        let mut builder = IndexBuilder::create(&path).expect("a feature index");
        let site = FeatureSite { hook: &commit.dictionary.hook, layer: commit.dictionary.layer };
        for feature in &commit.features {
            builder.add(feature, &site).expect("a synthetic feature indexes");
        }
        builder.finish().expect("the feature index commits");
        let index = SearchIndex::open(&path).expect("the feature index opens");
        (dir, index)
    });
    let Ok(query) = std::str::from_utf8(data) else { return };
    let _ = index.search(query, &loupe_store::SearchFilter::default(), 0, 10);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_at_the_separator_and_pad_with_empty_parts() {
        let data = [b"a".as_slice(), SEPARATOR, b"b"].concat();
        assert_eq!(parts(&data, 3), vec![b"a".as_slice(), b"b".as_slice(), b"".as_slice()]);
        assert_eq!(parts(b"only", 2), vec![b"only".as_slice(), b"".as_slice()]);
    }

    #[test]
    fn every_target_has_a_committed_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for t in targets() {
            let dir = root.join(t.name);
            assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().count() > 0, "no seed corpus in {}", dir.display());
        }
    }
}
