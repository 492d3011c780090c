//! Content-addressed chunk storage for base backups.
//!
//! The archive walker (a blocking thread) hands each chunk to a [`StoreSink`]: it hashes the
//! chunk (blake3, keyed with the store's content hash key in an encrypted store, see
//! [`envelope::content_hash`]), skips it if the store already holds that hash (the index is a listing of
//! `chunks/` taken when the backup starts, plus what this backup sent), and otherwise queues
//! it for [`upload_chunks`], which seals (zstd) and stores `chunks/ab/ab…` with bounded
//! parallelism. A chunk key names its content, so a second backup uploads only what changed
//! and a chunk written twice is written with the same content.
//!
//! With several stores, [`fan_out_chunks`] puts each chunk into every store that lacks it
//! (each store deduplicated against its own listing), sealed once: the sink skips only
//! the chunks every store holds.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::layout::{chunk_key, CHUNK_PREFIX};
use pgagent_storage::{envelope, ObjectStore, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::archive::ChunkSink;
use crate::retry::{GaveUp, Policy};

/// How long a chunk's transient store errors are retried before the backup fails.
const CHUNK_DEADLINE: Duration = Duration::from_secs(120);

/// The hashes of every chunk in the store: one listing of `chunks/`.
///
/// Errors: the listing fails.
pub async fn known_chunks(store: &dyn ObjectStore) -> Result<HashSet<String>, StoreError> {
    let listed = store.list(CHUNK_PREFIX).await?;
    Ok(listed
        .into_iter()
        .filter_map(|m| m.key.rsplit('/').next().map(str::to_string))
        .filter(|h| pgagent_storage::manifest::is_chunk_hash(h))
        .collect())
}

/// Counts shared by the sink and the uploader.
#[derive(Debug, Default)]
pub struct ChunkStats {
    /// Chunks referenced, repeats included.
    pub chunks: u64,
    /// Chunks sent for upload (not in the store before).
    pub new_chunks: u64,
    /// Stored bytes of the uploaded chunks.
    pub new_stored_bytes: u64,
}

/// The blocking side: hashes, deduplicates, queues.
#[derive(Debug)]
pub struct StoreSink {
    cipher: Option<ObjectCipher>,
    known: HashSet<String>,
    tx: mpsc::Sender<(String, Vec<u8>)>,
    stats: Arc<Mutex<ChunkStats>>,
}

impl StoreSink {
    /// A sink that names chunks by their hash under `cipher` (`None`: a plaintext store),
    /// skips the hashes in `known` and queues the rest on `tx`.
    pub fn new(
        cipher: Option<ObjectCipher>,
        known: HashSet<String>,
        tx: mpsc::Sender<(String, Vec<u8>)>,
        stats: Arc<Mutex<ChunkStats>>,
    ) -> Self {
        StoreSink {
            cipher,
            known,
            tx,
            stats,
        }
    }
}

impl ChunkSink for StoreSink {
    fn put(&mut self, data: Vec<u8>) -> anyhow::Result<String> {
        let hash = envelope::content_hash(&data, self.cipher.as_ref())
            .to_hex()
            .to_string();
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).chunks += 1;
        if self.known.insert(hash.clone()) {
            self.tx
                .blocking_send((hash.clone(), data))
                .map_err(|_| anyhow::anyhow!("the chunk uploader stopped"))?;
        }
        Ok(hash)
    }
}

/// Seals (with `cipher`, `None` for a plaintext store) and stores every chunk received on
/// `rx` until it closes, at most `concurrency` at a time, each retried on transient errors.
///
/// Errors: the first chunk that cannot be stored; the remaining uploads are cancelled and
/// `rx` is closed, so the sink's next `put` fails too.
pub async fn upload_chunks(
    store: Arc<dyn ObjectStore>,
    cipher: Option<ObjectCipher>,
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    concurrency: usize,
    level: i32,
    stats: Arc<Mutex<ChunkStats>>,
) -> anyhow::Result<()> {
    let target = ChunkTarget {
        store,
        known: HashSet::new(),
        concurrency,
        stats,
    };
    fan_out_chunks(cipher, rx, level, vec![target])
        .await
        .pop()
        .expect("one result per target")
}

/// One store a backup's chunks go to.
#[derive(Debug)]
pub struct ChunkTarget {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The hashes of the chunks it holds: those are not uploaded to it again.
    pub known: HashSet<String>,
    /// Uploads in flight to it.
    pub concurrency: usize,
    /// Its counts of chunks uploaded and stored bytes (`chunks` is left to the sink).
    pub stats: Arc<Mutex<ChunkStats>>,
}

/// Stores every chunk received on `rx` in each of `targets` that does not hold it yet: each
/// chunk is sealed once (with `cipher`, at zstd `level`), on the first upload that needs
/// it, and the same bytes go to every store. Each target has its own queue, uploads
/// (at most its `concurrency` at a time, each retried on transient errors) and result, in
/// the order of `targets`.
///
/// A target that fails stops receiving chunks; the others go on. When every target has
/// failed, `rx` is closed, so the sink's next `put` fails too. The pace is that of the
/// slowest store still working: its queue, when full, holds up the others.
pub async fn fan_out_chunks(
    cipher: Option<ObjectCipher>,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    level: i32,
    targets: Vec<ChunkTarget>,
) -> Vec<anyhow::Result<()>> {
    let mut queues = Vec::with_capacity(targets.len());
    let mut tasks = Vec::with_capacity(targets.len());
    for t in targets {
        let (tx, trx) = mpsc::channel(t.concurrency.max(1) * 2);
        tasks.push(tokio::spawn(upload_to(
            t.store,
            trx,
            t.concurrency,
            t.stats,
        )));
        queues.push((t.known, Some(tx)));
    }
    while let Some((hash, data)) = rx.recv().await {
        let chunk = Arc::new(PendingChunk::new(hash, data, cipher.clone(), level));
        for (known, queue) in &mut queues {
            let Some(tx) = queue else { continue };
            if !known.insert(chunk.hash.clone()) {
                continue;
            }
            if tx.send(chunk.clone()).await.is_err() {
                // That store's uploader stopped; its task says why.
                *queue = None;
            }
        }
        if queues.iter().all(|(_, q)| q.is_none()) {
            rx.close();
            break;
        }
    }
    drop(queues);
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.map_err(anyhow::Error::from).and_then(|r| r));
    }
    results
}

/// A chunk on its way to one or more stores: sealed once, by the first upload that needs
/// it, and shared by the others.
#[derive(Debug)]
struct PendingChunk {
    hash: String,
    /// The raw bytes. Kept once sealed: a seal whose upload was cancelled (its store
    /// failed) leaves the next upload to seal them again.
    raw: Vec<u8>,
    cipher: Option<ObjectCipher>,
    level: i32,
    sealed: tokio::sync::OnceCell<Bytes>,
}

impl PendingChunk {
    fn new(hash: String, data: Vec<u8>, cipher: Option<ObjectCipher>, level: i32) -> Self {
        PendingChunk {
            hash,
            raw: data,
            cipher,
            level,
            sealed: tokio::sync::OnceCell::new(),
        }
    }

    /// The sealed body under its key (sealing it on a blocking thread the first time).
    async fn sealed(self: &Arc<Self>) -> anyhow::Result<Bytes> {
        let this = self.clone();
        self.sealed
            .get_or_try_init(|| async move {
                let key = chunk_key(&this.hash);
                let inner = this.clone();
                tokio::task::spawn_blocking(move || {
                    envelope::seal_for(&inner.raw, inner.level, inner.cipher.as_ref(), &key).body
                })
                .await
                .map_err(anyhow::Error::from)
            })
            .await
            .cloned()
    }
}

/// Stores every chunk received on `rx` in `store` until it closes, at most `concurrency`
/// at a time.
///
/// Errors: the first chunk that cannot be stored; the remaining uploads are cancelled and
/// `rx` is closed.
async fn upload_to(
    store: Arc<dyn ObjectStore>,
    mut rx: mpsc::Receiver<Arc<PendingChunk>>,
    concurrency: usize,
    stats: Arc<Mutex<ChunkStats>>,
) -> anyhow::Result<()> {
    let mut running = JoinSet::new();
    loop {
        while running.len() >= concurrency.max(1) {
            reap(running.join_next().await, &stats, &mut rx)?;
        }
        tokio::select! {
            next = rx.recv() => match next {
                Some(chunk) => {
                    let store = store.clone();
                    running.spawn(async move { store_chunk(store.as_ref(), &chunk).await });
                }
                None => break,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                reap(Some(done), &stats, &mut rx)?;
            }
        }
    }
    while let Some(done) = running.join_next().await {
        reap(Some(done), &stats, &mut rx)?;
    }
    Ok(())
}

fn reap(
    done: Option<Result<anyhow::Result<u64>, tokio::task::JoinError>>,
    stats: &Mutex<ChunkStats>,
    rx: &mut mpsc::Receiver<Arc<PendingChunk>>,
) -> anyhow::Result<()> {
    let Some(done) = done else { return Ok(()) };
    match done.map_err(anyhow::Error::from).and_then(|r| r) {
        Ok(stored) => {
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            s.new_chunks += 1;
            s.new_stored_bytes += stored;
            Ok(())
        }
        Err(e) => {
            rx.close();
            Err(e)
        }
    }
}

/// Stores one chunk under its hash; returns the stored size in bytes.
async fn store_chunk(store: &dyn ObjectStore, chunk: &Arc<PendingChunk>) -> anyhow::Result<u64> {
    let key = chunk_key(&chunk.hash);
    let body = chunk.sealed().await?;
    let deadline = tokio::time::Instant::now() + CHUNK_DEADLINE;
    crate::retry::until(
        Policy::CHUNK,
        deadline,
        StoreError::is_transient,
        |e, d| tracing::debug!("chunk {key}: {e}; retrying in {d:?}"),
        || store.put_if_absent(&key, body.clone()),
    )
    .await
    .map(|_| body.len() as u64)
    .map_err(|gave_up| match gave_up {
        GaveUp::Permanent(e) | GaveUp::Deadline(Some(e)) => {
            anyhow::anyhow!("store chunk {key}: {e}")
        }
        GaveUp::Deadline(None) => {
            anyhow::anyhow!("store chunk {key}: no answer from the store in {CHUNK_DEADLINE:?}")
        }
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // scratch stores: their requests need no counting
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn chunks_are_stored_once_under_their_hash() {
        stored_once_under_their_hash(None).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn encrypted_chunks_are_stored_once_under_their_keyed_hash() {
        let cipher = pgagent_storage::crypto::MasterKey::generate().cipher();
        let hashes = stored_once_under_their_hash(Some(cipher)).await;
        let plain = blake3::hash(&[1u8; 1000]).to_hex().to_string();
        assert_ne!(hashes.0, plain, "the name reveals no plaintext hash");
    }

    /// Three chunks, two of them equal, through a sink and the uploader into a scratch
    /// store: two objects, each named after its (keyed) hash and opening to its bytes.
    async fn stored_once_under_their_hash(
        cipher: Option<ObjectCipher>,
    ) -> (String, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store: Arc<dyn ObjectStore> = pgagent_storage::open(&url, &Default::default())
            .await
            .unwrap();
        let stats = Arc::new(Mutex::new(ChunkStats::default()));
        let (tx, rx) = mpsc::channel(4);
        let uploader = tokio::spawn(upload_chunks(
            store.clone(),
            cipher.clone(),
            rx,
            2,
            1,
            stats.clone(),
        ));
        let sink_stats = stats.clone();
        let sink_cipher = cipher.clone();
        let hashes = tokio::task::spawn_blocking(move || {
            let mut sink = StoreSink::new(sink_cipher, HashSet::new(), tx, sink_stats);
            let a = sink.put(vec![1u8; 1000]).unwrap();
            let b = sink.put(vec![2u8; 10]).unwrap();
            let a2 = sink.put(vec![1u8; 1000]).unwrap();
            (a, b, a2)
        })
        .await
        .unwrap();
        uploader.await.unwrap().unwrap();
        assert_eq!(hashes.0, hashes.2);
        let (chunks, new_chunks, stored) = {
            let s = stats.lock().unwrap();
            (s.chunks, s.new_chunks, s.new_stored_bytes)
        };
        assert_eq!((chunks, new_chunks), (3, 2));
        assert!(stored > 0);
        let key = chunk_key(&hashes.0);
        let body = store.get(&key).await.unwrap();
        let opened = envelope::open_for(&body, cipher.as_ref(), &key).unwrap();
        assert_eq!(opened, vec![1u8; 1000]);
        let known = known_chunks(store.as_ref()).await.unwrap();
        assert_eq!(known, HashSet::from([hashes.0.clone(), hashes.1.clone()]));
        hashes
    }

    /// A store that refuses every write, as one whose credentials lost their rights.
    #[derive(Debug)]
    struct Refuses;

    #[async_trait::async_trait]
    impl pgagent_storage::Layer for Refuses {
        async fn around(
            &self,
            below: &dyn ObjectStore,
            call: pgagent_storage::Call<'_>,
        ) -> Result<pgagent_storage::Reply, StoreError> {
            if call.op() == pgagent_storage::Op::Put {
                return Err(StoreError::PermissionDenied {
                    key: call.key().to_string(),
                    op: call.op(),
                    hint: "403".into(),
                    source: None,
                });
            }
            call.run(below).await
        }
    }

    /// Two stores, one holding a chunk already: each gets what it lacks, the same bytes in
    /// both; a third that refuses writes fails alone.
    #[tokio::test(flavor = "multi_thread")]
    async fn every_store_gets_the_chunks_it_lacks_sealed_once() {
        let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let mut stores = Vec::new();
        for d in &dirs {
            let url = format!("file://{}", d.path().display());
            let s: Arc<dyn ObjectStore> = pgagent_storage::open(&url, &Default::default())
                .await
                .unwrap();
            stores.push(s);
        }
        let refusing: Arc<dyn ObjectStore> =
            Arc::new(pgagent_storage::Layered::new(stores[2].clone(), Refuses));
        let a = blake3::hash(&[1u8; 100]).to_hex().to_string();
        let b = blake3::hash(&[2u8; 100]).to_hex().to_string();
        let stats = [(); 3].map(|()| Arc::new(Mutex::new(ChunkStats::default())));
        let target = |store: &Arc<dyn ObjectStore>, known: &[&str], i: usize| ChunkTarget {
            store: store.clone(),
            known: known.iter().map(|h| h.to_string()).collect(),
            concurrency: 2,
            stats: stats[i].clone(),
        };
        let targets = vec![
            target(&stores[0], &[], 0),
            target(&stores[1], &[&a], 1),
            target(&refusing, &[], 2),
        ];
        let (tx, rx) = mpsc::channel(4);
        let fan = tokio::spawn(fan_out_chunks(None, rx, 1, targets));
        tx.send((a.clone(), vec![1u8; 100])).await.unwrap();
        tx.send((b.clone(), vec![2u8; 100])).await.unwrap();
        drop(tx);
        let results = fan.await.unwrap();
        assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
        let e = results[2].as_ref().unwrap_err().to_string();
        assert!(e.contains("store chunk chunks/"), "{e}");
        let counts = |i: usize| stats[i].lock().unwrap().new_chunks;
        assert_eq!((counts(0), counts(1), counts(2)), (2, 1, 0));
        assert!(
            stores[1].get(&chunk_key(&a)).await.is_err(),
            "held: not sent"
        );
        let b0 = stores[0].get(&chunk_key(&b)).await.unwrap();
        let b1 = stores[1].get(&chunk_key(&b)).await.unwrap();
        assert_eq!(b0, b1, "the same sealed bytes in every store");
        assert!(known_chunks(stores[2].as_ref()).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn known_chunks_are_not_sent_again() {
        let stats = Arc::new(Mutex::new(ChunkStats::default()));
        let (tx, mut rx) = mpsc::channel(4);
        let hash = blake3::hash(&[5u8; 3]).to_hex().to_string();
        let s2 = stats.clone();
        let h = hash.clone();
        tokio::task::spawn_blocking(move || {
            let mut sink = StoreSink::new(None, HashSet::from([h]), tx, s2);
            sink.put(vec![5u8; 3]).unwrap();
        })
        .await
        .unwrap();
        assert!(rx.recv().await.is_none());
        assert_eq!(stats.lock().unwrap().chunks, 1);
    }
}
