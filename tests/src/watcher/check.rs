//! One round of the watcher: the slot, the listing, every object compared with the
//! server's `pg_wal` (complete segments, `.partial` objects, deltas), the frontier.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::Context;
use pgagent_protocol::{segment_file_name, ConnConfig, Lsn, SegNo, SqlSession, WalFileName};
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::deltas::{deltas_prefix, Delta};
use pgagent_storage::envelope::{self, Header, MAX_HEADER_LEN};
use pgagent_storage::keyring::access::reader_cipher;
use pgagent_storage::layout::wal_key;
use pgagent_storage::{ObjectMeta, ObjectStore, StoreError};

use super::frontier::{contiguous_end, parse_wal_key, WalListing};
use super::report::{SlotCheck, Violation, ViolationKind, WatchReport};
use super::{lock, WatchTarget};

/// Attempts at a round whose listing names an object that is gone when read (a segment was
/// completed and its `.partial` or deltas removed meanwhile) before the round gives up.
const LIST_ATTEMPTS: usize = 4;

/// The watcher's memory between rounds.
pub(super) struct Checker {
    target: WatchTarget,
    started: Instant,
    state: Arc<Mutex<WatchReport>>,
    store: Option<Arc<dyn ObjectStore>>,
    /// The store's cipher, unlocked with the target's passphrase when the store is opened.
    cipher: Option<ObjectCipher>,
    sql: Option<SqlSession>,
    /// Complete objects already compared: key → stored size.
    segments_done: HashMap<String, u64>,
    /// `.partial` versions already compared: key → (raw length, hash).
    partials_done: HashMap<String, (u64, [u8; 32])>,
    /// Raw length of each `.partial` key when last read.
    partial_last: HashMap<String, u64>,
    /// Deltas already compared: key → what the listing said of it then, and its content
    /// hash (`None`: it did not open).
    deltas_done: HashMap<String, (Listed, Option<[u8; 32]>)>,
    /// How far the pieces of each segment without a complete object reached when last
    /// assembled.
    assembled_last: HashMap<SegNo, u64>,
}

/// What a listing says of an object: stored size and modification time. Either changes
/// when an object is written again.
type Listed = (u64, Option<SystemTime>);

/// A `.partial` or a delta read this round.
enum PartialRead {
    /// Its raw length (0 when it does not open).
    Len(u64),
    /// Gone since the listing (its segment was completed and the partial removed).
    Gone,
}

impl Checker {
    pub(super) fn new(
        target: WatchTarget,
        started: Instant,
        state: Arc<Mutex<WatchReport>>,
    ) -> Checker {
        Checker {
            target,
            started,
            state,
            store: None,
            cipher: None,
            sql: None,
            segments_done: HashMap::new(),
            partials_done: HashMap::new(),
            partial_last: HashMap::new(),
            deltas_done: HashMap::new(),
            assembled_last: HashMap::new(),
        }
    }

    pub(super) fn interval(&self) -> std::time::Duration {
        self.target.interval
    }

    pub(super) async fn round_or_note(&mut self) {
        if let Err(e) = self.round().await {
            let mut s = lock(&self.state);
            s.failed_rounds += 1;
            if s.errors.len() >= 5 {
                s.errors.remove(0);
            }
            s.errors.push(format!(
                "at {:.1}s: {e:#}",
                self.started.elapsed().as_secs_f64()
            ));
        }
    }

    fn violation(&self, kind: ViolationKind) {
        lock(&self.state).push_violation(Violation {
            at: self.started.elapsed(),
            kind,
        });
    }

    async fn store(&mut self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        if self.store.is_none() {
            let store = pgagent_storage::open(&self.target.store_url, &self.target.store_options)
                .await
                .context("open the store")?;
            if let Some(passphrase) = &self.target.passphrase {
                self.cipher = reader_cipher(store.as_ref(), Some(passphrase), Default::default())
                    .await
                    .context("unlock the store's key")?;
            }
            self.store = Some(store);
        }
        Ok(self.store.clone().expect("just opened"))
    }

    /// The slot's `restart_lsn`, `None` when the slot does not exist or has none.
    async fn restart_lsn(&mut self) -> anyhow::Result<Option<Lsn>> {
        if self.sql.is_none() {
            let conn = ConnConfig::parse(&self.target.conninfo).context("watcher conninfo")?;
            self.sql = Some(
                SqlSession::connect(&conn)
                    .await
                    .context("connect to PostgreSQL")?,
            );
        }
        let sql = format!(
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
            self.target.slot.replace('\'', "''")
        );
        let rows = match self.sql.as_mut().expect("connected").query(&sql).await {
            Ok(rows) => rows,
            Err(e) => {
                self.sql = None;
                return Err(anyhow::Error::new(e).context("read the slot"));
            }
        };
        match rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
        {
            Some(text) => {
                Ok(Some(Lsn::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("restart_lsn {text:?}: {e}")
                })?))
            }
            None => Ok(None),
        }
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        // The slot first, then the bucket: the bucket only grows, so what is listed after
        // the slot was read holds at least what the slot was confirmed against.
        let restart = self.restart_lsn().await?;
        let store = self.store().await?;
        let (seg, tli) = (self.target.seg, self.target.timeline);
        for _ in 0..LIST_ATTEMPTS {
            let metas = store.list("wal/").await.context("list wal/")?;
            let listing = WalListing::from_keys(metas.iter().map(|m| m.key.as_str()), tli, seg);
            for meta in &metas {
                let is_segment = matches!(
                    parse_wal_key(&meta.key, seg),
                    Some(WalFileName::Segment { tli: t, .. }) if t == tli
                );
                if is_segment && self.segments_done.get(&meta.key) != Some(&meta.size) {
                    self.check_segment(store.as_ref(), &meta.key, meta.size)
                        .await?;
                }
            }
            let mut legacy = BTreeMap::new();
            let mut gone = false;
            for (segno, key) in &listing.partials {
                match self.check_partial(store.as_ref(), key).await? {
                    PartialRead::Len(len) => {
                        legacy.insert(*segno, len);
                    }
                    PartialRead::Gone => {
                        gone = true;
                        break;
                    }
                }
            }
            let listed: HashMap<&str, &ObjectMeta> =
                metas.iter().map(|m| (m.key.as_str(), m)).collect();
            for d in listing.deltas.values().flatten() {
                if gone {
                    break;
                }
                let key = d.key(seg);
                let Some(meta) = listed.get(key.as_str()) else {
                    continue;
                };
                let now = (meta.size, meta.last_modified);
                if self.deltas_done.get(&key).map(|(l, _)| *l) != Some(now) {
                    gone = matches!(
                        self.check_delta(store.as_ref(), d, &key, now).await?,
                        PartialRead::Gone
                    );
                }
            }
            if gone {
                // A segment was completed meanwhile: list again.
                continue;
            }
            let lens = self
                .assembled_ends(store.as_ref(), &listing, &legacy)
                .await?;
            let check = restart.map(|restart_lsn| {
                let from = restart_lsn.segment_number(seg);
                SlotCheck {
                    restart_lsn,
                    frontier: contiguous_end(&listing, from, &lens, seg),
                }
            });
            if let Some(c) = check.filter(|c| c.restart_lsn > c.frontier) {
                let at = listing.first_incomplete(c.restart_lsn.segment_number(seg));
                let name = pgagent_protocol::segment_file_name(tli, at, seg);
                let stopped_at = match lens.get(&at) {
                    Some(len) => format!(
                        "{name} is missing; its pieces (.partial, deltas) hold {len} bytes from its start"
                    ),
                    None => format!("neither {name} nor a .partial or delta of it is in the bucket"),
                };
                self.violation(ViolationKind::SlotAhead {
                    restart_lsn: c.restart_lsn,
                    frontier: c.frontier,
                    stopped_at,
                });
            }
            let mut s = lock(&self.state);
            s.rounds += 1;
            if let Some(c) = check {
                s.slot_checks += 1;
                s.last_slot_check = Some(c);
            }
            s.listing = listing;
            s.partial_lens = lens;
            return Ok(());
        }
        anyhow::bail!("the listing changed under every one of {LIST_ATTEMPTS} attempts")
    }

    /// Compares a complete segment with the server's file once.
    async fn check_segment(
        &mut self,
        store: &dyn ObjectStore,
        key: &str,
        size: u64,
    ) -> anyhow::Result<()> {
        let body = match store.get(key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => anyhow::bail!("{key} listed but gone"),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("get {key}"))),
        };
        self.segments_done.insert(key.to_owned(), size);
        let raw = match envelope::open_for(&body, self.cipher.as_ref(), key) {
            Ok(raw) => raw,
            Err(e) => {
                self.violation(ViolationKind::Unreadable {
                    key: key.to_owned(),
                    error: plain(&e),
                });
                return Ok(());
            }
        };
        let seg = self.target.seg.bytes();
        if raw.len() as u64 != seg {
            self.violation(ViolationKind::Content {
                key: key.to_owned(),
                detail: format!(
                    "a complete segment of {} bytes; segments are {seg}",
                    raw.len()
                ),
            });
            return Ok(());
        }
        self.compare_with_server(key, &raw);
        Ok(())
    }

    /// Reads a `.partial`'s header and, when it changed, the whole object, and compares it
    /// with the server's file.
    async fn check_partial(
        &mut self,
        store: &dyn ObjectStore,
        key: &str,
    ) -> anyhow::Result<PartialRead> {
        let head = match store.get_range(key, 0, MAX_HEADER_LEN as u64).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(PartialRead::Gone),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("get {key} header"))),
        };
        let header = match Header::parse(&head) {
            Ok(h) => h,
            Err(e) => {
                self.unreadable(key, &e);
                return Ok(PartialRead::Len(0));
            }
        };
        let id = (header.raw_len, *header.hash.as_bytes());
        if self.partials_done.get(key) != Some(&id) {
            let body = match store.get(key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Ok(PartialRead::Gone),
                Err(e) => return Err(anyhow::Error::new(e).context(format!("get {key}"))),
            };
            let raw = match envelope::open_for(&body, self.cipher.as_ref(), key) {
                Ok(raw) => raw,
                Err(e) => {
                    self.unreadable(key, &e);
                    return Ok(PartialRead::Len(0));
                }
            };
            // The version read may be newer than the header: remember what was compared.
            let header = Header::parse(&body).expect("opened above");
            self.partials_done
                .insert(key.to_owned(), (header.raw_len, *header.hash.as_bytes()));
            self.compare_with_server(key, &raw);
            lock(&self.state).partials_compared += 1;
            self.note_length(key, raw.len() as u64);
            return Ok(PartialRead::Len(raw.len() as u64));
        }
        self.note_length(key, header.raw_len);
        Ok(PartialRead::Len(header.raw_len))
    }

    /// How far the pieces of each segment holding some reach (`legacy`: the raw length of
    /// each `.partial` read this round); for a segment without a complete object that has
    /// deltas, an end lower than the last round's is a violation: the bucket went backwards.
    /// Unless the complete segment is in the bucket by now: the agent removes a segment's
    /// deltas once it uploaded the complete object, and a listing (a directory walk, or
    /// pages of an S3 listing) may have missed the one and seen the other half done.
    async fn assembled_ends(
        &mut self,
        store: &dyn ObjectStore,
        listing: &WalListing,
        legacy: &BTreeMap<SegNo, u64>,
    ) -> anyhow::Result<BTreeMap<SegNo, u64>> {
        let (seg, tli) = (self.target.seg, self.target.timeline);
        let segments: Vec<SegNo> = listing
            .partials
            .keys()
            .chain(listing.deltas.keys())
            .copied()
            .collect();
        let mut ends = BTreeMap::new();
        for segno in segments {
            let end = listing.assembled_end(segno, legacy.get(&segno).copied(), seg);
            ends.insert(segno, end);
            if listing.complete.contains(&segno) || !listing.deltas.contains_key(&segno) {
                continue;
            }
            let before = std::mem::replace(self.assembled_last.entry(segno).or_insert(end), end);
            if end >= before {
                continue;
            }
            let complete = wal_key(&segment_file_name(tli, segno, seg));
            let completed = store
                .head(&complete)
                .await
                .with_context(|| format!("head {complete}"))?
                .is_some();
            if !completed {
                self.violation(ViolationKind::Backwards {
                    key: deltas_prefix(tli, segno, seg),
                    before,
                    now: end,
                });
            }
        }
        Ok(ends)
    }

    /// Reads a delta first seen, or listed with another size or time than when it was
    /// read: it must open, hold as many bytes as its name says, equal the server's file at
    /// its offsets, and never change content once seen.
    async fn check_delta(
        &mut self,
        store: &dyn ObjectStore,
        d: &Delta,
        key: &str,
        listed: Listed,
    ) -> anyhow::Result<PartialRead> {
        let body = match store.get(key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(PartialRead::Gone),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("get {key}"))),
        };
        let before = self.deltas_done.get(key).and_then(|(_, h)| *h);
        let raw = match envelope::open_for(&body, self.cipher.as_ref(), key) {
            Ok(raw) => raw,
            Err(e) => {
                if self
                    .deltas_done
                    .insert(key.to_owned(), (listed, None))
                    .is_none()
                {
                    self.unreadable(key, &e);
                }
                return Ok(PartialRead::Len(0));
            }
        };
        let hash = *Header::parse(&body).expect("opened above").hash.as_bytes();
        let first = self
            .deltas_done
            .insert(key.to_owned(), (listed, Some(hash)))
            .is_none();
        if before.is_some_and(|h| h != hash) {
            self.violation(ViolationKind::Changed {
                key: key.to_owned(),
            });
        }
        if !first {
            return Ok(PartialRead::Len(raw.len() as u64));
        }
        if raw.len() as u64 != d.len() {
            self.violation(ViolationKind::Content {
                key: key.to_owned(),
                detail: format!("holds {} bytes, its name says {}", raw.len(), d.len()),
            });
            return Ok(PartialRead::Len(0));
        }
        let name = segment_file_name(d.tli, d.segno, self.target.seg);
        match read_range(&self.target.pg_wal.join(&name), d.start, raw.len()) {
            Ok(Some(server)) if server == raw => {}
            Ok(Some(server)) => {
                let at = raw.iter().zip(&server).position(|(a, b)| a != b);
                let detail = match at {
                    Some(at) => format!(
                        "differs from the server's pg_wal/{name} at byte {} (LSN {})",
                        d.start + at as u64,
                        d.segno.start_lsn(self.target.seg) + d.start + at as u64
                    ),
                    None => format!(
                        "{} bytes from offset {}, more than the server's pg_wal/{name} holds",
                        raw.len(),
                        d.start
                    ),
                };
                self.violation(ViolationKind::Content {
                    key: key.to_owned(),
                    detail,
                });
            }
            Ok(None) => {
                lock(&self.state).gone_from_server += 1;
                return Ok(PartialRead::Len(raw.len() as u64));
            }
            Err(e) => self.violation(ViolationKind::Content {
                key: key.to_owned(),
                detail: format!("cannot read the server's {name}: {e}"),
            }),
        }
        lock(&self.state).deltas_compared += 1;
        Ok(PartialRead::Len(raw.len() as u64))
    }

    fn unreadable(&mut self, key: &str, e: &StoreError) {
        // Counted once per key until it changes again.
        if self
            .partials_done
            .insert(key.to_owned(), (u64::MAX, [0; 32]))
            .is_none()
        {
            self.violation(ViolationKind::Unreadable {
                key: key.to_owned(),
                error: plain(e),
            });
        }
    }

    /// Records a `.partial`'s length; a shorter one than before is a violation.
    fn note_length(&mut self, key: &str, len: u64) {
        let last = self.partial_last.entry(key.to_owned()).or_insert(len);
        let before = std::mem::replace(last, len);
        if len < before {
            self.violation(ViolationKind::Backwards {
                key: key.to_owned(),
                before,
                now: len,
            });
        }
    }

    /// Compares raw object bytes with the same-length prefix of the server's file.
    fn compare_with_server(&mut self, key: &str, raw: &[u8]) {
        let name = pgagent_storage::layout::wal_file_name(key)
            .unwrap_or(key)
            .trim_end_matches(".partial");
        let server = match read_prefix(&self.target.pg_wal.join(name), raw.len()) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                lock(&self.state).gone_from_server += 1;
                return;
            }
            Err(e) => {
                self.violation(ViolationKind::Content {
                    key: key.to_owned(),
                    detail: format!("cannot read the server's {name}: {e}"),
                });
                return;
            }
        };
        if server.len() < raw.len() {
            self.violation(ViolationKind::Content {
                key: key.to_owned(),
                detail: format!(
                    "{} bytes, more than the server's {name} holds ({})",
                    raw.len(),
                    server.len()
                ),
            });
        } else if let Some(at) = raw.iter().zip(&server).position(|(a, b)| a != b) {
            let segno = parse_wal_key(key, self.target.seg).map(|n| match n {
                WalFileName::Segment { segno, .. } | WalFileName::Partial { segno, .. } => segno,
                _ => SegNo(0),
            });
            let lsn = segno.map(|s| s.start_lsn(self.target.seg) + at as u64);
            self.violation(ViolationKind::Content {
                key: key.to_owned(),
                detail: format!(
                    "differs from the server's pg_wal/{name} at byte {at} (LSN {}) of {}",
                    lsn.map(|l| l.to_string()).unwrap_or_default(),
                    raw.len()
                ),
            });
        }
        if !key.ends_with(".partial") {
            lock(&self.state).segments_compared += 1;
        }
    }
}

/// The first `len` bytes of `path` (fewer if it is shorter); `None` if it does not exist.
fn read_prefix(path: &std::path::Path, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    read_range(path, 0, len)
}

/// `len` bytes of `path` from byte `start` (fewer if it is shorter); `None` if it does not
/// exist.
fn read_range(path: &std::path::Path, start: u64, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(start))?;
    let mut out = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut out)?;
    Ok(Some(out))
}

/// A store error's text without the empty key prefix envelope errors carry (`": corrupt…"`).
fn plain(e: &StoreError) -> String {
    e.to_string().trim_start_matches(": ").to_owned()
}
