//! The simulated bucket: an in-memory [`ObjectStore`] whose every answer is drawn from the
//! seed: how long a request takes, whether it fails, whether a PUT that failed landed
//! anyway, whether a listing misses recent writes or still shows recent deletes.
//!
//! A PUT lands from a task of its own, so a PUT in flight when the agent crashes still lands
//! later (or not), as a request a killed process sent does on a real store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pgagent_storage::error::Op;
use pgagent_storage::{
    validate_key, validate_prefix, LockMode, LockPolicy, ObjectMeta, ObjectStore, PutOutcome,
    Retention, StoreError,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How a simulated store misbehaves: probabilities per request, durations.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Longest latency of an ordinary request.
    pub latency: Duration,
    /// Chance that a request is slow, and how slow it may be.
    pub slow: (f64, Duration),
    /// Chance that a request fails with a transient error.
    pub fail: f64,
    /// Chance that a listing leaves out objects written, and shows objects deleted, within
    /// `stale_window` before it.
    pub stale_list: f64,
    /// How far back a stale listing lags.
    pub stale_window: Duration,
    /// Whether `put_if_absent` is enforced (file systems, AWS S3) or overwrites (Garage).
    pub conditional_put: bool,
    /// Whether the store locks what it writes (`store.lock`): the agent then leaves the
    /// deltas of complete segments in place.
    pub lock: bool,
}

impl Faults {
    /// Faults drawn from `rng`: each seed gets its own mix, from a quiet store to a bad one.
    pub fn draw(rng: &mut StdRng) -> Faults {
        Faults {
            latency: Duration::from_millis(rng.gen_range(1..200)),
            slow: (
                rng.gen_range(0.0..0.1),
                Duration::from_millis(rng.gen_range(200..5000)),
            ),
            fail: rng.gen_range(0.0..0.2),
            stale_list: rng.gen_range(0.0..0.5),
            stale_window: Duration::from_millis(rng.gen_range(1..2000)),
            conditional_put: rng.gen_bool(0.5),
            lock: rng.gen_bool(0.25),
        }
    }
}

#[derive(Debug)]
struct Object {
    body: Bytes,
    written: Instant,
}

#[derive(Debug)]
struct State {
    objects: BTreeMap<String, Object>,
    /// Objects deleted, with when: a stale listing still shows them.
    deleted: BTreeMap<String, (Object, Instant)>,
    rng: StdRng,
    faults: Faults,
    /// While true every request fails (the bucket is down).
    down: bool,
    /// Puts and deletes applied so far.
    changes: u64,
}

/// The simulated bucket; clones share it.
#[derive(Debug, Clone)]
pub struct SimStore {
    state: Arc<Mutex<State>>,
}

/// What a request will do, drawn when it starts.
struct Draw {
    wait: Duration,
    fail: bool,
    /// A failing PUT lands anyway (its answer was lost).
    lands_anyway: bool,
    stale: bool,
}

impl SimStore {
    /// An empty store misbehaving as `faults` says, drawing from `seed`.
    pub fn new(seed: u64, faults: Faults) -> SimStore {
        SimStore {
            state: Arc::new(Mutex::new(State {
                objects: BTreeMap::new(),
                deleted: BTreeMap::new(),
                rng: StdRng::seed_from_u64(seed),
                faults,
                down: false,
                changes: 0,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the bucket down or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Puts and deletes applied so far: the checker skips a check when nothing changed.
    pub fn changes(&self) -> u64 {
        self.state().changes
    }

    /// Every key under `prefix` now, with when it was written (for failure reports).
    pub fn keys(&self, prefix: &str) -> Vec<(String, Instant)> {
        self.state()
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| (k.clone(), o.written))
            .collect()
    }

    fn draw(&self) -> Draw {
        let mut s = self.state();
        let f = s.faults;
        let slow = s.rng.gen_bool(f.slow.0);
        let wait = if slow {
            f.slow.1.mul_f64(s.rng.gen_range(0.0..1.0))
        } else {
            f.latency.mul_f64(s.rng.gen_range(0.0..1.0))
        };
        let fail = s.down || s.rng.gen_bool(f.fail);
        let lands_anyway = s.rng.gen_bool(0.5);
        let stale = s.rng.gen_bool(f.stale_list);
        Draw {
            wait,
            fail,
            lands_anyway,
            stale,
        }
    }

    fn put_now(&self, key: &str, body: Bytes, if_absent: bool) -> PutOutcome {
        let mut s = self.state();
        let enforced = s.faults.conditional_put;
        if if_absent && enforced && s.objects.contains_key(key) {
            return PutOutcome::Exists;
        }
        s.deleted.remove(key);
        s.changes += 1;
        // An overwrite keeps the key listed as it was: only a new key can be missed.
        let written = s.objects.get(key).map_or_else(Instant::now, |o| o.written);
        s.objects.insert(key.to_string(), Object { body, written });
        PutOutcome::Created
    }

    /// A PUT: it lands from its own task after the drawn wait, so a crash of the caller
    /// does not stop it.
    async fn put_inner(
        &self,
        key: &str,
        body: Bytes,
        if_absent: bool,
    ) -> Result<PutOutcome, StoreError> {
        validate_key(key)?;
        let d = self.draw();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let k = key.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(d.wait).await;
            let outcome = (!d.fail || d.lands_anyway).then(|| me.put_now(&k, body, if_absent));
            let _ = tx.send(outcome);
        });
        match rx.await {
            Ok(Some(outcome)) if !d.fail => Ok(outcome),
            _ => Err(transient(key, Op::Put)),
        }
    }
}

fn transient(key: &str, op: Op) -> StoreError {
    StoreError::Transient {
        key: key.to_string(),
        op,
        detail: "simulated failure".into(),
        source: None,
    }
}

fn not_found(key: &str) -> StoreError {
    StoreError::NotFound {
        key: key.to_string(),
    }
}

#[async_trait]
impl ObjectStore for SimStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        self.put_inner(key, body, false).await.map(|_| ())
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        self.put_inner(key, body, true).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.get_range(key, 0, u64::MAX).await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        validate_key(key)?;
        let d = self.draw();
        tokio::time::sleep(d.wait).await;
        if d.fail {
            return Err(transient(key, Op::Get));
        }
        let s = self.state();
        let body = &s.objects.get(key).ok_or_else(|| not_found(key))?.body;
        let from = usize::try_from(start).unwrap_or(usize::MAX).min(body.len());
        let to = from
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
            .min(body.len());
        Ok(body.slice(from..to))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        validate_key(key)?;
        let d = self.draw();
        tokio::time::sleep(d.wait).await;
        if d.fail {
            return Err(transient(key, Op::Head));
        }
        Ok(self.state().objects.get(key).map(|o| ObjectMeta {
            key: key.to_string(),
            size: o.body.len() as u64,
            last_modified: None,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        let d = self.draw();
        tokio::time::sleep(d.wait).await;
        if d.fail {
            return Err(transient(prefix, Op::List));
        }
        let s = self.state();
        let now = Instant::now();
        let window = s.faults.stale_window;
        let recent = |at: Instant| d.stale && now.duration_since(at) < window;
        let mut out: BTreeMap<&String, u64> = s
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, o)| !recent(o.written))
            .map(|(k, o)| (k, o.body.len() as u64))
            .collect();
        // A stale listing still shows what was deleted recently.
        for (k, (o, at)) in s.deleted.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if recent(*at) && !recent(o.written) {
                out.insert(k, o.body.len() as u64);
            }
        }
        Ok(out
            .into_iter()
            .map(|(k, size)| ObjectMeta {
                key: k.clone(),
                size,
                last_modified: None,
            })
            .collect())
    }

    /// One simulated request, as on S3: the listing's faults and staleness, then the
    /// window after `after`.
    async fn list_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(after)?;
        Ok(pgagent_storage::list_window(
            self.list(prefix).await?,
            after,
            limit,
        ))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        let d = self.draw();
        tokio::time::sleep(d.wait).await;
        if d.fail && !d.lands_anyway {
            return Err(transient(key, Op::Delete));
        }
        let mut s = self.state();
        s.changes += 1;
        if let Some(o) = s.objects.remove(key) {
            s.deleted.insert(key.to_string(), (o, Instant::now()));
        }
        if d.fail {
            return Err(transient(key, Op::Delete));
        }
        Ok(())
    }

    async fn retention(&self, key: &str) -> Result<Option<Retention>, StoreError> {
        validate_key(key)?;
        match self.state().objects.contains_key(key) {
            true => Ok(None),
            false => Err(StoreError::NotFound { key: key.into() }),
        }
    }

    /// Locks are not modelled beyond the policy: what they change for the pipeline is that
    /// it deletes nothing.
    async fn extend_retention(&self, key: &str, _until: SystemTime) -> Result<(), StoreError> {
        validate_key(key)?;
        match self.state().faults.lock {
            true => Ok(()),
            false => Err(StoreError::Config {
                detail: "the simulated store has no object lock".into(),
            }),
        }
    }

    fn lock_policy(&self) -> Option<LockPolicy> {
        self.state().faults.lock.then_some(LockPolicy {
            mode: LockMode::Governance,
            days: 1,
        })
    }

    fn enforces_conditional_put(&self) -> bool {
        self.state().faults.conditional_put
    }

    fn describe(&self) -> String {
        "sim://bucket".into()
    }
}
