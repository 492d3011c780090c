//! Settings given as `section.key` → string pairs, the form the CloudNativePG plugin's
//! parameters take (`spec.plugins[].parameters` of a Cluster): each becomes the environment
//! variable `PGAGENT_<SECTION>_<KEY>` of the sidecar, so each is read here the way
//! [`RawConfig::load`] reads that variable. The value is parsed by figment as an environment
//! value (`8` a number, `true` a boolean, `1s` a string that a duration field accepts), on
//! top of the built-in defaults, with no file and no process environment.

use std::collections::BTreeMap;

use figment::providers::Serialized;
use figment::Figment;

use super::{Config, RawConfig, SECTIONS};

/// A setting that could not be read: `key` is the `section.key` at fault, `None` when the
/// settings are wrong together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The `section.key` the message is about, if one.
    pub key: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

/// Every `section.key` of the configuration's sections ([`SECTIONS`]), sorted: the keys
/// [`raw_from_settings`] accepts. `[[stores]]` entries are not sections and are not listed.
pub fn setting_keys() -> Vec<String> {
    let defaults =
        serde_json::to_value(RawConfig::default()).expect("the defaults serialize to JSON");
    let mut keys: Vec<String> = SECTIONS
        .iter()
        .filter_map(|section| Some((section, defaults.get(section)?.as_object()?)))
        .flat_map(|(section, fields)| fields.keys().map(move |k| format!("{section}.{k}")))
        .collect();
    keys.sort();
    keys
}

/// The defaults with `settings` applied, each value read as the environment variable
/// `PGAGENT_<SECTION>_<KEY>` would be.
///
/// Errors: one per key whose value does not fit its field (its type, an unknown variant),
/// or, when each fits alone, what reading them together found. Keys are not checked against
/// [`setting_keys`] here beyond what deserializing refuses (an unknown field).
pub fn raw_from_settings(
    settings: &BTreeMap<String, String>,
) -> Result<RawConfig, Vec<SettingError>> {
    let errors: Vec<SettingError> = settings
        .iter()
        .filter_map(|(key, value)| {
            extract(std::iter::once((key, value)))
                .err()
                .map(|message| SettingError {
                    key: Some(key.clone()),
                    message,
                })
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    extract(settings.iter()).map_err(|message| vec![SettingError { key: None, message }])
}

/// Whether two validated configurations' (first) stores hold their objects in the same
/// place: the same directory, or the same bucket and prefix at the same endpoint.
pub fn same_store(a: &Config, b: &Config) -> bool {
    match (a.stores.first(), b.stores.first()) {
        (Some(a), Some(b)) => super::stores::same_place(&a.location, &b.location),
        _ => false,
    }
}

fn extract<'a>(
    settings: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<RawConfig, String> {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    for (key, value) in settings {
        let value: figment::value::Value = value.parse().expect("parsing a value is infallible");
        figment = figment.merge(Serialized::global(key, value));
    }
    figment
        .extract()
        .map_err(|e| e.to_string().replace('\n', "; "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use figment::providers::Env;

    use super::*;
    use crate::config::{IncrementalMode, Overrides};

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_are_the_sections_fields() {
        let keys = setting_keys();
        for k in [
            "store.url",
            "wal.partial_interval",
            "backup.incremental",
            "encryption.passphrase_file",
        ] {
            assert!(keys.contains(&k.to_string()), "{k}: {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.starts_with("stores.") || k == "file"));
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted");
    }

    /// Numbers, booleans, durations and enum names are read from strings, as from the
    /// environment.
    #[test]
    fn values_are_read_as_environment_values() {
        let raw = raw_from_settings(&settings(&[
            ("store.url", "s3://b/p"),
            ("store.upload_concurrency", "4"),
            ("wal.partial_interval", "250ms"),
            ("wal.synchronous", "true"),
            ("wal.compression_level", "-3"),
            ("backup.incremental", "off"),
        ]))
        .unwrap();
        assert_eq!(raw.store.url.as_deref(), Some("s3://b/p"));
        assert_eq!(raw.store.upload_concurrency, 4);
        assert_eq!(raw.wal.partial_interval, Duration::from_millis(250));
        assert!(raw.wal.synchronous);
        assert_eq!(raw.wal.compression_level, -3);
        assert_eq!(raw.backup.incremental, IncrementalMode::Off);
        assert_eq!(raw.postgres.slot, "pgagent", "defaults kept");
    }

    #[test]
    fn each_bad_value_is_named() {
        let errs = raw_from_settings(&settings(&[
            ("store.upload_concurrency", "many"),
            ("wal.partial_interval", "soon"),
            ("store.url", "s3://b/p"),
        ]))
        .unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_deref()).collect();
        assert_eq!(
            keys,
            [
                Some("store.upload_concurrency"),
                Some("wal.partial_interval")
            ]
        );
        let errs = raw_from_settings(&settings(&[("wal.no_such_key", "1")])).unwrap_err();
        assert!(errs[0].message.contains("no_such_key"), "{errs:?}");
    }

    /// What the settings give is what the sidecar reads from the same values as
    /// `PGAGENT_<SECTION>_<KEY>` variables.
    #[test]
    fn settings_read_like_the_environment() {
        let pairs = [
            ("fetch.prefetch", "32"),
            ("backup.schedule", "0 4 * * *"),
            ("store.lock_days", "30"),
            ("postgres.slot", "pgagent_2"),
        ];
        let from_settings = raw_from_settings(&settings(&pairs)).unwrap();
        let prefix = format!("PGAGENT_P{}_", std::process::id());
        for (k, v) in pairs {
            std::env::set_var(format!("{prefix}{}", k.to_uppercase().replace('.', "_")), v);
        }
        let from_env = RawConfig::load_with_env(
            Some(std::path::Path::new("/dev/null")),
            &Overrides::default(),
            Env::prefixed(&prefix),
        );
        for (k, _) in pairs {
            std::env::remove_var(format!("{prefix}{}", k.to_uppercase().replace('.', "_")));
        }
        let from_env = from_env.unwrap();
        assert_eq!(from_settings.fetch.prefetch, from_env.fetch.prefetch);
        assert_eq!(from_settings.backup.schedule, from_env.backup.schedule);
        assert_eq!(from_settings.store.lock_days, from_env.store.lock_days);
        assert_eq!(from_settings.postgres.slot, from_env.postgres.slot);
    }
}
