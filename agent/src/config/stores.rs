//! The stores: `[[stores]]` entries as written (raw), and the [`StoreSpec`]s validation
//! makes of them.
//!
//! `[store] url = …` stays the one-store shorthand: one required store named
//! [`SHORTHAND_STORE_NAME`]. `[[stores]]` names several, each with a role (`required`: its
//! durable end bounds what the server is told is flushed; `async`: it may lag, within
//! `max_lag` when one is set). A key a store leaves out inherits the global setting
//! (`wal.partial_interval`, `store.upload_concurrency`, `backup.keep_backups`,
//! `backup.schedule`, and the other `[store]` keys). Giving both `store.url` and
//! `[[stores]]` is an error: which store was meant would be a guess.

use std::time::{Duration, SystemTime};

use bytesize::ByteSize;
use pgagent_storage::{LockPolicy, StoreOptions, StoreUrl};
use serde::{Deserialize, Serialize};

use super::lock::{self, LockSetting};
use super::{ConfigError, IncrementalMode, RawConfig, Secret};

/// The name of the store `store.url` configures: stable whatever the URL, so metric
/// labels and `--store` selections survive a move of the store.
pub const SHORTHAND_STORE_NAME: &str = "default";

/// `store.url` when neither it nor `[[stores]]` is given.
pub const DEFAULT_STORE_URL: &str = "file:///var/lib/pgagent/store";

/// Longest store name: it becomes a metric label value and a command-line argument.
const MAX_NAME_LEN: usize = 32;

/// What a store's durable end means to the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `flush` never passes this store's durable end.
    #[default]
    Required,
    /// The store may lag behind; `max_lag` and `on_lag_exceeded` say how far and what then.
    Async,
}

/// What happens when an async store lags more than its `max_lag`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLagExceeded {
    /// Say so (metrics, `/readyz`, the alert hooks) and keep confirming to the server.
    #[default]
    Alert,
    /// Stop confirming more than `max_lag` past the store's end: the server keeps the WAL.
    Hold,
}

/// `max_lag = { time = "10m", bytes = "4GiB" }`: how far an async store may be behind,
/// in time, in bytes of WAL, or both (exceeded when either is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaxLag {
    /// Age of the oldest WAL not yet in the store.
    #[serde(with = "humantime_serde")]
    pub time: Option<Duration>,
    /// WAL received but not yet in the store.
    pub bytes: Option<ByteSize>,
}

/// One `[[stores]]` entry as written. Keys left out inherit the global settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreEntry {
    /// `[a-z0-9][a-z0-9_-]{0,31}`, unique: a metric label value and a `--store` argument.
    pub name: String,
    /// `file:///path` or `s3://bucket/prefix?…`, as `store.url`.
    pub url: String,
    /// `required` (the default) or `async`.
    pub role: Role,
    /// Default `wal.partial_interval`.
    #[serde(with = "humantime_serde")]
    pub partial_interval: Option<Duration>,
    /// Default `store.upload_concurrency`.
    pub upload_concurrency: Option<usize>,
    /// Default `backup.keep_backups`.
    pub keep_backups: Option<usize>,
    /// Cron schedule (UTC) of the base backups `pgagent run` takes into this store; default
    /// `backup.schedule`; empty: none.
    pub schedule: Option<String>,
    /// Restores try stores lowest first; stores without one come after, in the order
    /// written.
    pub restore_priority: Option<i32>,
    /// Async stores only.
    pub max_lag: Option<MaxLag>,
    /// Async stores only; default `alert`.
    pub on_lag_exceeded: Option<OnLagExceeded>,
    /// Default `store.access_key_id`.
    pub access_key_id: Option<Secret>,
    /// Default `store.secret_access_key`.
    pub secret_access_key: Option<Secret>,
    /// Default `store.lock`.
    pub lock: Option<LockSetting>,
    /// Default `store.lock_days` (which, unset, follows this store's retention).
    pub lock_days: Option<u32>,
}

/// The keys of a `[[stores]]` entry but `name`, as paths in the entry: the keys
/// `PGAGENT_STORES_<NAME>_<KEY>` sets (`<KEY>` is the path in upper case, `.` as `_`).
pub const STORE_KEYS: &[&str] = &[
    "url",
    "role",
    "partial_interval",
    "upload_concurrency",
    "keep_backups",
    "schedule",
    "restore_priority",
    "max_lag.time",
    "max_lag.bytes",
    "on_lag_exceeded",
    "access_key_id",
    "secret_access_key",
    "lock",
    "lock_days",
];

/// A store's name as it appears in its environment variables: upper case, `-` as `_`.
pub fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// A store's role, with the lag policy of an async one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreRole {
    /// `flush` never passes its durable end.
    Required,
    /// It may lag.
    Async {
        /// The bound, if any (at least one of its two is set).
        max_lag: Option<MaxLag>,
        /// What passing it does (`Hold` only with a bound).
        on_lag_exceeded: OnLagExceeded,
    },
}

/// One store, checked, with every inherited value filled in.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    /// Its name.
    pub name: String,
    /// The URL as written: what the store is opened with.
    pub url: String,
    /// The URL parsed.
    pub location: StoreUrl,
    /// Required or async.
    pub role: StoreRole,
    /// As written; the order of [`super::Config::stores`] is the restore order.
    pub restore_priority: Option<i32>,
    /// How often the growing segment's new WAL is uploaded to this store.
    pub partial_interval: Duration,
    /// Uploads in flight to this store.
    pub upload_concurrency: usize,
    /// Complete backups `pgagent prune` keeps in this store (at least 1 is kept).
    pub keep_backups: usize,
    /// Cron schedule (UTC) of the base backups `pgagent run` takes into this store (checked
    /// to parse); empty: none.
    pub schedule: String,
    /// Multipart part size (`store.part_size`).
    pub part_size: ByteSize,
    /// Timeout of one request (`store.request_timeout`).
    pub request_timeout: Duration,
    /// S3 access key id; the standard AWS chain when unset.
    pub access_key_id: Option<Secret>,
    /// S3 secret access key.
    pub secret_access_key: Option<Secret>,
    /// The Object Lock every object written carries (`store.lock`, `store.lock_days`).
    pub lock: Option<LockPolicy>,
    /// Reads see the store as of this time (`store.as_of`, `--as-of`); it then takes no
    /// writes.
    pub as_of: Option<SystemTime>,
}

impl StoreSpec {
    /// Options for opening this store.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            upload_concurrency: self.upload_concurrency,
            part_size: self.part_size.as_u64(),
            access_key_id: self.access_key_id.as_ref().map(|k| k.0.clone()),
            secret_access_key: self.secret_access_key.as_ref().map(|k| k.0.clone()),
            request_timeout: self.request_timeout,
            // A store read as of a past time writes nothing, so it locks nothing.
            lock: self.lock.filter(|_| self.as_of.is_none()),
            as_of: self.as_of,
            ..Default::default()
        }
    }

    /// Whether `flush` waits for this store.
    pub fn is_required(&self) -> bool {
        self.role == StoreRole::Required
    }
}

/// The stores of `raw`, checked, in restore order: `store.url` alone (or its default), or
/// the `[[stores]]` entries.
pub(super) fn validate_stores(raw: &RawConfig) -> Result<Vec<StoreSpec>, ConfigError> {
    if raw.stores.is_empty() {
        return shorthand(raw).map(|s| vec![s]);
    }
    if raw.store.url.is_some() {
        return Err(ConfigError(
            "store.url (or PGAGENT_STORE_URL, --store) and [[stores]] are both given: \
             store.url is the one-store shorthand; with [[stores]], give every store's url \
             there"
                .into(),
        ));
    }
    let mut specs = Vec::with_capacity(raw.stores.len());
    for (i, entry) in raw.stores.iter().enumerate() {
        let spec = entry_spec(raw, i, entry)?;
        for other in &specs {
            check_distinct(other, &spec)?;
        }
        specs.push(spec);
    }
    if !specs.iter().any(StoreSpec::is_required) {
        return Err(ConfigError(format!(
            "[[stores]] has no store with role = \"required\" (stores: {}): at least one \
             must be, or nothing bounds what the server may recycle",
            names(&specs)
        )));
    }
    // Stable: equal priorities, and stores without one, keep the order written.
    specs.sort_by_key(|s| (s.restore_priority.is_none(), s.restore_priority));
    Ok(specs)
}

/// `store.url` (or its default) as the one required store.
fn shorthand(raw: &RawConfig) -> Result<StoreSpec, ConfigError> {
    let url = raw.store.url.as_deref().unwrap_or(DEFAULT_STORE_URL);
    if url.trim().is_empty() {
        return Err(ConfigError("store.url is empty".into()));
    }
    let location = StoreUrl::parse(url).map_err(|e| ConfigError(format!("store.url: {e}")))?;
    let lock = lock::policy(
        raw.store.lock,
        raw.store.lock_days,
        matches!(location, StoreUrl::S3(_)),
        &retention_span(raw, raw.backup.keep_backups, &raw.backup.schedule),
    )?;
    Ok(StoreSpec {
        name: SHORTHAND_STORE_NAME.into(),
        url: url.into(),
        location,
        role: StoreRole::Required,
        restore_priority: None,
        partial_interval: raw.wal.partial_interval,
        upload_concurrency: raw.store.upload_concurrency,
        keep_backups: raw.backup.keep_backups,
        schedule: raw.backup.schedule.clone(),
        part_size: raw.store.part_size,
        request_timeout: raw.store.request_timeout,
        access_key_id: raw.store.access_key_id.clone(),
        secret_access_key: raw.store.secret_access_key.clone(),
        lock,
        as_of: as_of(raw)?,
    })
}

/// `store.as_of`, parsed.
fn as_of(raw: &RawConfig) -> Result<Option<SystemTime>, ConfigError> {
    raw.store
        .as_of
        .as_deref()
        .map(|t| {
            humantime::parse_rfc3339_weak(t.trim()).map_err(|e| {
                ConfigError(format!(
                    "store.as_of = {t:?}: {e}; give a UTC time such as 2026-12-06T10:00:00Z"
                ))
            })
        })
        .transpose()
}

/// What a store's retention keeps, for its default `lock_days`.
fn retention_span<'a>(
    raw: &RawConfig,
    keep_backups: usize,
    schedule: &'a str,
) -> lock::RetentionSpan<'a> {
    lock::RetentionSpan {
        keep_backups,
        keep_days: raw.backup.keep_days,
        schedule,
        max_chain: match raw.backup.incremental {
            IncrementalMode::Auto => raw.backup.max_chain,
            IncrementalMode::Off => 0,
        },
    }
}

/// The `i`th `[[stores]]` entry, checked, inherited values filled in.
fn entry_spec(raw: &RawConfig, i: usize, e: &StoreEntry) -> Result<StoreSpec, ConfigError> {
    validate_store_name(i, &e.name)?;
    let bad = |msg: String| Err(ConfigError(format!("store {:?}: {msg}", e.name)));
    if e.url.trim().is_empty() {
        return bad("url is missing".into());
    }
    let location = match StoreUrl::parse(&e.url) {
        Ok(l) => l,
        Err(err) => return bad(format!("url: {err}")),
    };
    let upload_concurrency = e.upload_concurrency.unwrap_or(raw.store.upload_concurrency);
    if !(1..=256).contains(&upload_concurrency) {
        return bad(format!(
            "upload_concurrency = {upload_concurrency} is out of range 1..=256"
        ));
    }
    let partial_interval = e.partial_interval.unwrap_or(raw.wal.partial_interval);
    if partial_interval < Duration::from_millis(50) {
        return bad("partial_interval must be at least 50ms".into());
    }
    let schedule = e
        .schedule
        .clone()
        .unwrap_or_else(|| raw.backup.schedule.clone());
    if let Err(err) = crate::schedule::parse("schedule", &schedule) {
        return bad(err.0);
    }
    let role = match e.role {
        Role::Required => {
            for (key, given) in [
                ("max_lag", e.max_lag.is_some()),
                ("on_lag_exceeded", e.on_lag_exceeded.is_some()),
            ] {
                if given {
                    return bad(format!(
                        "{key} is for async stores, and this one is required (role = \
                         \"required\", the default): set role = \"async\" or remove {key}"
                    ));
                }
            }
            StoreRole::Required
        }
        Role::Async => async_role(e)?,
    };
    let keep_backups = e.keep_backups.unwrap_or(raw.backup.keep_backups);
    let lock = lock::policy(
        e.lock.unwrap_or(raw.store.lock),
        e.lock_days.or(raw.store.lock_days),
        matches!(location, StoreUrl::S3(_)),
        &retention_span(raw, keep_backups, &schedule),
    )
    .map_err(|err| ConfigError(format!("store {:?}: {}", e.name, err.0)))?;
    Ok(StoreSpec {
        name: e.name.clone(),
        url: e.url.clone(),
        location,
        role,
        restore_priority: e.restore_priority,
        partial_interval,
        upload_concurrency,
        keep_backups,
        schedule,
        part_size: raw.store.part_size,
        request_timeout: raw.store.request_timeout,
        access_key_id: e
            .access_key_id
            .clone()
            .or_else(|| raw.store.access_key_id.clone()),
        secret_access_key: e
            .secret_access_key
            .clone()
            .or_else(|| raw.store.secret_access_key.clone()),
        lock,
        as_of: as_of(raw)?,
    })
}

/// The lag policy of an async store.
fn async_role(e: &StoreEntry) -> Result<StoreRole, ConfigError> {
    let bad = |msg: &str| Err(ConfigError(format!("store {:?}: {msg}", e.name)));
    if let Some(m) = &e.max_lag {
        if m.time.is_none() && m.bytes.is_none() {
            return bad(
                "max_lag names no bound: give time (e.g. \"10m\"), bytes (e.g. \"4GiB\") or both",
            );
        }
        if m.time.is_some_and(|t| t.is_zero()) || m.bytes.is_some_and(|b| b.as_u64() == 0) {
            return bad(
                "max_lag must be more than 0 (a store that may not lag at all is role = \
                 \"required\")",
            );
        }
    }
    let on_lag_exceeded = e.on_lag_exceeded.unwrap_or_default();
    if on_lag_exceeded == OnLagExceeded::Hold && e.max_lag.is_none() {
        return bad(
            "on_lag_exceeded = \"hold\" needs max_lag (how far the store may fall behind \
             before the server is made to keep WAL)",
        );
    }
    Ok(StoreRole::Async {
        max_lag: e.max_lag,
        on_lag_exceeded,
    })
}

/// Checks a store name: `[a-z0-9][a-z0-9_-]{0,31}`.
fn validate_store_name(i: usize, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError(format!(
            "[[stores]] entry {} has no name",
            i + 1
        )));
    }
    let ok = name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "store name {name:?}: a store name is 1-{MAX_NAME_LEN} characters of lower-case \
             letters, digits, '_' and '-', starting with a letter or digit (it becomes a \
             metric label and a --store argument)"
        )))
    }
}

/// Two stores must differ in name, in environment name and in where their objects live.
fn check_distinct(a: &StoreSpec, b: &StoreSpec) -> Result<(), ConfigError> {
    if a.name == b.name {
        return Err(ConfigError(format!(
            "two [[stores]] are named {:?}: names must be unique",
            a.name
        )));
    }
    if env_name(&a.name) == env_name(&b.name) {
        return Err(ConfigError(format!(
            "stores {:?} and {:?} would share the environment variables \
             PGAGENT_STORES_{}_*: rename one",
            a.name,
            b.name,
            env_name(&a.name)
        )));
    }
    if same_place(&a.location, &b.location) {
        return Err(ConfigError(format!(
            "stores {:?} and {:?} have the same url ({}): a second copy must be somewhere else",
            a.name, b.name, b.location
        )));
    }
    Ok(())
}

/// Whether two URLs name the same objects: the same directory, or the same bucket and
/// prefix at the same endpoint, whatever the other parameters say.
pub(super) fn same_place(a: &StoreUrl, b: &StoreUrl) -> bool {
    match (a, b) {
        (StoreUrl::File { root: x }, StoreUrl::File { root: y }) => x == y,
        (StoreUrl::S3(x), StoreUrl::S3(y)) => {
            let endpoint = |e: &Option<String>| {
                e.as_deref()
                    .map(|e| e.trim_end_matches('/').to_ascii_lowercase())
            };
            x.bucket == y.bucket
                && x.prefix == y.prefix
                && endpoint(&x.endpoint) == endpoint(&y.endpoint)
        }
        _ => false,
    }
}

/// `a, b, c`: the stores' names.
pub(super) fn names(stores: &[StoreSpec]) -> String {
    stores
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
