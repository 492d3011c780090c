//! The workers behind the receiver: one lane of tasks per store, fed by one fan-out.
//!
//! ```text
//! compress pool ──► fan-out ──► lane 0: immutable uploader ──► store 0
//!                           └─► lane 1: immutable uploader ──► store 1  (+ backlog copier)
//! receiver ──► partial outlets ──► lane i: partial uploader ──► store i
//! ```
//!
//! The daemon and the simulation build the lanes with the same function ([`spawn_lanes`]).

use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{SegNo, TimelineId};

use pgagent_storage::ObjectStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::compress::Sealer;
use super::fanout::{fan_out, run_backlog, Backlog, LaneInlet};
use super::jobs::UploadJob;
use super::mailbox::PartialMailbox;
use super::partial_outlets::{PartialOutlet, PartialOutlets};
use super::shared::Shared;
use super::upload::Uploader;
use crate::config::StoreRole;

/// One store's lane as it is started.
#[derive(Debug, Clone)]
pub struct LaneSpec {
    /// Required or async.
    pub role: StoreRole,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Uploads in flight to it.
    pub concurrency: usize,
    /// Its `partial_interval`.
    pub partial_interval: Duration,
}

/// The running lanes.
pub struct LaneTasks {
    /// Where the receiver posts `.partial` views.
    pub outlets: PartialOutlets,
    /// Each lane's uploader, in lane order.
    pub uploaders: Vec<Uploader>,
    /// Each lane's backlog: what it copies from the required stores (a required lane's
    /// only at start, when it lags behind the resume point).
    pub backlogs: Vec<Arc<Backlog>>,
    /// The tasks that end once their queues are closed and drained: the fan-out, and each
    /// lane's immutable and partial uploaders.
    pub draining: Vec<JoinHandle<()>>,
    /// The tasks that end at shutdown: the backlog copiers.
    pub copiers: Vec<JoinHandle<()>>,
}

impl LaneTasks {
    /// Records that segment `segno` of `tli` may have deltas in lane `lane`'s store.
    pub fn may_have_deltas(&self, lane: usize, tli: TimelineId, segno: SegNo) {
        self.uploaders[lane].may_have_deltas(tli, segno);
    }
}

/// Starts every lane: its uploaders, its outlet (eager in synchronous mode for a required
/// store), and its backlog copier reading from the other required stores;
/// then the fan-out from `sealed` (the compress pool's output) to all of them.
pub fn spawn_lanes(
    specs: &[LaneSpec],
    sealed: mpsc::Receiver<UploadJob>,
    shared: &Arc<Shared>,
    sealer: &Sealer,
    synchronous: bool,
    shutdown: &CancellationToken,
) -> LaneTasks {
    let sources: Vec<(usize, Arc<dyn ObjectStore>)> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.role == StoreRole::Required)
        .map(|(i, s)| (i, s.store.clone()))
        .collect();
    let mut tasks = LaneTasks {
        outlets: PartialOutlets::new(Vec::new()),
        uploaders: Vec::new(),
        backlogs: Vec::new(),
        draining: Vec::new(),
        copiers: Vec::new(),
    };
    let mut inlets = Vec::new();
    let mut outlets = Vec::new();
    for (lane, spec) in specs.iter().enumerate() {
        let required = spec.role == StoreRole::Required;
        let uploader = Uploader::new(
            spec.store.clone(),
            lane,
            shared.clone(),
            spec.concurrency,
            shutdown.clone(),
        );
        // A small queue: a sealed segment is megabytes, and memory is bounded by what waits
        // here plus `concurrency` uploads in flight, per store.
        let (tx, rx) = mpsc::channel(2);
        let mailbox = Arc::new(PartialMailbox::new());
        tasks
            .draining
            .push(tokio::spawn(uploader.clone().run_immutable(rx)));
        tasks.draining.push(tokio::spawn(
            uploader
                .clone()
                .run_partials(mailbox.clone(), sealer.clone()),
        ));
        outlets.push(PartialOutlet::new(
            mailbox,
            spec.partial_interval,
            synchronous && required,
        ));
        let backlog = Arc::new(Backlog::default());
        let others: Vec<_> = sources
            .iter()
            .filter(|(i, _)| *i != lane)
            .map(|(_, s)| s.clone())
            .collect();
        tasks.copiers.push(tokio::spawn(run_backlog(
            uploader.clone(),
            backlog.clone(),
            others,
            sealer.cipher.clone(),
            shutdown.clone(),
        )));
        inlets.push(LaneInlet {
            tx,
            required,
            backlog: backlog.clone(),
        });
        tasks.backlogs.push(backlog);
        tasks.uploaders.push(uploader);
    }
    tasks.outlets = PartialOutlets::new(outlets);
    tasks.draining.push(tokio::spawn(fan_out(sealed, inlets)));
    tasks
}
