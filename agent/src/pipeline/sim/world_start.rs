//! The simulated agent's start-up, as `pgagent run` does it after a (re)start: the resume
//! decision from the slot, staging and the first required store, each store's lane from
//! what it holds, the catch-up of the other stores, the leftovers.

use std::sync::Arc;
use std::time::Duration;

use pgagent_storage::ObjectStore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Agent, World, TLI};
use crate::metrics::Metrics;
use crate::pipeline::catch_up;
use crate::pipeline::compress::Sealer;
use crate::pipeline::jobs::{CompressJob, RawSource, UploadJob, WalObject};
use crate::pipeline::lanes::{Lane, Lanes};
use crate::pipeline::receiver::{Outlets, Receiver};
use crate::pipeline::resume::{self, StoredPartial};
use crate::pipeline::shared::Shared;
use crate::pipeline::sim::parts::compress;
use crate::pipeline::workers::{spawn_lanes, LaneSpec};
use crate::pipeline::{pin_targets, tracker_for};
use crate::server::ServerInfo;
use crate::staging::StagingWriter;

impl World {
    /// Starts the agent as `pgagent run` does after a (re)start: the resume decision from
    /// the slot, staging and the first required store, each store's lane from what it
    /// holds, the leftovers.
    pub(super) async fn start_agent(&mut self) -> Result<(), String> {
        let seg = self.seg;
        let server = ServerInfo {
            system_id: 1,
            timeline: TLI,
            xlogpos: self.server.written,
            seg,
            version_num: 150_000,
        };
        let primary = self.primary();
        let stores: Vec<Arc<dyn ObjectStore>> = self
            .lanes
            .iter()
            .map(|l| Arc::new(l.store.clone()) as Arc<dyn ObjectStore>)
            .collect();
        let slot = self.server.slot.map(|l| (l, Some(TLI)));
        let resume = resume::decide(
            &server,
            None,
            slot,
            self.staging.path(),
            stores[primary].as_ref(),
            self.cipher.as_ref(),
        )
        .await
        .map_err(|e| format!("resume: {e:#}"))?;
        let plan = resume.plan;
        let mut views = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            views.push(if i == primary {
                resume.stored_partial
            } else {
                resume::stored_partial_of(store.as_ref(), self.cipher.as_ref(), &plan, seg).await
            });
        }
        let lanes = self
            .lanes
            .iter()
            .zip(&views)
            .enumerate()
            .map(|(i, (l, v))| {
                Lane::new(
                    format!("s{i}"),
                    l.role,
                    tracker_for(&resume, *v, i == primary, seg),
                )
            })
            .collect();
        let shared = Arc::new(Shared::new(
            seg,
            Lanes::new(lanes, true),
            Arc::new(Metrics::new()),
        ));
        let sealer = Sealer {
            level: 1,
            seg,
            cipher: self.cipher.clone(),
        };
        let (seg_tx, seg_rx) = crossbeam_channel::unbounded::<CompressJob>();
        let (upload_tx, upload_rx) = mpsc::channel::<UploadJob>(2);
        let shutdown = CancellationToken::new();
        let specs: Vec<LaneSpec> = self
            .lanes
            .iter()
            .zip(&stores)
            .map(|(l, store)| LaneSpec {
                role: l.role,
                store: store.clone(),
                concurrency: self.concurrency,
                partial_interval: l.partial_interval,
            })
            .collect();
        let mut lane_tasks = spawn_lanes(
            &specs,
            upload_rx,
            &shared,
            &sealer,
            self.synchronous,
            &shutdown,
        );
        let segno = plan.start.segment_number(seg);
        for (i, v) in views.iter().enumerate() {
            if *v != StoredPartial::None {
                lane_tasks.may_have_deltas(i, plan.tli, segno);
            }
            if i != primary {
                let lane = catch_up::LaneStores {
                    lane: i,
                    name: format!("s{i}"),
                    store: stores[i].clone(),
                    source: stores[primary].clone(),
                    pin_targets: pin_targets(&specs, i),
                };
                catch_up::spawn(
                    &mut lane_tasks,
                    &shared,
                    lane,
                    &plan,
                    self.cipher.clone(),
                    &shutdown,
                );
            }
        }
        let mut tasks = lane_tasks.draining;
        tasks.extend(lane_tasks.copiers);
        tasks.push(tokio::spawn(compress(seg_rx, upload_tx, sealer)));
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
            partials: lane_tasks.outlets,
            status_interval: Duration::from_secs(10),
            quota: u64::MAX,
            synchronous: self.synchronous,
        };
        let receiver = Receiver::new(shared.clone(), writer, outlets, plan.start);
        // The timeline streamed, as a session sets it when it starts (`Receiver::session`):
        // from here on `WAL.Archive` may answer from the pipeline's position (see `report`).
        shared.live().timeline = Some(TLI);
        self.agent = Some(Agent {
            receiver,
            shared,
            sent: plan.start,
            tasks,
        });
        Ok(())
    }
}
