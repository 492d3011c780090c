//! PostgreSQL's `backup_manifest` (PostgreSQL docs, "Backup Manifest Format"), read and
//! written in one place: `pgagent verify` reads each file's size and checksum from the
//! manifest the server sent ([`parse_pg_manifest`]); a restore of an incremental chain reads
//! the newest backup's WAL ranges ([`wal_ranges`]) and writes the rebuilt directory's
//! manifest as pg_combinebackup writes it ([`render`],
//! `src/bin/pg_combinebackup/write_manifest.c`), so `pg_verifybackup` can check it.
//!
//! The layout, one file per line (PostgreSQL docs, "Backup Manifest Format"):
//!
//! ```text
//! { "PostgreSQL-Backup-Manifest-Version": 2,
//! "System-Identifier": 7000000000000000001,
//! "Files": [
//! { "Path": "backup_label", "Size": 226, "Last-Modified": "2026-11-21 03:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "a1b2c3d4" },
//! …
//! ],
//! "WAL-Ranges": [
//! { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
//! ],
//! "Manifest-Checksum": "<SHA-256 hex of every byte before this line>"}
//! ```
//!
//! A CRC-32C checksum is written as PostgreSQL's `pg_checksum_final` leaves it: the four
//! bytes of the finished CRC in the machine's order (little-endian on every platform
//! pgagent runs on), in hex (`src/common/checksum_helper.c`). The WAL ranges are the
//! newest backup's, from the manifest the server sent for it (`load_manifest.c` reads them
//! the same way).

use std::fmt::Write as _;

use anyhow::Context;
use pgagent_protocol::Lsn;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One file of the restored directory, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the data directory, `/`-separated; tablespace files under
    /// `pg_tblspc/<oid>/`.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// CRC-32C of the content (Castagnoli, as `crc32c::crc32c` computes it).
    pub crc32c: u32,
}

/// One entry of `WAL-Ranges`: the WAL needed to make the backup consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    /// Timeline.
    pub timeline: u32,
    /// First LSN.
    pub start: Lsn,
    /// End LSN.
    pub end: Lsn,
}

/// The `WAL-Ranges` of a `backup_manifest` the server wrote.
///
/// Errors: not JSON, no `WAL-Ranges` array, or an entry without a timeline or with an LSN
/// that does not parse.
pub fn wal_ranges(server_manifest: &[u8]) -> anyhow::Result<Vec<WalRange>> {
    let v: serde_json::Value =
        serde_json::from_slice(server_manifest).context("backup_manifest is not JSON")?;
    let ranges = v
        .get("WAL-Ranges")
        .and_then(|r| r.as_array())
        .context("backup_manifest has no WAL-Ranges")?;
    ranges
        .iter()
        .map(|r| {
            let timeline = r
                .get("Timeline")
                .and_then(|t| t.as_u64())
                .and_then(|t| u32::try_from(t).ok())
                .context("backup_manifest: a WAL range without a timeline")?;
            let lsn = |key: &str| -> anyhow::Result<Lsn> {
                let text = r
                    .get(key)
                    .and_then(|l| l.as_str())
                    .with_context(|| format!("backup_manifest: a WAL range without {key}"))?;
                text.parse()
                    .map_err(|e| anyhow::anyhow!("backup_manifest: {key}: {e}"))
            };
            Ok(WalRange {
                timeline,
                start: lsn("Start-LSN")?,
                end: lsn("End-LSN")?,
            })
        })
        .collect()
}

/// The checksum text of a CRC-32C: its little-endian bytes in lowercase hex.
pub fn crc32c_hex(crc: u32) -> String {
    to_hex(crc.to_le_bytes())
}

/// Bytes in lowercase hex (`hex_encode` in `write_manifest.c`).
fn to_hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A JSON string as `escape_json` in `write_manifest.c` writes it.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `Last-Modified`: `YYYY-MM-DD HH:MM:SS GMT`.
fn gmt(mtime: i64) -> String {
    chrono::DateTime::from_timestamp(mtime, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M:%S GMT")
        .to_string()
}

/// The whole `backup_manifest` (version 2) for `files` of the cluster `system_identifier`,
/// with `wal` as its WAL ranges.
pub fn render(system_identifier: u64, files: &[ManifestFile], wal: &[WalRange]) -> String {
    let mut out = format!(
        "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {system_identifier},\n\"Files\": ["
    );
    for (i, f) in files.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        out.push_str("{ \"Path\": ");
        json_string(&mut out, &f.path);
        let _ = write!(
            out,
            ", \"Size\": {}, \"Last-Modified\": \"{}\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
            f.size,
            gmt(f.mtime),
            crc32c_hex(f.crc32c)
        );
    }
    out.push_str("\n],\n\"WAL-Ranges\": [\n");
    for (i, r) in wal.iter().enumerate() {
        let _ = write!(
            out,
            "{}{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
            if i == 0 { "" } else { ",\n" },
            r.timeline,
            r.start,
            r.end
        );
    }
    out.push_str("\n],\n");
    let checksum = to_hex(Sha256::digest(out.as_bytes()));
    let _ = writeln!(out, "\"Manifest-Checksum\": \"{checksum}\"}}");
    out
}

/// One file as PostgreSQL's `backup_manifest` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Size in bytes.
    pub size: u64,
    /// Its CRC-32C, when the manifest's algorithm is CRC32C.
    pub crc32c: Option<u32>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

/// Reads PostgreSQL's `backup_manifest` (JSON, versions 1 and 2): each file's path (an
/// `Encoded-Path` decoded from hex), size and CRC-32C. A checksum of another algorithm
/// (`NONE`, `SHA256`…) is left out: the size is still checked.
///
/// Errors: not JSON of a manifest, a file without a path, a CRC-32C that is not 8 hex
/// digits.
pub fn parse_pg_manifest(bytes: &[u8]) -> Result<BTreeMap<String, Listed>, String> {
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for f in raw.files {
        let path = match (f.path, f.encoded_path) {
            (Some(p), _) => p,
            (None, Some(hex)) => decode_hex(&hex).ok_or(format!("Encoded-Path {hex:?}"))?,
            (None, None) => return Err("a file without Path".into()),
        };
        let crc32c = match (f.algorithm.as_deref(), f.checksum) {
            (Some(a), Some(c)) if a.eq_ignore_ascii_case("CRC32C") => Some(
                parse_crc(&c)
                    .ok_or(format!("{path}: CRC32C checksum {c:?} is not 8 hex digits"))?,
            ),
            _ => None,
        };
        out.insert(
            path,
            Listed {
                size: f.size,
                crc32c,
            },
        );
    }
    Ok(out)
}

fn decode_hex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

/// The CRC-32C PostgreSQL wrote as `hex`: its 4 bytes little-endian.
fn parse_crc(hex: &str) -> Option<u32> {
    if hex.len() != 8 {
        return None;
    }
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some(u32::from_le_bytes(v.to_be_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_write_manifest_cs() {
        let files = [
            ManifestFile {
                path: "backup_label".into(),
                size: 9,
                mtime: 1_700_000_000,
                crc32c: crc32c::crc32c(b"123456789"),
            },
            ManifestFile {
                path: "base/1/a\"b".into(),
                size: 0,
                mtime: 0,
                crc32c: 0,
            },
        ];
        let wal = [WalRange {
            timeline: 1,
            start: Lsn(0x200_0028),
            end: Lsn(0x200_0100),
        }];
        let text = render(7_000_000_000_000_000_001, &files, &wal);
        let (body, last) = text.rsplit_once("\"Manifest-Checksum\"").unwrap();
        assert_eq!(
            body,
            "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\
             \"System-Identifier\": 7000000000000000001,\n\
             \"Files\": [\n\
             { \"Path\": \"backup_label\", \"Size\": 9, \"Last-Modified\": \"2023-11-14 22:13:20 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"839206e3\" },\n\
             { \"Path\": \"base/1/a\\\"b\", \"Size\": 0, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" }\n\
             ],\n\
             \"WAL-Ranges\": [\n\
             { \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n\
             ],\n"
        );
        let sum = to_hex(Sha256::digest(body.as_bytes()));
        assert_eq!(last, format!(": \"{sum}\"}}\n"));
        // PostgreSQL's reader and ours agree on what it says.
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["Files"][1]["Path"], "base/1/a\"b");
        assert_eq!(wal_ranges(text.as_bytes()).unwrap(), wal);
        // No file at all still makes valid JSON.
        let empty = render(1, &[], &wal);
        assert!(empty.contains("\"Files\": [\n],\n"));
        serde_json::from_str::<serde_json::Value>(&empty).unwrap();
    }

    #[test]
    fn wal_ranges_come_from_the_servers_manifest() {
        let server = br#"{ "PostgreSQL-Backup-Manifest-Version": 2,
"System-Identifier": 1,
"Files": [],
"WAL-Ranges": [
{ "Timeline": 2, "Start-LSN": "0/8000028", "End-LSN": "0/8000138" },
{ "Timeline": 3, "Start-LSN": "0/8000138", "End-LSN": "A/0" }
],
"Manifest-Checksum": "00"}"#;
        let r = wal_ranges(server).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[1].timeline, r[1].end), (3, Lsn(0xA_0000_0000)));
        assert!(wal_ranges(b"{}").is_err());
        assert!(wal_ranges(b"{\"WAL-Ranges\": [{\"Timeline\": 1}]}").is_err());
    }

    #[test]
    fn manifests_of_every_shape_parse() {
        let text = r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Encoded-Path": "626173652f31", "Size": 1, "Last-Modified": "x", "Checksum-Algorithm": "CRC32C", "Checksum": "839206e3" },
{ "Path": "b", "Size": 2, "Last-Modified": "x" },
{ "Path": "c", "Size": 3, "Last-Modified": "x", "Checksum-Algorithm": "SHA256", "Checksum": "ab" }
] }"#;
        let listed = parse_pg_manifest(text.as_bytes()).unwrap();
        assert_eq!(
            listed["base/1"],
            Listed {
                size: 1,
                crc32c: Some(0xe306_9283)
            }
        );
        assert_eq!(listed["b"].crc32c, None);
        assert_eq!(listed["c"].crc32c, None);
        assert!(parse_pg_manifest(b"{}").is_err());
        assert!(parse_pg_manifest(
            br#"{"Files": [{"Path": "a", "Size": 1, "Checksum-Algorithm": "CRC32C", "Checksum": "xyz"}]}"#
        )
        .is_err());
    }

    #[test]
    fn crc32c_as_postgresql_writes_it() {
        // "123456789" is the CRC-32C check value 0xe3069283, written little-endian.
        assert_eq!(crc32c_hex(crc32c::crc32c(b"123456789")), "839206e3");
        assert_eq!(parse_crc("839206e3"), Some(0xe306_9283));
        assert_eq!(parse_crc("839206e"), None);
    }
}
