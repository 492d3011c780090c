//! An async store's pin: where its contiguous WAL ends, kept in the stores it copies from.
//!
//! An async store that falls behind skips objects (its lane copies them later from a
//! required store, see `fanout`), and that list lives in memory. The pin
//! (`pins/<store>.json`, [`pgagent_storage::pin`]) is its durable trace: written into every
//! required store, it says "this store holds every WAL byte below `from_lsn`". After a crash
//! the lane copies what it lacks from the pin on (see `catch_up`), and `pgagent prune` of a
//! required store keeps the WAL from the lowest pin on, so the copy source still has it.
//!
//! The pin follows the store's end, written at most every [`PIN_INTERVAL`] and only when
//! that end moved. It can only lag behind the true end (the end only grows), which makes
//! the next start look again at a little more, never at less.

use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{Lsn, TimelineId};
use pgagent_storage::layout::pin_key;
use pgagent_storage::pin::{put_pin, WalPin};
use pgagent_storage::{ObjectStore, StoreError};
use tokio_util::sync::CancellationToken;

use super::lanes::LaneId;
use super::shared::Shared;

/// How often a moved end is written to the pin.
pub const PIN_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps lane `lane`'s pin (`name`) in every store of `targets` until `shutdown`.
pub async fn keep_pin(
    shared: Arc<Shared>,
    lane: LaneId,
    name: String,
    targets: Vec<Arc<dyn ObjectStore>>,
    tli: TimelineId,
    shutdown: CancellationToken,
) {
    let mut written = Lsn::INVALID;
    let mut tick = tokio::time::interval(PIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Nothing is written while what the store holds below the start is not known yet
        // (its end reads as 0 then): the pin a previous run left stays as it is.
        let end = shared.lanes().lane(lane).tracker.bucket_frontier();
        if end <= written {
            continue;
        }
        let tli = shared.live().timeline.unwrap_or(tli);
        let at = crate::times::rfc3339(std::time::SystemTime::now());
        let pin = WalPin::new(&name, end, tli, &at);
        let mut all = true;
        for t in &targets {
            if let Err(e) = put_pin(t.as_ref(), &pin).await {
                tracing::debug!(store = %name, error = %e, "cannot write the pin; trying again");
                all = false;
            }
        }
        if all {
            written = end;
        }
    }
}

/// Where store `name`'s pin in `source` says its contiguous WAL ends; `None` without one.
///
/// Errors: the store's; a pin that does not parse ([`StoreError::Corrupt`]).
pub async fn read_pin(source: &dyn ObjectStore, name: &str) -> Result<Option<Lsn>, StoreError> {
    let key = pin_key(name);
    match source.get(&key).await {
        Ok(body) => Ok(Some(WalPin::parse(&key, &body)?.from()?)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}
