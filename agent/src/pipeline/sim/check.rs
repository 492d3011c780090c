//! The simulation's checker: what fetch serves against what the server wrote and what was
//! confirmed.
//!
//! For each segment checked, fetch ([`Fetcher::find`], then [`deliver_verified`] into a
//! scratch file, as `pgagent fetch` does) must:
//! - serve it, and at least up to the confirmed position (confirmed ⇒ fetchable);
//! - serve only bytes the server wrote there, then zeros (nothing else is served);
//! - never serve less of it than it did before (the served end never goes backwards).
//!
//! A store whose listings may miss writes for a while (`stale_window`) can only be held to
//! what was confirmed that long ago: the checker compares with the confirmed position (and
//! the served ends) of that moment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgagent_protocol::{segment_file_name, Lsn, SegNo, TimelineId, WalSegmentSize};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::ObjectStore;
use tokio::time::Instant;

use super::store::{Faults, SimStore};
use crate::fetch::{deliver_verified, Fetcher};

/// The WAL the simulated server wrote: bytes that are a function of the position (so a
/// seed replays them), kept from the first segment streamed on, extended as the server
/// writes.
#[derive(Debug)]
pub struct ServerWal {
    base: Lsn,
    bytes: Vec<u8>,
}

impl ServerWal {
    /// The server's WAL from `base` (a multiple of 8), none written yet.
    pub fn new(base: Lsn) -> ServerWal {
        assert_eq!(base.0 % 8, 0);
        ServerWal {
            base,
            bytes: Vec::new(),
        }
    }

    /// Makes the WAL up to `end` exist (8 bytes at a time, each group a splitmix64 of its
    /// position).
    pub fn extend_to(&mut self, end: Lsn) {
        while self.base.0 + (self.bytes.len() as u64) < end.0 {
            let mut z =
                ((self.base.0 + self.bytes.len() as u64) >> 3).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            self.bytes.extend_from_slice(&z.to_le_bytes());
        }
    }

    /// The WAL in `[from, to)`; both within what was extended to.
    pub fn range(&self, from: Lsn, to: Lsn) -> &[u8] {
        let i = (from.0 - self.base.0) as usize;
        let j = (to.0 - self.base.0) as usize;
        &self.bytes[i..j]
    }
}

/// Zeros to compare padding with: as long as the largest simulated segment.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The checker of one seed.
pub struct Checker {
    fetcher: Fetcher,
    /// The store's cipher (`None`: plaintext).
    cipher: Option<ObjectCipher>,
    /// The same store, for failure reports.
    /// The simulated stores behind the fetcher (one, or each of a set read as one), for
    /// failure reports and to skip a check when nothing changed.
    sim: Vec<SimStore>,
    seg: WalSegmentSize,
    tli: TimelineId,
    scratch: tempfile::TempDir,
    /// How far back listings may lag; zero when they never do.
    lag: Duration,
    /// `(when, confirmed)` each time the confirmed position moved.
    confirmed: Vec<(Instant, Lsn)>,
    /// Per segment, `(when the fetch ended, bytes served)` each time a check served more
    /// of it.
    served: BTreeMap<SegNo, Vec<(Instant, u64)>>,
    /// Per segment, the store's change count and the confirmed position when last checked.
    unchanged: BTreeMap<SegNo, (Option<u64>, Lsn)>,
    /// The first segment the agent streamed: WAL before it was the server's before the
    /// agent came, confirmed by no one.
    first: SegNo,
    /// Segments checked so far, for the stats.
    pub checks: usize,
}

impl Checker {
    /// A checker of fetches from `store` (a cluster of `seg`-byte segments on `tli`), whose
    /// listings lag by up to `faults.stale_window` when they may lag at all.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        seg: WalSegmentSize,
        tli: TimelineId,
        first: SegNo,
        faults: &Faults,
        cipher: Option<ObjectCipher>,
    ) -> Checker {
        Checker {
            cipher: cipher.clone(),
            fetcher: Fetcher::on_store(store, seg).with_cipher(cipher),
            sim: Vec::new(),
            seg,
            tli,
            scratch: tempfile::tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .expect("scratch directory"),
            lag: if faults.stale_list > 0.0 {
                faults.stale_window
            } else {
                Duration::ZERO
            },
            confirmed: vec![(Instant::now(), Lsn(0))],
            served: BTreeMap::new(),
            unchanged: BTreeMap::new(),
            first,
            checks: 0,
        }
    }

    /// Names the simulated store behind the fetcher, so that a failure lists what it holds.
    pub fn with_sim(self, sim: SimStore) -> Checker {
        self.with_sims(vec![sim])
    }

    /// Names the simulated stores behind a fetcher that reads them as one.
    pub fn with_sims(mut self, sims: Vec<SimStore>) -> Checker {
        self.sim = sims;
        self
    }

    /// Notes a position promised now: confirmed to the server as `flush`, or below which
    /// a segment may be answered as archived (the largest ever counts).
    pub fn confirmed(&mut self, flush: Lsn) {
        let last = self.confirmed.last().map_or(Lsn(0), |c| c.1);
        if flush > last {
            self.confirmed.push((Instant::now(), flush));
        }
    }

    /// The largest position ever confirmed.
    pub fn confirmed_now(&self) -> Lsn {
        self.confirmed.last().map_or(Lsn(0), |c| c.1)
    }

    /// The largest position confirmed at least the listing lag ago.
    fn confirmed_settled(&self) -> Lsn {
        let cutoff = Instant::now().checked_sub(self.lag);
        self.confirmed
            .iter()
            .rev()
            .find(|(at, _)| cutoff.is_none_or(|c| *at <= c))
            .map_or(Lsn(0), |c| c.1)
    }

    /// Checks the segments from `from` up to the one holding the settled confirmed
    /// position (the last two only, unless `from` says otherwise).
    pub async fn check(&mut self, wal: &ServerWal, from: Option<SegNo>) -> Result<(), String> {
        let confirmed = self.confirmed_settled();
        if confirmed.0 == 0 {
            return Ok(());
        }
        let last = Lsn(confirmed.0 - 1).segment_number(self.seg);
        let first = from
            .unwrap_or(SegNo(last.0.saturating_sub(1)))
            .max(self.first);
        for segno in first.0..=last.0 {
            self.check_segment(wal, SegNo(segno), confirmed).await?;
        }
        Ok(())
    }

    async fn check_segment(
        &mut self,
        wal: &ServerWal,
        segno: SegNo,
        confirmed: Lsn,
    ) -> Result<(), String> {
        // Nothing changed in the store, nor the confirmed position, since this segment was
        // last checked: the same answer (a lagging listing aside, which only shows more).
        let changes = (!self.sim.is_empty()).then(|| self.sim.iter().map(SimStore::changes).sum());
        let seen = (changes, confirmed);
        if changes.is_some() && self.unchanged.get(&segno) == Some(&seen) {
            return Ok(());
        }
        let r = self.check_segment_inner(wal, segno, confirmed).await;
        self.unchanged.insert(segno, seen);
        r.map_err(|e| {
            let name = segment_file_name(self.tli, segno, self.seg);
            self.sim.iter().fold(e, |e, sim| {
                let keys = sim.keys(&format!("wal/{name}"));
                format!("{e}\n  the store holds (key, written at): {keys:#?}")
            })
        })
    }

    async fn check_segment_inner(
        &mut self,
        wal: &ServerWal,
        segno: SegNo,
        confirmed: Lsn,
    ) -> Result<(), String> {
        let seg = self.seg;
        let start = segno.start_lsn(seg);
        let end = segno.end_lsn(seg);
        let must = confirmed.min(end).0.saturating_sub(start.0);
        if must == 0 {
            return Ok(());
        }
        self.checks += 1;
        let name = segment_file_name(self.tli, segno, seg);
        // Anything a listing can miss was written after this, whenever the listing runs.
        let cutoff = Instant::now().checked_sub(self.lag);
        let resolved = self.fetcher.resolve(&name).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(3600);
        let found = self
            .fetcher
            .find(&resolved, deadline)
            .await
            .map_err(|e| format!("{name}: fetch failed: {e}"))?
            .ok_or_else(|| {
                format!("{name}: not served (absent), but WAL up to {confirmed} was confirmed")
            })?;
        let path = self.scratch.path().join("RECOVERYXLOG");
        let delivered = deliver_verified(&found, self.cipher.as_ref(), &path)
            .map_err(|e| format!("{name}: delivery failed: {e}"))?;
        let got = std::fs::read(&path).map_err(|e| e.to_string())?;
        if got.len() as u64 != seg.bytes() {
            return Err(format!("{name}: served {} bytes, not a segment", got.len()));
        }
        let raw = delivered.raw_len.min(seg.bytes());
        if raw < must {
            return Err(format!(
                "{name}: not served up to the confirmed {confirmed}: served WAL up to {} ({})",
                start + raw,
                found.describe()
            ));
        }
        let (served, padding) = got.split_at(raw as usize);
        let want = wal.range(start, start + raw);
        if served != want {
            let i = served
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "{name}: served bytes the server did not write, first at {} ({})",
                start + i as u64,
                found.describe()
            ));
        }
        if padding != &ZEROS[..padding.len()] {
            let i = padding.iter().position(|&b| b != 0).unwrap_or(0);
            return Err(format!(
                "{name}: not zeros after the served WAL, at {}",
                start + raw + i as u64
            ));
        }
        // Never less than a fetch that ended a listing lag before this one began served
        // (whatever that fetch listed was written before it ended).
        let history = self.served.entry(segno).or_default();
        let before = history
            .iter()
            .filter(|(at, _)| cutoff.is_none_or(|c| *at <= c))
            .map(|h| h.1)
            .max();
        if let Some(b) = before.filter(|b| raw < *b) {
            return Err(format!(
                "{name}: the served end went backwards: WAL up to {} served before, up to {} now \
                 ({}; listings lag up to {:?}; served before: {:?}; now {:?})",
                start + b,
                start + raw,
                found.describe(),
                self.lag,
                history,
                Instant::now()
            ));
        }
        if history.last().is_none_or(|h| raw > h.1) {
            history.push((Instant::now(), raw));
        }
        Ok(())
    }
}

#[cfg(test)]
impl Checker {
    /// A checker over an empty, quiet store of 1 MiB segments.
    pub async fn new_for_tests() -> Checker {
        let faults = Faults {
            latency: Duration::from_millis(1),
            slow: (0.0, Duration::ZERO),
            fail: 0.0,
            stale_list: 0.0,
            stale_window: Duration::ZERO,
            conditional_put: true,
            lock: false,
        };
        let store = Arc::new(SimStore::new(1, faults));
        let seg = WalSegmentSize::new(1 << 20).unwrap();
        Checker::new(store, seg, TimelineId(1), SegNo(1), &faults, None)
    }

    /// Claims `bytes` of segment 1 confirmed and checks.
    pub async fn check_confirmed_for_tests(&mut self, bytes: u64) -> Result<(), String> {
        let start = SegNo(1).start_lsn(self.seg);
        self.confirmed(start + bytes);
        let mut wal = ServerWal::new(start);
        wal.extend_to(start + bytes);
        self.check(&wal, Some(SegNo(1))).await
    }
}
