//! The pure parts of reading several stores: the cluster check, the report lines.

use pgagent_storage::crypto::MasterKey;

use super::*;

fn cluster(sysid: &str, seg: u64) -> ClusterInfo {
    ClusterInfo {
        format_version: 1,
        system_identifier: sysid.into(),
        pg_version_num: 170000,
        wal_segment_size: seg,
        created_at: "2026-01-01T00:00:00Z".into(),
        encryption: None,
    }
}

fn checked(name: &str, c: ClusterInfo, cipher: Option<ObjectCipher>) -> Checked {
    Checked {
        name: name.into(),
        cluster: c,
        cipher,
    }
}

const MIB16: u64 = 16 << 20;

#[test]
fn stores_of_one_cluster_pass() {
    let key = MasterKey::generate();
    let stores = [
        checked("nas", cluster("7", MIB16), Some(key.cipher())),
        checked("r2", cluster("7", MIB16), Some(key.cipher())),
    ];
    assert_eq!(check_one_cluster(&stores), Ok(()));
    assert_eq!(check_one_cluster(&stores[..1]), Ok(()));
    assert_eq!(check_one_cluster(&[]), Ok(()));
}

#[test]
fn another_system_identifier_or_segment_size_is_another_cluster() {
    let err = check_one_cluster(&[
        checked("nas", cluster("7", MIB16), None),
        checked("r2", cluster("8", MIB16), None),
    ])
    .unwrap_err();
    assert!(
        err.starts_with("stores nas and r2 hold different clusters")
            && err.contains("system identifier"),
        "{err}"
    );
    let err = check_one_cluster(&[
        checked("nas", cluster("7", MIB16), None),
        checked("b2", cluster("7", MIB16), None),
        checked("r2", cluster("7", 64 << 20), None),
    ])
    .unwrap_err();
    assert!(
        err.contains("stores nas and r2") && err.contains("segment size"),
        "{err}"
    );
}

#[test]
fn another_master_key_is_refused_naming_both_checks() {
    let (a, b) = (
        MasterKey::generate().cipher(),
        MasterKey::generate().cipher(),
    );
    let err = check_one_cluster(&[
        checked("nas", cluster("7", MIB16), Some(a.clone())),
        checked("r2", cluster("7", MIB16), Some(b.clone())),
    ])
    .unwrap_err();
    assert!(err.contains("do not open to the same master key"), "{err}");
    assert!(
        err.contains(&a.key_check()) && err.contains(&b.key_check()),
        "{err}"
    );
    let err = check_one_cluster(&[
        checked("nas", cluster("7", MIB16), None),
        checked("r2", cluster("7", MIB16), Some(b)),
    ])
    .unwrap_err();
    assert!(err.contains("key check none in nas"), "{err}");
}

fn read(name: &str, objects: u64, bytes: u64, gets: u64) -> StoreRead {
    StoreRead {
        name: name.into(),
        objects,
        bytes,
        requests: RequestTotals::from_fn(|op| {
            if op == pgagent_storage::RequestOp::Get {
                gets
            } else {
                0
            }
        }),
    }
}

#[test]
fn served_text_gives_each_store_its_share() {
    let text = served_text(&[read("nas", 996, 996 << 20, 1000), read("r2", 4, 4 << 20, 4)]);
    assert_eq!(
        text,
        format!(
            "read {} from nas (99.6 %, 996 objects, 1000 requests), {} from r2 (0.4 %, 4 \
             objects, 4 requests)",
            bytesize::ByteSize(996 << 20),
            bytesize::ByteSize(4 << 20)
        )
    );
    // Nothing read: no share.
    assert_eq!(
        served_text(&[read("far", 0, 0, 2)]),
        "read 0 B from far (0 objects, 2 requests)"
    );
}

#[test]
fn wal_end_text_compares_with_the_stores_left_out() {
    let used = vec!["far".to_string()];
    let end: WalEnd = Ok(Some((TimelineId(1), Lsn(0x500_0100))));
    let others = vec![
        (
            "nas".to_string(),
            Ok(Some((TimelineId(1), Lsn(0x600_0100)))),
        ),
        ("b2".to_string(), Ok(Some((TimelineId(1), Lsn(0x400_0100))))),
        ("s3".to_string(), Ok(Some((TimelineId(2), Lsn(0x600_0000))))),
        ("r2".to_string(), Ok(None)),
        ("gcs".to_string(), Err("connection refused".to_string())),
    ];
    let text = wal_end_text(&used, &end, &others);
    assert_eq!(
        text,
        format!(
            "WAL in far ends at 0/5000100 (timeline 1); nas (not used): ends at 0/6000100 \
             (timeline 1), {} further; b2 (not used): ends at 0/4000100 (timeline 1), {} \
             behind; s3 (not used): ends at 0/6000000 (timeline 2); r2 (not used): holds no \
             WAL; gcs (not used): not reachable to compare (connection refused)",
            bytesize::ByteSize(16 << 20),
            bytesize::ByteSize(16 << 20)
        )
    );
    assert_eq!(wal_end_text(&used, &Ok(None), &[]), "far hold no WAL");
}
