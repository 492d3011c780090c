//! One module per command (besides `run`, which is [`crate::daemon`], and `fetch`, which is
//! [`crate::fetch`]).

pub mod backup;
pub mod doctor;
pub mod list;
pub mod preseed;
pub mod prune;
pub mod restore;
pub mod snapshot;
pub mod status;
pub mod verify;

use std::sync::Arc;

use pgagent_protocol::WalSegmentSize;
use pgagent_storage::cluster::{read_cluster, ClusterInfo};
use pgagent_storage::ObjectStore;

use crate::config::Config;

/// The store of `cfg`, the cluster it holds and that cluster's segment size: what every
/// command reading a store needs first.
///
/// Errors: the store cannot be opened or read, holds no `cluster.json`, or declares an
/// invalid segment size.
pub async fn open_cluster_store(
    cfg: &Config,
) -> anyhow::Result<(Arc<dyn ObjectStore>, ClusterInfo, WalSegmentSize)> {
    let store = pgagent_storage::open(&cfg.raw.store.url, &cfg.store_options()).await?;
    let cluster = read_cluster(store.as_ref()).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no cluster.json: nothing has been stored there yet (check store.url)",
            store.describe()
        )
    })?;
    let seg = WalSegmentSize::new(cluster.wal_segment_size)
        .map_err(|e| anyhow::anyhow!("cluster.json: {e}"))?;
    Ok((store, cluster, seg))
}
