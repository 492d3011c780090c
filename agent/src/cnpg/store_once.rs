//! The store a sidecar's services share, opened on first use and kept: one S3 client, one
//! read of `cluster.json` and, for an encrypted store, one unlock of its key (Argon2id)
//! for the life of the sidecar, whether `WAL.Archive`, the metrics or both need it.

use tokio::sync::OnceCell;

use crate::config::Config;
use crate::store::Opened;

/// The store of a sidecar's configuration, opened once.
pub struct StoreOnce {
    cfg: Config,
    opened: OnceCell<Opened>,
}

impl StoreOnce {
    /// Nothing is opened yet.
    pub fn new(cfg: Config) -> Self {
        StoreOnce {
            cfg,
            opened: OnceCell::new(),
        }
    }

    /// The store, its cluster and cipher ([`crate::store::open_cluster`]).
    ///
    /// Errors: as `open_cluster` (a store without `cluster.json` yet, say); a failure is
    /// not kept: the next call tries again.
    pub async fn get(&self) -> anyhow::Result<&Opened> {
        self.opened
            .get_or_try_init(|| crate::store::open_cluster(&self.cfg))
            .await
    }
}
