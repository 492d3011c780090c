//! `pgagent fetch` over two stores (an S3 server behind a fault-injecting proxy, near; a
//! `file://` store, far): a file comes from whichever store has it; absent in both is exit
//! 1; a near store failing on a file the far store lacks is retried until `fetch.timeout`,
//! then exit 255, never 1 (recovery must stop, not end early).

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use pgagent_protocol::{segment_file_name, SegNo, TimelineId};
use pgagent_storage::envelope;
use pgagent_tests::{run_pgagent, wait_until, Garage, Proxy};

fn name(segno: SegNo) -> String {
    segment_file_name(TimelineId(1), segno, seg())
}

fn fetch(config: &Path, file: &str, dest: &Path) -> Output {
    run_pgagent(
        &[
            "--config",
            config.to_str().unwrap(),
            "fetch",
            file,
            dest.to_str().unwrap(),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_near_store_aborts_fetch_of_what_the_far_store_lacks() {
    let garage = Garage::start().expect("start Garage");
    let sysid = "7000000000000000001";
    let near = open_store(&garage.store_url("near"), &garage.s3_env()).await;
    let dir = tempfile::tempdir().unwrap();
    let far_dir = dir.path().join("far");
    std::fs::create_dir(&far_dir).unwrap();
    let far = open_store(&format!("file://{}", far_dir.display()), &[]).await;
    let raw = |n: u8| -> Vec<u8> { (0..SEG).map(|i| (i % 251) as u8 ^ n).collect() };
    // Segment 1 in both, 2 only in near, 3 only in far.
    for (store, segs) in [(&near, &[1u8, 2][..]), (&far, &[1, 3])] {
        store
            .put("cluster.json", Bytes::from(cluster_json(sysid)))
            .await
            .unwrap();
        for &n in segs {
            let key = format!("wal/{}", name(SegNo(u64::from(n))));
            store
                .put(&key, envelope::seal(&raw(n), 3).body)
                .await
                .unwrap();
        }
    }

    let proxy = Proxy::start(garage.s3_addr());
    std::fs::create_dir(dir.path().join("staging")).unwrap();
    let config = dir.path().join("pgagent.toml");
    let env = garage.s3_env();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    std::fs::write(
        &config,
        format!(
            "[staging]\ndir = \"{}\"\n\n[fetch]\ntimeout = \"3s\"\nidle_timeout = \"1s\"\n\n\
             [[stores]]\nname = \"near\"\nurl = \"{}\"\naccess_key_id = \"{}\"\n\
             secret_access_key = \"{}\"\n\n\
             [[stores]]\nname = \"far\"\nurl = \"file://{}\"\nrole = \"async\"\n",
            dir.path().join("staging").display(),
            garage.store_url_via("near", &proxy.http_endpoint()),
            get("AWS_ACCESS_KEY_ID"),
            get("AWS_SECRET_ACCESS_KEY"),
            far_dir.display()
        ),
    )
    .unwrap();
    let dest = dir.path().join("RECOVERYXLOG");

    // Each file from a store that has it.
    for n in [1u8, 2, 3] {
        let out = fetch(&config, &name(SegNo(u64::from(n))), &dest);
        assert_eq!(out.status.code(), Some(0), "{n}: {}", text(&out));
        assert!(std::fs::read(&dest).unwrap() == raw(n), "segment {n}");
        std::fs::remove_file(&dest).unwrap();
    }
    // Absent from both: 1.
    let out = fetch(&config, &name(SegNo(4)), &dest);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // The near store cuts every request for segment 2, which far lacks: 255 once
    // fetch.timeout runs out, never 1, nothing written.
    let key = format!("/wal/{}", name(SegNo(2)));
    proxy.cut_requests_containing(vec![
        format!("{key}?").into_bytes(),
        format!("{key} ").into_bytes(),
    ]);
    let started = Instant::now();
    let out = fetch(&config, &name(SegNo(2)), &dest);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(255), "{}", text(&out));
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(60),
        "gave up after {took:?}"
    );
    assert!(proxy.requests_cut() > 0);
    assert!(!dest.exists());
    // Segment 1, cut in near too, comes from far.
    let one = format!("/wal/{}", name(SegNo(1)));
    proxy.cut_requests_containing(vec![
        format!("{one}?").into_bytes(),
        format!("{one} ").into_bytes(),
    ]);
    let out = fetch(&config, &name(SegNo(1)), &dest);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(std::fs::read(&dest).unwrap() == raw(1));

    // The restore-mode fetch server, idle, logs its requests per store as it stops.
    let staging = dir.path().join("staging");
    let mut last = String::new();
    let stopped = wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        last = std::fs::read_dir(&staging)
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|log| {
                log.lines()
                    .rfind(|l| l.contains("fetch server stopped"))
                    .map(str::to_string)
            })
            .collect();
        !last.is_empty()
    });
    assert!(stopped, "no fetch server stopped in {}", staging.display());
    assert!(
        last.contains("near: put 0, get ") && last.contains("far: put 0, get "),
        "{last}"
    );
}
