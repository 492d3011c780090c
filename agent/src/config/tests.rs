//! Unit tests of loading, precedence, validation and the README reference.

use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::Env;

use super::*;

/// Loads `toml` as the configuration file, with `env` as `PGAGENT_…` variables (without
/// the prefix) and `ov` as flags.
pub(super) fn load(
    toml: &str,
    env: &[(&str, &str)],
    ov: Overrides,
) -> Result<RawConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgagent.toml");
    std::fs::write(&path, toml).unwrap();
    // A unique prefix keeps tests independent of the process environment.
    let prefix = format!("PGAGENT_T{}_", std::process::id());
    for (k, v) in env {
        std::env::set_var(format!("{prefix}{k}"), v);
    }
    let r = RawConfig::load_with_env(Some(&path), &ov, Env::prefixed(&prefix));
    for (k, _) in env {
        std::env::remove_var(format!("{prefix}{k}"));
    }
    r
}

#[test]
fn precedence_is_flag_env_file_default() {
    let toml = "[store]\nurl = \"file:///from/file\"\nupload_concurrency = 3\n[wal]\nconfirm = \"staging\"\n";
    let raw = load(toml, &[], Overrides::default()).unwrap();
    assert_eq!(raw.store.url.as_deref(), Some("file:///from/file"));
    assert_eq!(raw.store.upload_concurrency, 3);
    assert_eq!(raw.wal.confirm, Confirm::Staging);
    assert_eq!(raw.postgres.slot, "pgagent", "default kept");

    let raw = load(
        toml,
        &[
            ("STORE_URL", "file:///from/env"),
            ("STORE_UPLOAD_CONCURRENCY", "5"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(raw.store.url.as_deref(), Some("file:///from/env"));
    assert_eq!(raw.store.upload_concurrency, 5);

    let ov = Overrides {
        store_url: Some("file:///from/flag".into()),
        ..Default::default()
    };
    let raw = load(toml, &[("STORE_URL", "file:///from/env")], ov).unwrap();
    assert_eq!(raw.store.url.as_deref(), Some("file:///from/flag"));
}

#[test]
fn durations_and_sizes_parse_from_human_text() {
    let raw = load(
        "[staging]\nquota = \"2GiB\"\n[wal]\npartial_interval = \"250ms\"\n",
        &[("FETCH_TIMEOUT", "90s")],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(raw.staging.quota, ByteSize::gib(2));
    assert_eq!(raw.wal.partial_interval, Duration::from_millis(250));
    assert_eq!(raw.fetch.timeout, Duration::from_secs(90));
}

#[test]
fn unknown_keys_are_errors() {
    let err = load("[store]\nulr = \"x\"\n", &[], Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("ulr"), "{err}");
}

#[test]
fn validation_rejects_bad_values() {
    let mut raw = RawConfig::default();
    raw.postgres.slot = "Bad-Slot".into();
    assert!(raw.clone().validate().is_err());
    raw.postgres.slot = "ok_slot".into();
    raw.wal.compression_level = 40;
    let err = raw.clone().validate().unwrap_err();
    assert!(err.to_string().contains("compression_level"), "{err}");
    raw.wal.compression_level = 3;
    raw.metrics.listen = "nope".into();
    assert!(raw.clone().validate().is_err());
    raw.metrics.listen = String::new();
    assert!(raw.validate().unwrap().metrics_listen.is_none());
}

#[test]
fn secrets_stay_out_of_debug() {
    let mut raw = RawConfig::default();
    raw.store.secret_access_key = Some(Secret("hunter2".into()));
    assert!(!format!("{raw:?}").contains("hunter2"));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let raw = load(
        include_str!("../../../docker/pgagent.toml"),
        &[],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(raw.store.upload_concurrency, 4);
    raw.validate().unwrap();
}

/// Every key of the configuration with its environment variable: `section.key` from the
/// defaults, and `stores[].key` for the keys of a `[[stores]]` entry (`stores[].name` has
/// none: it is what a store's variables are named by).
fn all_keys() -> Vec<(String, Option<String>)> {
    let v = serde_json::to_value(RawConfig::default()).unwrap();
    let mut keys = Vec::new();
    for (section, table) in v.as_object().unwrap() {
        if section == "stores" {
            continue;
        }
        for key in table.as_object().unwrap().keys() {
            let env = format!("PGAGENT_{}_{}", section.to_uppercase(), key.to_uppercase());
            keys.push((format!("{section}.{key}"), Some(env)));
        }
    }
    keys.push(("stores[].name".into(), None));
    for path in STORE_KEYS {
        let env = format!(
            "PGAGENT_STORES_<NAME>_{}",
            path.replace('.', "_").to_uppercase()
        );
        keys.push((format!("stores[].{path}"), Some(env)));
    }
    keys
}

/// `STORE_KEYS` names every key of a `[[stores]]` entry but `name`.
#[test]
fn every_store_key_has_its_environment_variable() {
    let entry = StoreEntry {
        max_lag: Some(MaxLag::default()),
        ..Default::default()
    };
    let v = serde_json::to_value(entry).unwrap();
    let mut written = Vec::new();
    for (key, value) in v.as_object().unwrap() {
        match value.as_object() {
            Some(inner) => written.extend(inner.keys().map(|k| format!("{key}.{k}"))),
            None => written.push(key.clone()),
        }
    }
    let mut listed: Vec<String> = STORE_KEYS.iter().map(|p| p.to_string()).collect();
    listed.push("name".into());
    written.sort();
    listed.sort();
    assert_eq!(written, listed);
}

/// The README's configuration reference is checked against the code both ways: every
/// key is in the table with its environment variable and default, and every key the
/// table names exists.
#[test]
fn the_readme_reference_matches_the_code() {
    let readme = include_str!("../../../README.md");
    let rows: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| key | environment | default | meaning |"))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .collect();
    let keys = all_keys();
    assert!(keys.len() > 30, "{keys:?}");
    for (key, env) in &keys {
        let row = rows
            .iter()
            .find(|r| r.split(" | ").next().unwrap().contains(&format!("`{key}`")));
        let row = row.unwrap_or_else(|| panic!("README's configuration table lacks `{key}`"));
        if let Some(env) = env {
            let env = format!("`{env}`");
            assert!(row.contains(&env), "README row of {key} lacks {env}: {row}");
        }
        assert!(row.split(" | ").count() >= 4, "{row}");
    }
    for row in &rows {
        let first = row.split(" | ").next().unwrap();
        for part in first.split('`').skip(1).step_by(2) {
            if part.contains('.') && !part.starts_with("--") {
                assert!(
                    keys.iter().any(|(k, _)| k == part),
                    "README names unknown key {part}"
                );
            }
        }
    }
    for section in SECTIONS {
        assert!(
            keys.iter()
                .any(|(k, _)| k.starts_with(&format!("{section}."))),
            "{section}"
        );
    }
}

#[test]
fn missing_explicit_file_is_an_error() {
    let err = RawConfig::load(
        Some(Path::new("/nonexistent/x.toml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"));
}

#[test]
fn the_passphrase_comes_from_a_file_or_the_environment() {
    let raw = load(
        "",
        &[("ENCRYPTION_PASSPHRASE", "from env")],
        Overrides::default(),
    )
    .unwrap();
    let cfg = raw.validate().unwrap();
    assert_eq!(cfg.passphrase.as_ref().unwrap().expose_bytes(), b"from env");
    assert!(
        cfg.raw.encryption.passphrase.is_none(),
        "one copy of the secret: the Passphrase"
    );
    assert!(
        !format!("{cfg:?}").contains("from env"),
        "Debug shows no secret"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passphrase");
    std::fs::write(&file, "from file\n").unwrap();
    let toml = format!(
        "[encryption]\npassphrase_file = {:?}\n",
        file.display().to_string()
    );
    let cfg = load(&toml, &[], Overrides::default())
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(cfg.passphrase.unwrap().expose_bytes(), b"from file");

    // Both at once, an empty one, or none.
    let err = load(
        &toml,
        &[("ENCRYPTION_PASSPHRASE", "x")],
        Overrides::default(),
    )
    .unwrap()
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("both"), "{err}");
    let err = load("", &[("ENCRYPTION_PASSPHRASE", "")], Overrides::default())
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    std::fs::write(&file, "").unwrap();
    let err = load(&toml, &[], Overrides::default())
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    assert!(RawConfig::default()
        .validate()
        .unwrap()
        .passphrase
        .is_none());
}

#[test]
fn the_passphrase_itself_is_refused_in_the_file() {
    let err = load(
        "[encryption]\npassphrase = \"hunter2\"\n",
        &[],
        Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("passphrase_file"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn the_unlock_memory_bound_is_checked_and_handed_to_unlocking() {
    let cfg = load("", &[], Overrides::default())
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(cfg.unlock_limits().max_m_cost_kib, 256 * 1024);
    let cfg = load(
        "[encryption]\nmax_unlock_memory = \"512MiB\"\n",
        &[],
        Overrides::default(),
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(cfg.unlock_limits().max_m_cost_kib, 512 * 1024);
    for bad in ["32MiB", "2GiB"] {
        let err = load(
            "",
            &[("ENCRYPTION_MAX_UNLOCK_MEMORY", bad)],
            Overrides::default(),
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("max_unlock_memory"), "{err}");
    }
}
