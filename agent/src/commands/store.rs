//! `pgagent store add NAME`: a new store for a cluster kept in several stores.
//!
//! The stores of one cluster hold the same sealed objects, so they share one master key
//! (README, "Several stores"). A store claimed on its own would get a master key of its
//! own, so `pgagent run` refuses a new store beside an encrypted one. This command gives the
//! new store what makes it the cluster's: the key files (the master key wrapped under each
//! access key's passphrase) and then `cluster.json`, copied as they are from the first
//! store, in restore order, that holds the cluster. The next `pgagent run` opens it with
//! the same passphrase and fills it with the WAL it lacks (copied from a required store).
//! For a plaintext cluster only `cluster.json` is copied.

use pgagent_storage::cluster::{read_cluster, ClusterInfo};
use pgagent_storage::layout::{CLUSTER_KEY, KEY_PREFIX};
use pgagent_storage::{ObjectStore, PutOutcome};
use std::sync::Arc;

use crate::config::{Config, ConfigError, StoreSpec};
use crate::exit::Refused;
use crate::store::{open_spec, requests};

/// `pgagent store add NAME`: copies the cluster's key files and `cluster.json` into the
/// configured store `name`.
///
/// Errors: no store of that name, or no other store (exit 2); no other store holds a
/// cluster; the store holds another cluster, or objects without `cluster.json` (exit 3);
/// a store's errors.
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
    match read_cluster(target.as_ref()).await? {
        Some(c) if c.system_identifier == cluster.system_identifier => {
            println!(
                "store {name} already holds cluster {} ({})",
                c.system_identifier,
                target.describe()
            );
            return Ok(());
        }
        Some(c) => {
            return Err(Refused(format!(
                "store {name} ({}) holds cluster {}, not {}: point it at an empty prefix",
                target.describe(),
                c.system_identifier,
                cluster.system_identifier
            ))
            .into())
        }
        None => {}
    }
    refuse_unclaimed_objects(target.as_ref(), target_spec).await?;
    let mut keys = 0;
    for meta in source.list(KEY_PREFIX).await? {
        let body = source.get(&meta.key).await?;
        target.put_if_absent(&meta.key, body).await?;
        keys += 1;
    }
    // Last: a store is the cluster's once cluster.json is there, and by then its keys are.
    let body = source.get(CLUSTER_KEY).await?;
    if target.put_if_absent(CLUSTER_KEY, body).await? == PutOutcome::Exists {
        tracing::info!("cluster.json appeared in store {name} meanwhile; checking it");
    }
    match read_cluster(target.as_ref()).await? {
        Some(c) if c == cluster => {}
        other => {
            return Err(Refused(format!(
                "store {name}: cluster.json reads back as {other:?}, not the copy of store {}'s",
                source_spec.name
            ))
            .into())
        }
    }
    let what = if cluster.encryption.is_some() {
        format!("cluster.json and {keys} key file(s)")
    } else {
        "cluster.json".to_string()
    };
    println!(
        "store {name} ({}) now holds cluster {}: copied {what} from store {}; `pgagent run` \
         fills it with the WAL it lacks",
        target.describe(),
        cluster.system_identifier,
        source_spec.name
    );
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

/// Refuses a store that holds objects but no `cluster.json` (its cluster.json was lost,
/// or it is another tool's prefix): it is not new.
async fn refuse_unclaimed_objects(store: &dyn ObjectStore, spec: &StoreSpec) -> anyhow::Result<()> {
    if let Some(meta) = store.list_after("", "", 1).await?.first() {
        return Err(Refused(format!(
            "store {} ({}) is not empty ({} and maybe more) but holds no cluster.json: \
             `store add` only gives the cluster to a new store",
            spec.name,
            store.describe(),
            meta.key
        ))
        .into());
    }
    Ok(())
}
