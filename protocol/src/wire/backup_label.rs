//! The `backup_label` file of a base backup, as far as a chain of incremental
//! backups needs it.
//!
//! Reference: `src/bin/pg_combinebackup/backup_label.c` (`parse_backup_label`,
//! `write_backup_label`), PostgreSQL 17 and later; the lines are written by
//! `build_backup_content` in `src/backend/access/transam/xlogbackup.c`.
//!
//! Of the label's lines, four matter here:
//!
//! | line | value |
//! | --- | --- |
//! | `START WAL LOCATION: X/X (file …)` | the backup's start (redo) LSN, followed by a space |
//! | `START TIMELINE: N` | its timeline, not 0 |
//! | `INCREMENTAL FROM LSN: X/X` | incremental backups only: the start LSN of the backup it was taken against |
//! | `INCREMENTAL FROM TLI: N` | incremental backups only: that backup's start timeline, not 0 |
//!
//! The two `INCREMENTAL FROM` lines come together or not at all. PostgreSQL
//! refuses to start from a label that has them (an incremental backup is no
//! data directory), so a directory rebuilt from a chain gets the newest
//! backup's label without them ([`without_incremental_lines`]). Other lines
//! are kept as they are and not read.

use std::fmt;

use super::lsn::Lsn;
use super::timeline::TimelineId;

const START_LSN: &str = "START WAL LOCATION: ";
const START_TLI: &str = "START TIMELINE: ";
const FROM_LSN: &str = "INCREMENTAL FROM LSN: ";
const FROM_TLI: &str = "INCREMENTAL FROM TLI: ";

/// What a chain check reads from a `backup_label`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupLabel {
    /// `START WAL LOCATION`: the backup's start (redo) LSN.
    pub start_lsn: Lsn,
    /// `START TIMELINE`.
    pub start_timeline: TimelineId,
    /// `INCREMENTAL FROM LSN` and `INCREMENTAL FROM TLI`: the start of the backup this
    /// one was taken against; `None` for a full backup.
    pub incremental_from: Option<(Lsn, TimelineId)>,
}

/// A `backup_label` that cannot be read; the text says which line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelError(pub String);

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backup_label: {}", self.0)
    }
}

impl std::error::Error for LabelError {}

/// Leading hex digits, `/`, hex digits (`%X/%X` as `sscanf` reads them); the LSN and
/// the rest of `s`.
fn leading_lsn(s: &str) -> Option<(Lsn, &str)> {
    let hex_end = |t: &str| t.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(t.len());
    let hi_end = hex_end(s);
    let rest = s[hi_end..].strip_prefix('/')?;
    let lo_end = hex_end(rest);
    let text = &s[..hi_end + 1 + lo_end];
    Some((text.parse().ok()?, &rest[lo_end..]))
}

/// A timeline that fills the rest of the line; 0 is refused.
fn whole_tli(s: &str) -> Option<TimelineId> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&t| t != 0).map(TimelineId)
}

impl BackupLabel {
    /// Reads the start and, for an incremental backup, the `INCREMENTAL FROM` lines of
    /// `text`, as `parse_backup_label` does.
    ///
    /// Errors: a missing `START WAL LOCATION` or `START TIMELINE`; a value that does not
    /// parse, a `START WAL LOCATION` LSN not followed by a space, a timeline of 0; one
    /// `INCREMENTAL FROM` line without the other.
    pub fn parse(text: &str) -> Result<Self, LabelError> {
        let err = |why: String| LabelError(why);
        let (mut start_lsn, mut start_tli, mut from_lsn, mut from_tli) = (None, None, None, None);
        for line in text.split('\n') {
            if let Some(v) = line.strip_prefix(START_LSN) {
                match leading_lsn(v) {
                    Some((lsn, rest)) if rest.starts_with(' ') => start_lsn = Some(lsn),
                    _ => return Err(err(format!("cannot read {line:?}"))),
                }
            } else if let Some(v) = line.strip_prefix(START_TLI) {
                start_tli = Some(whole_tli(v).ok_or_else(|| err(format!("cannot read {line:?}")))?);
            } else if let Some(v) = line.strip_prefix(FROM_LSN) {
                match leading_lsn(v) {
                    Some((lsn, "")) => from_lsn = Some(lsn),
                    _ => return Err(err(format!("cannot read {line:?}"))),
                }
            } else if let Some(v) = line.strip_prefix(FROM_TLI) {
                from_tli = Some(whole_tli(v).ok_or_else(|| err(format!("cannot read {line:?}")))?);
            }
        }
        let start_lsn = start_lsn.ok_or_else(|| err("no START WAL LOCATION line".into()))?;
        let start_timeline = start_tli.ok_or_else(|| err("no START TIMELINE line".into()))?;
        let incremental_from = match (from_lsn, from_tli) {
            (Some(l), Some(t)) => Some((l, t)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(err(
                    "INCREMENTAL FROM LSN without INCREMENTAL FROM TLI".into()
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "INCREMENTAL FROM TLI without INCREMENTAL FROM LSN".into()
                ))
            }
        };
        Ok(BackupLabel {
            start_lsn,
            start_timeline,
            incremental_from,
        })
    }
}

/// `text` without its `INCREMENTAL FROM LSN` and `INCREMENTAL FROM TLI` lines, every
/// other byte kept (`write_backup_label`): the label of a data directory rebuilt from an
/// incremental chain.
pub fn without_incremental_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|line| !line.starts_with(FROM_LSN) && !line.starts_with(FROM_TLI))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
        CHECKPOINT LOCATION: 0/2000080\n\
        BACKUP METHOD: streamed\n\
        BACKUP FROM: primary\n\
        START TIME: 2026-11-21 03:00:00 UTC\n\
        LABEL: pgagent\n\
        START TIMELINE: 1\n";

    fn incremental() -> String {
        format!("{FULL}INCREMENTAL FROM LSN: 0/1A000028\nINCREMENTAL FROM TLI: 1\n")
    }

    #[test]
    fn full_and_incremental_labels() {
        let full = BackupLabel::parse(FULL).unwrap();
        assert_eq!(full.start_lsn, Lsn(0x200_0028));
        assert_eq!(full.start_timeline, TimelineId(1));
        assert_eq!(full.incremental_from, None);
        let inc = BackupLabel::parse(&incremental()).unwrap();
        assert_eq!(
            inc.incremental_from,
            Some((Lsn(0x1A00_0028), TimelineId(1)))
        );
        assert_eq!(inc.start_lsn, full.start_lsn);
    }

    #[test]
    fn the_incremental_lines_and_nothing_else_are_stripped() {
        assert_eq!(without_incremental_lines(&incremental()), FULL);
        assert_eq!(without_incremental_lines(FULL), FULL);
        // A last line without a newline is kept as it is.
        assert_eq!(without_incremental_lines("A: 1\nB: 2"), "A: 1\nB: 2");
        let stripped = without_incremental_lines(&incremental());
        assert_eq!(
            BackupLabel::parse(&stripped).unwrap().incremental_from,
            None
        );
    }

    #[test]
    fn damaged_labels_are_refused() {
        let cases = [
            FULL.replace("START TIMELINE: 1\n", ""),
            FULL.replace(
                "START WAL LOCATION: 0/2000028 (",
                "START WAL LOCATION: 0/2000028(",
            ),
            FULL.replace("START TIMELINE: 1", "START TIMELINE: 0"),
            FULL.replace("START TIMELINE: 1", "START TIMELINE: 1x"),
            format!("{FULL}INCREMENTAL FROM LSN: 0/1A000028\n"),
            format!("{FULL}INCREMENTAL FROM TLI: 1\n"),
            format!("{FULL}INCREMENTAL FROM LSN: zz\nINCREMENTAL FROM TLI: 1\n"),
            format!("{FULL}INCREMENTAL FROM LSN: 0/1 x\nINCREMENTAL FROM TLI: 1\n"),
        ];
        for text in cases {
            assert!(BackupLabel::parse(&text).is_err(), "{text}");
        }
    }
}
