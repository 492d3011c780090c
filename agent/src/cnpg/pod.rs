//! This pod, as a sidecar knows it: its name and data directory from its environment, its
//! role from the `Cluster` definitions CNPG's requests carry.

use std::path::PathBuf;
use std::sync::Arc;

use super::cluster::Cluster;
use super::streaming::{PodRole, Streaming};

/// This pod, as the sidecar knows it from its environment.
pub struct Pod {
    /// The pod's name (`POD_NAME`), as `status.currentPrimary` names it.
    pub name: String,
    /// The PostgreSQL data directory (`PGDATA`); `%p` paths are relative to it.
    pub pgdata: PathBuf,
    streaming: Option<Arc<Streaming>>,
}

impl Pod {
    /// The pod `name` with its data directory; `streaming` for the instance sidecar.
    pub fn new(name: String, pgdata: PathBuf, streaming: Option<Arc<Streaming>>) -> Pod {
        Pod {
            name,
            pgdata,
            streaming,
        }
    }

    /// Applies what a request's `Cluster` definition says of this pod's role to streaming
    /// (instance sidecar only). An empty or unreadable definition changes nothing.
    pub async fn observe(&self, definition: &[u8]) {
        let Some(streaming) = &self.streaming else {
            return;
        };
        if definition.is_empty() {
            return;
        }
        match Cluster::from_json(definition) {
            Ok(cluster) => {
                let role = if cluster.is_primary(&self.name) {
                    PodRole::Primary
                } else {
                    PodRole::Replica
                };
                streaming.observe(role).await;
            }
            Err(e) => tracing::debug!("cluster definition not read: {e}"),
        }
    }
}

impl Pod {
    /// `path` (relative to PGDATA, or absolute) when it names a file inside PGDATA, without
    /// `..`: CNPG passes `%p`, which PostgreSQL makes relative to PGDATA; nothing else is
    /// read or written.
    pub fn path_in_pgdata(&self, path: &str) -> Option<PathBuf> {
        in_dir(&self.pgdata, path)
    }
}

/// `path` joined to `dir` when the result stays inside `dir` (no `..`, not `dir` itself).
fn in_dir(dir: &std::path::Path, path: &str) -> Option<PathBuf> {
    use std::path::Component;
    let joined = dir.join(path);
    let clean = joined
        .components()
        .all(|c| !matches!(c, Component::ParentDir | Component::CurDir));
    (clean && joined.starts_with(dir) && joined != dir).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_pgdata_are_taken() {
        let pgdata = std::path::Path::new("/var/lib/postgresql/data/pgdata");
        let wal = "/var/lib/postgresql/data/pgdata/pg_wal/000000010000000000000001";
        assert_eq!(
            in_dir(pgdata, "pg_wal/000000010000000000000001"),
            Some(wal.into())
        );
        assert_eq!(in_dir(pgdata, wal), Some(wal.into()));
        for bad in [
            "../pgagent/x",
            "pg_wal/../../etc/000000010000000000000001",
            "/etc/passwd",
            "/var/lib/postgresql/data/pgdata2/pg_wal/x",
            "",
        ] {
            assert_eq!(in_dir(pgdata, bad), None, "{bad:?}");
        }
    }
}
