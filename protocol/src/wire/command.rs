//! Replication commands' arguments and results, without I/O.
//!
//! The commands of the replication protocol (PostgreSQL documentation,
//! "Streaming Replication Protocol"; grammar in
//! `src/backend/replication/repl_gram.y`, answers built in
//! `src/backend/replication/walsender.c`) answer with ordinary result sets in
//! text format. This module checks what goes into a command and reads the
//! rows that come back; the client sends and receives them.

use bytes::Bytes;

use crate::error::Error;
use crate::wire::lsn::Lsn;
use crate::wire::timeline::TimelineId;

/// One row of a result set in text format: a column is `None` for SQL NULL.
pub(crate) type Row = Vec<Option<Bytes>>;

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier (as in `pg_control` and WAL page headers).
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// Current WAL flush position (primary) or replay position (standby).
    pub xlogpos: Lsn,
    /// Database connected to; `None` for a physical replication connection.
    pub dbname: Option<String>,
}

/// The answer to `READ_REPLICATION_SLOT` for an existing physical slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPosition {
    /// Oldest LSN the slot keeps; `None` if the slot reserves no WAL yet.
    pub restart_lsn: Option<Lsn>,
    /// Timeline of `restart_lsn`, when known.
    pub restart_tli: Option<TimelineId>,
}

fn text(value: &Option<Bytes>, what: &str) -> Result<String, Error> {
    let v = value
        .as_ref()
        .ok_or_else(|| Error::protocol(format!("{what} is NULL")))?;
    String::from_utf8(v.to_vec()).map_err(|_| Error::protocol(format!("{what} is not UTF-8")))
}

fn parse<T: std::str::FromStr>(value: &Option<Bytes>, what: &str) -> Result<T, Error> {
    let t = text(value, what)?;
    t.parse()
        .map_err(|_| Error::protocol(format!("invalid {what}: {t:?}")))
}

/// Whether `name` is a slot name `ReplicationSlotValidateName`
/// (`src/backend/replication/slot.c`) accepts: 1 to 63 of `[a-z0-9_]`.
pub fn is_valid_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// [`is_valid_slot_name`] as a configuration error. A name that passes can
/// be written into a command or a string literal as is.
pub(crate) fn check_slot_name(name: &str) -> Result<(), Error> {
    if is_valid_slot_name(name) {
        Ok(())
    } else {
        Err(Error::config(format!(
            "invalid replication slot name {name:?}: use 1 to 63 lower case letters, digits and underscores"
        )))
    }
}

/// Whether `name` can follow `SHOW` as is: a setting name of ASCII letters,
/// digits, `_` and `.` (for custom settings such as `pg_stat_statements.max`).
pub(crate) fn check_setting_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(Error::config(format!("invalid setting name {name:?}")));
    }
    Ok(())
}

/// Parses a byte quantity as `SHOW` prints it for GUC_UNIT_BYTE settings
/// (`16MB`, `1GB`, `512kB`, `8192B`, or a bare number of bytes). `None` for
/// anything else or a value past `u64::MAX` bytes.
pub fn parse_byte_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let number: u64 = s[..digits].parse().ok()?;
    let factor: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Turns a `server_version` string (`15.18 (Debian 15.18-1.pgdg120+1)`,
/// `9.6.24`, `18beta1`) into `server_version_num` form (150018, 90624, 180000).
pub fn parse_server_version(s: &str) -> Option<u32> {
    let head: &str = s.split_whitespace().next()?;
    let mut parts = head.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let second = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + second)
    } else {
        let third = parts.next().flatten().unwrap_or(0);
        Some(major * 10_000 + second * 100 + third)
    }
}

/// Reads the answer to `IDENTIFY_SYSTEM`: one row of `systemid` (text),
/// `timeline` (int4), `xlogpos` (text `X/X`) and `dbname` (text, NULL on a
/// physical connection).
pub(crate) fn identify_system(rows: &[Row]) -> Result<SystemIdentity, Error> {
    let row = match rows {
        [row] if row.len() >= 4 => row,
        _ => {
            return Err(Error::protocol(
                "IDENTIFY_SYSTEM returned an unexpected result",
            ))
        }
    };
    Ok(SystemIdentity {
        system_id: parse(&row[0], "systemid")?,
        timeline: parse(&row[1], "timeline")?,
        xlogpos: parse(&row[2], "xlogpos")?,
        dbname: row[3]
            .as_ref()
            .map(|_| text(&row[3], "dbname"))
            .transpose()?,
    })
}

/// Reads the answer to `SHOW name`: one row whose first column is the value.
pub(crate) fn show_value(rows: &[Row], name: &str) -> Result<String, Error> {
    match rows {
        [row] if !row.is_empty() => text(&row[0], name),
        _ => Err(Error::protocol(format!(
            "SHOW {name} returned an unexpected result"
        ))),
    }
}

/// Reads the answer to `READ_REPLICATION_SLOT` (PostgreSQL 15+): one row of
/// `slot_type`, `restart_lsn` and `restart_tli`, all NULL when there is no
/// such slot (then `None`).
pub(crate) fn replication_slot(rows: &[Row]) -> Result<Option<SlotPosition>, Error> {
    let row = match rows {
        [row] if row.len() >= 3 => row,
        _ => {
            return Err(Error::protocol(
                "READ_REPLICATION_SLOT returned an unexpected result",
            ))
        }
    };
    if row[0].is_none() {
        return Ok(None);
    }
    Ok(Some(SlotPosition {
        restart_lsn: row[1]
            .as_ref()
            .map(|_| parse(&row[1], "restart_lsn"))
            .transpose()?,
        restart_tli: row[2]
            .as_ref()
            .map(|_| parse(&row[2], "restart_tli"))
            .transpose()?,
    }))
}

/// Reads the answer to `TIMELINE_HISTORY`: one row of `filename` (text) and
/// `content` (the history file, raw bytes).
pub(crate) fn timeline_history(rows: &[Row]) -> Result<(String, Bytes), Error> {
    match rows {
        [row] if row.len() >= 2 => {
            let content = row[1]
                .clone()
                .ok_or_else(|| Error::protocol("history content is NULL"))?;
            Ok((text(&row[0], "filename")?, content))
        }
        _ => Err(Error::protocol(
            "TIMELINE_HISTORY returned an unexpected result",
        )),
    }
}

/// Reads the result row sent after a streamed timeline ends (and at once when
/// `START_REPLICATION` starts exactly at the end of a historic timeline):
/// `next_tli` (int8 as text) and `next_tli_startpos` (`X/X`).
pub(crate) fn parse_next_timeline(row: &[Option<Bytes>]) -> Result<(TimelineId, Lsn), Error> {
    let col = |i: usize| -> Result<&str, Error> {
        row.get(i)
            .and_then(|c| c.as_ref())
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| Error::protocol("malformed next-timeline result"))
    };
    let tli: i64 = col(0)?
        .parse()
        .map_err(|_| Error::protocol("invalid next_tli"))?;
    let tli = u32::try_from(tli).map_err(|_| Error::protocol("next_tli out of range"))?;
    let lsn: Lsn = col(1)?
        .parse()
        .map_err(|_| Error::protocol("invalid next_tli_startpos"))?;
    Ok((TimelineId(tli), lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(columns: &[Option<&'static str>]) -> Row {
        columns
            .iter()
            .map(|c| c.map(|s| Bytes::from_static(s.as_bytes())))
            .collect()
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("16MB"), Some(16 << 20));
        assert_eq!(parse_byte_size("1GB"), Some(1 << 30));
        assert_eq!(parse_byte_size("512kB"), Some(512 << 10));
        assert_eq!(parse_byte_size("8192"), Some(8192));
        assert_eq!(parse_byte_size("8192B"), Some(8192));
        assert_eq!(parse_byte_size("16 MB"), Some(16 << 20));
        assert_eq!(parse_byte_size("MB"), None);
        assert_eq!(parse_byte_size("16XB"), None);
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("16.4"), Some(160004));
        assert_eq!(parse_server_version("18beta1"), Some(180000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("x"), None);
    }

    #[test]
    fn slot_names() {
        assert!(check_slot_name("pgagent_1").is_ok());
        assert!(check_slot_name("").is_err());
        assert!(check_slot_name("Upper").is_err());
        assert!(check_slot_name("a; DROP").is_err());
        assert!(check_slot_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn setting_names() {
        assert!(check_setting_name("wal_segment_size").is_ok());
        assert!(check_setting_name("pg_stat_statements.max").is_ok());
        assert!(check_setting_name("").unwrap_err().is_config());
        assert!(check_setting_name("x; SELECT 1").unwrap_err().is_config());
    }

    #[test]
    fn identify_system_row() {
        let rows = vec![row(&[
            Some("7312345678901234567"),
            Some("3"),
            Some("0/3000148"),
            None,
        ])];
        assert_eq!(
            identify_system(&rows).unwrap(),
            SystemIdentity {
                system_id: 7_312_345_678_901_234_567,
                timeline: TimelineId(3),
                xlogpos: Lsn(0x300_0148),
                dbname: None,
            }
        );
        assert!(identify_system(&[]).is_err());
        let bad = vec![row(&[Some("x"), Some("3"), Some("0/1"), None])];
        let e = identify_system(&bad).unwrap_err();
        assert!(e.to_string().contains("invalid systemid"), "{e}");
    }

    #[test]
    fn slot_rows() {
        let rows = vec![row(&[Some("physical"), Some("0/1000000"), Some("1")])];
        assert_eq!(
            replication_slot(&rows).unwrap(),
            Some(SlotPosition {
                restart_lsn: Some(Lsn(0x100_0000)),
                restart_tli: Some(TimelineId(1)),
            })
        );
        let reserved_nothing = vec![row(&[Some("physical"), None, None])];
        assert_eq!(
            replication_slot(&reserved_nothing).unwrap(),
            Some(SlotPosition {
                restart_lsn: None,
                restart_tli: None,
            })
        );
        assert_eq!(replication_slot(&[row(&[None, None, None])]).unwrap(), None);
        assert!(replication_slot(&[row(&[None])]).is_err());
    }

    #[test]
    fn show_and_history_rows() {
        assert_eq!(
            show_value(&[row(&[Some("16MB")])], "wal_segment_size").unwrap(),
            "16MB"
        );
        assert!(show_value(&[], "x").is_err());
        let (name, content) =
            timeline_history(&[row(&[Some("00000002.history"), Some("1\t0/3000000\tx\n")])])
                .unwrap();
        assert_eq!(name, "00000002.history");
        assert_eq!(&content[..], b"1\t0/3000000\tx\n");
        assert!(timeline_history(&[row(&[Some("00000002.history"), None])]).is_err());
    }

    #[test]
    fn next_timeline_row() {
        let row = vec![
            Some(Bytes::from_static(b"2")),
            Some(Bytes::from_static(b"0/5000000")),
        ];
        assert_eq!(
            parse_next_timeline(&row).unwrap(),
            (TimelineId(2), Lsn(0x500_0000))
        );
        assert!(parse_next_timeline(&[None, None]).is_err());
        let bad = vec![
            Some(Bytes::from_static(b"-1")),
            Some(Bytes::from_static(b"0/1")),
        ];
        assert!(parse_next_timeline(&bad).is_err());
    }
}
