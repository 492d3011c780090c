//! The simulated world of one seed: the server, the bucket, the agent (restarted after each
//! crash from what the slot, staging and the bucket hold), and the event loop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use pgagent_protocol::{Lsn, SegNo, TimelineId, WalSegmentSize};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::ObjectStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::check::{Checker, ServerWal};
use super::parts::{draw_roles, staging_dir, SimLane};
use super::store::{Faults, SimStore};
use super::Stats;
use crate::config::StoreRole;
use crate::pipeline::receiver::Receiver;
use crate::pipeline::shared::Shared;
use crate::pipeline::Progress;

#[path = "world_start.rs"]
mod start;

/// The smallest segment PostgreSQL allows (`initdb --wal-segsize=1`): many segment
/// switches per seed.
const SEGMENT: u64 = 1 << 20;

const TLI: TimelineId = TimelineId(1);

/// The simulated server: WAL written so far, and the slot.
#[derive(Debug)]
struct Server {
    /// End of the WAL the server has written.
    written: Lsn,
    /// Its bytes.
    wal: ServerWal,
    /// The slot's `restart_lsn`: the last flush reported (`PhysicalConfirmReceivedLocation`
    /// in `src/backend/replication/walsender.c` sets it to whatever is reported).
    slot: Option<Lsn>,
}

/// One run of the agent, from its start to its crash.
struct Agent {
    receiver: Receiver,
    shared: Arc<Shared>,
    /// Next position the server sends on this connection.
    sent: Lsn,
    tasks: Vec<JoinHandle<()>>,
}

/// One seed's world.
pub struct World {
    rng: StdRng,
    seg: WalSegmentSize,
    /// Every store, in restore order (at least one required).
    lanes: Vec<SimLane>,
    staging: tempfile::TempDir,
    server: Server,
    agent: Option<Agent>,
    synchronous: bool,
    concurrency: usize,
    /// The stores' cipher (`None`: plaintext).
    cipher: Option<ObjectCipher>,
    /// The first segment streamed: checked from there at the end.
    first: SegNo,
    /// With several stores: checks what fetch serves from all of them read as one (a
    /// `ReadSet`, as `restore_command` reads them), held to every confirmed position.
    union: Option<Checker>,
    started: Instant,
    stats: Stats,
}

impl World {
    /// A world drawn from `seed`, with the agent started.
    pub async fn new(seed: u64) -> Result<World, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let seg = WalSegmentSize::new(SEGMENT).map_err(|e| e.to_string())?;
        // Half the seeds run an encrypted cluster: every object sealed for its own name,
        // one master key for every store. Drawn from a stream of its own, so the other
        // draws of a seed stay as they were.
        let cipher = StdRng::seed_from_u64(seed ^ 0xC1F3_E5ED)
            .gen_bool(0.5)
            .then(|| pgagent_storage::crypto::MasterKey::generate().cipher());
        // The server starts somewhere inside a segment, like a cluster with some history.
        let written = Lsn(SEGMENT * 3 + rng.gen_range(0..SEGMENT));
        let first = written.segment_number(seg);
        let roles = draw_roles(&mut rng, SEGMENT);
        let mut lanes = Vec::new();
        let mut drawn: Vec<Faults> = Vec::new();
        for role in roles {
            let faults = Faults::draw(&mut rng);
            drawn.push(faults);
            let store = SimStore::new(rng.gen(), faults);
            let partial_interval =
                Duration::from_secs(*[1, 1, 3, 10].get(rng.gen_range(0..4)).unwrap_or(&1));
            let checker = Checker::new(
                Arc::new(store.clone()),
                seg,
                TLI,
                first,
                &faults,
                cipher.clone(),
            )
            .with_sim(store.clone());
            lanes.push(SimLane {
                store,
                role,
                partial_interval,
                checker,
                down_until: None,
            });
        }
        let union = if lanes.len() > 1 {
            let members = lanes
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    (
                        format!("s{i}"),
                        Arc::new(l.store.clone()) as Arc<dyn ObjectStore>,
                    )
                })
                .collect();
            let set =
                pgagent_storage::read_set::ReadSet::new(members).map_err(|e| e.to_string())?;
            // Held to the lag of the store whose listings lag most.
            let worst = drawn
                .iter()
                .copied()
                .max_by_key(|f| {
                    if f.stale_list > 0.0 {
                        f.stale_window
                    } else {
                        Duration::ZERO
                    }
                })
                .expect("two stores");
            let sims = lanes.iter().map(|l| l.store.clone()).collect();
            Some(
                Checker::new(Arc::new(set), seg, TLI, first, &worst, cipher.clone())
                    .with_sims(sims),
            )
        } else {
            None
        };
        let mut world = World {
            union,
            synchronous: rng.gen_bool(0.5),
            concurrency: rng.gen_range(1..=8),
            cipher,
            rng,
            seg,
            lanes,
            staging: staging_dir()?,
            server: Server {
                written,
                wal: {
                    let base = written.segment_number(seg).start_lsn(seg);
                    let mut wal = ServerWal::new(base);
                    wal.extend_to(written);
                    wal
                },
                slot: None,
            },
            agent: None,
            first,
            started: Instant::now(),
            stats: Stats::default(),
        };
        world.start_agent().await?;
        Ok(world)
    }

    /// What the seed did.
    pub fn stats(&self) -> Stats {
        Stats {
            checks: self.lanes.iter().map(|l| l.checker.checks).sum::<usize>()
                + self.union.as_ref().map_or(0, |u| u.checks),
            confirmed: self.lanes[self.primary()].checker.confirmed_now().0,
            simulated: Instant::now().duration_since(self.started),
            stores: self.lanes.len(),
            ..self.stats
        }
    }

    /// The first required store: the one the resume point is decided with.
    fn primary(&self) -> usize {
        self.lanes
            .iter()
            .position(|l| l.role == StoreRole::Required)
            .unwrap_or(0)
    }

    /// The agent dies at once: its tasks stop mid-request (PUTs already sent still land),
    /// staging stays as it is, or with the host is lost too.
    async fn crash(&mut self, lose_staging: bool) -> Result<(), String> {
        if let Some(agent) = self.agent.take() {
            for t in &agent.tasks {
                t.abort();
            }
            drop(agent);
        }
        self.stats.crashes += 1;
        if lose_staging {
            self.stats.lost_staging += 1;
            self.staging = staging_dir()?;
        }
        let pause = self.rng.gen_range(0..3000);
        self.sleep(Duration::from_millis(pause)).await?;
        self.start_agent().await
    }

    /// Lets simulated time pass (uploads land meanwhile), checking after each moment.
    async fn sleep(&mut self, d: Duration) -> Result<(), String> {
        tokio::time::sleep(d).await;
        self.report();
        Ok(())
    }

    /// A standby status update: the tracker's flush goes to the server's slot.
    fn report(&mut self) {
        for l in &mut self.lanes {
            if l.down_until.is_some_and(|d| Instant::now() >= d) {
                l.store.set_down(false);
                l.down_until = None;
            }
        }
        let Some(agent) = &mut self.agent else { return };
        if agent
            .shared
            .frontier_moved
            .notified()
            .now_or_never()
            .is_some()
            && self.synchronous
        {
            // The previous partial landed: send what arrived meanwhile (as the session does).
            if let Err(e) = agent.receiver.on_partial_tick() {
                tracing::warn!("partial tick: {e:#}");
            }
        }
        let flush = agent.shared.flush_lsn();
        self.server.slot = Some(flush);
        // The other promise made from the pipeline's position: the CloudNativePG sidecar
        // answers `WAL.Archive` for a segment below it without storing it again, and
        // PostgreSQL may then recycle its only copy. Every required store must serve it.
        let archived = Progress(agent.shared.clone())
            .durable_end_on(TLI)
            .unwrap_or_default();
        for l in &mut self.lanes {
            if let Some(p) = l.promised(flush) {
                l.checker.confirmed(p);
            }
            if l.role == StoreRole::Required {
                l.checker.confirmed(archived);
            }
        }
        if let Some(u) = &mut self.union {
            u.confirmed(flush.max(archived));
        }
    }

    /// Runs `events` events, checking after each, then stops producing WAL, lets the agent
    /// finish its uploads and checks every segment since the first.
    pub async fn run(&mut self, events: usize) -> Result<(), String> {
        for _ in 0..events {
            self.event().await?;
            self.stats.events += 1;
            self.report();
            for (i, l) in self.lanes.iter_mut().enumerate() {
                if l.down_until.is_none() {
                    l.checker
                        .check(&self.server.wal, None)
                        .await
                        .map_err(|e| format!("store {i} ({:?}): {e}", l.role))?;
                }
            }
            // A listing of the set needs every store: checked while all of them answer.
            if let Some(u) = &mut self.union {
                if self.lanes.iter().all(|l| l.down_until.is_none()) {
                    u.check(&self.server.wal, None)
                        .await
                        .map_err(|e| format!("the stores read as one: {e}"))?;
                }
            }
        }
        // The end: the stores are back, the connection delivers what the server wrote, the
        // last .partial goes up, and everything lands, in every store.
        for l in &mut self.lanes {
            l.store.set_down(false);
            l.down_until = None;
        }
        self.deliver_all()?;
        if let Some(agent) = &mut self.agent {
            agent
                .receiver
                .close_partial()
                .map_err(|e| format!("{e:#}"))?;
        }
        for _ in 0..600 {
            self.sleep(Duration::from_secs(1)).await?;
            if self.drained() {
                break;
            }
        }
        self.sleep(Duration::from_secs(60)).await?;
        let confirmed = self.lanes[self.primary()].checker.confirmed_now();
        if confirmed < self.server.written {
            return Err(format!(
                "after the end: confirmed {confirmed}, but the server wrote up to {} and the \
                 stores were up for 10 minutes",
                self.server.written
            ));
        }
        // Every store, async ones included, caught up and serves everything.
        let written = self.server.written;
        for (i, l) in self.lanes.iter_mut().enumerate() {
            l.checker.confirmed(written);
            l.checker
                .check(&self.server.wal, Some(self.first))
                .await
                .map_err(|e| format!("store {i} ({:?}) at the end: {e}", l.role))?;
        }
        if let Some(u) = &mut self.union {
            u.confirmed(written);
            u.check(&self.server.wal, Some(self.first))
                .await
                .map_err(|e| format!("the stores read as one, at the end: {e}"))?;
        }
        Ok(())
    }

    fn drained(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| {
            let mut lanes = a.shared.lanes();
            let now = tokio::time::Instant::now().into_std();
            lanes.flush_lsn(now) >= self.server.written
                && lanes
                    .iter()
                    .all(|l| l.tracker.bucket_frontier() >= self.server.written)
                && a.receiver.outlets_empty()
        })
    }

    /// Hands the receiver everything the server wrote, in one message.
    fn deliver_all(&mut self) -> Result<(), String> {
        let written = self.server.written;
        let Some(agent) = &mut self.agent else {
            return Ok(());
        };
        if agent.sent < written {
            let data = Bytes::copy_from_slice(self.server.wal.range(agent.sent, written));
            agent
                .receiver
                .on_wal(TLI, agent.sent, data)
                .map_err(|e| format!("{e:#}"))?;
            agent.sent = written;
        }
        Ok(())
    }

    async fn event(&mut self) -> Result<(), String> {
        let roll = self.rng.gen_range(0..1000);
        match roll {
            // The server writes WAL (a commit, a burst).
            0..=299 => {
                let n = self.rng.gen_range(1..48 * 1024);
                self.server.written = self.server.written + n;
                self.server.wal.extend_to(self.server.written);
            }
            // WAL reaches the receiver, in a message of any size.
            300..=599 => {
                let written = self.server.written;
                let n = self.rng.gen_range(1..=96 * 1024);
                let synchronous = self.synchronous;
                let Some(agent) = &mut self.agent else {
                    return Ok(());
                };
                if agent.sent >= written {
                    return Ok(());
                }
                let end = Lsn((agent.sent.0 + n).min(written.0));
                let data = Bytes::copy_from_slice(self.server.wal.range(agent.sent, end));
                agent
                    .receiver
                    .on_wal(TLI, agent.sent, data)
                    .map_err(|e| format!("{e:#}"))?;
                agent.sent = end;
                if synchronous {
                    agent
                        .receiver
                        .on_partial_tick()
                        .map_err(|e| format!("{e:#}"))?;
                }
            }
            // The partial tick.
            600..=699 => {
                if let Some(agent) = &mut self.agent {
                    agent
                        .receiver
                        .on_partial_tick()
                        .map_err(|e| format!("{e:#}"))?;
                }
            }
            // Time passes.
            700..=969 => {
                let ms = if self.rng.gen_bool(0.1) {
                    self.rng.gen_range(0..20_000)
                } else {
                    self.rng.gen_range(0..400)
                };
                self.sleep(Duration::from_millis(ms)).await?;
            }
            // The connection drops: the session ends, the segment being filled goes up as
            // it is, and streaming resumes from that segment's start.
            970..=981 => {
                if let Some(agent) = &mut self.agent {
                    agent
                        .receiver
                        .close_partial()
                        .map_err(|e| format!("{e:#}"))?;
                    agent.sent = agent.receiver.resume_point();
                    self.stats.reconnects += 1;
                }
            }
            // kill -9, or the host lost with its staging.
            982..=993 => {
                let lose = self.rng.gen_bool(0.3);
                self.crash(lose).await?;
            }
            // A store goes down for a while (an async one for longer, at times).
            _ => {
                let i = self.rng.gen_range(0..self.lanes.len());
                let long = self.lanes[i].role != StoreRole::Required && self.rng.gen_bool(0.3);
                let secs = if long {
                    self.rng.gen_range(60..600)
                } else {
                    self.rng.gen_range(1..60)
                };
                let l = &mut self.lanes[i];
                if l.down_until.is_none() {
                    l.store.set_down(true);
                    l.down_until = Some(Instant::now() + Duration::from_secs(secs));
                    self.stats.outages += 1;
                }
            }
        }
        Ok(())
    }
}
