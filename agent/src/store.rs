//! The store as every command meets it: claim its prefix for this cluster before writing.

use pgagent_storage::cluster::{ensure_cluster, ClusterInfo};
use pgagent_storage::ObjectStore;

use crate::exit::Refused;
use crate::server::ServerInfo;

/// Claims the store prefix for this cluster, or refuses (exit 3) when it holds another.
pub async fn claim_store(
    store: &dyn ObjectStore,
    server: &ServerInfo,
) -> anyhow::Result<ClusterInfo> {
    let info = ClusterInfo {
        format_version: 1,
        system_identifier: server.system_id.to_string(),
        pg_version_num: server.version_num,
        wal_segment_size: server.seg.bytes(),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    match ensure_cluster(store, &info).await {
        Ok(found) => Ok(found),
        Err(e) if e.is_foreign_cluster() => Err(Refused(format!(
            "{}: {e}; fix: point store.url at an empty prefix for this cluster (two clusters never share one)",
            store.describe()
        ))
        .into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("store {}", store.describe()))),
    }
}
