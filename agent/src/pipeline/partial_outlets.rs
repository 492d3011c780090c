//! Where the receiver's `.partial` views go: one mailbox per store, each at its own pace.
//!
//! Each store has its own `partial_interval` (1 s to a NAS, 10 s to R2 saves nine PUTs in
//! ten): a store is offered a view when its interval has passed since its last one, and in
//! synchronous mode a required store at once (a commit waits for every required store). A
//! store whose previous view is still waiting is not offered another (its uploader takes
//! the newest view when it is free), except the last view of a segment, which every store
//! gets. No I/O here: the receiver reads the view and posts the jobs this decides on.

use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{Lsn, SegNo, TimelineId, WalSegmentSize};
use tokio::time::Instant;

use super::jobs::{CompressJob, RawSource, WalObject};
use super::lanes::LaneId;
use super::mailbox::PartialMailbox;
use crate::staging::PartialView;

/// One store's outlet.
#[derive(Debug)]
pub struct PartialOutlet {
    /// The mailbox its partial uploader reads.
    pub mailbox: Arc<PartialMailbox>,
    /// Its `partial_interval`.
    pub interval: Duration,
    /// Offered a view as soon as WAL arrives (synchronous mode, required store).
    pub eager: bool,
    /// End of the last view posted to it.
    sent: Lsn,
    /// When it is next offered a view (not eager).
    due: Option<Instant>,
}

impl PartialOutlet {
    /// An outlet posting into `mailbox` every `interval` (at once when `eager`).
    pub fn new(mailbox: Arc<PartialMailbox>, interval: Duration, eager: bool) -> Self {
        PartialOutlet {
            mailbox,
            interval,
            eager,
            sent: Lsn::INVALID,
            due: None,
        }
    }
}

/// Every store's outlet, in lane order.
#[derive(Debug)]
pub struct PartialOutlets {
    outlets: Vec<PartialOutlet>,
}

impl PartialOutlets {
    /// Outlets in lane order.
    pub fn new(outlets: Vec<PartialOutlet>) -> Self {
        PartialOutlets { outlets }
    }

    /// How often the receiver should look: the shortest interval.
    pub fn tick(&self) -> Duration {
        self.outlets
            .iter()
            .map(|o| o.interval)
            .min()
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(10))
    }

    /// The stores that take a view ending at `pos` now. A store is due half a tick early:
    /// its last view went out a little after a tick, and waiting for the exact interval
    /// would skip every other tick.
    pub fn wanting(&self, pos: Lsn, now: Instant) -> Vec<LaneId> {
        let early = now + self.tick() / 2;
        (0..self.outlets.len())
            .filter(|&i| {
                let o = &self.outlets[i];
                pos > o.sent
                    && o.mailbox.is_empty()
                    && (o.eager || o.due.is_none_or(|d| early >= d))
            })
            .collect()
    }

    /// Posts `view` to `lanes` (every lane when `None`: a segment's last view), each that
    /// `news` says lacks it getting its own handle on the file. Returns the lanes posted to.
    ///
    /// Errors: the file cannot be opened again for a second store (out of descriptors).
    pub fn post(
        &mut self,
        view: PartialView,
        lanes: Option<&[LaneId]>,
        seg: WalSegmentSize,
        news: impl Fn(LaneId, TimelineId, SegNo, Lsn) -> bool,
        now: Instant,
    ) -> std::io::Result<Vec<LaneId>> {
        let start = view.segno.start_lsn(seg);
        let end = start + view.len;
        let all: Vec<LaneId> = (0..self.outlets.len()).collect();
        let mut posted = Vec::new();
        for &i in lanes.unwrap_or(&all) {
            let o = &mut self.outlets[i];
            if end <= o.sent || !news(i, view.tli, view.segno, end) {
                continue;
            }
            let job = CompressJob {
                object: WalObject::Partial {
                    tli: view.tli,
                    segno: view.segno,
                    start,
                    end,
                },
                source: RawSource::Range {
                    file: view.file.try_clone()?,
                    from: 0,
                    to: view.len,
                },
            };
            if o.mailbox.post(job) {
                o.sent = end;
                o.due = Some(now + o.interval);
                posted.push(i);
            }
        }
        Ok(posted)
    }

    /// Whether no store has a view waiting.
    #[cfg(test)]
    pub fn all_empty(&self) -> bool {
        self.outlets.iter().all(|o| o.mailbox.is_empty())
    }

    /// Closes every mailbox: the uploaders drain what is queued and end.
    pub fn close(&self) {
        for o in &self.outlets {
            o.mailbox.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> WalSegmentSize {
        WalSegmentSize::new(1 << 20).unwrap()
    }

    fn view(len: u64) -> PartialView {
        PartialView {
            tli: TimelineId(1),
            segno: SegNo(3),
            file: tempfile::tempfile().unwrap(),
            len,
        }
    }

    fn outlets() -> PartialOutlets {
        PartialOutlets::new(vec![
            PartialOutlet::new(Arc::default(), Duration::from_secs(1), true),
            PartialOutlet::new(Arc::default(), Duration::from_secs(10), false),
        ])
    }

    #[tokio::test(start_paused = true)]
    async fn each_store_is_offered_views_at_its_own_interval() {
        let mut o = outlets();
        assert_eq!(o.tick(), Duration::from_secs(1));
        let t0 = Instant::now();
        let pos = seg().bytes() * 3 + 100;
        assert_eq!(o.wanting(Lsn(pos), t0), vec![0, 1]);
        let posted = o
            .post(view(100), Some(&[0, 1]), seg(), |_, _, _, _| true, t0)
            .unwrap();
        assert_eq!(posted, vec![0, 1]);
        // Both views wait: nobody is offered another.
        assert!(o.wanting(Lsn(pos + 10), t0).is_empty());
        o.outlets[0].mailbox.next().await.unwrap();
        o.outlets[1].mailbox.next().await.unwrap();
        // The eager store takes the next one at once; the other only after 10 s.
        assert_eq!(o.wanting(Lsn(pos + 10), t0), vec![0]);
        assert_eq!(
            o.wanting(Lsn(pos + 10), t0 + Duration::from_secs(10)),
            vec![0, 1]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_view_posted_a_little_after_a_tick_does_not_skip_the_next_tick() {
        let mut o = outlets();
        let t0 = Instant::now();
        let late = t0 + Duration::from_millis(30);
        o.post(view(100), Some(&[0, 1]), seg(), |_, _, _, _| true, late)
            .unwrap();
        o.outlets[0].mailbox.next().await.unwrap();
        o.outlets[1].mailbox.next().await.unwrap();
        let pos = Lsn(3 * seg().bytes() + 200);
        // At the tick 10 s after t0 the 10 s store is due (its view went out at t0 + 30 ms),
        // not at 9 s.
        assert!(!o.wanting(pos, t0 + Duration::from_secs(9)).contains(&1));
        assert!(o.wanting(pos, t0 + Duration::from_secs(10)).contains(&1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_view_goes_to_every_store_that_lacks_it() {
        let mut o = outlets();
        let t0 = Instant::now();
        o.post(view(100), Some(&[0, 1]), seg(), |_, _, _, _| true, t0)
            .unwrap();
        // Store 0 already holds 200 bytes (say): only store 1 gets the final view, and its
        // queued shorter view is replaced.
        let posted = o
            .post(view(200), None, seg(), |lane, _, _, _| lane == 1, t0)
            .unwrap();
        assert_eq!(posted, vec![1]);
        let job = o.outlets[1].mailbox.next().await.unwrap();
        assert!(
            matches!(job.object, WalObject::Partial { end, .. } if end == Lsn(3 * seg().bytes() + 200))
        );
    }
}
