//! Shared set-up of the CloudNativePG plugin tests over [`pgagent_tests::cnpg::Pod`]: the
//! stand-in built with these tests, recovery Clusters, the restore hook driven as CNPG does.

use std::collections::BTreeSet;
use std::time::Duration;

use pgagent_protocol::{SegNo, WalFileName, WalSegmentSize};
use pgagent_tests::cnpg::unix_channel;
use pgagent_tests::wait_until;
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use pgagent_tests::cnpg::{archiver, slot_active, Pod};
use pgagent_tests::PgServer;

/// The stand-in for CNPG's instance manager (`tests/src/bin/cnpg-standin.rs`).
pub fn standin() -> &'static str {
    env!("CARGO_BIN_EXE_cnpg-standin")
}

/// A pod named `name` whose Cluster names `primary` the primary.
pub fn pod(name: &str, primary: &str) -> Pod {
    Pod::new(name, primary, std::path::Path::new(standin()))
}

/// A recovery Cluster as CNPG sends it to the recovery job: bootstrapped from `source_url`
/// (to `target`, a `recoveryTarget` object, or to the end of the WAL), streaming afterwards
/// into `own_url`.
pub fn recovery_cluster(
    source_url: &str,
    own_url: &str,
    target: Option<serde_json::Value>,
) -> Vec<u8> {
    let mut recovery = serde_json::json!({"source": "origin"});
    if let Some(t) = target {
        recovery["recoveryTarget"] = t;
    }
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": "pg-restored", "namespace": "default"},
        "spec": {
            "instances": 1,
            "plugins": [{"name": "pgagent.io", "isWALArchiver": true,
                         "parameters": {"store.url": own_url}}],
            "bootstrap": {"recovery": recovery},
            "externalClusters": [{"name": "origin",
                                  "plugin": {"name": "pgagent.io",
                                             "parameters": {"store.url": source_url}}}],
        },
    }))
    .unwrap()
}

/// Restores a recovery job's PGDATA (`target`, not started) through `job_pod`'s restore
/// sidecar to `recovery`, then points its `restore_command` at the stand-in, as CNPG's
/// instance manager would run it; returns the restore settings the hook answered.
pub async fn restore_through_hook(job_pod: &Pod, target: &PgServer, recovery: Vec<u8>) -> String {
    use pgagent_cnpgi::wal::restore_job_hooks_client::RestoreJobHooksClient;
    use pgagent_cnpgi::wal::RestoreRequest;
    let config = RestoreJobHooksClient::new(unix_channel(&job_pod.socket()))
        .restore(RestoreRequest {
            cluster_definition: recovery,
            check_empty_wal_archive: Some(true),
        })
        .await
        .unwrap_or_else(|e| panic!("Restore: {e}"))
        .into_inner()
        .restore_config;
    let auto_conf = target.data_dir().join("postgresql.auto.conf");
    let written = std::fs::read_to_string(&auto_conf).unwrap();
    assert!(written.contains(CNPG_RESTORE_COMMAND), "{written}");
    std::fs::write(
        &auto_conf,
        written.replace(CNPG_RESTORE_COMMAND, &job_pod.restore_command(false)),
    )
    .unwrap();
    config
}

/// The `restore_command` the restore hook writes: CNPG's instance manager.
pub const CNPG_RESTORE_COMMAND: &str =
    "/controller/manager wal-restore --log-destination /controller/log/postgres.json %f %p";

/// The environment of a recovery job's sidecar restoring from `source_url` into `target`.
pub fn job_env(
    job_pod: &Pod,
    pg: &PgServer,
    target: &PgServer,
    source_url: &str,
    s3: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = job_pod.env(pg, source_url, s3);
    env.retain(|(k, _)| *k != "PGDATA");
    env.push(("PGDATA", target.data_dir().display().to_string()));
    env
}

/// p-th percentile (0..=100) of `values`, microseconds.
pub fn percentile(values: &mut [u64], p: f64) -> u64 {
    values.sort_unstable();
    let i = ((values.len() as f64 - 1.0) * p / 100.0).round() as usize;
    values[i]
}

/// Waits up to `limit` seconds for `f`; fails the test naming `what` when it never holds.
pub fn wait(what: &str, limit: u64, mut f: impl FnMut() -> bool) {
    assert!(
        wait_until(
            Duration::from_secs(limit),
            Duration::from_millis(100),
            &mut f
        ),
        "timed out: {what}"
    );
}

/// The complete segments of `store` whose keys start with `prefix` (`wal/` for all,
/// `wal/00000001` for timeline 1), read from one listing, for `seg`-byte segments; with
/// the listing's keys.
pub async fn stored_segments(
    store: &dyn pgagent_storage::ObjectStore,
    prefix: &str,
    seg: WalSegmentSize,
) -> (BTreeSet<SegNo>, Vec<String>) {
    let keys: Vec<String> = store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    let segments = keys
        .iter()
        .filter_map(
            |k| match WalFileName::parse(k.trim_start_matches("wal/"), seg) {
                Some(WalFileName::Segment { segno, .. }) => Some(segno),
                _ => None,
            },
        )
        .collect();
    (segments, keys)
}
