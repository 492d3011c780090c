//! Several stores configured (`[[stores]]`): until streaming to several stores exists,
//! every command refuses a configuration of several, and `--store NAME` chooses the one a
//! reading command uses. Here the near store is lost (an empty directory) and the far one
//! holds the cluster: `restore --store far` restores it, and PostgreSQL recovers through the
//! `restore_command` it wrote, which reads the same store, to the server's final state.

mod common;

use std::time::Duration;

use common::recovery::*;
use common::*;
use pgagent_tests::{run_pgagent, PgOptions, PgServer};

#[tokio::test(flavor = "multi_thread")]
async fn restore_store_far_reads_the_far_store_and_recovery_follows_it() {
    let rig = Rig::fs();
    let mut primary = PgServer::start(PgOptions::default()).expect("start PostgreSQL");
    let mut agent = rig.spawn_caught_up(&primary);
    create_table_t(&primary);
    load(&primary, "before", 500);
    let out = run_pgagent(&["backup", "--fast"], &rig.env(&primary));
    assert!(out.status.success(), "{}", text(&out));
    load(&primary, "after", 500);
    let expected = state(&primary);
    let switch = lsn(&primary.switch_wal().unwrap());
    rig.wait_uploaded(
        &agent,
        switch.segment_number(seg()).end_lsn(seg()),
        Duration::from_secs(60),
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
    primary.stop().unwrap();

    // The same configuration, with the store as the far one of two; the near one is empty.
    let fetch = fetch_config(&rig.store_url, &[]);
    let near = rig.dir.path().join("near");
    std::fs::create_dir(&near).unwrap();
    let toml = std::fs::read_to_string(&fetch.config).unwrap().replace(
        &format!("[store]\nurl = \"{}\"\n", rig.store_url),
        &format!(
            "[[stores]]\nname = \"near\"\nurl = \"file://{}\"\n\n\
             [[stores]]\nname = \"far\"\nurl = \"{}\"\nrole = \"async\"\n",
            near.display(),
            rig.store_url
        ),
    );
    assert!(toml.contains("[[stores]]"), "{toml}");
    std::fs::write(&fetch.config, toml).unwrap();
    let config = fetch.config.to_str().unwrap();

    // Without a choice, a reading command refuses the two stores (exit 2).
    let out = run_pgagent(&["--config", config, "list", "backups"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("several stores are configured (near, far)"),
        "{}",
        text(&out)
    );
    let out = run_pgagent(
        &["--config", config, "list", "backups", "--store", "far"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));

    let mut restored = PgServer::without_cluster(PgOptions::default()).unwrap();
    let out = run_restore(&fetch.config, &restored.data_dir(), &["--store", "far"]);
    assert!(out.status.success(), "{}", text(&out));
    let conf = std::fs::read_to_string(restored.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("--store far fetch %f %p"), "{conf}");
    restored.start_server().unwrap();
    wait_promoted(&restored, Duration::from_secs(120));
    assert_eq!(
        state(&restored),
        expected,
        "the restored data differs from the server's"
    );
    restored.stop().unwrap();
}
