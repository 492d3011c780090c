//! The daemon's last hour of store traffic, for `status.json`: requests per hour by
//! operation, and bytes uploaded per byte of WAL received.
//!
//! The counters involved only grow (`pgagent_store_requests_total`,
//! `pgagent_upload_bytes_total`, the received LSN), so a rate over a window is the difference
//! between a sample now and a sample from the window's start. [`Window`] keeps one sample a
//! minute for the last hour, a few dozen numbers, and compares each new reading with the
//! oldest one it holds: the window is an hour once the daemon has run that long, and the
//! time since its first sample before.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use pgagent_protocol::Lsn;
use pgagent_storage::RequestTotals;

use crate::statusfile::{ByOp, Usage};

/// How far back [`Window::last_hour`] looks.
pub const HOUR: Duration = Duration::from_secs(3600);
/// How often [`Window::last_hour`] keeps a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Store requests so far, by operation.
    pub requests: RequestTotals,
    /// WAL bytes uploaded so far, before compression (`pgagent_upload_bytes_total{stage="raw"}`).
    pub raw_bytes: u64,
    /// Bytes stored so far for those uploads (`pgagent_upload_bytes_total{stage="stored"}`).
    pub stored_bytes: u64,
    /// End of WAL received from the server.
    pub received: Lsn,
}

/// Samples of [`Counters`] over a sliding window (see the module documentation).
#[derive(Debug, Clone)]
pub struct Window {
    span: Duration,
    every: Duration,
    /// Oldest first, at least `every` apart; the oldest is at most `span` old.
    samples: VecDeque<(Instant, Counters)>,
}

impl Window {
    /// A window of `span`, keeping a sample every `every`.
    pub fn new(span: Duration, every: Duration) -> Window {
        Window {
            span,
            every,
            samples: VecDeque::new(),
        }
    }

    /// The last hour, one sample a minute.
    pub fn last_hour() -> Window {
        Window::new(HOUR, SAMPLE_EVERY)
    }

    /// Takes the counters read at `at` (times never go backwards), and returns the usage
    /// between the oldest sample still in the window and them; `None` on the first call,
    /// when there is no interval yet.
    pub fn observe(&mut self, at: Instant, now: Counters) -> Option<Usage> {
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > self.span)
        {
            self.samples.pop_front();
        }
        let due = self
            .samples
            .back()
            .is_none_or(|(t, _)| at.saturating_duration_since(*t) >= self.every);
        if due {
            self.samples.push_back((at, now));
        }
        let (since, base) = self.samples.front()?;
        usage(base, &now, at.saturating_duration_since(*since))
    }
}

/// The usage between the counters `base` and `now`, taken `window` apart; `None` for an
/// empty window.
pub fn usage(base: &Counters, now: &Counters, window: Duration) -> Option<Usage> {
    let seconds = window.as_secs_f64();
    if seconds <= 0.0 {
        return None;
    }
    let requests = now.requests.since(&base.requests);
    let per_hour = |n: u64| n as f64 * HOUR.as_secs_f64() / seconds;
    let wal_bytes = now.received.0.saturating_sub(base.received.0);
    let raw_bytes = now.raw_bytes.saturating_sub(base.raw_bytes);
    let stored_bytes = now.stored_bytes.saturating_sub(base.stored_bytes);
    let per_wal_byte = |n: u64| (wal_bytes > 0).then(|| n as f64 / wal_bytes as f64);
    Some(Usage {
        window_seconds: seconds,
        requests: ByOp::from_fn(|op| requests.get(op)),
        requests_per_hour: per_hour(requests.total()),
        requests_per_hour_by_op: ByOp::from_fn(|op| per_hour(requests.get(op))),
        wal_bytes,
        raw_bytes,
        stored_bytes,
        stored_per_wal_byte: per_wal_byte(stored_bytes),
        raw_per_wal_byte: per_wal_byte(raw_bytes),
    })
}

#[cfg(test)]
mod tests {
    use pgagent_storage::RequestOp;

    use super::*;

    fn counters(put: u64, list: u64, raw: u64, stored: u64, received: u64) -> Counters {
        Counters {
            requests: RequestTotals::from_fn(|op| match op {
                RequestOp::Put => put,
                RequestOp::List => list,
                _ => 0,
            }),
            raw_bytes: raw,
            stored_bytes: stored,
            received: Lsn(received),
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn rates_over_the_interval() {
        let u = usage(
            &counters(100, 10, 1_000, 300, 50_000),
            &counters(1_100, 40, 21_000, 4_300, 60_000),
            30 * MIN,
        )
        .unwrap();
        assert_eq!(u.window_seconds, 1800.0);
        assert_eq!(u.requests.put, 1000);
        assert_eq!(u.requests.list, 30);
        assert_eq!(u.requests_per_hour, 2060.0);
        assert_eq!(u.requests_per_hour_by_op.put, 2000.0);
        assert_eq!(u.requests_per_hour_by_op.list, 60.0);
        assert_eq!(u.requests_per_hour_by_op.get, 0.0);
        assert_eq!(
            (u.wal_bytes, u.raw_bytes, u.stored_bytes),
            (10_000, 20_000, 4_000)
        );
        assert_eq!(u.stored_per_wal_byte, Some(0.4));
        assert_eq!(u.raw_per_wal_byte, Some(2.0));
    }

    #[test]
    fn no_wal_no_ratio_and_no_interval_no_usage() {
        let c = counters(5, 1, 10, 10, 7);
        let u = usage(&c, &counters(9, 1, 10, 10, 7), MIN).unwrap();
        assert_eq!(u.requests_per_hour, 240.0);
        assert_eq!((u.stored_per_wal_byte, u.raw_per_wal_byte), (None, None));
        assert_eq!(usage(&c, &c, Duration::ZERO), None);
    }

    #[test]
    fn a_young_daemon_is_measured_over_its_whole_run() {
        let t0 = Instant::now();
        let mut w = Window::last_hour();
        assert_eq!(w.observe(t0, counters(0, 0, 0, 0, 1_000)), None);
        let u = w
            .observe(t0 + 10 * MIN, counters(600, 0, 0, 0, 1_000))
            .unwrap();
        assert_eq!(u.window_seconds, 600.0);
        assert_eq!(u.requests_per_hour, 3600.0);
        let u = w
            .observe(
                t0 + 10 * MIN + Duration::from_secs(1),
                counters(600, 0, 0, 0, 1_000),
            )
            .unwrap();
        assert_eq!(u.window_seconds, 601.0);
    }

    #[test]
    fn an_old_daemon_is_measured_over_the_last_hour() {
        let t0 = Instant::now();
        let mut w = Window::last_hour();
        // Published every second for three hours; 1 put a second until the last hour, then
        // 2 a second; 1,000 WAL bytes a second throughout.
        let mut put = 0;
        let mut last = None;
        for s in 0..=3 * 3600u64 {
            if s > 0 {
                put += if s > 2 * 3600 { 2 } else { 1 };
            }
            let at = t0 + Duration::from_secs(s);
            last = w.observe(at, counters(put, 0, 0, s * 400, s * 1_000));
        }
        let u = last.unwrap();
        // The oldest sample kept is within a minute of an hour ago.
        assert!(
            u.window_seconds > 3540.0 && u.window_seconds <= 3600.0,
            "{}",
            u.window_seconds
        );
        assert_eq!(u.requests_per_hour, 7200.0);
        assert_eq!(u.stored_per_wal_byte, Some(0.4));
        assert!(w.samples.len() <= 61, "{}", w.samples.len());
    }

    #[test]
    fn samples_are_a_minute_apart() {
        let t0 = Instant::now();
        let mut w = Window::last_hour();
        for s in 0..600 {
            w.observe(t0 + Duration::from_secs(s), Counters::default());
        }
        let times: Vec<u64> = w
            .samples
            .iter()
            .map(|(t, _)| t.duration_since(t0).as_secs())
            .collect();
        assert_eq!(times, [0, 60, 120, 180, 240, 300, 360, 420, 480, 540]);
    }
}
