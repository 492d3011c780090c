//! The hand-over of `.partial` views from the receiver to the partial uploader.
//!
//! The receiver must never wait for the bucket: a receiver that waits stops reading the
//! replication stream and answering keepalives, and the server drops it after
//! `wal_sender_timeout` (`WalSndCheckTimeOut` in `src/backend/replication/walsender.c`). So
//! it posts each view here and goes on. Only the newest bytes of an object matter, so a view
//! replaces a queued, shorter view of the same object; views of different objects (the
//! segment a timeline ended in, then the next one) queue in order. The queue therefore holds
//! at most one view per object, and in practice one or two.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::jobs::{CompressJob, WalObject};

/// Latest-wins queue of `.partial` views (see the module doc).
#[derive(Debug, Default)]
pub struct PartialMailbox {
    inner: Mutex<Inner>,
    posted: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<CompressJob>,
    closed: bool,
}

/// (timeline, segment, end) of a `.partial` job.
fn identity(job: &CompressJob) -> Option<(u32, u64, u64)> {
    match job.object {
        WalObject::Partial {
            tli, segno, end, ..
        } => Some((tli.0, segno.0, end.0)),
        _ => None,
    }
}

impl PartialMailbox {
    /// An open, empty mailbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` (a [`WalObject::Partial`]), replacing a queued view of the same object
    /// that holds less; a view that holds no more than the queued one is dropped. Never
    /// waits. Returns false when the mailbox is closed.
    pub fn post(&self, job: CompressJob) -> bool {
        let Some((tli, segno, end)) = identity(&job) else {
            debug_assert!(false, "only .partial views go through the mailbox");
            return false;
        };
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        let same = inner
            .queue
            .iter_mut()
            .find(|q| identity(q).is_some_and(|(t, s, _)| (t, s) == (tli, segno)));
        match same {
            Some(queued) if identity(queued).is_some_and(|(_, _, e)| e >= end) => {}
            Some(queued) => *queued = job,
            None => inner.queue.push_back(job),
        }
        drop(inner);
        self.posted.notify_one();
        true
    }

    /// Whether no view is waiting (one may still be uploading).
    pub fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Refuses further posts; [`PartialMailbox::next`] drains what is queued, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.posted.notify_one();
    }

    /// The oldest queued view, waiting for one; `None` once closed and drained.
    pub async fn next(&self) -> Option<CompressJob> {
        loop {
            {
                let mut inner = self.lock();
                if let Some(job) = inner.queue.pop_front() {
                    return Some(job);
                }
                if inner.closed {
                    return None;
                }
            }
            // A post between the check and this wait left a permit: no wake-up is lost.
            self.posted.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::jobs::RawSource;
    use pgagent_protocol::{Lsn, SegNo, TimelineId};

    fn view(tli: u32, segno: u64, end: u64) -> CompressJob {
        CompressJob {
            object: WalObject::Partial {
                tli: TimelineId(tli),
                segno: SegNo(segno),
                start: Lsn(0),
                end: Lsn(end),
            },
            source: RawSource::Bytes(vec![]),
        }
    }

    async fn drain(m: &PartialMailbox) -> Vec<(u32, u64, u64)> {
        m.close();
        let mut out = vec![];
        while let Some(j) = m.next().await {
            out.extend(identity(&j));
        }
        out
    }

    #[tokio::test]
    async fn the_newest_view_of_an_object_replaces_the_queued_one() {
        let m = PartialMailbox::new();
        assert!(m.post(view(1, 5, 100)));
        assert!(m.post(view(1, 5, 300)));
        assert!(m.post(view(1, 5, 200)), "shorter: dropped, not an error");
        assert_eq!(drain(&m).await, vec![(1, 5, 300)]);
    }

    #[tokio::test]
    async fn views_of_different_objects_keep_their_order() {
        let m = PartialMailbox::new();
        m.post(view(1, 5, 300));
        m.post(view(2, 5, 100));
        m.post(view(2, 6, 10));
        m.post(view(2, 5, 200));
        assert_eq!(drain(&m).await, vec![(1, 5, 300), (2, 5, 200), (2, 6, 10)]);
    }

    #[tokio::test]
    async fn a_closed_mailbox_refuses_posts_and_wakes_its_reader() {
        let m = std::sync::Arc::new(PartialMailbox::new());
        let reader = tokio::spawn({
            let m = m.clone();
            async move { m.next().await.is_none() }
        });
        tokio::task::yield_now().await;
        m.close();
        assert!(reader.await.unwrap());
        assert!(!m.post(view(1, 1, 1)));
    }
}
