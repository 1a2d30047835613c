//! The deployment topology as processes on loopback: an S3 server, the Slurm scripts of
//! `deploy/slurm/` running two index shards and the merge (as the array and its dependent
//! job would), with the job config of the Kubernetes ConfigMap, then two `loupe serve`
//! replicas on the bucket and a client that queries both. (A single-node Slurm cannot run
//! here: it needs munge and root daemons; `submit.sh` is run against a recording `sbatch`.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loupe_schema::proto::v1 as pb;
use loupe_tests::s3::S3Server;
use loupe_tests::*;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const BUCKET: &str = "loupe-deploy";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `job.toml` of `deploy/k8s/configmap.yaml`, with its paths pointed at this machine.
fn job_config(store: &str, corpus: &Path) -> String {
    let configmap = std::fs::read_to_string(repo().join("deploy/k8s/configmap.yaml")).unwrap();
    let toml: String = configmap.lines().skip_while(|l| !l.contains("job.toml: |")).skip(1).map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l))).collect();
    assert!(toml.contains("[[dictionary]]"), "no job.toml in the ConfigMap");
    toml.replace("s3://loupe/demo", store)
        .replace("/var/lib/loupe/corpora/demo.jsonl", &corpus.display().to_string())
        .replace("/opt/loupe/dictionaries", &repo().join("dictionaries").display().to_string())
        .replace("context = 128", "context = 64")
}

fn script(name: &str, s3: &S3Server) -> Command {
    let mut command = Command::new("bash");
    command.arg(repo().join("deploy/slurm").join(name)).envs(s3.env()).env("LOUPE", loupe_binary()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

fn json_of(output: std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn slurm_shards_merge_and_two_replicas_on_s3() {
    let s3 = S3Server::start(&[BUCKET]);
    let dir = tempfile::tempdir().unwrap();
    let store = format!("s3://{BUCKET}/deployed");
    let job = dir.path().join("job.toml");
    std::fs::write(&job, job_config(&store, &corpus_head(dir.path(), 16))).unwrap();

    // submit.sh queues the array and a merge that depends on it.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("sbatch.log");
    std::fs::write(bin.join("sbatch"), format!("#!/bin/sh\necho \"$@\" >> {}\nwc -l < {} | tr -d ' '\n", log.display(), log.display())).unwrap();
    std::fs::set_permissions(bin.join("sbatch"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let submitted = Command::new("bash").arg(repo().join("deploy/slurm/submit.sh")).arg(&job).arg("2").env("PATH", &path).output().unwrap();
    assert!(submitted.status.success(), "{}", String::from_utf8_lossy(&submitted.stderr));
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].contains("--array=0-1") && calls[0].ends_with("index.sbatch"), "{}", calls[0]);
    assert!(calls[1].contains("--dependency=afterok:1") && calls[1].contains("LOUPE_SHARDS=2") && calls[1].ends_with("merge.sbatch"), "{}", calls[1]);

    // The array's two tasks, then the merge, as Slurm would run them.
    for task in 0..2 {
        let report = json_of(script("index.sbatch", &s3).env("LOUPE_JOB", &job).env("SLURM_ARRAY_TASK_ID", task.to_string()).env("SLURM_ARRAY_TASK_COUNT", "2").output().unwrap());
        assert_eq!(report["status"], "shard_done", "{report}");
    }
    let report = json_of(script("merge.sbatch", &s3).env("LOUPE_JOB", &job).env("LOUPE_SHARDS", "2").output().unwrap());
    assert_eq!(report["status"], "committed", "{report}");

    // Two query replicas on the bucket, each with its own cache, and a client of both.
    let mut replicas = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..2 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(loupe_binary())
            .args(["serve", "--no-model", "--store", &store, "--addr", &format!("127.0.0.1:{port}")])
            .envs(s3.env())
            .env("LOUPE_CACHE", dir.path().join(format!("cache-{i}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        replicas.push(Replica(child));
        addrs.push(format!("http://127.0.0.1:{port}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut answers = Vec::new();
        for addr in &addrs {
            let start = Instant::now();
            let channel = loop {
                if let Ok(channel) = tonic::transport::Channel::from_shared(addr.clone()).unwrap().connect().await {
                    break channel;
                }
                assert!(start.elapsed() < Duration::from_secs(120), "replica {addr} did not come up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let health = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
            assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
            let mut client = pb::features_client::FeaturesClient::new(channel);
            let generation = client.list_dictionaries(pb::ListDictionariesRequest {}).await.unwrap().into_inner().store_generation;
            let hits = client.search_features(pb::SearchFeaturesRequest { query: "the".into(), limit: 10, ..Default::default() }).await.unwrap().into_inner();
            let top = hits.hits.first().and_then(|h| h.feature.clone()).expect("a hit for 'the'");
            let dashboard = client.get_feature(pb::GetFeatureRequest { feature: Some(top), ..Default::default() }).await.unwrap().into_inner();
            let dashboard = dashboard.dashboard.unwrap();
            assert!(!dashboard.top_examples.is_empty());
            answers.push((generation, hits.total, dashboard));
        }
        assert_eq!(answers[0], answers[1], "the replicas answer differently");
        assert_eq!(answers[0].0, 1);
    });
    drop(replicas);
}
