//! The store's file system failing under a running server: the disk fills up, then the file
//! system turns read-only. Writes fail with a status that says which, reads go on, the
//! server stays up, and once space is back writes succeed again with nothing lost. The store
//! lives on a small tmpfs that the test mounts (mount(2) needs root, as CI runs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_store::{label_history, Location};
use loupe_tests::{clients, copy_of_fixture_store, fref, start_server, DICTIONARY};
use tonic::Code;

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status().unwrap();
        assert!(status.success(), "mount -t tmpfs failed: this test needs root (CI runs as root)");
        Tmpfs(at.to_path_buf())
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remount {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn label(feature: u32, text: &str) -> pb::SetFeatureLabelRequest {
    pb::SetFeatureLabelRequest { feature: fref(feature), label: text.into(), author: Some("faults".into()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_then_read_only_disk_fails_writes_clearly_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("disk"), "256m");
    let disk = fs.0.clone();
    let store = tokio::task::spawn_blocking(move || copy_of_fixture_store(&disk)).await.unwrap();
    let server = start_server(&store, Limits::default(), false).await;
    let (mut client, _) = clients(&server.addr).await;
    client.set_feature_label(label(5, "before the disk filled")).await.expect("a write with space left");

    // Fill the disk.
    let mut filler = std::fs::File::create(fs.0.join("filler")).unwrap();
    let chunk = vec![7u8; 1 << 20];
    while filler.write_all(&chunk).is_ok() {}
    let _ = filler.sync_all();
    let full = client.set_feature_label(label(6, "on a full disk")).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("disk is full"), "{}", full.message());
    // Reads go on.
    client.search_features(pb::SearchFeaturesRequest { query: "the".into(), ..Default::default() }).await.expect("search on a full disk");
    let dashboard = client.get_feature(pb::GetFeatureRequest { feature: fref(5), max_top_examples: 4, max_interval_examples: 0, include: None }).await.expect("a dashboard on a full disk");
    assert_eq!(dashboard.into_inner().dashboard.unwrap().label.as_deref(), Some("before the disk filled"));

    // Space back: writes work again, and the failed one left nothing behind.
    drop(filler);
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    client.set_feature_label(label(6, "after space came back")).await.expect("a write once space is back");
    let history: Vec<Option<String>> = label_history(&Location::local(&store), DICTIONARY, 6).await.unwrap().into_iter().map(|r| r.label).collect();
    assert_eq!(history, vec![Some("after space came back".to_string())], "the refused write is not half-present");

    // A read-only file system.
    fs.remount("ro");
    let read_only = client.set_feature_label(label(7, "on a read-only disk")).await.unwrap_err();
    assert_eq!(read_only.code(), Code::FailedPrecondition, "{read_only:?}");
    assert!(read_only.message().contains("read-only"), "{}", read_only.message());
    client.search_features(pb::SearchFeaturesRequest { query: "the".into(), ..Default::default() }).await.expect("search on a read-only disk");
    fs.remount("rw");
    client.set_feature_label(label(7, "writable again")).await.expect("a write once the disk is writable");
    drop(server);
}
