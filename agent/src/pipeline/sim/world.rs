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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::check::{Checker, ServerWal};
use super::store::{Faults, SimStore};
use super::Stats;
use crate::metrics::Metrics;
use crate::pipeline::compress::Sealer;
use crate::pipeline::jobs::{CompressJob, RawSource, UploadJob, WalObject};
use crate::pipeline::mailbox::PartialMailbox;
use crate::pipeline::receiver::{Outlets, Receiver};
use crate::pipeline::resume::{self, StoredPartial};
use crate::pipeline::shared::Shared;
use crate::pipeline::tracker_for;
use crate::pipeline::upload::Uploader;
use crate::server::ServerInfo;
use crate::staging::StagingWriter;

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
    partials: Arc<PartialMailbox>,
}

/// One seed's world.
pub struct World {
    rng: StdRng,
    seg: WalSegmentSize,
    store: SimStore,
    staging: tempfile::TempDir,
    server: Server,
    agent: Option<Agent>,
    synchronous: bool,
    concurrency: usize,
    /// The store's cipher (`None`: plaintext).
    cipher: Option<ObjectCipher>,
    checker: Checker,
    /// The first segment streamed: checked from there at the end.
    first: SegNo,
    /// The bucket is down until then.
    down_until: Option<Instant>,
    started: Instant,
    stats: Stats,
}

impl World {
    /// A world drawn from `seed`, with the agent started.
    pub async fn new(seed: u64) -> Result<World, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let faults = Faults::draw(&mut rng);
        let store = SimStore::new(rng.gen(), faults);
        let seg = WalSegmentSize::new(SEGMENT).map_err(|e| e.to_string())?;
        let dyn_store: Arc<dyn ObjectStore> = Arc::new(store.clone());
        // Half the seeds run an encrypted store: every object sealed for its own name. Drawn
        // from a stream of its own, so the other draws of a seed stay as they were.
        let cipher = StdRng::seed_from_u64(seed ^ 0xC1F3_E5ED)
            .gen_bool(0.5)
            .then(|| pgagent_storage::crypto::MasterKey::generate().cipher());
        // The server starts somewhere inside a segment, like a cluster with some history.
        let written = Lsn(SEGMENT * 3 + rng.gen_range(0..SEGMENT));
        let mut world = World {
            synchronous: rng.gen_bool(0.5),
            concurrency: rng.gen_range(1..=8),
            cipher: cipher.clone(),
            rng,
            seg,
            store: store.clone(),
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
            checker: Checker::new(
                dyn_store,
                seg,
                TLI,
                written.segment_number(seg),
                &faults,
                cipher.clone(),
            )
            .with_sim(store.clone()),
            first: written.segment_number(seg),
            down_until: None,
            started: Instant::now(),
            stats: Stats::default(),
        };
        world.start_agent().await?;
        Ok(world)
    }

    /// What the seed did.
    pub fn stats(&self) -> Stats {
        Stats {
            checks: self.checker.checks,
            confirmed: self.checker.confirmed_now().0,
            simulated: Instant::now().duration_since(self.started),
            ..self.stats
        }
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(self.store.clone())
    }

    /// Starts the agent as `pgagent run` does after a (re)start: the resume decision from
    /// the slot, staging and the bucket, the tracker it seeds, the uploaders, the leftovers.
    async fn start_agent(&mut self) -> Result<(), String> {
        let seg = self.seg;
        let server = ServerInfo {
            system_id: 1,
            timeline: TLI,
            xlogpos: self.server.written,
            seg,
            version_num: 150_000,
        };
        let store = self.store();
        let slot = self.server.slot.map(|l| (l, Some(TLI)));
        let resume = resume::decide(
            &server,
            None,
            slot,
            self.staging.path(),
            store.as_ref(),
            None,
        )
        .await
        .map_err(|e| format!("resume: {e:#}"))?;
        let plan = resume.plan;
        let shared = Arc::new(Shared::new(
            seg,
            true,
            tracker_for(&resume, seg),
            Arc::new(Metrics::new()),
        ));
        let sealer = Sealer {
            level: 1,
            seg,
            cipher: self.cipher.clone(),
        };
        let (seg_tx, seg_rx) = crossbeam_channel::unbounded::<CompressJob>();
        let (upload_tx, upload_rx) = mpsc::channel::<UploadJob>(2);
        let partials = Arc::new(PartialMailbox::new());
        let shutdown = CancellationToken::new();
        let uploader = Uploader::new(store, shared.clone(), self.concurrency, shutdown);
        if resume.stored_partial != StoredPartial::None {
            uploader.may_have_deltas(plan.tli, plan.start.segment_number(seg));
        }
        let tasks = vec![
            tokio::spawn(uploader.clone().run_immutable(upload_rx)),
            tokio::spawn(uploader.run_partials(partials.clone(), sealer.clone())),
            tokio::spawn(compress(seg_rx, upload_tx, sealer)),
        ];
        for s in &resume.leftovers {
            let job = CompressJob {
                object: WalObject::Segment {
                    tli: s.tli,
                    segno: s.segno,
                },
                source: RawSource::Path(s.path.clone()),
            };
            seg_tx.send(job).map_err(|e| e.to_string())?;
        }
        let writer = StagingWriter::new(self.staging.path(), seg).map_err(|e| e.to_string())?;
        let outlets = Outlets {
            segments: seg_tx,
            partials: partials.clone(),
            partial_interval: Duration::from_secs(1),
            status_interval: Duration::from_secs(10),
            quota: u64::MAX,
            synchronous: self.synchronous,
        };
        let receiver = Receiver::new(shared.clone(), writer, outlets, plan.start);
        self.agent = Some(Agent {
            receiver,
            shared,
            sent: plan.start,
            tasks,
            partials,
        });
        Ok(())
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
        if let Some(down) = self.down_until {
            if Instant::now() >= down {
                self.store.set_down(false);
                self.down_until = None;
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
        let flush = agent.shared.tracker().flush_lsn(true);
        self.server.slot = Some(flush);
        self.checker.confirmed(flush);
    }

    /// Runs `events` events, checking after each, then stops producing WAL, lets the agent
    /// finish its uploads and checks every segment since the first.
    pub async fn run(&mut self, events: usize) -> Result<(), String> {
        for _ in 0..events {
            self.event().await?;
            self.stats.events += 1;
            self.report();
            if self.down_until.is_none() {
                self.checker.check(&self.server.wal, None).await?;
            }
        }
        // The end: the bucket is back, the connection delivers what the server wrote, the
        // last .partial goes up, and everything lands.
        self.store.set_down(false);
        self.down_until = None;
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
        let confirmed = self.checker.confirmed_now();
        if confirmed < self.server.written {
            return Err(format!(
                "after the end: confirmed {confirmed}, but the server wrote up to {} and the \
                 bucket was up for 10 minutes",
                self.server.written
            ));
        }
        self.checker.check(&self.server.wal, Some(self.first)).await
    }

    fn drained(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| {
            let t = a.shared.tracker();
            t.flush_lsn(true) >= self.server.written && a.partials.is_empty()
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
            // The bucket goes down for a while.
            _ => {
                if self.down_until.is_none() {
                    let secs = self.rng.gen_range(1..60);
                    self.store.set_down(true);
                    self.down_until = Some(Instant::now() + Duration::from_secs(secs));
                    self.stats.outages += 1;
                }
            }
        }
        Ok(())
    }
}

/// A staging directory in memory where the machine has one (`/dev/shm`): the simulation
/// fsyncs as the agent does, and a disk's fsyncs would cost most of its time.
fn staging_dir() -> Result<tempfile::TempDir, String> {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.map_err(|e| format!("staging directory: {e}"))
}

/// The compress workers' part, on the simulation's thread: seals each staged segment or
/// history file as the pool does ([`Sealer::seal`]) and queues it for upload.
async fn compress(
    rx: crossbeam_channel::Receiver<CompressJob>,
    tx: mpsc::Sender<UploadJob>,
    sealer: Sealer,
) {
    loop {
        match rx.try_recv() {
            Ok(job) => match sealer.seal(job) {
                Ok(up) => {
                    if tx.send(up).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!("seal: {e}"),
            },
            Err(crossbeam_channel::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => return,
        }
    }
}
