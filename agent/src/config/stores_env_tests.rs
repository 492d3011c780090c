//! Unit tests of `PGAGENT_STORES_<NAME>_<KEY>`.

use std::time::Duration;

use bytesize::ByteSize;

use super::stores_tests::two;
use super::tests::load;
use super::*;

#[test]
fn store_variables_set_keys_of_the_stores_the_file_defines() {
    let toml = two("").replace("name = \"b\"", "name = \"nas-b\"");
    let env = [
        ("STORES_A_URL", "file:///from/env"),
        ("STORES_A_UPLOAD_CONCURRENCY", "3"),
        ("STORES_A_RESTORE_PRIORITY", "2"),
        ("STORES_NAS_B_ROLE", "async"),
        ("STORES_NAS_B_PARTIAL_INTERVAL", "10s"),
        ("STORES_NAS_B_KEEP_BACKUPS", "30"),
        ("STORES_NAS_B_MAX_LAG_TIME", "10m"),
        ("STORES_NAS_B_MAX_LAG_BYTES", "4GiB"),
        ("STORES_NAS_B_ON_LAG_EXCEEDED", "hold"),
        ("STORES_NAS_B_RESTORE_PRIORITY", "1"),
        ("STORES_NAS_B_SECRET_ACCESS_KEY", "from-env"),
        ("STORES_NAS_B_ACCESS_KEY_ID", "id"),
    ];
    let cfg = load(&toml, &env, Overrides::default())
        .unwrap()
        .validate()
        .unwrap();
    let [b, a] = cfg.stores.as_slice() else {
        panic!("{:?}", cfg.stores)
    };
    assert_eq!((a.name.as_str(), a.url.as_str()), ("a", "file:///from/env"));
    assert_eq!(a.upload_concurrency, 3);
    assert_eq!(a.role, StoreRole::Required);
    assert_eq!(b.name, "nas-b");
    assert_eq!(b.url, "file:///b", "kept from the file");
    assert_eq!(b.partial_interval, Duration::from_secs(10));
    assert_eq!(b.keep_backups, 30);
    assert_eq!(
        b.role,
        StoreRole::Async {
            max_lag: Some(MaxLag {
                time: Some(Duration::from_secs(600)),
                bytes: Some(ByteSize::gib(4)),
            }),
            on_lag_exceeded: OnLagExceeded::Hold,
        }
    );
    assert_eq!(b.options().secret_access_key.as_deref(), Some("from-env"));
    assert_eq!(b.options().access_key_id.as_deref(), Some("id"));

    // One bound of a table the file wrote is replaced, the other kept.
    let toml = two("role = \"async\"\nmax_lag = { time = \"1m\", bytes = \"1GiB\" }");
    let cfg = load(
        &toml,
        &[("STORES_B_MAX_LAG_TIME", "5m")],
        Overrides::default(),
    )
    .unwrap()
    .validate()
    .unwrap();
    let StoreRole::Async { max_lag, .. } = cfg.stores[1].role else {
        panic!()
    };
    assert_eq!(
        max_lag,
        Some(MaxLag {
            time: Some(Duration::from_secs(300)),
            bytes: Some(ByteSize::gib(1))
        })
    );
}

#[test]
fn a_store_name_that_ends_like_a_key_still_resolves() {
    let toml = "[[stores]]\nname = \"nas\"\nurl = \"file:///a\"\n\
                [[stores]]\nname = \"nas_url\"\nurl = \"file:///b\"\n";
    let env = [
        ("STORES_NAS_URL", "file:///for-nas"),
        ("STORES_NAS_URL_URL", "file:///for-nas-url"),
    ];
    let cfg = load(toml, &env, Overrides::default())
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(cfg.stores[0].url, "file:///for-nas");
    assert_eq!(cfg.stores[1].url, "file:///for-nas-url");
}

#[test]
fn store_variables_naming_no_store_or_no_key_are_errors() {
    let err = load(
        &two(""),
        &[("STORES_C_URL", "file:///c")],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("PGAGENT_STORES_C_URL names no store") && err.contains("are: a, b"),
        "{err}"
    );
    let err = load("", &[("STORES_NAS_URL", "file:///c")], Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("defines no [[stores]]") && err.contains("PGAGENT_STORE_URL"),
        "{err}"
    );
    let err = load(
        &two(""),
        &[("STORES_B_ULR", "file:///c")],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("PGAGENT_STORES_B_ULR: store \"b\" has no such key")
            && err.contains("MAX_LAG_TIME"),
        "{err}"
    );
    // The name is what the variables select by, not a key they set.
    let err = load(&two(""), &[("STORES_B_NAME", "c")], Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("name is written in the configuration file only"),
        "{err}"
    );
}

#[test]
fn bad_values_name_where_they_came_from() {
    let err = load(
        &two(""),
        &[("STORES_B_PARTIAL_INTERVAL", "soon")],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("partial_interval") && err.contains("PGAGENT_STORES_"),
        "{err}"
    );
    // A bad value in the file still names the file when a variable set another key.
    let err = load(
        &two("upload_concurrency = \"many\""),
        &[("STORES_A_URL", "file:///c")],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("upload_concurrency") && err.contains("pgagent.toml"),
        "{err}"
    );
}
