//! CNPG-I plugin loading, replayed as CloudNativePG does it against the real binary: the
//! instance sidecar and the recovery job's sidecar on their unix sockets. What each declares
//! is what it serves, both ways: every declared service answers `GetCapabilities`, every
//! other CNPG-I service answers `UNIMPLEMENTED`, and inside a declared service an RPC that
//! is not declared answers `UNIMPLEMENTED` too.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use pgagent_cnpgi::identity::plugin_capability::service::Type as Service;
use pgagent_cnpgi::wal::wal_capability::rpc::Type as WalRpc;
use pgagent_cnpgi::wal::wal_client::WalClient;
use pgagent_cnpgi::wal::*;
use pgagent_tests::cnpg::{load, unix_channel};
use pgagent_tests::{run_pgagent, wait_until, AgentProcess};
use tonic::Code;

/// Starts `pgagent cnpg <role>` on a `file://` store in `dir`; returns it and its socket.
fn start_sidecar(role: &str, dir: &Path) -> (AgentProcess, std::path::PathBuf) {
    let plugins = dir.join("plugins");
    let env = vec![
        (
            "PGAGENT_STORE_URL",
            format!("file://{}", dir.join("store").display()),
        ),
        (
            "PGAGENT_STAGING_DIR",
            dir.join("staging").display().to_string(),
        ),
        ("PGAGENT_METRICS_LISTEN", String::new()),
        ("PGAGENT_CNPG_PLUGINS_DIR", plugins.display().to_string()),
        ("POD_NAME", "pg-1".to_string()),
        ("PGDATA", dir.join("pgdata").display().to_string()),
    ];
    let mut agent = AgentProcess::spawn(&["cnpg", role], &env);
    let socket = plugins.join("pgagent.io");
    let up = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        socket.exists() || !agent.is_running()
    });
    assert!(
        up && agent.is_running(),
        "no socket: {}",
        agent.output_text()
    );
    (agent, socket)
}

fn services(s: &[Service]) -> BTreeSet<Service> {
    s.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_instance_sidecar_serves_exactly_what_it_declares() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, socket) = start_sidecar("instance", dir.path());
    let loaded = load(unix_channel(&socket)).await.expect("plugin loads");
    assert_eq!(loaded.name, "pgagent.io");
    assert!(!loaded.version.is_empty());
    let expected = services(&[
        Service::WalService,
        Service::BackupService,
        Service::Metrics,
    ]);
    assert_eq!(loaded.declared, expected, "declared");
    assert_eq!(loaded.served, expected, "served");

    let mut wal = WalClient::new(unix_channel(&socket));
    let caps = wal
        .get_capabilities(WalCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let rpcs: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|wal_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    assert_eq!(
        rpcs,
        [WalRpc::ArchiveWal as i32, WalRpc::RestoreWal as i32].into(),
        "WAL RPCs declared"
    );
    // Declared RPCs are served (a bad name is refused as such, not as unimplemented)…
    let archive = wal
        .archive(WalArchiveRequest {
            source_file_name: "pg_wal/../../etc/passwd".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(archive.code(), Code::InvalidArgument, "{archive:?}");
    let restore = wal
        .restore(WalRestoreRequest {
            source_wal_name: "not-a-wal-file".into(),
            destination_file_name: "pg_wal/RECOVERYXLOG".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(restore.code(), Code::InvalidArgument, "{restore:?}");
    // …and the ones not declared are not.
    let status = wal.status(WalStatusRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let first = wal
        .set_first_required(SetFirstRequiredRequest::default())
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::Unimplemented);

    // The startup probe answers while the sidecar runs, and not once it has stopped.
    let plugins = socket.parent().unwrap().display().to_string();
    let probe = run_pgagent(&["cnpg", "healthcheck", "--plugins-dir", &plugins], &[]);
    assert!(probe.status.success(), "{probe:?}");
    assert!(agent.terminate().success(), "{}", agent.output_text());
    assert!(!socket.exists(), "the socket is removed at exit");
    let probe = run_pgagent(&["cnpg", "healthcheck", "--plugins-dir", &plugins], &[]);
    assert!(!probe.status.success(), "{probe:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recovery_job_sidecar_serves_exactly_what_it_declares() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agent, socket) = start_sidecar("restore", dir.path());
    let loaded = load(unix_channel(&socket)).await.expect("plugin loads");
    let expected = services(&[Service::RestoreJob, Service::WalService]);
    assert_eq!(loaded.declared, expected, "declared");
    assert_eq!(loaded.served, expected, "served");
    // The recovery job restores WAL but archives none.
    let mut wal = WalClient::new(unix_channel(&socket));
    let archive = wal
        .archive(WalArchiveRequest {
            source_file_name: "pg_wal/000000010000000000000001".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(archive.code(), Code::Unimplemented);
    assert!(agent.terminate().success(), "{}", agent.output_text());
}
