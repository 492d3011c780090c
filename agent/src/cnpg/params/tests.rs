//! Parameters: a good set, every refusal, values coerced as the sidecar reads them, and the
//! rules between a cluster's own entry and its recovery source.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::cnpg::cluster::Cluster;

const URL: &str = "s3://backups/pg1?endpoint=https://minio.db.svc:9000&region=us-east-1";

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(pairs: &[(&str, &str)]) -> Result<PluginParams, Vec<ValidationError>> {
    PluginParams::parse(&params(pairs), &plugin_path(0))
}

/// The one error of refused `pairs`, checked to point at `key`.
fn refusal(pairs: &[(&str, &str)], key: &str) -> String {
    let errs = parse(pairs).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let mut want = plugin_path(0);
    want.push(key.into());
    assert_eq!(errs[0].path_components, want, "{errs:#?}");
    errs[0].message.clone()
}

#[test]
fn a_good_set_becomes_settings_env_secret_and_resources() {
    let p = parse(&[
        ("store.url", URL),
        ("secret", "pgagent-s3"),
        ("wal.partial_interval", "500ms"),
        ("wal.compression_level", "6"),
        ("backup.incremental", "off"),
        ("store.lock", "governance"),
        ("store.lock_days", "14"),
        ("fetch.prefetch", "32"),
        ("encryption.passphrase_file", "/etc/pgagent/passphrase"),
        ("resources.requests.cpu", "100m"),
        ("resources.limits.memory", "512Mi"),
    ])
    .unwrap();
    assert_eq!(p.store_url(), URL);
    assert_eq!(p.secret(), Some("pgagent-s3"));
    let c = &p.config().raw;
    assert_eq!(c.wal.partial_interval, Duration::from_millis(500));
    assert_eq!(c.wal.compression_level, 6);
    assert_eq!(c.fetch.prefetch, 32);
    assert_eq!(c.store.lock_days, Some(14));
    assert!(
        p.config().passphrase.is_none(),
        "the file is the sidecar's, never read here"
    );
    let env = p.to_env();
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "PGAGENT_BACKUP_INCREMENTAL",
            "PGAGENT_ENCRYPTION_PASSPHRASE_FILE",
            "PGAGENT_FETCH_PREFETCH",
            "PGAGENT_STORE_LOCK",
            "PGAGENT_STORE_LOCK_DAYS",
            "PGAGENT_STORE_URL",
            "PGAGENT_WAL_COMPRESSION_LEVEL",
            "PGAGENT_WAL_PARTIAL_INTERVAL",
        ],
        "sorted, without secret or resources"
    );
    assert_eq!(env[5].1, URL);
    assert_eq!(
        p.resources().to_json(),
        serde_json::json!({
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "512Mi"}
        })
    );
}

#[test]
fn store_url_is_required() {
    let errs = parse(&[("secret", "s3")]).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path_components.last().unwrap(), "store.url");
    assert!(
        errs[0].message.contains("store.url is required"),
        "{errs:?}"
    );
}

#[test]
fn secrets_and_fixed_settings_are_refused_naming_the_secret() {
    for key in [
        "encryption.passphrase",
        "store.access_key_id",
        "store.secret_access_key",
    ] {
        let msg = refusal(&[("store.url", URL), (key, "x")], key);
        assert!(msg.contains("not accepted as a parameter"), "{msg}");
        assert!(
            msg.contains("Secret named by the `secret` parameter"),
            "{msg}"
        );
    }
    let msg = refusal(
        &[("store.url", URL), ("staging.dir", "/tmp/s")],
        "staging.dir",
    );
    assert!(msg.contains("/var/lib/postgresql/data/pgagent"), "{msg}");
    let msg = refusal(
        &[("store.url", URL), ("store.as_of", "2026-01-01T00:00:00Z")],
        "store.as_of",
    );
    assert!(msg.contains("writes nothing"), "{msg}");
    let msg = refusal(
        &[("store.url", URL), ("zfs.datasets", "[tank/pg]")],
        "zfs.datasets",
    );
    assert!(msg.contains("[zfs] settings are not accepted"), "{msg}");
}

#[test]
fn unknown_keys_list_what_is_accepted() {
    let msg = refusal(
        &[("store.url", URL), ("wal.partial_intervall", "1s")],
        "wal.partial_intervall",
    );
    assert!(
        msg.starts_with(
            "unknown parameter \"wal.partial_intervall\"; accepted: secret, resources.requests.cpu"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("wal.partial_interval") && msg.contains("store.url"),
        "{msg}"
    );
    assert!(
        !msg.contains("store.access_key_id") && !msg.contains("zfs."),
        "refused keys are not offered: {msg}"
    );
    let msg = refusal(
        &[("store.url", URL), ("stores.nas.url", "s3://b/p")],
        "stores.nas.url",
    );
    assert!(msg.contains("[[stores]], are not offered"), "{msg}");
    let msg = refusal(
        &[("store.url", URL), ("PGAGENT_WAL_CONFIRM", "bucket")],
        "PGAGENT_WAL_CONFIRM",
    );
    assert!(
        msg.contains("write configuration keys as section.key"),
        "{msg}"
    );
}

#[test]
fn values_their_fields_do_not_take_are_refused_each() {
    let errs = parse(&[
        ("store.url", URL),
        ("store.upload_concurrency", "lots"),
        ("wal.partial_interval", "soon"),
        ("backup.incremental", "sometimes"),
    ])
    .unwrap_err();
    let keys: Vec<&str> = errs
        .iter()
        .map(|e| e.path_components.last().unwrap().as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "backup.incremental",
            "store.upload_concurrency",
            "wal.partial_interval"
        ]
    );
    assert_eq!(errs[1].value, "lots");
}

/// What pgagent's validation refuses reaches the key its message names.
#[test]
fn validation_errors_point_at_their_key() {
    let msg = refusal(
        &[("store.url", URL), ("wal.compression_level", "30")],
        "wal.compression_level",
    );
    assert!(msg.contains("out of range -7..=22"), "{msg}");
    let msg = refusal(&[("store.url", "ftp://x/y")], "store.url");
    assert!(msg.starts_with("store.url"), "{msg}");
    let msg = refusal(
        &[("store.url", URL), ("postgres.slot", "Bad-Slot")],
        "postgres.slot",
    );
    assert!(msg.contains("slot name"), "{msg}");
    let msg = refusal(
        &[("store.url", URL), ("backup.schedule", "every day")],
        "backup.schedule",
    );
    assert!(msg.contains("backup.schedule"), "{msg}");
    let msg = refusal(
        &[
            ("store.url", URL),
            ("encryption.passphrase_file", "passphrase"),
        ],
        "encryption.passphrase_file",
    );
    assert!(msg.contains("absolute path"), "{msg}");
}

#[test]
fn secret_names_and_quantities_are_checked() {
    for bad in ["", "Pgagent", "-s3", "s3-", "a_b", &"a".repeat(254)] {
        let msg = refusal(&[("store.url", URL), ("secret", bad)], "secret");
        assert!(msg.contains("not a Secret name"), "{bad}: {msg}");
    }
    assert!(parse(&[("store.url", URL), ("secret", "pg1.backup-creds")]).is_ok());
    for key in RESOURCE_KEYS {
        let msg = refusal(&[("store.url", URL), (key, "64MB")], key);
        assert!(msg.contains("not a Kubernetes quantity"), "{msg}");
    }
    let msg = refusal(
        &[
            ("store.url", URL),
            ("resources.requests.memory", "1Gi"),
            ("resources.limits.memory", "512Mi"),
        ],
        "resources.requests.memory",
    );
    assert!(msg.contains("above its limit 512Mi"), "{msg}");
}

/// Defaults give way to given values rather than making a pod the API server refuses.
#[test]
fn default_resources_never_contradict_given_ones() {
    let r = |pairs: &[(&str, &str)]| {
        let mut all = vec![("store.url", URL)];
        all.extend_from_slice(pairs);
        parse(&all).unwrap().resources().to_json()
    };
    use serde_json::json;
    assert_eq!(
        r(&[]),
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
    assert_eq!(
        r(&[("resources.requests.memory", "1Gi")]),
        json!({"requests": {"cpu": "50m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}})
    );
    assert_eq!(
        r(&[
            ("resources.limits.memory", "32Mi"),
            ("resources.limits.cpu", "20m")
        ]),
        json!({"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"cpu": "20m", "memory": "32Mi"}})
    );
}

fn cluster(own: &[(&str, &str)], source: &[(&str, &str)]) -> Cluster {
    let doc = serde_json::json!({
        "metadata": {"name": "pg2", "namespace": "db"},
        "spec": {
            "plugins": [{"name": "pgagent.io", "parameters": params(own)}],
            "bootstrap": {"recovery": {"source": "origin"}},
            "externalClusters": [{"name": "origin", "plugin": {"name": "pgagent.io", "parameters": params(source)}}]
        }
    });
    Cluster::from_json(doc.to_string().as_bytes()).unwrap()
}

#[test]
fn the_fixture_cluster_is_accepted() {
    let c = Cluster::from_json(include_bytes!("../lifecycle/testdata/cluster.json")).unwrap();
    assert_eq!(validate_cluster(&c), []);
    assert_eq!(validate_change(&c, &c), []);
}

#[test]
fn errors_of_both_entries_are_reported_with_their_paths() {
    let c = cluster(
        &[("store.url", URL), ("wal.confirm", "never")],
        &[("secret", "s3")],
    );
    let errs = validate_cluster(&c);
    let paths: Vec<String> = errs.iter().map(|e| e.path_components.join(".")).collect();
    assert_eq!(
        paths,
        [
            "spec.plugins.0.parameters.wal.confirm",
            "spec.externalClusters.0.plugin.parameters.store.url"
        ]
    );
}

#[test]
fn one_secret_for_both_stores() {
    let other = "s3://backups/origin";
    assert_eq!(
        validate_cluster(&cluster(
            &[("store.url", URL), ("secret", "a")],
            &[("store.url", other), ("secret", "a")]
        )),
        []
    );
    assert_eq!(
        validate_cluster(&cluster(
            &[("store.url", URL)],
            &[("store.url", other), ("secret", "a")]
        )),
        []
    );
    assert_eq!(
        validate_cluster(&cluster(
            &[("store.url", URL), ("secret", "a")],
            &[("store.url", other)]
        )),
        []
    );
    let errs = validate_cluster(&cluster(
        &[("store.url", URL), ("secret", "a")],
        &[("store.url", other), ("secret", "b")],
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0].path_components.join("."),
        "spec.externalClusters.0.plugin.parameters.secret"
    );
    assert!(
        errs[0].message.contains("one Secret"),
        "{}",
        errs[0].message
    );
}

#[test]
fn a_cluster_does_not_write_into_the_store_it_restores_from() {
    // The same bucket and prefix, written differently.
    let errs = validate_cluster(&cluster(
        &[("store.url", URL)],
        &[("store.url", &format!("{URL}&path_style=true"))],
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0].path_components.join("."),
        "spec.plugins.0.parameters.store.url"
    );
    assert!(
        errs[0].message.contains("a store holds one cluster"),
        "{}",
        errs[0].message
    );
}

/// A change of store is allowed (and checked like any value); a bad new value is refused.
#[test]
fn a_change_is_checked_as_the_new_cluster() {
    let old = cluster(
        &[("store.url", URL)],
        &[("store.url", "s3://backups/origin")],
    );
    let moved = cluster(
        &[("store.url", "s3://elsewhere/pg2")],
        &[("store.url", "s3://backups/origin")],
    );
    assert_eq!(validate_change(&old, &moved), []);
    let broken = cluster(
        &[("store.url", URL), ("fetch.prefetch", "1000")],
        &[("store.url", "s3://backups/origin")],
    );
    assert_eq!(validate_change(&old, &broken).len(), 1);
}
