//! The message sequence of `BASE_BACKUP` as a state machine without I/O.
//!
//! [`BaseBackupDecoder::feed`] takes backend messages one at a time, already
//! decoded into [`Backend`], and answers with a [`Step`]. The flows it
//! accepts are described in the parent module. Anything else is a protocol
//! error, after which the connection is not reusable. A non-fatal
//! ErrorResponse is held until ReadyForQuery and returned then, with the
//! connection reusable.

use bytes::{Buf, Bytes};

use super::{ArchiveFormat, BaseBackupEvent, Tablespace};
use crate::error::{DbError, Error};
use crate::wire::lsn::Lsn;
use crate::wire::timeline::TimelineId;

/// Type bytes of CopyData in the 15+ archive stream (`basebackup_copy.c`).
const NEW_ARCHIVE: u8 = b'n';
const DATA: u8 = b'd';
const PROGRESS: u8 = b'p';
const MANIFEST: u8 = b'm';

/// The two 512-byte zero blocks that end a ustar archive. Servers before 15
/// do not send them (protocol docs, `BASE_BACKUP`); `ReceiveTarFile` in
/// `pg_basebackup.c` of those versions appends them, and so do we.
static TAR_END: [u8; 1024] = [0; 1024];

/// A backend message, reduced to what the decoder looks at.
#[derive(Debug)]
pub(crate) enum Backend {
    RowDescription,
    /// Columns in text format, `None` for NULL.
    DataRow(Vec<Option<Bytes>>),
    CommandComplete,
    CopyOutResponse,
    /// The CopyData payload.
    CopyData(Bytes),
    CopyDone,
    ErrorResponse(DbError),
    ReadyForQuery,
    /// Any other message, by name (for the error text).
    Other(&'static str),
}

/// What one message amounts to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to report; feed the next message.
    Continue,
    /// An event for the caller.
    Event(BaseBackupEvent),
    /// ReadyForQuery after the end position: the backup is complete.
    Done,
}

/// Where `'d'` bytes of the 15+ stream belong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Nothing,
    Archive,
    Manifest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first COPY; `result_sets` counts RowDescriptions seen
    /// (1: start position, 2: tablespaces).
    Header { result_sets: u8 },
    /// 15+: inside the single COPY.
    Stream { part: Part },
    /// 13/14: inside the COPY of an archive.
    InArchive,
    /// 13/14: inside the COPY of the manifest.
    InManifest,
    /// 13/14: between two COPYs.
    Between,
    /// After the archives: reading the end position.
    Trailer,
    /// A non-fatal ErrorResponse arrived; waiting for ReadyForQuery.
    Draining,
    /// The backup completed.
    Done,
    /// The backup failed; `usable` if the connection is idle again.
    Failed { usable: bool },
}

/// Overall status, for the I/O side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Running,
    Done,
    Failed,
}

/// The state machine of one `BASE_BACKUP` answer.
#[derive(Debug)]
pub(crate) struct BaseBackupDecoder {
    format: ArchiveFormat,
    manifest_requested: bool,
    state: State,
    start: Option<(Lsn, TimelineId)>,
    tablespaces: Vec<Tablespace>,
    archives_begun: usize,
    manifest_begun: bool,
    end: Option<(Lsn, TimelineId)>,
    failure: Option<DbError>,
}

fn protocol(msg: impl std::fmt::Display) -> Error {
    Error::protocol(format!("BASE_BACKUP: {msg}"))
}

/// Reads a start or end position row: `recptr` (text `X/X`), `tli` (int8).
fn parse_position(row: &[Option<Bytes>]) -> Result<(Lsn, TimelineId), Error> {
    let col = |i: usize| -> Result<&str, Error> {
        row.get(i)
            .and_then(|c| c.as_ref())
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| protocol("malformed WAL position row"))
    };
    let lsn: Lsn = col(0)?
        .parse()
        .map_err(|e| protocol(format!("recptr: {e}")))?;
    let tli: i64 = col(1)?
        .parse()
        .map_err(|_| protocol("tli is not a number"))?;
    let tli = u32::try_from(tli).map_err(|_| protocol("tli out of range"))?;
    Ok((lsn, TimelineId(tli)))
}

/// Reads a tablespace row: `spcoid` (oid), `spclocation` (text), `size` (int8, KiB).
fn parse_tablespace(row: &[Option<Bytes>]) -> Result<Tablespace, Error> {
    if row.len() < 3 {
        return Err(protocol("tablespace row has fewer than 3 columns"));
    }
    let text = |i: usize| -> Result<Option<String>, Error> {
        row[i]
            .as_ref()
            .map(|b| {
                String::from_utf8(b.to_vec()).map_err(|_| protocol("tablespace row is not UTF-8"))
            })
            .transpose()
    };
    let oid = text(0)?
        .map(|t| t.parse::<u32>())
        .transpose()
        .map_err(|_| protocol("invalid spcoid"))?;
    let size_kib = text(2)?
        .map(|t| t.parse::<u64>())
        .transpose()
        .map_err(|_| protocol("invalid tablespace size"))?;
    Ok(Tablespace {
        oid,
        location: text(1)?,
        size_kib,
    })
}

/// Splits the body of a `'n'` message: archive name `\0` location `\0`.
fn parse_new_archive(body: &[u8]) -> Result<(String, String), Error> {
    let mut parts = body.split(|&b| b == 0);
    let mut next = || {
        parts
            .next()
            .and_then(|p| String::from_utf8(p.to_vec()).ok())
            .ok_or_else(|| protocol("malformed new-archive message"))
    };
    let name = next()?;
    let location = next()?;
    if !body.ends_with(&[0]) || body.iter().filter(|&&b| b == 0).count() != 2 {
        return Err(protocol("malformed new-archive message"));
    }
    Ok((name, location))
}

impl BaseBackupDecoder {
    /// A decoder for the answer in `format`; `manifest_requested` says
    /// whether a manifest must follow the archives.
    pub(crate) fn new(format: ArchiveFormat, manifest_requested: bool) -> Self {
        BaseBackupDecoder {
            format,
            manifest_requested,
            state: State::Header { result_sets: 0 },
            start: None,
            tablespaces: Vec::new(),
            archives_begun: 0,
            manifest_begun: false,
            end: None,
            failure: None,
        }
    }

    /// Start position and timeline, once its row has arrived.
    pub(crate) fn start(&self) -> Option<(Lsn, TimelineId)> {
        self.start
    }

    /// The tablespace rows received so far (all of them once
    /// [`Self::header_complete`]).
    pub(crate) fn tablespaces(&self) -> &[Tablespace] {
        &self.tablespaces
    }

    /// End position and timeline, once the backup completed.
    pub(crate) fn end(&self) -> Option<(Lsn, TimelineId)> {
        (self.state == State::Done).then_some(self.end).flatten()
    }

    /// Both result sets before the archives have arrived.
    pub(crate) fn header_complete(&self) -> bool {
        matches!(
            self.state,
            State::Stream { .. }
                | State::InArchive
                | State::InManifest
                | State::Between
                | State::Trailer
                | State::Done
        )
    }

    pub(crate) fn status(&self) -> Status {
        match self.state {
            State::Done => Status::Done,
            State::Failed { .. } => Status::Failed,
            _ => Status::Running,
        }
    }

    /// Whether the connection takes commands again: after the end, or after
    /// a non-fatal error once ReadyForQuery arrived.
    pub(crate) fn connection_usable(&self) -> bool {
        matches!(self.state, State::Done | State::Failed { usable: true })
    }

    /// Marks the backup failed for a reason outside the decoder (I/O).
    pub(crate) fn abandon(&mut self) {
        if self.state != State::Done {
            self.state = State::Failed { usable: false };
        }
    }

    /// Takes the next backend message.
    ///
    /// Errors: the server's error (held until ReadyForQuery unless FATAL or
    /// PANIC), or a protocol error for a message out of place or malformed.
    pub(crate) fn feed(&mut self, message: Backend) -> Result<Step, Error> {
        let result = self.step(message);
        if result.is_err() && !matches!(self.state, State::Failed { .. } | State::Done) {
            self.state = State::Failed { usable: false };
        }
        result
    }

    fn step(&mut self, message: Backend) -> Result<Step, Error> {
        match (self.state, message) {
            (State::Done | State::Failed { .. }, _) => {
                Err(protocol("the backup has already ended"))
            }
            (State::Draining, Backend::ReadyForQuery) => {
                self.state = State::Failed { usable: true };
                let db = self.failure.take().unwrap_or_default();
                Err(Error::db(db))
            }
            (State::Draining, _) => Ok(Step::Continue),
            (_, Backend::ErrorResponse(db)) => {
                if matches!(db.severity.as_str(), "FATAL" | "PANIC") {
                    // The server closes the connection after these.
                    self.state = State::Failed { usable: false };
                    return Err(Error::db(db));
                }
                self.failure = Some(db);
                self.state = State::Draining;
                Ok(Step::Continue)
            }
            (State::Header { result_sets }, message) => self.header(result_sets, message),
            (State::Stream { part }, Backend::CopyData(data)) => self.stream_data(part, data),
            (State::Stream { .. }, Backend::CopyDone) => {
                self.check_complete()?;
                self.state = State::Trailer;
                Ok(Step::Continue)
            }
            (State::InArchive, Backend::CopyData(data)) => {
                Ok(Step::Event(BaseBackupEvent::ArchiveData(data)))
            }
            (State::InArchive, Backend::CopyDone) => {
                self.state = State::Between;
                Ok(Step::Event(BaseBackupEvent::ArchiveData(
                    Bytes::from_static(&TAR_END),
                )))
            }
            (State::InManifest, Backend::CopyData(data)) => {
                Ok(Step::Event(BaseBackupEvent::ManifestData(data)))
            }
            (State::InManifest, Backend::CopyDone) => {
                self.state = State::Between;
                Ok(Step::Continue)
            }
            (State::Between, Backend::CopyOutResponse) => self.next_copy(),
            (State::Between, Backend::RowDescription) => {
                self.check_complete()?;
                self.state = State::Trailer;
                Ok(Step::Continue)
            }
            (State::Between | State::Trailer, Backend::CommandComplete)
            | (State::Trailer, Backend::RowDescription) => Ok(Step::Continue),
            (State::Trailer, Backend::DataRow(row)) => {
                if self.end.is_some() {
                    return Err(protocol("more than one end position row"));
                }
                self.end = Some(parse_position(&row)?);
                Ok(Step::Continue)
            }
            (State::Trailer, Backend::ReadyForQuery) => match self.end {
                Some(_) => {
                    self.state = State::Done;
                    Ok(Step::Done)
                }
                None => Err(protocol("the server sent no end position")),
            },
            (state, message) => Err(unexpected(state, &message)),
        }
    }

    fn header(&mut self, result_sets: u8, message: Backend) -> Result<Step, Error> {
        match message {
            Backend::RowDescription if result_sets < 2 => {
                self.state = State::Header {
                    result_sets: result_sets + 1,
                };
                Ok(Step::Continue)
            }
            Backend::DataRow(row) if result_sets == 1 => {
                if self.start.is_some() {
                    return Err(protocol("more than one start position row"));
                }
                self.start = Some(parse_position(&row)?);
                Ok(Step::Continue)
            }
            Backend::DataRow(row) if result_sets == 2 => {
                self.tablespaces.push(parse_tablespace(&row)?);
                Ok(Step::Continue)
            }
            Backend::CommandComplete => Ok(Step::Continue),
            Backend::CopyOutResponse => {
                if self.start.is_none() {
                    return Err(protocol("the server sent no start position"));
                }
                if self.tablespaces.is_empty() {
                    return Err(protocol("the server sent no tablespace list"));
                }
                match self.format {
                    ArchiveFormat::Stream => {
                        self.state = State::Stream {
                            part: Part::Nothing,
                        };
                        Ok(Step::Continue)
                    }
                    ArchiveFormat::PerTablespace => self.next_copy(),
                }
            }
            message => Err(unexpected(self.state, &message)),
        }
    }

    /// 15+: one CopyData payload.
    fn stream_data(&mut self, part: Part, mut data: Bytes) -> Result<Step, Error> {
        let kind = *data
            .first()
            .ok_or_else(|| protocol("empty CopyData message"))?;
        data.advance(1);
        match (kind, part) {
            (NEW_ARCHIVE, Part::Manifest) => Err(protocol("a new archive after the manifest")),
            (NEW_ARCHIVE, _) => {
                let (name, location) = parse_new_archive(&data)?;
                let tablespace = if location.is_empty() {
                    None
                } else {
                    let row = self
                        .tablespaces
                        .iter()
                        .find(|t| t.location.as_deref() == Some(location.as_str()))
                        .ok_or_else(|| {
                            protocol(format!("archive {name:?} for an unlisted tablespace"))
                        })?;
                    Some(row.clone())
                };
                self.archive_begins()?;
                self.state = State::Stream {
                    part: Part::Archive,
                };
                Ok(Step::Event(BaseBackupEvent::Archive { name, tablespace }))
            }
            (DATA, Part::Archive) => Ok(Step::Event(BaseBackupEvent::ArchiveData(data))),
            (DATA, Part::Manifest) => Ok(Step::Event(BaseBackupEvent::ManifestData(data))),
            (DATA, Part::Nothing) => Err(protocol("data before the first archive")),
            (PROGRESS, _) => {
                if data.len() != 8 {
                    return Err(protocol("malformed progress message"));
                }
                let done =
                    u64::try_from(data.get_i64()).map_err(|_| protocol("negative progress"))?;
                Ok(Step::Event(BaseBackupEvent::Progress(done)))
            }
            (MANIFEST, _) => {
                if self.manifest_begun {
                    return Err(protocol("a second manifest"));
                }
                self.manifest_begun = true;
                self.state = State::Stream {
                    part: Part::Manifest,
                };
                Ok(Step::Continue)
            }
            (other, _) => Err(protocol(format!(
                "unknown CopyData type {:?}",
                char::from(other)
            ))),
        }
    }

    /// 13/14: a CopyOutResponse; the next archive, else the manifest.
    fn next_copy(&mut self) -> Result<Step, Error> {
        if let Some(row) = self.tablespaces.get(self.archives_begun).cloned() {
            self.archive_begins()?;
            self.state = State::InArchive;
            // Archive names as pg_basebackup gives them (`BaseBackup`).
            let name = match row.oid {
                None => "base.tar".to_owned(),
                Some(oid) => format!("{oid}.tar"),
            };
            let tablespace = (!row.is_data_directory()).then_some(row);
            return Ok(Step::Event(BaseBackupEvent::Archive { name, tablespace }));
        }
        if self.manifest_requested && !self.manifest_begun {
            self.manifest_begun = true;
            self.state = State::InManifest;
            return Ok(Step::Continue);
        }
        Err(protocol("more COPY results than tablespaces and manifest"))
    }

    fn archive_begins(&mut self) -> Result<(), Error> {
        if self.archives_begun == self.tablespaces.len() {
            return Err(protocol("more archives than tablespaces"));
        }
        self.archives_begun += 1;
        Ok(())
    }

    /// Every tablespace got its archive and the manifest came if requested.
    fn check_complete(&self) -> Result<(), Error> {
        if self.archives_begun != self.tablespaces.len() {
            return Err(protocol(format!(
                "the server sent {} archives for {} tablespaces",
                self.archives_begun,
                self.tablespaces.len()
            )));
        }
        if self.manifest_requested && !self.manifest_begun {
            return Err(protocol("the server sent no backup manifest"));
        }
        Ok(())
    }
}

fn unexpected(state: State, message: &Backend) -> Error {
    let what = match message {
        Backend::RowDescription => "RowDescription",
        Backend::DataRow(_) => "DataRow",
        Backend::CommandComplete => "CommandComplete",
        Backend::CopyOutResponse => "CopyOutResponse",
        Backend::CopyData(_) => "CopyData",
        Backend::CopyDone => "CopyDone",
        Backend::ErrorResponse(_) => "ErrorResponse",
        Backend::ReadyForQuery => "ReadyForQuery",
        Backend::Other(name) => name,
    };
    let when = match state {
        State::Header { .. } => "before the archives",
        State::Stream { .. } | State::InArchive | State::InManifest => "inside COPY",
        State::Between => "between archives",
        State::Trailer => "after the archives",
        State::Draining | State::Done | State::Failed { .. } => "after the end",
    };
    protocol(format!("unexpected {what} {when}"))
}

#[cfg(test)]
#[path = "decoder_tests.rs"]
mod tests;
