//! `loupe index` as a user runs it: killed with SIGKILL and resumed, sharded and merged,
//! appended; each store must equal the one of a single uninterrupted run.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use loupe_store::{ExampleRecord, FeatureRecord, StoreReader};

fn corpus(dir: &Path, name: &str, skip: usize, lines: usize) -> PathBuf {
    let demo = loupe_query::config::loupe_home().join("corpora").join("demo.jsonl");
    assert!(demo.exists(), "{} is missing: run scripts/setup.sh", demo.display());
    let path = dir.join(name);
    let mut out = std::fs::File::create(&path).unwrap();
    for line in std::io::BufReader::new(std::fs::File::open(&demo).unwrap()).lines().skip(skip).take(lines) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    path
}

fn index_command(store: &Path, corpora: &[&Path], extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loupe"));
    command.arg("index").arg("--store").arg(store);
    for corpus in corpora {
        command.arg("--corpus").arg(corpus);
    }
    command.args(["--context", "32", "--batch-size", "2", "--top-k", "4", "--interval-samples", "2", "--checkpoint-every", "1", "--json"]);
    command.args(extra);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Whether a run checkpoint under `store/jobs/` was written after `since`.
fn checkpointed_since(store: &Path, since: std::time::SystemTime) -> bool {
    let Ok(jobs) = std::fs::read_dir(store.join("jobs")) else { return false };
    jobs.flatten()
        .flat_map(|job| std::fs::read_dir(job.path()).into_iter().flatten().flatten())
        .any(|f| f.file_name().to_string_lossy().ends_with(".ckpt") && f.metadata().and_then(|m| m.modified()).is_ok_and(|m| m > since))
}

fn run_ok(mut command: Command) -> serde_json::Value {
    let out = command.output().expect("run loupe index");
    assert!(out.status.success(), "loupe index failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// The store's content for the default dictionary (what a reader can see).
fn content(store: &Path) -> (Vec<FeatureRecord>, Vec<ExampleRecord>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reader = rt.block_on(StoreReader::open(&loupe_store::Location::local(store))).unwrap();
    let id = "blocks.9.hook_resid_post-topk-4608";
    (rt.block_on(reader.features(id)).unwrap(), rt.block_on(reader.examples(id, None)).unwrap())
}

fn assert_same_store(a: &Path, b: &Path, what: &str) {
    let (fa, ea) = content(a);
    let (fb, eb) = content(b);
    assert_eq!(fa.len(), fb.len(), "{what}: feature count");
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(x, y, "{what}: feature {}", x.feature);
    }
    assert_eq!(ea.len(), eb.len(), "{what}: example count");
    assert!(ea == eb, "{what}: examples differ");
}

#[test]
fn killed_resumed_sharded_and_appended_runs_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let a = corpus(dir.path(), "a.jsonl", 0, 40);
    let b = corpus(dir.path(), "b.jsonl", 40, 30);

    // The reference: one uninterrupted run over [A, B].
    let whole = dir.path().join("whole");
    let start = Instant::now();
    let report = run_ok(index_command(&whole, &[&a, &b], &[]));
    let duration = start.elapsed();
    assert_eq!(report["status"], "committed");
    assert!(report["windows"].as_u64().unwrap() >= 40, "{report}");

    // SIGKILL at pseudo-random points (seeded) after the run has checkpointed some progress,
    // then resume with the same command.
    let killed = dir.path().join("killed");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    for _ in 0..12 {
        if kills == 5 {
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let spawned = std::time::SystemTime::now();
        let mut child = index_command(&killed, &[&a, &b], &[]).spawn().unwrap();
        let deadline = Instant::now() + duration * 3;
        while child.try_wait().unwrap().is_none() && !checkpointed_since(&killed, spawned) && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(duration.mul_f64((seed % 1000) as f64 / 1000.0 * 0.1));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert_eq!(kills, 5, "runs finished before they could be killed");
    let resumed = run_ok(index_command(&killed, &[&a, &b], &[]));
    assert_eq!(resumed["status"], "committed");
    assert!(resumed["resumed_from_window"].as_u64().unwrap() > 0, "the last run did not resume: {resumed}");
    assert_same_store(&whole, &killed, "killed and resumed");

    // Two shards merged.
    let sharded = dir.path().join("sharded");
    let first = run_ok(index_command(&sharded, &[&a, &b], &["--shard", "0/2"]));
    assert_eq!(first["status"], "shard_done");
    let merge_command = || {
        let mut merge = Command::new(env!("CARGO_BIN_EXE_loupe"));
        merge.args(["index", "merge", "--shards", "2", "--store"]).arg(&sharded);
        for c in [&a, &b] {
            merge.arg("--corpus").arg(c);
        }
        merge.args(["--context", "32", "--batch-size", "2", "--top-k", "4", "--interval-samples", "2", "--json"]);
        merge
    };
    let early = merge_command().output().unwrap();
    let err = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success() && err.contains("shards 1/2 are not complete"), "{err}");
    assert_eq!(run_ok(index_command(&sharded, &[&a, &b], &["--shard", "1/2"]))["status"], "shard_done");
    let merge = merge_command();
    assert_eq!(run_ok(merge)["status"], "committed");
    assert_same_store(&whole, &sharded, "2 shards merged");

    // A, then B appended.
    let appended = dir.path().join("appended");
    run_ok(index_command(&appended, &[&a], &[]));
    assert_eq!(run_ok(index_command(&appended, &[&b], &["--append"]))["status"], "committed");
    assert_same_store(&whole, &appended, "A then B appended");
}

#[test]
fn index_errors_are_clear_and_keep_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let a = corpus(dir.path(), "a.jsonl", 0, 10);
    let store = dir.path().join("store");
    run_ok(index_command(&store, &[&a], &[]));
    let before = content(&store);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": 5}\n").unwrap();
    let out = index_command(&store, &[&bad], &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.jsonl") && err.contains("line 2"), "{err}");
    assert_eq!(content(&store), before, "a failed run changed the store");

    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = index_command(&foreign, &[&a], &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a loupe store"), "{err}");

    let out = index_command(&dir.path().join("new"), &[&a], &["--append"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nothing to append to"), "{err}");

    let config = dir.path().join("job.toml");
    std::fs::write(&config, "store = \"x\"\ncontxt = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loupe")).args(["index", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("job.toml") && err.contains("contxt"), "{err}");
}
