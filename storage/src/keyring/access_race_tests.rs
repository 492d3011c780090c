//! Writers claiming one new store at once, on a store that ignores conditional writes (as
//! Garage does: the last write wins), with PUTs that land late: held until another writer
//! is done, or given up by their writer and landing afterwards. Whatever order they land
//! in, every writer let in seals with the master key `cluster.json` names (or none, for a
//! plaintext store), and `cluster.json` never changes once a writer sealed an object.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::tests::origin;
use super::*;
use crate::crypto::kdf::tests::FAST;
use crate::fs::FsStore;
use crate::layer::{Call, Layer, Layered, Reply};
use crate::object_store::PutOutcome;

fn ours() -> ClusterInfo {
    super::tests::cluster(None)
}

/// What happens to one PUT of a writer.
#[derive(Debug, Clone)]
enum Fate {
    /// Lands after this long, then the writer hears back.
    After(Duration),
    /// Held until the gate opens, then lands, then the writer hears back.
    Held,
    /// Waits until every writer sharing the barrier has a PUT waiting, then lands.
    Together(Arc<tokio::sync::Barrier>),
    /// The writer hears a timeout at once; the PUT lands when the gate opens, plus this
    /// long.
    GivenUp(Duration),
}

/// Draws the fate of the PUT of a key.
type Draw = Box<dyn FnMut(&str) -> Fate + Send>;

/// One writer's view of a shared directory store that ignores conditional writes, its
/// PUTs delayed as `fate` draws them.
struct LateWrites {
    fs: Arc<FsStore>,
    gate: watch::Receiver<bool>,
    fate: Mutex<Draw>,
    landing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for LateWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LateWrites")
    }
}

/// A writer's view: the shared store below [`LateWrites`].
type View = Layered<LateWrites>;

fn late_writes(
    fs: Arc<FsStore>,
    gate: watch::Receiver<bool>,
    fate: impl FnMut(&str) -> Fate + Send + 'static,
) -> View {
    let layer = LateWrites {
        fs: fs.clone(),
        gate,
        fate: Mutex::new(Box::new(fate)),
        landing: Mutex::new(Vec::new()),
    };
    Layered::new(fs, layer)
}

impl LateWrites {
    /// Waits until every PUT given up so far has landed.
    async fn landed(&self) {
        let pending: Vec<_> = std::mem::take(&mut *self.landing.lock().unwrap());
        for h in pending {
            h.await.unwrap();
        }
    }
}

#[async_trait::async_trait]
impl Layer for LateWrites {
    async fn around(&self, below: &dyn ObjectStore, call: Call<'_>) -> Result<Reply, StoreError> {
        let (Call::Put { key, body } | Call::PutIfAbsent { key, body }) = call else {
            return call.run(below).await;
        };
        let fate = (self.fate.lock().unwrap())(key);
        let mut gate = self.gate.clone();
        match fate {
            Fate::After(d) => tokio::time::sleep(d).await,
            Fate::Together(barrier) => {
                barrier.wait().await;
            }
            Fate::Held => {
                gate.wait_for(|open| *open).await.unwrap();
            }
            Fate::GivenUp(d) => {
                let (fs, key2, body) = (self.fs.clone(), key.to_string(), body.clone());
                self.landing.lock().unwrap().push(tokio::spawn(async move {
                    gate.wait_for(|open| *open).await.unwrap();
                    tokio::time::sleep(d).await;
                    fs.put(&key2, body).await.unwrap();
                }));
                return Err(StoreError::Transient {
                    key: key.to_string(),
                    op: crate::error::Op::Put,
                    detail: "timed out (the PUT lands later)".into(),
                    source: None,
                });
            }
        }
        // The last write wins, conditional or not.
        below.put(key, body.clone()).await?;
        Ok(match call {
            Call::PutIfAbsent { .. } => Reply::Written(PutOutcome::Created),
            _ => Reply::Done,
        })
    }

    fn enforces_conditional_put(&self, _below: bool) -> bool {
        false
    }
}

async fn claim_on(
    store: &View,
    p: Option<&Passphrase>,
) -> Result<(ClusterInfo, Option<ObjectCipher>), KeyError> {
    claim(store, &ours(), p, FAST, &origin(), UnlockLimits::default()).await
}

/// Seals a WAL object as a writer let in would, right after its claim.
async fn seal_one(store: &dyn ObjectStore, cipher: Option<&ObjectCipher>, n: u32) -> String {
    let name = format!("wal/0000000100000000000000{n:02X}");
    let sealed = crate::envelope::seal_for(b"wal bytes", 1, cipher, &name);
    store.put(&name, sealed.body).await.unwrap();
    name
}

/// Checks the store from outside once every PUT has landed: `cluster.json` is what the
/// writers let in saw, a reader with the passphrase opens every object they sealed, and
/// the key file of the master key `cluster.json` names is there.
async fn check_store(
    fs: &FsStore,
    p: &Passphrase,
    let_in: &[(ClusterInfo, Option<ObjectCipher>)],
    sealed: &[String],
) {
    let stays = read_cluster(fs).await.unwrap().expect("cluster.json");
    for (seen, cipher) in let_in {
        assert_eq!(
            seen, &stays,
            "a writer was let in with another cluster.json"
        );
        assert_eq!(
            cipher.as_ref().map(ObjectCipher::key_check),
            stays.encryption.as_ref().map(|e| e.key_check.clone()),
            "a writer seals with another master key than cluster.json names"
        );
    }
    let reader = if stays.is_encrypted() { Some(p) } else { None };
    let cipher = reader_cipher(fs, reader, UnlockLimits::default())
        .await
        .unwrap();
    for name in sealed {
        let body = fs.get(name).await.unwrap();
        crate::envelope::open_for(&body, cipher.as_ref(), name)
            .unwrap_or_else(|e| panic!("{name} does not open with the store's key: {e}"));
    }
}

/// Two writers' views of `fs`: both find the store empty and make a key (their key files
/// land together, so neither sees the other's), then every other PUT of the first meets
/// `first`, of the second `second`.
fn two_writers(
    fs: &Arc<FsStore>,
    gate: watch::Receiver<bool>,
    first: Fate,
    second: Fate,
) -> (View, View) {
    let together = Arc::new(tokio::sync::Barrier::new(2));
    let view = |fate: Fate| {
        let together = together.clone();
        late_writes(fs.clone(), gate.clone(), move |key| {
            if key.starts_with(KEY_PREFIX) {
                Fate::Together(together.clone())
            } else {
                fate.clone()
            }
        })
    };
    (view(first), view(second))
}

/// A writer's PUTs time out while they are in flight and land after another writer has
/// claimed the store and sealed an object with its key: its `cluster.json` must not land
/// over the other's (it would name a master key nothing was sealed with).
#[tokio::test]
async fn a_claim_put_that_lands_after_its_writer_gave_up_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FsStore::open(dir.path().to_path_buf()).await.unwrap());
    let (open, gate) = watch::channel(false);
    let p = Passphrase::new("s3cret").unwrap();
    // Every PUT of the one times out at once and lands when the other is done, after the
    // other's slower PUTs.
    let (late, on_time) = two_writers(
        &fs,
        gate,
        Fate::GivenUp(Duration::ZERO),
        Fate::After(Duration::from_millis(100)),
    );

    let gave_up = claim_on(&late, Some(&p));
    let first = async {
        let won = claim_on(&on_time, Some(&p)).await.unwrap();
        let x = seal_one(&on_time, won.1.as_ref(), 1).await;
        open.send(true).unwrap();
        (won, x)
    };
    let (gave_up, (won, x)) = tokio::join!(gave_up, first);
    late.layer().landed().await;
    let mut let_in = vec![won.clone()];
    let_in.extend(gave_up.ok());
    check_store(&fs, &p, &let_in, std::slice::from_ref(&x)).await;

    // The writer that gave up starts again, and one more: both take the key that won.
    let again = claim_on(&late, Some(&p)).await.unwrap();
    let third = claim_on(&on_time, Some(&p)).await.unwrap();
    check_store(
        &fs,
        &p,
        &[won.clone(), again, third],
        std::slice::from_ref(&x),
    )
    .await;

    // With cluster.json lost, the agreement recorded under claims/ gives back the same.
    fs.delete(CLUSTER_KEY).await.unwrap();
    let back = claim_on(&on_time, Some(&p)).await.unwrap();
    check_store(&fs, &p, &[won, back], &[x]).await;
}

/// A writer's PUTs are held until another writer has claimed the store and sealed an
/// object; then they land and the writer goes on: it must take the other's master key,
/// and leave no key file of its own.
#[tokio::test]
async fn a_claim_held_until_another_writer_sealed_takes_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FsStore::open(dir.path().to_path_buf()).await.unwrap());
    let (open, gate) = watch::channel(false);
    let p = Passphrase::new("s3cret").unwrap();
    let (held, on_time) = two_writers(&fs, gate, Fate::Held, Fate::After(Duration::ZERO));

    let slow = claim_on(&held, Some(&p));
    let fast = async {
        let won = claim_on(&on_time, Some(&p)).await.unwrap();
        let x = seal_one(&on_time, won.1.as_ref(), 1).await;
        open.send(true).unwrap();
        (won, x)
    };
    let (slow, (won, x)) = tokio::join!(slow, fast);
    let slow = slow.unwrap();
    check_store(&fs, &p, &[won, slow], &[x]).await;
    assert_eq!(
        keys::list(fs.as_ref()).await.unwrap().len(),
        1,
        "the losing key file stayed"
    );
}

/// A writer without a passphrase and an encrypted one start together, one of them with
/// its PUTs held until the other is done (let in and sealed an object, or refused): never
/// both let in (the plaintext one would write plaintext into an encrypted store, or the
/// other way round), and one of them is.
#[tokio::test]
async fn a_plaintext_and_an_encrypted_writer_never_share_a_store() {
    let p = Passphrase::new("s3cret").unwrap();
    for plaintext_held in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(FsStore::open(dir.path().to_path_buf()).await.unwrap());
        let (open, gate) = watch::channel(false);
        let held = late_writes(fs.clone(), gate.clone(), |_| Fate::Held);
        let on_time = late_writes(fs.clone(), gate, |_| Fate::After(Duration::ZERO));
        let (slow_pass, fast_pass) = if plaintext_held {
            (None, Some(&p))
        } else {
            (Some(&p), None)
        };
        let slow = claim_on(&held, slow_pass);
        let fast = async {
            let r = claim_on(&on_time, fast_pass).await;
            let x = match &r {
                Ok((_, c)) => Some(seal_one(fs.as_ref(), c.as_ref(), 1).await),
                Err(_) => None,
            };
            open.send(true).unwrap();
            (r, x)
        };
        let (slow, (fast, x)) = tokio::join!(slow, fast);
        let let_in: Vec<_> = [slow, fast].into_iter().filter_map(Result::ok).collect();
        assert_eq!(let_in.len(), 1, "plaintext held: {plaintext_held}");
        check_store(&fs, &p, &let_in, &x.into_iter().collect::<Vec<_>>()).await;
    }
}

/// Several writers, some without a passphrase, start together; each PUT lands after a
/// random delay, and some are given up by their writer and land later still. Over many
/// seeds: every writer let in agrees with the `cluster.json` that stays, and everything
/// they sealed opens with the store's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_with_late_puts_agree_over_many_seeds() {
    let p = Passphrase::new("s3cret").unwrap();
    let seeds: u64 = std::env::var("PGAGENT_CLAIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 0..seeds {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(FsStore::open(dir.path().to_path_buf()).await.unwrap());
        let (open, gate) = watch::channel(false);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let encrypted = w == 0 || rng.gen_bool(0.8);
                let mut draws = rand::rngs::StdRng::seed_from_u64(rng.gen());
                let view = Arc::new(late_writes(fs.clone(), gate.clone(), move |_| {
                    if draws.gen_bool(0.1) {
                        Fate::GivenUp(Duration::from_millis(draws.gen_range(0..150)))
                    } else {
                        Fate::After(Duration::from_millis(draws.gen_range(0..25)))
                    }
                }));
                let start = Duration::from_millis(rng.gen_range(0..40));
                let (p, fs) = (p.clone(), fs.clone());
                let task = tokio::spawn({
                    let view = view.clone();
                    async move {
                        tokio::time::sleep(start).await;
                        let pass = encrypted.then_some(&p);
                        let r = claim_on(&view, pass).await;
                        let sealed = match &r {
                            Ok((_, c)) => Some(seal_one(fs.as_ref(), c.as_ref(), w.into()).await),
                            Err(_) => None,
                        };
                        (r, sealed)
                    }
                });
                (view, task)
            })
            .collect();
        let mut let_in = Vec::new();
        let mut sealed = Vec::new();
        let mut views = Vec::new();
        for (view, task) in writers {
            let (r, x) = task.await.unwrap();
            if let Ok(won) = r {
                let_in.push(won);
            }
            sealed.extend(x);
            views.push(view);
        }
        open.send(true).unwrap();
        for v in &views {
            v.layer().landed().await;
        }
        if let_in.is_empty() {
            continue; // every writer was refused or gave up: nothing to hold
        }
        check_store(&fs, &p, &let_in, &sealed).await;
        eprintln!("seed {seed}: {} of 4 writers let in", let_in.len());
    }
}
