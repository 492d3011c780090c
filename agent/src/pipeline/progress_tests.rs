//! [`Progress::durable_end_on`]: the position `WAL.Archive` answers from is the required
//! stores' durable end, and only on the timeline being streamed.

use std::sync::Arc;
use std::time::Instant;

use pgagent_protocol::{Lsn, SegNo, TimelineId, WalSegmentSize};

use super::lanes::{Lane, Lanes};
use super::shared::Shared;
use super::Progress;
use crate::config::{OnLagExceeded, StoreRole};
use crate::metrics::Metrics;
use crate::tracker::FlushTracker;

const SEG: u64 = 1 << 20;

/// A pipeline with one required and one async store, both holding WAL up to segment 1's
/// start, then WAL received up to the middle of segment 3 with segment 1 uploaded to the
/// required store only.
fn progress() -> Progress {
    let seg = WalSegmentSize::new(SEG).unwrap();
    let lane = |name: &str, role| Lane::new(name, role, FlushTracker::new(seg, Lsn(SEG), Lsn(SEG)));
    let lanes = Lanes::new(
        vec![
            lane("required", StoreRole::Required),
            lane(
                "async",
                StoreRole::Async {
                    max_lag: None,
                    on_lag_exceeded: OnLagExceeded::Alert,
                },
            ),
        ],
        true,
    );
    let shared = Arc::new(Shared::new(seg, lanes, Arc::new(Metrics::new())));
    {
        let mut lanes = shared.lanes();
        lanes.received(Lsn(3 * SEG + SEG / 2), Instant::now());
        lanes.staged(Lsn(3 * SEG + SEG / 2));
        let required = lanes.iter_mut().next().unwrap();
        required.tracker.segment_uploaded(SegNo(1));
    }
    Progress(shared)
}

#[test]
fn it_is_the_required_stores_end_on_the_streamed_timeline_only() {
    let p = progress();
    assert_eq!(
        p.durable_end_on(TimelineId(1)),
        None,
        "nothing streamed yet"
    );
    p.0.live().timeline = Some(TimelineId(2));
    assert_eq!(
        p.durable_end_on(TimelineId(1)),
        None,
        "another timeline streamed"
    );
    p.0.live().timeline = Some(TimelineId(1));
    // Segment 1 is in the required store; segments 2 and 3 are only received.
    assert_eq!(p.durable_end_on(TimelineId(1)), Some(Lsn(2 * SEG)));
    assert_eq!(p.positions().received, Lsn(3 * SEG + SEG / 2));
}
