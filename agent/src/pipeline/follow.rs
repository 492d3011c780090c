//! Streaming across reconnects and timeline switches: the loop that keeps a replication
//! connection open until shutdown, with the reconnect backoff ([`crate::retry`]) and the
//! fall-back when a gap cannot be filled.

use std::time::Duration;

use pgagent_protocol::{Lsn, ReplicationClient, ReplicationStream, TimelineId};
use tokio_util::sync::CancellationToken;

use super::histories::fetch_pending_histories;
use super::receiver::{Receiver, SessionEnd};
use super::upstream::Upstream;
use crate::server::explain;

/// Where streaming starts.
pub(super) struct Session {
    pub(super) tli: TimelineId,
    pub(super) start: Lsn,
    /// Set when streaming starts at the store's end to fill a gap: the original start, to
    /// fall back to if the server no longer has the WAL in between.
    pub(super) fallback: Option<Lsn>,
    /// Timelines whose history file could not be had yet (retried at each connection).
    pub(super) pending_histories: Vec<TimelineId>,
}

/// Streams across reconnects and timeline switches until shutdown; returns the open stream
/// (for the last status update), if there is one.
///
/// After a session that streamed, the next connection is tried at once and the backoff
/// starts over: one dropped connection costs a reconnect, not a wait that grew over the
/// life of the process. Only attempts that fail in a row wait longer and longer.
pub(super) async fn follow(
    receiver: &mut Receiver,
    upstream: Upstream,
    mut s: Session,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<ReplicationStream>> {
    let Upstream {
        conn, slot, client, ..
    } = upstream;
    let conn = &conn;
    let mut client = Some(client);
    let mut delays = reconnect_backoff();
    loop {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let mut c = match client.take() {
            Some(c) => c,
            None => match ReplicationClient::connect(conn).await {
                Ok(mut c) => {
                    // The slot may have been dropped while we were away; recreate it.
                    if let Err(e) = c.create_physical_slot(&slot).await {
                        tracing::warn!(error = %explain(conn, &e), "cannot ensure the replication slot");
                    }
                    c
                }
                Err(e) => {
                    wait_retry(receiver, &mut delays, explain(conn, &e), shutdown).await;
                    continue;
                }
            },
        };
        fetch_pending_histories(&mut c, receiver, &mut s.pending_histories).await?;
        let stream = match c.start_replication(Some(&slot), s.start, s.tli).await {
            Ok(st) => st,
            Err(e) => {
                let msg = format!(
                    "START_REPLICATION at {} on timeline {}: {}",
                    s.start,
                    s.tli,
                    explain(conn, &e)
                );
                if fall_back(receiver, &mut s, &msg) {
                    continue;
                }
                wait_retry(receiver, &mut delays, msg, shutdown).await;
                continue;
            }
        };
        tracing::info!(timeline = %s.tli, start = %s.start, "streaming");
        match receiver.session(stream, s.tli, shutdown).await {
            Ok(SessionEnd::Shutdown(stream)) => return Ok(Some(stream)),
            Ok(SessionEnd::TimelineEnded {
                stream,
                next_tli,
                next_tli_start,
            }) => {
                tracing::info!(timeline = %s.tli, next = %next_tli, at = %next_tli_start, "timeline ended; following the switch");
                receiver.close_partial()?;
                {
                    let mut t = receiver.shared().lanes();
                    // WAL of the new timeline is confirmed only once its history file is in
                    // the bucket too.
                    t.hold_for_history(next_tli, next_tli_start);
                    t.timeline_switched(next_tli_start);
                }
                s.pending_histories.push(next_tli);
                let mut c = stream.into_client();
                fetch_pending_histories(&mut c, receiver, &mut s.pending_histories).await?;
                s.tli = next_tli;
                let seg = receiver.shared().seg;
                s.start = next_tli_start.segment_number(seg).start_lsn(seg);
                receiver.set_position(s.start);
                client = Some(c);
                delays = reconnect_backoff();
            }
            Err(e) => {
                // A full staging disk is waited out; when an fsync failed there, the segment
                // was abandoned and is received again from its start.
                if let Some(se) = e.downcast_ref::<crate::staging::StagingError>() {
                    if !se.is_no_space() {
                        return Err(e.context("staging"));
                    }
                }
                receiver.close_partial()?;
                let streamed = receiver.take_streamed();
                if streamed {
                    s.fallback = None;
                }
                s.start = receiver.resume_point();
                let msg = format!("replication connection lost: {e:#}");
                if !streamed && fall_back(receiver, &mut s, &msg) {
                    continue;
                }
                if streamed {
                    tracing::warn!("{msg}; reconnecting");
                    receiver.shared().set_error(msg);
                    delays = reconnect_backoff();
                } else {
                    wait_retry(receiver, &mut delays, msg, shutdown).await;
                }
            }
        }
    }
}

/// When streaming started at the store's end to fill a gap and the server no longer has
/// that WAL (`requested WAL segment … has already been removed`), goes back to the original
/// start and reports the gap: the WAL in between is lost to the bucket. Returns whether it
/// did.
fn fall_back(receiver: &mut Receiver, s: &mut Session, msg: &str) -> bool {
    let Some(to) = s.fallback else { return false };
    if !msg.contains("has already been removed") {
        return false;
    }
    s.fallback = None;
    let from = s.start;
    tracing::error!(
        from = %from,
        to = %to,
        "WAL GAP: the store lacks this WAL and the server no longer has it ({msg}); a recovery from the store cannot pass it: take a new base backup"
    );
    receiver.shared().report_gap(from, to);
    receiver.shared().lanes().rebase(to);
    receiver.set_position(to);
    s.start = to;
    true
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    crate::retry::delays(crate::retry::Policy::RECONNECT)
}

async fn wait_retry(
    receiver: &Receiver,
    delays: &mut impl Iterator<Item = Duration>,
    msg: String,
    shutdown: &CancellationToken,
) {
    let delay = delays.next().unwrap_or(Duration::from_secs(30));
    tracing::warn!(retry_in = ?delay, "{msg}");
    receiver.shared().set_error(msg);
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
    }
}
