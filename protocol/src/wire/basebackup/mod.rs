//! `BASE_BACKUP` on the wire: the command text and the shape of its answer.
//!
//! Reference: PostgreSQL documentation, "Streaming Replication Protocol",
//! `BASE_BACKUP`; server side in `basebackup.c` and `basebackup_copy.c`
//! (`src/backend/backup/` since 16, `src/backend/replication/` before); the
//! reference client is `src/bin/pg_basebackup/pg_basebackup.c`.
//!
//! Both server generations answer with the same two result sets first:
//!
//! 1. the start position: one row, `recptr` (text, `X/X`) and `tli` (int8);
//! 2. the tablespaces: one row each, `spcoid` (oid), `spclocation` (text) and
//!    `size` (int8, KiB, NULL unless `PROGRESS` was asked for). The main data
//!    directory is the row whose oid and location are NULL; the server lists
//!    it last.
//!
//! The archives follow, in one of two layouts:
//!
//! - **PostgreSQL 15+** (`BASE_BACKUP ( option value, ... )` with
//!   `TARGET 'client'`): a single CopyOutResponse. Each CopyData starts with a
//!   type byte: `'n'` a new archive (archive name `\0`, tablespace location
//!   `\0`, empty for the data directory), `'d'` bytes of the current archive
//!   or of the manifest, `'p'` progress (Int64, archive bytes sent so far),
//!   `'m'` the manifest follows. Then CopyDone.
//! - **PostgreSQL 13 and 14** (`BASE_BACKUP LABEL '...' FAST ...`): one
//!   CopyOutResponse per tablespace row, in row order, carrying raw tar data
//!   without the two trailing zero blocks of the ustar format, then, if a
//!   manifest was requested, one more CopyOutResponse with the manifest.
//!
//! Then a third result set with the end position (same shape as the start),
//! CommandComplete and ReadyForQuery. An ErrorResponse at any point aborts
//! the backup on the server (`do_pg_abort_backup`); after an ERROR (not a
//! FATAL) the server sends ReadyForQuery and the connection takes commands
//! again. A checksum failure found while sending data files (`XX001`,
//! "checksum verification failure during base backup") is reported after the
//! end position.
//!
//! This module builds the command text ([`BaseBackupOptions`]) and holds the
//! message sequence as a state machine without I/O (`decoder`); the
//! client's `BaseBackupStream` (`crate::client::basebackup`) feeds it from
//! the connection and turns both layouts into one sequence of
//! [`BaseBackupEvent`]s: archive data is passed through as received (32 KiB
//! CopyData chunks on the server side), never buffered whole.

pub(crate) mod decoder;

use bytes::Bytes;

use crate::error::Error;

/// Lowest `MAX_RATE` the server accepts, KiB/s (`MAX_RATE_LOWER` in
/// `basebackup.h`).
pub const MAX_RATE_LOWER_KIB: u32 = 32;
/// Highest `MAX_RATE` the server accepts, KiB/s (`MAX_RATE_UPPER`, 1 GiB/s).
pub const MAX_RATE_UPPER_KIB: u32 = 1_048_576;
/// Longest label the server accepts, bytes (`MAXPGPATH`; `do_pg_backup_start`
/// refuses longer ones with "backup label too long").
pub const MAX_LABEL_BYTES: usize = 1024;
/// First server version (`server_version_num`) with backup manifests and
/// thus the first one this client takes base backups from.
pub const MIN_SERVER_VERSION: u32 = 130_000;
/// First server version with the parenthesized option syntax and the
/// single-COPY archive stream.
pub const STREAM_FORMAT_VERSION: u32 = 150_000;
/// First server version with incremental base backups (`UPLOAD_MANIFEST` and
/// `BASE_BACKUP ( INCREMENTAL )`, PostgreSQL 17 release notes).
pub const INCREMENTAL_VERSION: u32 = 170_000;

/// What to ask `BASE_BACKUP` for.
///
/// Fixed choices, whatever the options: `WAL false` (WAL comes from the
/// replication stream, not from the backup), no wait for WAL archiving at
/// the end (`WAIT false`, `NOWAIT` before 15; the caller makes sure the WAL
/// up to the end position is kept), `TABLESPACE_MAP` (tablespaces are
/// described by a `tablespace_map` file in `base.tar` rather than by
/// symbolic links), manifest checksums `CRC32C`, and no server-side
/// compression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// The backup label, written into `backup_label` (`LABEL: ...`). At most
    /// [`MAX_LABEL_BYTES`] bytes, no control characters; quotes are escaped.
    pub label: String,
    /// `CHECKPOINT 'fast'` (`FAST` before 15): an immediate checkpoint
    /// instead of a spread one, so the backup starts sooner at the cost of a
    /// burst of I/O.
    pub fast_checkpoint: bool,
    /// `MANIFEST 'yes'`: the server sends its `backup_manifest` (JSON) after
    /// the archives.
    pub manifest: bool,
    /// `MAX_RATE`: the most the server sends, in KiB/s, between
    /// [`MAX_RATE_LOWER_KIB`] and [`MAX_RATE_UPPER_KIB`]; `None` for no limit.
    pub max_rate_kib: Option<u32>,
    /// `PROGRESS`: the server measures each tablespace before sending it, so
    /// [`Tablespace::size_kib`] is known. Costs an extra walk of the data
    /// directory.
    pub progress: bool,
    /// `INCREMENTAL`: send only the blocks changed since the backup whose
    /// `backup_manifest` was uploaded on this connection first
    /// (`ReplicationClient::upload_manifest`), relation files as
    /// `INCREMENTAL.<name>` files ([`crate::wire::incremental`]). Needs
    /// PostgreSQL 17 ([`INCREMENTAL_VERSION`]) with `summarize_wal = on`.
    pub incremental: bool,
}

impl BaseBackupOptions {
    /// Options with the given label, a spread checkpoint, a manifest, no
    /// rate limit and no size estimate.
    pub fn new(label: impl Into<String>) -> BaseBackupOptions {
        BaseBackupOptions {
            label: label.into(),
            fast_checkpoint: false,
            manifest: true,
            max_rate_kib: None,
            progress: false,
            incremental: false,
        }
    }

    /// Builds the command text for a server of version `server_version_num`
    /// (e.g. 150018) and the archive layout it answers with.
    ///
    /// Errors ([`Error::is_config`]): a label that is too long or holds
    /// control characters, `max_rate_kib` out of range, a server older
    /// than [`MIN_SERVER_VERSION`], or `incremental` on a server older than
    /// [`INCREMENTAL_VERSION`].
    pub(crate) fn command(&self, server_version_num: u32) -> Result<BaseBackupCommand, Error> {
        if server_version_num < MIN_SERVER_VERSION {
            return Err(Error::config(format!(
                "base backups need PostgreSQL 13 or later (server_version_num {server_version_num})"
            )));
        }
        if self.incremental && server_version_num < INCREMENTAL_VERSION {
            return Err(Error::config(format!(
                "incremental base backups need PostgreSQL 17 or later (server_version_num {server_version_num})"
            )));
        }
        let label = quote_label(&self.label)?;
        if let Some(rate) = self.max_rate_kib {
            if !(MAX_RATE_LOWER_KIB..=MAX_RATE_UPPER_KIB).contains(&rate) {
                return Err(Error::config(format!(
                    "max_rate_kib {rate} is outside {MAX_RATE_LOWER_KIB}..={MAX_RATE_UPPER_KIB}"
                )));
            }
        }
        let manifest = if self.manifest { "'yes'" } else { "'no'" };
        let (sql, format) = if server_version_num >= STREAM_FORMAT_VERSION {
            // Generic option list, `repl_gram.y` (15+); see `parse_basebackup_options`.
            let mut options = vec![
                format!("LABEL {label}"),
                format!(
                    "CHECKPOINT '{}'",
                    if self.fast_checkpoint {
                        "fast"
                    } else {
                        "spread"
                    }
                ),
                "WAL false".to_owned(),
                "WAIT false".to_owned(),
                format!("MANIFEST {manifest}"),
            ];
            if self.manifest {
                options.push("MANIFEST_CHECKSUMS 'CRC32C'".to_owned());
            }
            options.push("TABLESPACE_MAP true".to_owned());
            // The default target; named, as pg_basebackup does for 15+ servers.
            options.push("TARGET 'client'".to_owned());
            if self.progress {
                options.push("PROGRESS true".to_owned());
            }
            if let Some(rate) = self.max_rate_kib {
                options.push(format!("MAX_RATE {rate}"));
            }
            if self.incremental {
                // A boolean option named alone is true (`defGetBoolean`), as
                // pg_basebackup sends it.
                options.push("INCREMENTAL".to_owned());
            }
            (
                format!("BASE_BACKUP ({})", options.join(", ")),
                ArchiveFormat::Stream,
            )
        } else {
            // Keyword syntax of PostgreSQL 13 and 14 (`repl_gram.y` there).
            let mut sql = format!("BASE_BACKUP LABEL {label}");
            if self.progress {
                sql.push_str(" PROGRESS");
            }
            if self.fast_checkpoint {
                sql.push_str(" FAST");
            }
            sql.push_str(" NOWAIT");
            if let Some(rate) = self.max_rate_kib {
                sql.push_str(&format!(" MAX_RATE {rate}"));
            }
            sql.push_str(" TABLESPACE_MAP");
            sql.push_str(&format!(" MANIFEST {manifest}"));
            if self.manifest {
                sql.push_str(" MANIFEST_CHECKSUMS 'CRC32C'");
            }
            (sql, ArchiveFormat::PerTablespace)
        };
        Ok(BaseBackupCommand {
            sql,
            format,
            manifest: self.manifest,
        })
    }
}

/// Quotes a label as a string literal of the replication grammar
/// (`repl_scanner.l`: `'...'`, a quote inside is doubled, no backslash
/// escapes).
fn quote_label(label: &str) -> Result<String, Error> {
    if label.len() > MAX_LABEL_BYTES {
        return Err(Error::config(format!(
            "backup label is {} bytes long; at most {MAX_LABEL_BYTES} are allowed",
            label.len()
        )));
    }
    // backup_label is a line-oriented file: a newline would forge lines.
    if label.chars().any(char::is_control) {
        return Err(Error::config(format!(
            "backup label {label:?} holds control characters"
        )));
    }
    Ok(format!("'{}'", label.replace('\'', "''")))
}

/// The text of a `BASE_BACKUP` command and what its answer looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BaseBackupCommand {
    pub(crate) sql: String,
    pub(crate) format: ArchiveFormat,
    pub(crate) manifest: bool,
}

/// How the server lays out archives on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArchiveFormat {
    /// PostgreSQL 15+: one COPY, CopyData with a type byte (`basebackup_copy.c`).
    Stream,
    /// PostgreSQL 13 and 14: one COPY of raw tar data per tablespace, then
    /// one COPY with the manifest.
    PerTablespace,
}

/// A row of the tablespace result set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tablespace {
    /// `spcoid`: the tablespace's OID; `None` for the main data directory.
    pub oid: Option<u32>,
    /// `spclocation`: the tablespace directory on the server; `None` for
    /// the main data directory.
    pub location: Option<String>,
    /// `size`: approximate size in KiB (1024 bytes), known only when
    /// [`BaseBackupOptions::progress`] was set.
    pub size_kib: Option<u64>,
}

impl Tablespace {
    /// True for the main data directory (`base.tar`).
    pub fn is_data_directory(&self) -> bool {
        self.oid.is_none()
    }
}

/// What the client's `BaseBackupStream` delivers, in server order: for each archive
/// an `Archive` then its `ArchiveData`, then the manifest as `ManifestData`;
/// `Progress` may come at any point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseBackupEvent {
    /// A tar archive begins: `base.tar` for the data directory,
    /// `<oid>.tar` for a tablespace.
    Archive {
        /// The archive's file name as the server names it (15+) or as
        /// `pg_basebackup` names it (13, 14).
        name: String,
        /// The tablespace row this archive holds; `None` for the data
        /// directory.
        tablespace: Option<Tablespace>,
    },
    /// Bytes of the current archive, a ustar stream (not parsed here). Each
    /// archive ends with the two zero blocks of the format: servers before
    /// 15 omit them, and this client then adds them itself, as
    /// `pg_basebackup` does.
    ArchiveData(Bytes),
    /// Bytes of the `backup_manifest` file (JSON, `PostgreSQL-Backup-Manifest-Version` 1).
    ManifestData(Bytes),
    /// Archive bytes the server has sent so far, all archives together
    /// (15+ only; at least once at the end of every archive).
    Progress(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BaseBackupOptions {
        BaseBackupOptions {
            label: "nightly".into(),
            fast_checkpoint: true,
            manifest: true,
            max_rate_kib: Some(1024),
            progress: true,
            incremental: false,
        }
    }

    #[test]
    fn command_15() {
        let c = options().command(150_018).unwrap();
        assert_eq!(
            c.sql,
            "BASE_BACKUP (LABEL 'nightly', CHECKPOINT 'fast', WAL false, WAIT false, \
             MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP true, \
             TARGET 'client', PROGRESS true, MAX_RATE 1024)"
        );
        assert_eq!(c.format, ArchiveFormat::Stream);
        assert!(c.manifest);
        let c = BaseBackupOptions {
            manifest: false,
            ..BaseBackupOptions::new("x")
        }
        .command(170_000)
        .unwrap();
        assert_eq!(
            c.sql,
            "BASE_BACKUP (LABEL 'x', CHECKPOINT 'spread', WAL false, WAIT false, \
             MANIFEST 'no', TABLESPACE_MAP true, TARGET 'client')"
        );
    }

    #[test]
    fn command_13_14() {
        let c = options().command(140_011).unwrap();
        assert_eq!(
            c.sql,
            "BASE_BACKUP LABEL 'nightly' PROGRESS FAST NOWAIT MAX_RATE 1024 \
             TABLESPACE_MAP MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
        );
        assert_eq!(c.format, ArchiveFormat::PerTablespace);
        let c = BaseBackupOptions::new("x").command(130_000).unwrap();
        assert_eq!(
            c.sql,
            "BASE_BACKUP LABEL 'x' NOWAIT TABLESPACE_MAP MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
        );
        let e = BaseBackupOptions::new("x").command(120_016).unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("13 or later"),
            "{e}"
        );
    }

    #[test]
    fn incremental_needs_17() {
        let inc = BaseBackupOptions {
            incremental: true,
            ..BaseBackupOptions::new("x")
        };
        let c = inc.command(170_004).unwrap();
        assert!(
            c.sql.ends_with("TARGET 'client', INCREMENTAL)"),
            "{}",
            c.sql
        );
        let e = inc.command(160_008).unwrap_err();
        assert!(
            e.is_config() && e.to_string().contains("17 or later"),
            "{e}"
        );
    }

    #[test]
    fn labels() {
        assert_eq!(quote_label("it's").unwrap(), "'it''s'");
        assert_eq!(quote_label("''").unwrap(), "''''''");
        assert_eq!(quote_label(r"a\b").unwrap(), r"'a\b'");
        assert_eq!(quote_label("").unwrap(), "''");
        assert!(quote_label("a\nLABEL: forged").unwrap_err().is_config());
        assert!(quote_label("nul\0").is_err());
        assert!(quote_label(&"é".repeat(512)).is_ok());
        assert!(quote_label(&"é".repeat(513)).is_err());
        let c = BaseBackupOptions::new("o'clock").command(150_000).unwrap();
        assert!(
            c.sql.starts_with("BASE_BACKUP (LABEL 'o''clock', "),
            "{}",
            c.sql
        );
    }

    #[test]
    fn max_rate_bounds() {
        let with = |rate| {
            BaseBackupOptions {
                max_rate_kib: Some(rate),
                ..BaseBackupOptions::new("x")
            }
            .command(150_000)
        };
        assert!(with(MAX_RATE_LOWER_KIB).is_ok());
        assert!(with(MAX_RATE_UPPER_KIB).is_ok());
        assert!(with(MAX_RATE_LOWER_KIB - 1).unwrap_err().is_config());
        assert!(with(MAX_RATE_UPPER_KIB + 1).unwrap_err().is_config());
    }
}
