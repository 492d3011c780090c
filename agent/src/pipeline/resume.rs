//! Where `pgagent run` resumes streaming, and what the bucket already holds there.
//!
//! The start comes from staging, else the slot's `restart_lsn`, else the server's position
//! ([`plan_resume`]). The slot position is read with `READ_REPLICATION_SLOT` from
//! PostgreSQL 15 on, and from `pg_replication_slots` over a SQL session before (its timeline
//! then comes from the server's history file, as `READ_REPLICATION_SLOT` computes it). Then
//! the bucket is read around the start ([`continuity`]): the stored deltas of the resume
//! segment, and whether the bucket's WAL reaches the start.

use std::path::Path;
use std::time::Duration;

use pgagent_protocol::{Lsn, ReplicationClient, SqlSession, TimelineHistory, TimelineId};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::ObjectStore;

use super::continuity::{self, Continuity};
use super::upstream::Upstream;
use crate::retry::{self, Policy};
use crate::server::{self, ServerInfo};
use crate::staging::{StagedSegment, StagingScan};

/// How long start-up waits for the store to answer the continuity reads before going on
/// without them (safely: see [`StoredPartial::Unknown`]).
const STORE_READ_DEADLINE: Duration = Duration::from_secs(15);

/// What the bucket holds of the resume segment as deltas (or an older `.partial` object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredPartial {
    /// Nothing from the segment start.
    None,
    /// A run of WAL from the segment start up to this position.
    Holds(Lsn),
    /// The store did not answer: this run uploads that segment's deltas from its start.
    /// Nothing the bucket holds is replaced (deltas are immutable); some WAL may go up twice.
    Unknown,
}

/// The resume decision.
#[derive(Debug)]
pub struct Resume {
    /// Timeline, start (a segment start) and the position already confirmed.
    pub plan: ResumePlan,
    /// Complete segments a previous run left in staging below the start.
    pub leftovers: Vec<StagedSegment>,
    /// The run of deltas the bucket holds of the start segment on the plan's timeline.
    pub stored_partial: StoredPartial,
    /// When the bucket's WAL ends before the start: streaming begins at the bucket's end
    /// instead, and this is the original start to fall back to if the server no longer has
    /// that WAL (then the gap is reported).
    pub fallback: Option<Lsn>,
}

/// Reads the slot (over `up`), staging and the bucket, and decides where streaming resumes.
pub(super) async fn prepare(
    up: &mut Upstream,
    staging_dir: &Path,
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Resume> {
    // The server's history covers every timeline it descends from: read once, it places
    // both the slot's position (before 15) and the segment before the start.
    let current = up.server.timeline;
    let lineage = if current.0 > 1 {
        history(&mut up.client, current).await
    } else {
        None
    };
    let on_lineage = |lsn: Lsn| lineage.as_ref().map(|h| h.timeline_for_lsn(current, lsn));
    let slot_pos = slot_position(up, on_lineage).await?;
    decide(
        &up.server,
        lineage.as_ref(),
        slot_pos,
        staging_dir,
        store,
        cipher,
    )
    .await
}

/// The resume decision from what the server said (`server`, the history of its timeline
/// when it is past 1, the slot's position and timeline), what staging holds and what the
/// bucket holds around the start (its pieces opened with `cipher`). No server I/O: the
/// pipeline's simulation calls it with the simulated server's answers.
///
/// Errors: staging's (it cannot be read).
pub async fn decide(
    server: &ServerInfo,
    lineage: Option<&TimelineHistory>,
    slot_pos: Option<(Lsn, Option<TimelineId>)>,
    staging_dir: &Path,
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
) -> anyhow::Result<Resume> {
    let seg = server.seg;
    let on_lineage = |lsn: Lsn| lineage.map(|h| h.timeline_for_lsn(server.timeline, lsn));
    let scan = StagingScan::read(staging_dir, seg)?;
    let mut plan = plan_resume(&scan, slot_pos, server);
    let leftovers: Vec<StagedSegment> = scan
        .complete
        .into_iter()
        .filter(|s| s.segno < plan.start.segment_number(seg))
        .collect();

    // The timeline the segment before the start belongs to (a parent, right after a switch).
    let prev_tli = match plan.start.0.checked_sub(1).map(Lsn) {
        Some(prev) if plan.tli.0 > 1 => on_lineage(prev).map_or(plan.tli, |t| t.min(plan.tli)),
        _ => plan.tli,
    };
    let tail = read_with_deadline("the end of its WAL", || {
        continuity::read_tail(store, cipher, prev_tli, plan.start, seg)
    })
    .await
    .flatten();
    let staged_from = leftovers.first().map(|s| s.segno.start_lsn(seg));
    let mut fallback = None;
    match continuity::judge(plan.start, tail, staged_from) {
        Continuity::Contiguous => {}
        Continuity::Unknown => tracing::info!(
            start = %plan.start,
            "the store holds no WAL of timeline {prev_tli} just below the resume point (a new store?)"
        ),
        Continuity::Gap { from, to } => {
            tracing::warn!(
                bucket_end = %from,
                resume_point = %to,
                "the store's WAL ends before the resume point: streaming the WAL in between from the server"
            );
            fallback = Some(plan.start);
            plan = ResumePlan {
                tli: prev_tli,
                start: from.segment_number(seg).start_lsn(seg),
                // Confirming anything past the store's end would let the server drop the
                // WAL this run is about to read.
                floor: plan.floor.min(from),
            };
        }
    }
    let segno = plan.start.segment_number(seg);
    let stored_partial = match read_with_deadline("the resume segment's deltas", || {
        continuity::stored_partial_end(store, cipher, plan.tli, segno, seg)
    })
    .await
    {
        Some(Some(end)) => StoredPartial::Holds(end),
        Some(None) => StoredPartial::None,
        None => StoredPartial::Unknown,
    };
    Ok(Resume {
        plan,
        leftovers,
        stored_partial,
        fallback,
    })
}

/// What a store other than the one the resume point was decided with holds of the resume
/// segment: its deltas, read (retried) like the resume reads; a read that fails is
/// [`StoredPartial::Unknown`] (deltas uploaded from the segment start). Whether the store
/// lags behind the resume point is found in the background (`catch_up`).
pub async fn stored_partial_of(
    store: &dyn ObjectStore,
    cipher: Option<&ObjectCipher>,
    plan: &ResumePlan,
    seg: pgagent_protocol::WalSegmentSize,
) -> StoredPartial {
    let segno = plan.start.segment_number(seg);
    match read_with_deadline("the resume segment's deltas", || {
        continuity::stored_partial_end(store, cipher, plan.tli, segno, seg)
    })
    .await
    {
        Some(Some(end)) => StoredPartial::Holds(end),
        Some(None) => StoredPartial::None,
        None => StoredPartial::Unknown,
    }
}

/// Runs a store read with transient errors retried up to [`STORE_READ_DEADLINE`]; `None`
/// (logged) when it did not succeed.
async fn read_with_deadline<T, F, Fut>(what: &str, op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, pgagent_storage::StoreError>>,
{
    let deadline = tokio::time::Instant::now() + STORE_READ_DEADLINE;
    match retry::until(
        Policy::FETCH,
        deadline,
        pgagent_storage::StoreError::is_transient,
        |_, _| {},
        op,
    )
    .await
    {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = ?e, "cannot read {what} from the store; going on without it");
            None
        }
    }
}

/// The slot's `restart_lsn` and its timeline, if the slot reserves WAL.
async fn slot_position(
    up: &mut Upstream,
    on_lineage: impl Fn(Lsn) -> Option<TimelineId>,
) -> anyhow::Result<Option<(Lsn, Option<TimelineId>)>> {
    let Upstream {
        conn,
        server,
        slot,
        client,
    } = up;
    let wrap = |e: pgagent_protocol::Error| anyhow::anyhow!(server::explain(conn, &e));
    if server.version_num >= 150000 {
        return Ok(client
            .read_replication_slot(slot)
            .await
            .map_err(wrap)?
            .and_then(|p| p.restart_lsn.map(|l| (l, p.restart_tli))));
    }
    // READ_REPLICATION_SLOT is new in 15: before, ask pg_replication_slots. Without it a
    // restart without staging would begin at the server's current position and skip the WAL
    // the slot kept while the agent was away.
    let mut sql = SqlSession::connect(conn).await.map_err(|e| {
        anyhow::anyhow!(
            "{}; pgagent reads the slot's position from pg_replication_slots on PostgreSQL {} (a SQL session as {})",
            server::explain(conn, &e),
            server.version_num / 10000,
            conn.user
        )
    })?;
    let pos = sql.replication_slot(slot).await.map_err(wrap)?;
    let _ = sql.close().await;
    let Some(restart) = pos.and_then(|p| p.restart_lsn) else {
        return Ok(None);
    };
    let tli = if server.timeline.0 > 1 {
        on_lineage(restart)
    } else {
        Some(server.timeline)
    };
    Ok(Some((restart, tli)))
}

/// The parsed history of `tli` from the server, or `None` (logged) if it cannot be had.
async fn history(client: &mut ReplicationClient, tli: TimelineId) -> Option<TimelineHistory> {
    let content = match server::fetch_history(client, tli).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(timeline = %tli, error = %e, "history file not available");
            return None;
        }
    };
    String::from_utf8(content)
        .ok()
        .and_then(|text| TimelineHistory::parse(&text).ok())
}
/// Where streaming starts and what was already confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePlan {
    /// Timeline to stream.
    pub tli: TimelineId,
    /// Start position (a segment start).
    pub start: Lsn,
    /// Position the server already holds as confirmed (reported until passed).
    pub floor: Lsn,
}

/// Chooses the start: staging first (what it holds is ours), else the slot's
/// `restart_lsn`, else the server's current position.
pub fn plan_resume(
    scan: &StagingScan,
    slot: Option<(Lsn, Option<TimelineId>)>,
    server: &ServerInfo,
) -> ResumePlan {
    let seg = server.seg;
    let seg_start = |l: Lsn| l.segment_number(seg).start_lsn(seg);
    if let Some((tli, start)) = scan.resume_point(seg) {
        let floor = slot.map(|s| s.0).filter(|l| *l <= start).unwrap_or(start);
        return ResumePlan { tli, start, floor };
    }
    if let Some((restart, tli)) = slot.filter(|s| s.0 != Lsn::INVALID) {
        return ResumePlan {
            tli: tli.unwrap_or(server.timeline),
            start: seg_start(restart),
            floor: restart,
        };
    }
    ResumePlan {
        tli: server.timeline,
        start: seg_start(server.xlogpos),
        floor: seg_start(server.xlogpos),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgagent_protocol::{SegNo, WalSegmentSize};

    fn server() -> ServerInfo {
        ServerInfo {
            system_id: 1,
            timeline: TimelineId(3),
            xlogpos: Lsn(0x5_123_456),
            seg: WalSegmentSize::new(16 << 20).unwrap(),
            version_num: 150000,
        }
    }

    #[test]
    fn fresh_start_uses_the_server_position() {
        let p = plan_resume(&StagingScan::default(), None, &server());
        assert_eq!(p.tli, TimelineId(3));
        assert_eq!(p.start, Lsn(0x5_000_000));
    }

    #[test]
    fn slot_wins_over_server_position() {
        let p = plan_resume(
            &StagingScan::default(),
            Some((Lsn(0x3_000_100), Some(TimelineId(2)))),
            &server(),
        );
        assert_eq!(
            (p.tli, p.start, p.floor),
            (TimelineId(2), Lsn(0x3_000_000), Lsn(0x3_000_100))
        );
    }

    #[test]
    fn staging_wins_over_slot() {
        let seg = server().seg;
        let scan = StagingScan {
            complete: vec![],
            partials: vec![(TimelineId(3), SegNo(4), "x".into())],
        };
        let p = plan_resume(
            &scan,
            Some((Lsn(0x3_000_100), Some(TimelineId(3)))),
            &server(),
        );
        assert_eq!(p.start, SegNo(4).start_lsn(seg));
        assert_eq!(p.floor, Lsn(0x3_000_100));
    }
}
