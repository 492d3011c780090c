//! The plugin's parameters (`spec.plugins[].parameters` of a Cluster, and
//! `spec.externalClusters[].plugin.parameters` of a recovery source), read and checked.
//!
//! A parameter is one of (SPEC: "Plugin parameters"):
//! - a pgagent configuration key `section.key` (`store.url`, required; `wal.partial_interval`,
//!   …), given to the sidecar as `PGAGENT_<SECTION>_<KEY>` ([`PluginParams::to_env`]) and
//!   checked here by pgagent's own configuration code ([`crate::config::params`], then
//!   [`crate::config::RawConfig::validate`]), so a cluster is refused at admission rather
//!   than its sidecar failing at start. Secrets and the settings the pod layout fixes are
//!   refused ([`REFUSED`]);
//! - `secret`: the Secret whose keys become the sidecar's environment (`envFrom`);
//! - `resources.{requests,limits}.{cpu,memory}`: the sidecar's resources ([`Resources`]).
//!
//! Errors are [`ValidationError`]s, the three fields of CNPG-I's `ValidationError`
//! (`cnpg-i/proto/operator.proto`), each pointing at the parameter at fault.

mod cluster_rules;
mod quantity;
mod resources;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use crate::config::params::{raw_from_settings, setting_keys};
use crate::config::Config;

pub use cluster_rules::{plugin_path, source_path, validate_change, validate_cluster};
pub use resources::{
    Resources, DEFAULT_LIMITS_MEMORY, DEFAULT_REQUESTS_CPU, DEFAULT_REQUESTS_MEMORY,
};

use resources::check_requests_within_limits;

/// One refusal: the field at fault (`["spec", "plugins", "0", "parameters", "store.url"]`),
/// its value as written, and what is wrong, for the person who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path from the Cluster's root to the field.
    pub path_components: Vec<String>,
    /// The value given (empty when the field is missing).
    pub value: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl ValidationError {
    /// An error about the parameter `key` of the parameters at `path`.
    pub fn at_key(path: &[String], key: &str, value: &str, message: impl Into<String>) -> Self {
        let mut path_components = path.to_vec();
        path_components.push(key.to_string());
        ValidationError {
            path_components,
            value: value.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path_components.join("."), self.message)
    }
}

/// The parameter naming the Secret added to the sidecar with `envFrom.secretRef`.
pub const SECRET: &str = "secret";

/// The parameters giving the sidecar's resources, as `resources.<requests|limits>.<cpu|memory>`.
pub const RESOURCE_KEYS: [&str; 4] = [
    "resources.requests.cpu",
    "resources.requests.memory",
    "resources.limits.cpu",
    "resources.limits.memory",
];

/// Configuration keys refused as parameters, and why (SPEC: "Refused as parameters").
pub const REFUSED: &[(&str, &str)] = &[
    (
        "encryption.passphrase",
        "a passphrase is a secret and parameters are readable by anyone who can read the \
         Cluster: put PGAGENT_ENCRYPTION_PASSPHRASE in the Secret named by the `secret` parameter",
    ),
    (
        "store.access_key_id",
        "credentials are secrets and parameters are readable by anyone who can read the \
         Cluster: put AWS_ACCESS_KEY_ID in the Secret named by the `secret` parameter",
    ),
    (
        "store.secret_access_key",
        "credentials are secrets and parameters are readable by anyone who can read the \
         Cluster: put AWS_SECRET_ACCESS_KEY in the Secret named by the `secret` parameter",
    ),
    (
        "staging.dir",
        "the sidecar stages WAL on the PGDATA volume, beside PGDATA \
         (/var/lib/postgresql/data/pgagent), so that it survives a pod restart; it is not \
         configurable",
    ),
    (
        "store.as_of",
        "store.as_of reads a store as it was and writes nothing, while a cluster's sidecar \
         streams into its store",
    ),
];

/// Configuration sections refused as a whole, and why.
const REFUSED_SECTIONS: &[(&str, &str)] = &[(
    "zfs",
    "ZFS snapshots need the zfs tools and rights on the node, which the sidecar does not have \
     in a pod (CloudNativePG takes volume snapshots itself)",
)];

/// One plugin entry's parameters, checked.
#[derive(Debug, Clone)]
pub struct PluginParams {
    settings: BTreeMap<String, String>,
    secret: Option<String>,
    resources: Resources,
    config: Config,
}

impl PluginParams {
    /// Reads and checks `parameters`, found at `path` in the Cluster (e.g. [`plugin_path`]).
    ///
    /// Errors: every parameter at fault (an unknown or refused key, a value its field does
    /// not take, a Secret name or quantity Kubernetes would refuse, `store.url` missing);
    /// when each parameter is fine alone, the first thing pgagent's validation refuses.
    pub fn parse(
        parameters: &BTreeMap<String, String>,
        path: &[String],
    ) -> Result<PluginParams, Vec<ValidationError>> {
        let mut errors = Vec::new();
        let mut settings = BTreeMap::new();
        let mut resources = Resources::default();
        let mut secret = None;
        let known = setting_keys();
        for (key, value) in parameters {
            let mut refuse =
                |msg: String| errors.push(ValidationError::at_key(path, key, value, msg));
            let section = key.split('.').next().unwrap_or_default();
            if key == SECRET {
                match check_secret_name(value) {
                    Ok(()) => secret = Some(value.clone()),
                    Err(e) => refuse(e),
                }
            } else if let Some(i) = RESOURCE_KEYS.iter().position(|k| k == key) {
                match quantity::parse(value) {
                    Ok(_) => {
                        let slot = match i {
                            0 => &mut resources.requests_cpu,
                            1 => &mut resources.requests_memory,
                            2 => &mut resources.limits_cpu,
                            _ => &mut resources.limits_memory,
                        };
                        *slot = Some(value.clone());
                    }
                    Err(e) => refuse(e),
                }
            } else if let Some((_, why)) = REFUSED.iter().find(|(k, _)| k == key) {
                refuse(format!("{key} is not accepted as a parameter: {why}"));
            } else if let Some((_, why)) = REFUSED_SECTIONS.iter().find(|(s, _)| *s == section) {
                refuse(format!(
                    "[{section}] settings are not accepted as parameters: {why}"
                ));
            } else if known.contains(key) {
                settings.insert(key.clone(), value.clone());
            } else {
                refuse(unknown_key_message(key, &known));
            }
        }
        check_requests_within_limits(&resources, path, &mut errors);
        if !settings.contains_key("store.url") {
            let mut at = path.to_vec();
            at.push("store.url".into());
            errors.push(ValidationError {
                path_components: at,
                value: String::new(),
                message: "store.url is required: the store the sidecar streams to or restores \
                          from, e.g. s3://bucket/prefix?endpoint=https://…&region=…"
                    .into(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let config = validate_settings(&settings, path)?;
        Ok(PluginParams {
            settings,
            secret,
            resources,
            config,
        })
    }

    /// The configuration keys given (`section.key` → value), sorted by key.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }

    /// The `secret` parameter: the Secret's name, if one.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// The sidecar's resources as given.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// `store.url`.
    pub fn store_url(&self) -> &str {
        &self.settings["store.url"]
    }

    /// The configuration the settings give (over the defaults), validated; its passphrase
    /// is never read here (see [`PluginParams::parse`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The sidecar's environment for the configuration keys: `(PGAGENT_<SECTION>_<KEY>,
    /// value)`, sorted by key, e.g. `("PGAGENT_STORE_URL", "s3://…")`.
    pub fn to_env(&self) -> Vec<(String, String)> {
        self.settings
            .iter()
            .map(|(k, v)| (env_name(k), v.clone()))
            .collect()
    }
}

/// The environment variable of a configuration key: `wal.partial_interval` →
/// `PGAGENT_WAL_PARTIAL_INTERVAL` (DESIGN.md: every setting has `PGAGENT_<SECTION>_<KEY>`).
pub fn env_name(key: &str) -> String {
    format!("PGAGENT_{}", key.to_ascii_uppercase().replace('.', "_"))
}

/// The settings checked by [`crate::config::RawConfig::validate`], errors pointing at the
/// key they name. `encryption.passphrase_file` names a file of the sidecar, which is not
/// here: it is checked to be an absolute path, and not read.
fn validate_settings(
    settings: &BTreeMap<String, String>,
    path: &[String],
) -> Result<Config, Vec<ValidationError>> {
    let at = |key: Option<&str>, message: String| match key {
        Some(k) => ValidationError::at_key(path, k, &settings[k], message),
        None => ValidationError {
            path_components: path.to_vec(),
            value: String::new(),
            message,
        },
    };
    let mut raw = raw_from_settings(settings).map_err(|errs| {
        errs.into_iter()
            .map(|e| {
                at(
                    e.key.as_deref().filter(|k| settings.contains_key(*k)),
                    e.message,
                )
            })
            .collect::<Vec<_>>()
    })?;
    if let Some(file) = raw.encryption.passphrase_file.take() {
        if !file.is_absolute() {
            return Err(vec![at(
                Some("encryption.passphrase_file"),
                "encryption.passphrase_file must be an absolute path in the sidecar".into(),
            )]);
        }
    }
    raw.validate().map_err(|e| {
        // The key the message is about: the longest given key it names.
        let key = settings
            .keys()
            .filter(|k| e.0.contains(k.as_str()))
            .max_by_key(|k| k.len());
        vec![at(key.map(String::as_str), e.0)]
    })
}

/// A Secret's name must be a DNS subdomain (RFC 1123): at most 253 characters of lower-case
/// letters, digits, `-` and `.`, starting and ending with a letter or digit
/// (`IsDNS1123Subdomain` in `k8s.io/apimachinery/pkg/util/validation`).
fn check_secret_name(name: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Secret name (at most 253 lower-case letters, digits, '-' and \
             '.', starting and ending with a letter or digit)"
        ))
    }
}

/// Why `key` is refused, and what is accepted.
fn unknown_key_message(key: &str, known: &[String]) -> String {
    let hint = if key.starts_with("stores.") || key.starts_with("stores[") {
        " (several stores, [[stores]], are not offered by the plugin yet: give store.url)"
    } else if key.starts_with("PGAGENT_") {
        " (write configuration keys as section.key, e.g. store.url)"
    } else {
        ""
    };
    let accepted: Vec<&str> = known
        .iter()
        .map(String::as_str)
        .filter(|k| {
            let section = k.split('.').next().unwrap_or_default();
            !REFUSED.iter().any(|(r, _)| r == k)
                && !REFUSED_SECTIONS.iter().any(|(s, _)| *s == section)
        })
        .collect();
    format!(
        "unknown parameter {key:?}{hint}; accepted: {SECRET}, {}, and the configuration keys {}",
        RESOURCE_KEYS.join(", "),
        accepted.join(", ")
    )
}
