//! Layering: built-in defaults, the TOML file, `PGAGENT_<SECTION>_<KEY>` and
//! `PGAGENT_STORES_<NAME>_<KEY>` environment variables, then command-line flags (figment).

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use super::stores_env::StoresFromEnv;
use super::{ConfigError, RawConfig, DEFAULT_CONFIG_PATHS, SECTIONS};

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--conninfo`
    pub conninfo: Option<String>,
    /// `--slot`
    pub slot: Option<String>,
    /// `--staging-dir`
    pub staging_dir: Option<PathBuf>,
    /// `--store`
    pub store_url: Option<String>,
    /// `--as-of`
    pub as_of: Option<String>,
}

impl Overrides {
    fn apply(&self, mut figment: Figment) -> Figment {
        if let Some(v) = &self.conninfo {
            figment = figment.merge(Serialized::global("postgres.conninfo", v));
        }
        if let Some(v) = &self.slot {
            figment = figment.merge(Serialized::global("postgres.slot", v));
        }
        if let Some(v) = &self.staging_dir {
            figment = figment.merge(Serialized::global("staging.dir", v));
        }
        if let Some(v) = &self.store_url {
            figment = figment.merge(Serialized::global("store.url", v));
        }
        if let Some(v) = &self.as_of {
            figment = figment.merge(Serialized::global("store.as_of", v));
        }
        figment
    }
}

/// Maps `PGAGENT_STORE_UPLOAD_CONCURRENCY` (lowercased by figment) to `store.upload_concurrency`;
/// variables of no known section (such as `PGAGENT_CONFIG`, and `PGAGENT_STORES_…`, read by
/// [`StoresFromEnv`]) are left out.
fn env_key(key: &figment::value::UncasedStr) -> Option<figment::value::Uncased<'static>> {
    let key = key.as_str().to_ascii_lowercase();
    SECTIONS.iter().find_map(|section| {
        key.strip_prefix(section)
            .and_then(|rest| rest.strip_prefix('_'))
            .filter(|rest| !rest.is_empty())
            .map(|rest| format!("{section}.{rest}").into())
    })
}

/// `encryption.passphrase` comes from the environment only: a configuration file is often
/// readable by others, and `encryption.passphrase_file` is the way to keep it in a file.
fn refuse_passphrase_in_file(figment: &Figment) -> Result<(), ConfigError> {
    let from_file = figment
        .find_metadata("encryption.passphrase")
        .is_some_and(|m| matches!(m.source, Some(figment::Source::File(_))));
    if from_file {
        return Err(ConfigError(
            "encryption.passphrase is not read from the configuration file (often readable by \
             others): put the passphrase in a file of its own and set \
             encryption.passphrase_file, or set PGAGENT_ENCRYPTION_PASSPHRASE"
                .into(),
        ));
    }
    Ok(())
}

impl RawConfig {
    /// Layers defaults, file, environment and flags. `path` is `--config`; when it is given
    /// the file must exist.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<RawConfig, ConfigError> {
        Self::load_with_env(path, overrides, Env::prefixed("PGAGENT_"))
    }

    pub(super) fn load_with_env(
        path: Option<&Path>,
        overrides: &Overrides,
        env: Env,
    ) -> Result<RawConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        let file = match path {
            Some(p) if !p.exists() => {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    p.display()
                )))
            }
            Some(p) => Some(p.to_path_buf()),
            None => DEFAULT_CONFIG_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        };
        if let Some(file) = &file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let stores_env = StoresFromEnv::read(&figment, &env)?;
        figment = figment.merge(env.filter_map(|k| env_key(k)));
        if let Some(stores_env) = stores_env {
            figment = figment.merge(stores_env);
        }
        figment = overrides.apply(figment);
        refuse_passphrase_in_file(&figment)?;
        let mut raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError(e.to_string().replace('\n', "; ")))?;
        raw.file = file;
        Ok(raw)
    }
}
