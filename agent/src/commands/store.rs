//! `pgagent store add NAME`: a new store for a cluster kept in several stores.
//!
//! It gives the configured store `NAME` the cluster the first other store (in restore
//! order) holds: its key files and `cluster.json`, copied as they are
//! ([`crate::store::adopt`]). `pgagent run` and the commands that write every store join
//! a new store the same way by themselves; this command does it ahead of them, and says so.

use pgagent_storage::cluster::{read_cluster, ClusterInfo};
use pgagent_storage::ObjectStore;
use std::sync::Arc;

use crate::config::{Config, ConfigError, StoreSpec};
use crate::store::adopt::{give_cluster, Given};
use crate::store::{open_spec, requests};

/// `pgagent store add NAME`: copies the cluster's key files and `cluster.json` into the
/// configured store `name`.
///
/// Errors: no store of that name, or no other store (exit 2); no other store holds a
/// cluster; as [`give_cluster`] (exit 3 for a store that is not new); a store's errors.
pub async fn add(cfg: &Config, name: &str) -> anyhow::Result<()> {
    let target_spec = cfg.stores.iter().find(|s| s.name == name).ok_or_else(|| {
        ConfigError(format!(
            "no store is named {name:?}; the stores are: {}",
            cfg.stores
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let (source_spec, source, cluster) = holder(cfg, name).await?;
    let target = open_spec(target_spec, requests().clone()).await?;
    match give_cluster(source.as_ref(), &cluster, target.as_ref(), name).await? {
        Given::AlreadyHeld => println!(
            "store {name} ({}) already holds cluster {}",
            target.describe(),
            cluster.system_identifier
        ),
        Given::Copied { keys } => {
            let what = if cluster.encryption.is_some() {
                format!("cluster.json and {keys} key file(s)")
            } else {
                "cluster.json".to_string()
            };
            println!(
                "store {name} ({}) now holds cluster {}: copied {what} from store {}; \
                 `pgagent run` fills it with the WAL it lacks",
                target.describe(),
                cluster.system_identifier,
                source_spec.name
            );
        }
    }
    Ok(())
}

/// The first store other than `name`, in restore order, that holds a cluster.
async fn holder<'a>(
    cfg: &'a Config,
    name: &str,
) -> anyhow::Result<(&'a StoreSpec, Arc<dyn ObjectStore>, ClusterInfo)> {
    let mut others = cfg.stores.iter().filter(|s| s.name != name).peekable();
    if others.peek().is_none() {
        return Err(ConfigError(format!(
            "store add {name}: no other store is configured to copy the cluster from"
        ))
        .into());
    }
    for spec in others {
        let store = open_spec(spec, requests().clone()).await?;
        if let Some(cluster) = read_cluster(store.as_ref()).await? {
            return Ok((spec, store, cluster));
        }
    }
    Err(anyhow::anyhow!(
        "store add {name}: no other store holds a cluster yet; `pgagent run` claims the \
         stores of a new cluster itself"
    ))
}
