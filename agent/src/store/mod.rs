//! The store as every command meets it: open it with its requests counted, claim its
//! prefix for this cluster before writing (or, to read, open it and read which cluster it
//! holds), the catalog of base backups, the ZFS snapshot records, and the newest of each.

pub mod adopt;
pub mod catalog;
pub mod chain;
pub mod drills;
pub mod overlaps;
pub mod read;
pub mod records;
pub mod snapshots;
pub mod wal;
pub mod write;

use std::sync::{Arc, LazyLock};

use pgagent_protocol::WalSegmentSize;
use pgagent_storage::cluster::{read_cluster, ClusterInfo};
use pgagent_storage::crypto::{KdfParams, KeyError, ObjectCipher};
use pgagent_storage::keyring::access::{claim, reader_cipher};
use pgagent_storage::{CountedStore, ObjectStore, RequestCounts, StoreError};

use crate::config::{Config, StoreSpec};
use crate::exit::Refused;
use crate::retry::{GaveUp, Policy};
use crate::server::ServerInfo;

/// The requests this process has sent to its store, by operation: every store opened with
/// [`open`] counts into it. `pgagent run` exports it as `pgagent_store_requests_total` and
/// in `status.json`; the restore-mode fetch server logs it when it exits.
pub fn requests() -> &'static Arc<RequestCounts> {
    static REQUESTS: LazyLock<Arc<RequestCounts>> = LazyLock::new(Arc::default);
    &REQUESTS
}

/// Opens the store of `cfg` ([`Config::store`]: its URL and options) with every request it
/// sends counted in [`requests`]: the one way the agent opens its store, so no request goes
/// uncounted. The counter sits right on the backend, below any wrapper a caller adds
/// ([`crate::retrying_store::RetryingReads`]), so each retry is a counted request.
///
/// Errors: as [`pgagent_storage::open()`].
pub async fn open(cfg: &Config) -> Result<Arc<dyn ObjectStore>, StoreError> {
    open_spec(cfg.store(), requests().clone()).await
}

/// Opens the store `spec` describes with every request it sends counted in `counts`
/// (below any wrapper a caller adds, as [`open`]).
///
/// Errors: as [`pgagent_storage::open()`].
pub async fn open_spec(
    spec: &StoreSpec,
    counts: Arc<RequestCounts>,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    #[allow(clippy::disallowed_methods)] // the one place that may
    let backend = pgagent_storage::open(&spec.url, &spec.options()).await?;
    Ok(CountedStore::wrap(backend, counts))
}

/// How long [`claim_store`] retries a store that fails transiently before the command
/// fails: long enough to ride out a reset connection or a throttled burst at start, short
/// enough that a wrong endpoint is a clear error within seconds (a daemon under systemd is
/// then started again, and waits again).
pub const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_secs(20);

/// Claims the store prefix for this cluster, or refuses (exit 3) when it holds another;
/// returns the cipher every object this command writes is sealed with (`None`: a
/// plaintext store).
///
/// With a passphrase configured (`cfg.passphrase`), a new store gets its master key and
/// first access key here and `cluster.json` records it as encrypted
/// ([`pgagent_storage::keyring::access::claim`]); an existing store is unlocked with it.
///
/// Errors: a store of another cluster ([`Refused`], exit 3); a store whose encryption does
/// not match the configuration, or a passphrase that opens no key (exit 2, see
/// `exit.rs`); the store's.
pub async fn claim_store(
    store: &dyn ObjectStore,
    server: &ServerInfo,
    cfg: &Config,
) -> anyhow::Result<Option<ObjectCipher>> {
    let ours = ClusterInfo {
        format_version: 1,
        system_identifier: server.system_id.to_string(),
        pg_version_num: server.version_num,
        wal_segment_size: server.seg.bytes(),
        created_at: crate::times::rfc3339(std::time::SystemTime::now()),
        encryption: None,
    };
    let origin = key_origin();
    let attempt = || {
        claim(
            store,
            &ours,
            cfg.passphrase.as_ref(),
            KdfParams::DEFAULT,
            &origin,
            cfg.unlock_limits(),
        )
    };
    // A store that resets a connection or throttles at start is waited for a little
    // (CLAIM_RETRY); a claim cut midway is safe to run again (see `claim`).
    let transient = |e: &KeyError| e.store_error().is_some_and(StoreError::is_transient);
    let notify = |e: &KeyError, wait: std::time::Duration| {
        tracing::warn!(
            "store {}: {e}; claiming again in {wait:?}",
            store.describe()
        )
    };
    let deadline = tokio::time::Instant::now() + CLAIM_RETRY;
    let claimed = crate::retry::until(Policy::RECONNECT, deadline, transient, notify, attempt)
        .await
        .map_err(|gave_up| match gave_up {
            GaveUp::Permanent(e) | GaveUp::Deadline(Some(e)) => e,
            GaveUp::Deadline(None) => KeyError::Store(StoreError::Transient {
                key: pgagent_storage::layout::CLUSTER_KEY.to_string(),
                op: pgagent_storage::Op::Get,
                detail: format!("no answer from the store within {CLAIM_RETRY:?}"),
                source: None,
            }),
        });
    match claimed {
        Ok((_, cipher)) => Ok(cipher),
        Err(e) if e.store_error().is_some_and(StoreError::is_foreign_cluster) => {
            Err(Refused(format!(
                "{}: {e}; fix: point store.url at an empty prefix for this cluster (two clusters never share one)",
                store.describe()
            ))
            .into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("store {}", store.describe()))),
    }
}

/// The cipher a command that only reads `store` opens its objects with (`None`: a
/// plaintext store), decided from `cluster.json`, `keys/` and `cfg.passphrase`
/// ([`reader_cipher`]).
///
/// Errors: the store's encryption does not match the configuration, or the passphrase
/// opens no key (exit 2; `fetch` turns it into 255); the store's.
pub async fn read_cipher(
    store: &dyn ObjectStore,
    cfg: &Config,
) -> anyhow::Result<Option<ObjectCipher>> {
    reader_cipher(store, cfg.passphrase.as_ref(), cfg.unlock_limits())
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("store {}", store.describe())))
}

/// A store and the cipher its objects are sealed with: what reading or writing sealed
/// objects needs.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// The store, requests counted.
    pub store: Arc<dyn ObjectStore>,
    /// The store's cipher (`None`: plaintext).
    pub cipher: Option<ObjectCipher>,
}

impl Bucket {
    /// The cipher, borrowed.
    pub fn cipher(&self) -> Option<&ObjectCipher> {
        self.cipher.as_ref()
    }
}

/// A store opened for reading: what every command reading a store needs first.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The store, requests counted.
    pub store: Arc<dyn ObjectStore>,
    /// Its `cluster.json`.
    pub cluster: ClusterInfo,
    /// The cluster's WAL segment size.
    pub seg: WalSegmentSize,
    /// The cipher its objects are opened with (`None`: plaintext).
    pub cipher: Option<ObjectCipher>,
}

impl Opened {
    /// The store and its cipher.
    pub fn bucket(&self) -> Bucket {
        Bucket {
            store: self.store.clone(),
            cipher: self.cipher.clone(),
        }
    }
}

/// The store of `cfg`, the cluster it holds, that cluster's segment size and the cipher
/// of its objects; with several stores kept, the stores read as one
/// ([`read::open_reading`], one attempt each), which take no writes.
///
/// Errors: the store cannot be opened or read, holds no `cluster.json`, or declares an
/// invalid segment size; as [`read_cipher`]; as [`read::open_reading`].
pub async fn open_cluster(cfg: &Config) -> anyhow::Result<Opened> {
    if cfg.stores.len() > 1 {
        return Ok(read::open_reading(cfg, None).await?.opened);
    }
    let store = open(cfg).await?;
    let cluster = read_cluster(store.as_ref()).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no cluster.json: nothing has been stored there yet (check store.url)",
            store.describe()
        )
    })?;
    let seg = WalSegmentSize::new(cluster.wal_segment_size)
        .map_err(|e| anyhow::anyhow!("cluster.json: {e}"))?;
    let cipher = read_cipher(store.as_ref(), cfg).await?;
    Ok(Opened {
        store,
        cluster,
        seg,
        cipher,
    })
}

/// The newest complete base backup and the newest snapshot record in the store, each as
/// (id, end time RFC 3339), and the newest drills.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LastPoints {
    /// The newest complete base backup.
    pub last_backup: Option<(String, String)>,
    /// The newest ZFS snapshot recorded in the store.
    pub last_snapshot: Option<(String, String)>,
    /// The newest drill recorded in the store.
    pub last_drill: Option<LastDrill>,
    /// End of the newest drill that passed, RFC 3339.
    pub last_passed_drill: Option<String>,
}

/// The newest drill, as `status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastDrill {
    /// Its id.
    pub id: String,
    /// When it ended, RFC 3339.
    pub finished_at: String,
    /// Whether every check passed.
    pub passed: bool,
    /// Restore plus replay, seconds, when the server came up.
    pub rto_seconds: Option<f64>,
    /// The checks that failed.
    pub failed_checks: Vec<String>,
}

/// Reads [`LastPoints`] from `store` (newest first: one manifest or record read each, plus
/// the listings; drill records from the newest back to the newest that passed).
///
/// Errors: the store's.
pub async fn last_points(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<LastPoints> {
    let mut points = LastPoints::default();
    for id in catalog::backup_ids(store).await?.iter().rev() {
        if let Some(m) = catalog::get_manifest(store, cipher, id).await? {
            if m.status == pgagent_storage::manifest::BackupStatus::Complete {
                points.last_backup =
                    Some((m.id.clone(), m.finished_at.clone().unwrap_or_default()));
                break;
            }
        }
    }
    points.last_snapshot = snapshots::store_records(store, cipher)
        .await?
        .pop()
        .map(|r| (r.id, r.finished_at));
    let (last, last_passed) = drills::newest(store, cipher).await?;
    points.last_passed_drill = last_passed;
    points.last_drill = last.map(|d| LastDrill {
        id: d.id.clone(),
        finished_at: d.finished_at.clone(),
        passed: d.passed,
        rto_seconds: d.rto_seconds(),
        failed_checks: d.failed().map(|c| c.name.clone()).collect(),
    });
    Ok(points)
}

/// Who is making an access key, for `keys/<id>` and `pgagent key list`: this machine's host
/// name and this process's user name (its uid when it has no name).
pub fn key_origin() -> pgagent_storage::keyring::keys::KeyOrigin {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let uid = nix::unistd::getuid();
    let username = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    pgagent_storage::keyring::keys::KeyOrigin { hostname, username }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use pgagent_protocol::{Lsn, TimelineId};
    use pgagent_storage::{Call, Layer, Layered, Reply};

    use super::*;
    use crate::config::{Overrides, RawConfig};

    /// Fails the first `left` calls as a store that resets connections.
    #[derive(Debug)]
    struct Resets {
        left: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Layer for Resets {
        async fn around(
            &self,
            below: &dyn ObjectStore,
            call: Call<'_>,
        ) -> Result<Reply, StoreError> {
            let left = self.left.load(Ordering::Relaxed);
            if left > 0 {
                self.left.store(left - 1, Ordering::Relaxed);
                return Err(StoreError::Transient {
                    key: call.key().to_string(),
                    op: call.op(),
                    detail: "connection reset by peer".into(),
                    source: None,
                });
            }
            call.run(below).await
        }
    }

    /// A store that resets the first requests of a start (cluster.json, the claim) is
    /// waited for, not a failed start.
    #[tokio::test]
    async fn a_claim_rides_out_a_store_that_resets_connections_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgagent.toml");
        let url = format!("file://{}", dir.path().join("store").display());
        std::fs::write(&file, format!("[store]\nurl = \"{url}\"\n")).unwrap();
        let cfg = RawConfig::load(Some(&file), &Overrides::default())
            .unwrap()
            .validate()
            .unwrap();
        let fs: Arc<dyn ObjectStore> = Arc::new(
            pgagent_storage::fs::FsStore::open(dir.path().join("store"))
                .await
                .unwrap(),
        );
        let store = Layered::new(
            fs.clone(),
            Resets {
                left: AtomicUsize::new(3),
            },
        );
        let server = ServerInfo {
            system_id: 7,
            timeline: TimelineId(1),
            xlogpos: Lsn(0x100_0000),
            seg: WalSegmentSize::DEFAULT,
            version_num: 150004,
        };
        let cipher = claim_store(&store, &server, &cfg).await.unwrap();
        assert!(cipher.is_none());
        let stored = read_cluster(fs.as_ref()).await.unwrap().unwrap();
        assert_eq!(stored.system_identifier, "7");
        assert_eq!(store.layer().left.load(Ordering::Relaxed), 0);
    }
}
