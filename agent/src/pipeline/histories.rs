//! Timeline history files: the ones the store lacks go up with the WAL, and the flush
//! frontier is held at each switch point until its file is in the store.

use std::sync::Arc;

use pgagent_protocol::{Lsn, ReplicationClient, TimelineId};
use pgagent_storage::ObjectStore;

use super::jobs::{CompressJob, RawSource, WalObject};
use super::receiver::Receiver;
use super::shared::Shared;

/// Queues the history files of every timeline up to `current` that any of `stores` lacks
/// (each store's lane puts it; a no-op where it is), holding every store's end at each
/// switch point until its file lands there. Returns the timelines whose
/// file the server could not give now (retried at the next connection).
pub(super) async fn queue_histories(
    client: &mut ReplicationClient,
    stores: &[Arc<dyn ObjectStore>],
    out: &crossbeam_channel::Sender<CompressJob>,
    shared: &Shared,
    current: TimelineId,
) -> anyhow::Result<Vec<TimelineId>> {
    let mut pending = Vec::new();
    for t in 2..=current.0 {
        let tli = TimelineId(t);
        let key = pgagent_storage::layout::wal_key(&pgagent_protocol::history_file_name(tli));
        let mut everywhere = true;
        for store in stores {
            everywhere &= store.head(&key).await?.is_some();
        }
        if everywhere {
            continue;
        }
        match crate::server::fetch_history(client, tli).await {
            Ok(content) => {
                let switch = switch_point(&content, tli).unwrap_or(Lsn::INVALID);
                shared.lanes().hold_for_history(tli, switch);
                out.send(CompressJob {
                    object: WalObject::History { tli },
                    source: RawSource::Bytes(content),
                })?;
            }
            // A server keeps the history of its own ancestry; older branches may be gone.
            Err(e) if tli != current => {
                tracing::debug!(timeline = t, error = %e, "history file not available")
            }
            Err(e) => {
                tracing::warn!(timeline = t, error = %e, "history file not available yet; WAL is not confirmed until it is in the store");
                shared.lanes().hold_for_history(tli, Lsn::INVALID);
                pending.push(tli);
            }
        }
    }
    Ok(pending)
}

/// Where `tli` branched off its parent, from its history file's last line.
fn switch_point(content: &[u8], tli: TimelineId) -> Option<Lsn> {
    let text = std::str::from_utf8(content).ok()?;
    let history = pgagent_protocol::TimelineHistory::parse(text).ok()?;
    history.check_child(tli).ok()?;
    history.entries.last().map(|e| e.switch_point)
}

/// Fetches and queues the history files still missing; those the server cannot give stay
/// pending (and keep the frontier held).
pub(super) async fn fetch_pending_histories(
    client: &mut ReplicationClient,
    receiver: &Receiver,
    pending: &mut Vec<TimelineId>,
) -> anyhow::Result<()> {
    let mut still = Vec::new();
    for tli in pending.drain(..) {
        match crate::server::fetch_history(client, tli).await {
            Ok(content) => receiver.queue_history(tli, content)?,
            Err(e) => {
                tracing::warn!(timeline = %tli, error = %e, "history file not fetched; retried at the next connection");
                still.push(tli);
            }
        }
    }
    *pending = still;
    Ok(())
}
