use std::time::{Duration, Instant};

use bytesize::ByteSize;
use pgagent_protocol::{Lsn, SegNo, TimelineId, WalSegmentSize};

use super::*;
use crate::config::{MaxLag, OnLagExceeded, StoreRole};

const SEG: u64 = 16 << 20;
const TLI: TimelineId = TimelineId(1);

fn seg() -> WalSegmentSize {
    WalSegmentSize::new(SEG).unwrap()
}

fn tracker() -> FlushTracker {
    FlushTracker::new(seg(), Lsn(SEG), Lsn(SEG))
}

fn lanes(roles: &[StoreRole]) -> Lanes {
    let lanes = roles
        .iter()
        .enumerate()
        .map(|(i, r)| Lane::new(format!("s{i}"), *r, tracker()))
        .collect();
    Lanes::new(lanes, true)
}

fn hold(bytes: Option<u64>, time: Option<Duration>) -> StoreRole {
    StoreRole::Async {
        max_lag: Some(MaxLag {
            time,
            bytes: bytes.map(ByteSize),
        }),
        on_lag_exceeded: OnLagExceeded::Hold,
    }
}

const ALERT: StoreRole = StoreRole::Async {
    max_lag: Some(MaxLag {
        time: Some(Duration::from_secs(1)),
        bytes: None,
    }),
    on_lag_exceeded: OnLagExceeded::Alert,
};

/// Segments 1..=n complete in lane `id`.
fn land(l: &mut Lanes, id: LaneId, n: u64) {
    for s in 1..=n {
        l.tracker(id).segment_uploaded(SegNo(s));
    }
}

#[test]
fn flush_is_the_lowest_end_of_the_required_stores() {
    let now = Instant::now();
    let mut l = lanes(&[StoreRole::Required, StoreRole::Required]);
    l.received(Lsn(5 * SEG), now);
    land(&mut l, 0, 3);
    land(&mut l, 1, 2);
    assert_eq!(l.flush_lsn(now), Lsn(3 * SEG));
    land(&mut l, 1, 4);
    assert_eq!(l.flush_lsn(now), Lsn(4 * SEG));
}

#[test]
fn an_async_store_that_only_alerts_never_holds_flush() {
    let now = Instant::now();
    let mut l = lanes(&[StoreRole::Required, ALERT]);
    l.received(Lsn(5 * SEG), now);
    land(&mut l, 0, 4);
    assert_eq!(l.flush_lsn(now), Lsn(5 * SEG));
    assert!(!l.lane(1).is_required());
    let later = now + Duration::from_secs(5);
    assert!(l.iter_mut().nth(1).unwrap().lag_exceeded(later));
}

#[test]
fn hold_keeps_flush_within_max_lag_bytes_of_the_async_store() {
    let now = Instant::now();
    let mut l = lanes(&[StoreRole::Required, hold(Some(SEG), None)]);
    l.received(Lsn(6 * SEG), now);
    land(&mut l, 0, 5);
    // The async store holds nothing past the start (segment 1): flush ≤ its end + 1 segment.
    assert_eq!(l.flush_lsn(now), Lsn(2 * SEG));
    land(&mut l, 1, 2);
    assert_eq!(l.flush_lsn(now), Lsn(4 * SEG));
    land(&mut l, 1, 5);
    assert_eq!(
        l.flush_lsn(now),
        Lsn(6 * SEG),
        "the required store limits again"
    );
}

#[test]
fn hold_by_time_stops_flush_while_the_async_store_is_too_old() {
    let t0 = Instant::now();
    let mut l = lanes(&[
        StoreRole::Required,
        hold(None, Some(Duration::from_secs(10))),
    ]);
    l.received(Lsn(3 * SEG), t0);
    land(&mut l, 0, 2);
    assert_eq!(l.flush_lsn(t0), Lsn(3 * SEG), "within max_lag.time");
    l.received(Lsn(5 * SEG), t0 + Duration::from_secs(1));
    land(&mut l, 0, 4);
    let late = t0 + Duration::from_secs(11);
    assert_eq!(l.flush_lsn(late), Lsn(3 * SEG), "frozen while too old");
    land(&mut l, 1, 4);
    assert_eq!(l.flush_lsn(late), Lsn(5 * SEG), "moves once it caught up");
}

#[test]
fn flush_never_goes_backwards_and_restarts_at_a_rebase() {
    let now = Instant::now();
    let mut l = lanes(&[StoreRole::Required, hold(Some(SEG), None)]);
    l.received(Lsn(3 * SEG), now);
    land(&mut l, 0, 2);
    land(&mut l, 1, 2);
    assert_eq!(l.flush_lsn(now), Lsn(3 * SEG));
    l.rebase(Lsn(10 * SEG));
    assert_eq!(l.flush_lsn(now), Lsn(10 * SEG));
}

#[test]
fn a_delta_is_news_per_store() {
    let now = Instant::now();
    let mut l = lanes(&[StoreRole::Required, ALERT]);
    l.received(Lsn(2 * SEG), now);
    l.tracker(0)
        .partial_uploaded(TLI, SegNo(1), Lsn(SEG), Lsn(SEG + 100));
    assert!(!l.partial_is_news(0, TLI, SegNo(1), Lsn(SEG + 100)));
    assert!(l.partial_is_news(1, TLI, SegNo(1), Lsn(SEG + 100)));
}

#[test]
fn with_confirm_staging_flush_is_what_staging_holds() {
    let now = Instant::now();
    let mut l = Lanes::new(vec![Lane::new("a", StoreRole::Required, tracker())], false);
    l.staged(Lsn(2 * SEG + 5));
    assert_eq!(l.flush_lsn(now), Lsn(2 * SEG + 5));
}
