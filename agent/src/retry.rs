//! The retry policy: how long pgagent waits between attempts at something that failed for a
//! reason that may pass (a store that answers 503, a connection reset, a replication
//! connection that dropped).
//!
//! Every retry in the agent goes through here, on backon's [`Retryable`]: capped exponential
//! backoff with full jitter, so a fleet of agents that lost the same bucket does not come back
//! in lockstep. What differs between callers is only the [`Policy`] (first and longest wait)
//! and when they give up: at a deadline ([`until`], e.g. `fetch.timeout` for
//! `restore_command` and for each read of a restore) or never ([`delays`], for the daemon,
//! whose slot keeps the WAL on the server until the bucket is back).

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio::time::Instant;

/// First and longest wait between two attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Wait after the first failure.
    pub min: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
}

impl Policy {
    /// WAL uploads of the daemon: retried until they land.
    pub const UPLOAD: Policy = Policy::new(Duration::from_millis(200), Duration::from_secs(30));
    /// Base backup chunks, written and read.
    pub const CHUNK: Policy = Policy::new(Duration::from_millis(200), Duration::from_secs(10));
    /// `restore_command` reads: short waits, a recovery is waiting on each one.
    pub const FETCH: Policy = Policy::new(Duration::from_millis(100), Duration::from_secs(5));
    /// A ZFS command that found the dataset busy (zfs-fuse unmounting): a few short waits.
    pub const ZFS_BUSY: Policy = Policy::new(Duration::from_millis(200), Duration::from_secs(1));
    /// The replication connection, after a session that never streamed.
    pub const RECONNECT: Policy = Policy::new(Duration::from_millis(500), Duration::from_secs(30));

    /// A policy waiting `min` after the first failure, doubling up to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Policy { min, max }
    }

    /// The backoff of this policy, endless, for backon's [`Retryable`] where a caller needs
    /// more than [`until`] offers (its own conditions to stop, another wait for some errors).
    pub fn backoff(self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
    }
}

/// The endless sequence of waits of `policy` (jittered, capped at `policy.max`), for a loop
/// that retries until it succeeds or is cancelled.
pub fn delays(policy: Policy) -> impl Iterator<Item = Duration> {
    policy.backoff().build()
}

/// Why [`until`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// An error that is not worth retrying.
    Permanent(E),
    /// Still failing when the deadline came: the last error, or `None` when the last attempt
    /// got no answer before the deadline.
    Deadline(Option<E>),
}

/// Runs `op` until it succeeds, fails with an error `transient` says is permanent, or
/// `deadline` passes. Each attempt is cut at the deadline, so a peer that never answers
/// (packets dropped) ends the wait on time; waits between attempts follow `policy`, and
/// never pass the deadline. `notify` sees each transient error and the wait that follows.
pub async fn until<T, E, F, Fut>(
    policy: Policy,
    deadline: Instant,
    transient: impl Fn(&E) -> bool,
    mut notify: impl FnMut(&E, Duration),
    mut op: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let attempt = || {
        let fut = op();
        async move {
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Some(e)),
                Err(_) => Err(None),
            }
        }
    };
    let result = attempt
        .retry(policy.backoff())
        .sleep(tokio::time::sleep)
        .when(|e: &Option<E>| e.as_ref().is_none_or(&transient))
        .adjust(|_, delay| {
            let remaining = deadline.saturating_duration_since(Instant::now());
            (!remaining.is_zero()).then(|| delay.unwrap_or(policy.max).min(remaining))
        })
        .notify(|e: &Option<E>, d| {
            if let Some(e) = e {
                notify(e, d)
            }
        })
        .await;
    result.map_err(|e| match e {
        Some(e) if !transient(&e) => GaveUp::Permanent(e),
        e => GaveUp::Deadline(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const QUICK: Policy = Policy::new(Duration::from_millis(1), Duration::from_millis(5));

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let mut seen = 0;
        let r = until(
            QUICK,
            Instant::now() + Duration::from_secs(5),
            |e: &&str| *e == "blip",
            |_, _| seen += 1,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("blip"),
                    n => Ok(n),
                }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
        assert_eq!(seen, 3);
    }

    #[tokio::test]
    async fn a_permanent_error_ends_at_once() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = until(
            QUICK,
            Instant::now() + Duration::from_secs(5),
            |e: &&str| *e == "blip",
            |_, _| {},
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("corrupt")
            },
        )
        .await;
        assert_eq!(r, Err(GaveUp::Permanent("corrupt")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_deadline_ends_a_wait_for_an_answer_that_never_comes() {
        let started = Instant::now();
        let r: Result<(), GaveUp<&str>> = until(
            QUICK,
            started + Duration::from_millis(200),
            |_| true,
            |_, _| {},
            std::future::pending,
        )
        .await;
        assert_eq!(r, Err(GaveUp::Deadline(None)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn the_deadline_ends_transient_failures_with_the_last_error() {
        let r: Result<(), _> = until(
            QUICK,
            Instant::now() + Duration::from_millis(100),
            |_| true,
            |_, _| {},
            || async { Err("blip") },
        )
        .await;
        assert_eq!(r, Err(GaveUp::Deadline(Some("blip"))));
    }

    #[test]
    fn delays_stay_within_the_policy() {
        let p = Policy::new(Duration::from_millis(10), Duration::from_millis(40));
        for d in delays(p).take(20) {
            assert!(d <= Duration::from_millis(80), "{d:?}");
        }
    }
}
