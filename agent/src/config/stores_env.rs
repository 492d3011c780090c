//! `PGAGENT_STORES_<NAME>_<KEY>`: an environment variable that sets one key of a
//! `[[stores]]` entry the configuration file defines, the way `PGAGENT_<SECTION>_<KEY>`
//! sets a key of a section. `<NAME>` is the store's name in upper case with `-` as `_`
//! ([`env_name`]); `<KEY>` is the key in upper case, `max_lag.time` as `MAX_LAG_TIME`.
//! E.g. `PGAGENT_STORES_R2_SECRET_ACCESS_KEY`, `PGAGENT_STORES_NAS_B_PARTIAL_INTERVAL`.
//!
//! A variable naming no store of the file, or no key, is an error, as an unknown key in the
//! file is: a typo must not leave a store configured otherwise than meant. Stores are not
//! created from the environment: a store's name is what its variables are named by, so it
//! is written in the file.

use figment::providers::Env;
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{env_name, ConfigError, STORE_KEYS};

/// The part of a variable's name after `PGAGENT_`, lowercased, that selects this layer.
const PREFIX: &str = "stores_";

/// The file's `[[stores]]` with the environment's values put in: merged over the file (and
/// the section variables), under the flags.
pub(super) struct StoresFromEnv {
    stores: Vec<Value>,
}

impl StoresFromEnv {
    /// Reads the variables of `env` that name stores, and puts each value into the entry
    /// of `figment` (defaults and file so far) it names; `None` when there is none.
    ///
    /// Errors: a variable that names no store of the file, or no key of a store.
    pub(super) fn read(figment: &Figment, env: &Env) -> Result<Option<Self>, ConfigError> {
        let mut vars: Vec<(String, String)> = env
            .iter()
            .filter_map(|(k, v)| {
                let k = k.as_str().to_ascii_lowercase();
                k.strip_prefix(PREFIX).map(|rest| (rest.to_string(), v))
            })
            .collect();
        if vars.is_empty() {
            return Ok(None);
        }
        // The order variables are read in must not matter to the error shown first.
        vars.sort();
        let mut stores = match figment.find_value("stores") {
            Ok(Value::Array(_, a)) => a,
            Err(e) if !e.missing() => {
                return Err(ConfigError(e.to_string().replace('\n', "; ")));
            }
            _ => Vec::new(),
        };
        let names: Vec<String> = stores
            .iter()
            .map(|s| {
                s.find_ref("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        for (rest, value) in vars {
            let (i, key) = locate(&rest, &names)?;
            let parsed = value.parse::<Value>().unwrap_or_else(|e| match e {});
            set(&mut stores[i], key, parsed);
        }
        Ok(Some(StoresFromEnv { stores }))
    }
}

impl Provider for StoresFromEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named("PGAGENT_STORES_* environment variable(s)")
    }

    /// The values taken from the file keep their tags, so an error in one still names the
    /// file; the new ones are tagged as this provider's.
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        dict.insert(
            "stores".into(),
            Value::Array(Tag::Default, self.stores.clone()),
        );
        Ok(Profile::Default.collect(dict))
    }
}

/// The store (index in `names`) and key (a [`STORE_KEYS`] path) that `rest`
/// (`<name>_<key>`, lowercased) names. Keys are tried longest first, and the name must be
/// a store's, so a name that ends like a key (`nas_url`) still resolves.
fn locate(rest: &str, names: &[String]) -> Result<(usize, &'static str), ConfigError> {
    let var = format!("PGAGENT_STORES_{}", rest.to_ascii_uppercase());
    let env_names: Vec<String> = names
        .iter()
        .map(|n| env_name(n).to_ascii_lowercase())
        .collect();
    let mut keys: Vec<&'static str> = STORE_KEYS.to_vec();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        let suffix = format!("_{}", key.replace('.', "_"));
        if let Some(name) = rest.strip_suffix(&suffix) {
            if let Some(i) = env_names.iter().position(|n| n == name) {
                return Ok((i, key));
            }
        }
    }
    if let Some(i) = env_names
        .iter()
        .position(|n| rest.starts_with(&format!("{n}_")))
    {
        let keys: Vec<String> = STORE_KEYS
            .iter()
            .map(|k| k.replace('.', "_").to_ascii_uppercase())
            .collect();
        if rest == format!("{}_name", env_names[i]) {
            return Err(ConfigError(format!(
                "{var}: a store's name is written in the configuration file only: its \
                 variables are named by it"
            )));
        }
        return Err(ConfigError(format!(
            "{var}: store {:?} has no such key; the keys are {}",
            names[i],
            keys.join(", ")
        )));
    }
    let known = if names.is_empty() {
        "the configuration file defines no [[stores]] (PGAGENT_STORE_URL sets the one-store \
         shorthand)"
            .to_string()
    } else {
        format!(
            "the stores of the configuration file are: {}",
            names.join(", ")
        )
    };
    Err(ConfigError(format!(
        "{var} names no store: PGAGENT_STORES_<NAME>_<KEY> sets a key of a [[stores]] entry \
         the configuration file defines, and {known}"
    )))
}

/// Sets `path` (`a` or `a.b`) in the entry `store` to `value`, making the tables on the way.
fn set(store: &mut Value, path: &str, value: Value) {
    let mut here = store;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !matches!(here, Value::Dict(..)) {
            *here = Value::Dict(Tag::Default, Dict::new());
        }
        let Value::Dict(_, dict) = here else {
            unreachable!("made a table above")
        };
        if parts.peek().is_none() {
            dict.insert(part.to_string(), value);
            return;
        }
        here = dict
            .entry(part.to_string())
            .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
    }
}
