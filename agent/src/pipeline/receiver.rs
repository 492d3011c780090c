//! The receiver: one replication session, from START_REPLICATION to the end of the timeline,
//! a connection error or shutdown.
//!
//! It writes XLogData into staging, hands complete segments to the compress workers, sends
//! the fsynced `.partial` every `partial_interval` while it grows, and answers the server with
//! standby status updates: `write` = received, `flush` = durable where `confirm` says (see
//! `tracker`). A status update goes out when a keepalive asks for one, when the bucket
//! frontier moves, and at least every `status_interval` (the server drops a standby that
//! stays silent past `wal_sender_timeout`).
//!
//! Receiving pauses — the stream is not read, so the server keeps the WAL behind the slot —
//! while staging holds `staging.quota` bytes not yet in the bucket, and while the staging
//! disk is full: the message that found no room is held and written again every second from
//! where the write stopped, and reading goes on once it fits. Status updates go on
//! throughout, so the session stays alive. A failed fsync ends the session instead: the
//! segment is abandoned and received again from its start (see `staging`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pgagent_protocol::{
    pg_epoch_micros, Lsn, ReplicationStream, StandbyStatusUpdate, StreamEvent, TimelineId,
};
use tokio_util::sync::CancellationToken;

use super::blocking::block;
use super::jobs::{CompressJob, RawSource, WalObject};
use super::partial_outlets::PartialOutlets;
use super::shared::Shared;
use crate::staging::{PartialView, StagingError, StagingWriter};

/// How often a write that found staging full is tried again.
const NO_SPACE_RETRY: Duration = Duration::from_secs(1);

/// How a session ended.
pub enum SessionEnd {
    /// The server ended the timeline; streaming goes on with `next_tli` from
    /// `next_tli_start`.
    TimelineEnded {
        /// The stream, ready to be turned back into a client.
        stream: ReplicationStream,
        /// The next timeline.
        next_tli: TimelineId,
        /// Where it starts.
        next_tli_start: Lsn,
    },
    /// Shutdown was asked for; the stream is still open for a last status update.
    Shutdown(ReplicationStream),
}

/// Channels and settings the receiver feeds.
#[derive(Debug)]
pub struct Outlets {
    /// Complete segments and history files, to the compress workers. Unbounded, and never
    /// waited on: a job names a file durable in staging, so the queue costs a path per
    /// segment while the data waits on disk, up to the staging quota.
    pub segments: crossbeam_channel::Sender<CompressJob>,
    /// `.partial` views, to each store's sequential partial uploader at that store's
    /// `partial_interval` (never waited on either).
    pub partials: PartialOutlets,
    /// Longest silence between two status updates.
    pub status_interval: Duration,
    /// Bytes not yet in the bucket at which receiving pauses.
    pub quota: u64,
    /// Synchronous-standby mode: send the partial segment as soon as WAL arrives.
    pub synchronous: bool,
}

/// The receiving side of the pipeline.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    writer: StagingWriter,
    out: Outlets,
    /// Last flush position reported to the server.
    reported_flush: Lsn,
    /// End of the last WAL written to staging.
    last_end: Lsn,
    /// The server's end of WAL, as its last message said.
    server_end: Lsn,
    /// WAL arrived since the last [`Receiver::take_streamed`].
    streamed: bool,
    /// Receiving is paused at the staging quota.
    at_quota: bool,
    /// WAL received that staging had no room for: written before anything else is read.
    held: Option<Held>,
    /// The staging disk was full at the last write (or fsync) and no write succeeded since.
    disk_full: bool,
}

/// The rest of an XLogData message that staging had no room for.
#[derive(Debug)]
struct Held {
    tli: TimelineId,
    start: Lsn,
    data: Bytes,
}

impl Receiver {
    /// A receiver writing through `writer`.
    pub fn new(shared: Arc<Shared>, writer: StagingWriter, out: Outlets, start: Lsn) -> Self {
        Receiver {
            shared,
            writer,
            out,
            reported_flush: Lsn::INVALID,
            last_end: start,
            server_end: Lsn::INVALID,
            streamed: false,
            at_quota: false,
            held: None,
            disk_full: false,
        }
    }

    /// Whether WAL arrived since the last call (a session that streamed, as opposed to one
    /// that failed at once).
    pub fn take_streamed(&mut self) -> bool {
        std::mem::take(&mut self.streamed)
    }

    /// Where streaming must resume after this session: the start of the segment holding the
    /// next byte (a segment is always rewritten from its start, like pg_receivewal does).
    pub fn resume_point(&self) -> Lsn {
        let seg = self.shared.seg;
        self.last_end.segment_number(seg).start_lsn(seg)
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Moves the resume point (a new timeline starts at `lsn`).
    pub fn set_position(&mut self, lsn: Lsn) {
        self.last_end = lsn;
    }

    /// Streams on timeline `tli` until the timeline ends, shutdown, or an error.
    pub async fn session(
        &mut self,
        mut stream: ReplicationStream,
        tli: TimelineId,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<SessionEnd> {
        {
            let mut live = self.shared.live();
            live.connected = true;
            live.timeline = Some(tli);
        }
        self.shared.metrics.up.set(1);
        let mut partial_tick = tokio::time::interval(self.out.partials.tick());
        let mut status_tick = tokio::time::interval(self.out.status_interval);
        let mut retry_tick = tokio::time::interval(NO_SPACE_RETRY);
        partial_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What an earlier session could not write is received again from its segment start.
        self.held = None;
        let result = loop {
            let paused = self.paused();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(SessionEnd::Shutdown(stream)),
                _ = retry_tick.tick(), if self.held.is_some() => self.retry_held()?,
                ev = stream.next(), if !paused => match ev {
                    Ok(StreamEvent::XLogData(x)) => {
                        self.server_end = self.server_end.max(x.wal_end);
                        self.on_wal(tli, x.wal_start, x.data)?;
                        if self.out.synchronous {
                            self.on_partial_tick()?;
                        }
                    }
                    Ok(StreamEvent::Keepalive(k)) => {
                        self.server_end = self.server_end.max(k.wal_end);
                        if k.reply_requested {
                            self.send_status(&mut stream).await?;
                        }
                    }
                    Ok(StreamEvent::EndOfTimeline { next_tli, next_tli_start }) => {
                        break Ok(SessionEnd::TimelineEnded { stream, next_tli, next_tli_start });
                    }
                    Err(e) => break Err(e.into()),
                },
                _ = partial_tick.tick() => self.on_partial_tick()?,
                _ = status_tick.tick() => self.send_status(&mut stream).await?,
                _ = self.shared.frontier_moved.notified() => {
                    if self.out.synchronous {
                        // The previous partial landed: send what arrived meanwhile.
                        self.on_partial_tick()?;
                    }
                    if self.flush_now() != self.reported_flush {
                        self.send_status(&mut stream).await?;
                    }
                }
            }
        };
        self.shared.live().connected = false;
        self.shared.metrics.up.set(0);
        result
    }

    /// Whether receiving pauses: staging at its quota, or its disk full
    /// (`pgagent_staging_full` either way).
    fn paused(&mut self) -> bool {
        let lag = self.shared.lanes().upload_lag_bytes();
        let at_quota = lag >= self.out.quota;
        if at_quota && !self.at_quota {
            tracing::error!(lag_bytes = lag, quota = self.out.quota, "staging quota reached: receiving paused until uploads catch up; the slot keeps the WAL on the server");
        }
        self.at_quota = at_quota;
        self.shared
            .metrics
            .staging_full
            .set((at_quota || self.disk_full) as i64);
        at_quota || self.held.is_some()
    }

    /// Records whether the staging disk is full, for `status`, `/readyz` and the alerts.
    fn set_disk_full(&mut self, full: bool) {
        if full != self.disk_full {
            self.disk_full = full;
            self.shared.live().staging_disk_full = full;
            self.shared
                .metrics
                .staging_full
                .set((full || self.at_quota) as i64);
            if !full {
                tracing::info!("staging has room again: receiving resumed");
            }
        }
    }

    /// Writes XLogData (`data` at `start` on `tli`) into staging and hands the segments it
    /// completes to the compress workers. When staging has no room, what was not written is
    /// held (see [`Receiver::retry_held`]); a failed fsync abandons the segment and ends the
    /// session, which resumes from the segment's start.
    pub(super) fn on_wal(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    ) -> anyhow::Result<()> {
        let result = block(|| self.writer.write(tli, start, &data));
        let (done, failed) = match result {
            Ok(done) => (done, None),
            Err(e) => (self.writer.take_completed(), Some(e)),
        };
        // Whatever was written counts, a failed write's first part included.
        let end = match (&failed, self.writer.position()) {
            (None, _) => start + data.len() as u64,
            (Some(_), Some(end)) => end.max(start),
            (Some(_), None) => start,
        };
        if end > start {
            self.last_end = end;
            self.streamed = true;
            self.shared
                .lanes()
                .received(end, tokio::time::Instant::now().into_std());
        }
        self.queue_segments(done)?;
        let Some(e) = failed else {
            self.held = None;
            self.set_disk_full(false);
            return Ok(());
        };
        if e.is_failed_fsync() {
            return Err(self.abandon(e));
        }
        if !e.is_no_space() {
            return Err(e.into());
        }
        if self.held.is_none() {
            tracing::error!("staging disk full: {e}; receiving paused until there is room (retried every second); the slot keeps the WAL on the server");
            self.shared
                .set_error(format!("staging disk full: {e}; receiving paused"));
        }
        self.set_disk_full(true);
        let written = (end.0 - start.0) as usize;
        self.held = Some(Held {
            tli,
            start: end,
            data: data.slice(written..),
        });
        Ok(())
    }

    /// Tries the held write again.
    fn retry_held(&mut self) -> anyhow::Result<()> {
        let Some(h) = self.held.as_ref() else {
            return Ok(());
        };
        let (tli, start, data) = (h.tli, h.start, h.data.clone());
        self.on_wal(tli, start, data)
    }

    /// Gives up the open segment after `e`: streaming must resume from its start.
    fn abandon(&mut self, e: StagingError) -> anyhow::Error {
        if let Some(seg_start) = self.writer.abandon() {
            self.last_end = self.last_end.min(seg_start);
        }
        if e.is_no_space() {
            tracing::error!(
                "staging disk full: {e}; the segment will be received again from its start"
            );
            self.set_disk_full(true);
        }
        e.into()
    }

    /// Hands complete segments to the compress workers.
    fn queue_segments(&mut self, done: Vec<crate::staging::StagedSegment>) -> anyhow::Result<()> {
        for segment in done {
            let seg_end = segment.segno.end_lsn(self.shared.seg);
            self.shared.lanes().staged(seg_end);
            let job = CompressJob {
                object: WalObject::Segment {
                    tli: segment.tli,
                    segno: segment.segno,
                },
                source: RawSource::Path(segment.path),
            };
            // Never waits: when the bucket is away, segments pile up in staging (bounded by
            // the staging quota), while the session goes on answering the server.
            self.out
                .segments
                .send(job)
                .map_err(|_| anyhow::anyhow!("compress workers stopped"))?;
        }
        Ok(())
    }

    /// Sends the staged `.partial` for upload if it grew, to each store whose
    /// `partial_interval` has passed (and in synchronous mode to every required store as
    /// soon as WAL arrives or its previous one landed).
    pub(super) fn on_partial_tick(&mut self) -> anyhow::Result<()> {
        let Some(pos) = self.writer.position() else {
            return Ok(());
        };
        if pos.segment_offset(self.shared.seg) == 0 {
            return Ok(());
        }
        // Catching up on a backlog: the segment being filled completes within moments and
        // goes up whole; a partial upload now would only cost a read and a compression.
        if self.server_end.0 >= pos.0 + self.shared.seg.bytes() {
            return Ok(());
        }
        // One partial waiting per store: while one is queued behind an upload, the next tick
        // (or, in synchronous mode, its landing) sends a newer view.
        let now = tokio::time::Instant::now();
        let wanting = self.out.partials.wanting(pos, now);
        if wanting.is_empty() {
            return Ok(());
        }
        let staged = match block(|| self.writer.sync()) {
            Ok(staged) => staged,
            Err(e) => return Err(self.abandon(e)),
        };
        if let Some(staged) = staged {
            self.shared.lanes().staged(staged);
        }
        let Some(view) = self.writer.partial_view()? else {
            return Ok(());
        };
        self.post_partial(view, Some(&wanting))
    }

    /// Posts a view for upload to `lanes` (all when `None`), to each whose store does not
    /// already hold that much of the object.
    fn post_partial(&mut self, view: PartialView, lanes: Option<&[usize]>) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let news = |lane, tli, segno, end| shared.lanes().partial_is_news(lane, tli, segno, end);
        self.out
            .partials
            .post(
                view,
                lanes,
                self.shared.seg,
                news,
                tokio::time::Instant::now(),
            )
            .map_err(|e| anyhow::anyhow!("cannot open the staged .partial again: {e}"))?;
        Ok(())
    }

    /// Ends the segment being filled without completing it (timeline end, a lost
    /// connection, shutdown) and queues its final `.partial` upload. Never waits for the
    /// bucket.
    ///
    /// Staging without room to finish it: the segment is abandoned (the next session
    /// receives it again from its start) and this is no error.
    pub fn close_partial(&mut self) -> anyhow::Result<()> {
        let view = match block(|| self.writer.close_partial()) {
            Ok(view) => view,
            Err(e) if e.is_no_space() => {
                let _ = self.abandon(e);
                None
            }
            Err(e) => return Err(e.into()),
        };
        let done = self.writer.take_completed();
        self.queue_segments(done)?;
        if let Some(view) = view {
            let end = view.segno.start_lsn(self.shared.seg) + view.len;
            self.shared.lanes().staged(end);
            if view.len > 0 {
                self.post_partial(view, None)?;
            }
        }
        Ok(())
    }

    /// Closes every store's `.partial` mailbox: their uploaders drain and end.
    pub fn close_outlets(&self) {
        self.out.partials.close();
    }

    /// Whether no store has a `.partial` view waiting.
    #[cfg(test)]
    pub fn outlets_empty(&self) -> bool {
        self.out.partials.all_empty()
    }

    /// Queues a history file for upload.
    pub fn queue_history(&self, tli: TimelineId, content: Vec<u8>) -> anyhow::Result<()> {
        let job = CompressJob {
            object: WalObject::History { tli },
            source: RawSource::Bytes(content),
        };
        self.out
            .segments
            .send(job)
            .map_err(|_| anyhow::anyhow!("compress workers stopped"))
    }

    fn flush_now(&self) -> Lsn {
        self.shared.flush_lsn()
    }

    /// Sends a standby status update with the current positions.
    pub async fn send_status(&mut self, stream: &mut ReplicationStream) -> anyhow::Result<()> {
        self.reported_flush = send_status(&self.shared, stream).await?;
        Ok(())
    }
}

/// Sends a standby status update with the current positions; returns the flush reported.
pub async fn send_status(shared: &Shared, stream: &mut ReplicationStream) -> anyhow::Result<Lsn> {
    let (write, flush) = {
        let mut lanes = shared.lanes();
        let now = tokio::time::Instant::now().into_std();
        (lanes.received_lsn(), lanes.flush_lsn(now))
    };
    let update = StandbyStatusUpdate {
        write,
        flush,
        // Like pg_receivewal: nothing is replayed here.
        apply: Lsn::INVALID,
        client_time: pg_epoch_micros(std::time::SystemTime::now()),
        reply_requested: false,
    };
    stream.send_status(&update).await?;
    shared.metrics.wal_flushed_lsn.set(flush.0 as i64);
    Ok(flush)
}
