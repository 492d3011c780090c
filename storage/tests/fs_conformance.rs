//! The store conformance suite on the file system backend.

use pgagent_storage::conformance::{self, SuiteOptions};
use pgagent_storage::{open, StoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_backend_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/store", dir.path().display());
    let store = open(&url, &StoreOptions::default())
        .await
        .expect("open fs store");
    assert_eq!(store.describe(), url);
    assert!(store.enforces_conditional_put());
    conformance::run_all_with(
        store,
        &SuiteOptions {
            list_keys: 1100,
            large_object_bytes: 40 << 20,
        },
    )
    .await;
    // The suite cleans up after itself; only empty directories may remain.
    let leftover: Vec<_> = walk(&dir.path().join("store"));
    assert!(leftover.is_empty(), "files left behind: {leftover:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
