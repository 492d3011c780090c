//! `<staging>/status.json`: the daemon's state, published every second, read by
//! `pgagent status` (which needs no connection to the daemon).

use std::path::{Path, PathBuf};

use pgagent_storage::RequestOp;
use serde::{Deserialize, Serialize};

/// File name under the staging directory.
pub const STATUS_FILE: &str = "status.json";

/// What the daemon publishes. LSNs are in PostgreSQL's `X/X` text form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Process id of the daemon.
    pub pid: u32,
    /// When this was written (seconds since the Unix epoch).
    pub updated_unix: u64,
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// The store, without secrets.
    pub store: String,
    /// The daemon stopped cleanly (this is its last word).
    #[serde(default)]
    pub stopped: bool,
    /// The replication connection is streaming.
    pub connected: bool,
    /// Timeline being streamed.
    pub timeline: Option<u32>,
    /// End of WAL received.
    pub received_lsn: String,
    /// Flush position confirmed to the server.
    pub flushed_lsn: String,
    /// End of the contiguous WAL durable in the bucket.
    pub uploaded_lsn: String,
    /// Received minus uploaded, in bytes.
    pub upload_lag_bytes: u64,
    /// Age in seconds of the oldest WAL not yet in the bucket.
    pub rpo_seconds: f64,
    /// Bytes of WAL files in staging.
    pub staging_bytes: u64,
    /// Receiving is paused: staging at its quota, or its disk full.
    pub staging_full: bool,
    /// The staging disk is full (`ENOSPC`): receiving waits for room.
    #[serde(default)]
    pub staging_disk_full: bool,
    /// Last error worth an operator's attention.
    pub last_error: Option<String>,
    /// WAL missing from the bucket that the server no longer has, as `from-to` LSNs: a
    /// recovery from the bucket cannot pass it.
    #[serde(default)]
    pub wal_gap: Option<String>,
    /// Store requests and upload volume over the last hour (or since the daemon started
    /// streaming, when that is shorter); `None` in the first second.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Each store the daemon streams to, in restore order (one line each in `pgagent
    /// status`); empty in files written before stores had names.
    #[serde(default)]
    pub stores: Vec<StoreStatus>,
}

/// One store's position in `status.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Its name (`[[stores]]` `name`; `default` for `store.url`).
    pub name: String,
    /// `required` or `async`.
    pub role: String,
    /// End of the contiguous WAL durable in it.
    pub uploaded_lsn: String,
    /// Bytes received and not yet in it.
    pub lag_bytes: u64,
    /// Age in seconds of the oldest WAL it lacks.
    pub rpo_seconds: f64,
    /// Its last upload attempt failed.
    pub failing: bool,
    /// An async store behind by more than its `max_lag`.
    pub lag_exceeded: bool,
}

/// Store traffic over a window (`usage` in `status.json` and `pgagent status --json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Length of the window in seconds: 3600 once the daemon has run an hour (give or take
    /// the minute between samples), the time since it started streaming before.
    pub window_seconds: f64,
    /// Requests sent to the store in the window, by operation
    /// (`pgagent_store_requests_total`).
    pub requests: ByOp<u64>,
    /// Requests per hour over the window, every operation together.
    pub requests_per_hour: f64,
    /// Requests per hour over the window, by operation.
    pub requests_per_hour_by_op: ByOp<f64>,
    /// Bytes of WAL received from the server in the window (the received LSN's advance).
    pub wal_bytes: u64,
    /// Bytes of WAL objects uploaded in the window before compression
    /// (`pgagent_upload_bytes_total{stage="raw"}`); each `.partial` upload counts in full.
    pub raw_bytes: u64,
    /// Bytes stored by those uploads (`pgagent_upload_bytes_total{stage="stored"}`).
    pub stored_bytes: u64,
    /// `stored_bytes / wal_bytes`: bytes uploaded per byte of WAL; `None` when no WAL came.
    pub stored_per_wal_byte: Option<f64>,
    /// `raw_bytes / wal_bytes`: bytes compressed per byte of WAL; `None` when no WAL came.
    pub raw_per_wal_byte: Option<f64>,
}

/// One value per store operation, as a JSON object with the keys `put`, `get`, `list`,
/// `delete`, `head`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ByOp<T> {
    /// Writes (`put`).
    pub put: T,
    /// Object reads (`get`).
    pub get: T,
    /// Listings (`list`).
    pub list: T,
    /// Deletions (`delete`).
    pub delete: T,
    /// Metadata reads (`head`).
    pub head: T,
}

impl<T> ByOp<T> {
    /// The value of each operation from `f`.
    pub fn from_fn(mut f: impl FnMut(RequestOp) -> T) -> ByOp<T> {
        ByOp {
            put: f(RequestOp::Put),
            get: f(RequestOp::Get),
            list: f(RequestOp::List),
            delete: f(RequestOp::Delete),
            head: f(RequestOp::Head),
        }
    }

    /// The value of `op`.
    pub fn get(&self, op: RequestOp) -> &T {
        match op {
            RequestOp::Put => &self.put,
            RequestOp::Get => &self.get,
            RequestOp::List => &self.list,
            RequestOp::Delete => &self.delete,
            RequestOp::Head => &self.head,
        }
    }
}

fn path(staging_dir: &Path) -> PathBuf {
    staging_dir.join(STATUS_FILE)
}

/// Writes the status atomically (temp file + rename; no fsync: it is advisory). With the
/// staging disk full, a new file cannot be written, so the old one is overwritten in place
/// (see `overwrite_in_place`): the status must say the disk is full.
pub fn write(staging_dir: &Path, status: &DaemonStatus) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(status)?;
    let tmp = staging_dir.join(format!(".{STATUS_FILE}.tmp"));
    let atomic =
        std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path(staging_dir)));
    match atomic {
        Err(e) if crate::staging::is_no_space(&e) => {
            let _ = std::fs::remove_file(&tmp);
            overwrite_in_place(&path(staging_dir), &bytes)
        }
        r => r,
    }
}

/// Overwrites `path` from its start with `bytes`, padded with spaces (which JSON ignores)
/// to the file's length: no new file and, for a status of a few KiB, no new block. A reader
/// may meet it half-written; [`read`] then reads again.
fn overwrite_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let old = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    let mut padded = bytes.to_vec();
    if padded.len() < old {
        padded.resize(old, b' ');
    }
    file.write_all_at(&padded, 0)
}

/// Reads the status, `None` if there is none. A status caught half-written in place is read
/// again once.
pub fn read(staging_dir: &Path) -> std::io::Result<Option<DaemonStatus>> {
    let once = || match std::fs::read(path(staging_dir)) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    once().or_else(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        once()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let s = DaemonStatus {
            pid: 7,
            received_lsn: "0/3000000".into(),
            rpo_seconds: 1.5,
            usage: Some(Usage {
                window_seconds: 600.0,
                requests: ByOp::from_fn(|_| 3),
                requests_per_hour: 90.0,
                stored_per_wal_byte: Some(0.5),
                ..Default::default()
            }),
            ..Default::default()
        };
        write(dir.path(), &s).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(s));
    }

    #[test]
    fn a_status_overwritten_in_place_reads_back_whole() {
        // What `write` falls back to when the staging disk is full.
        let dir = tempfile::tempdir().unwrap();
        let long = DaemonStatus {
            last_error: Some("x".repeat(500)),
            ..Default::default()
        };
        write(dir.path(), &long).unwrap();
        let short = DaemonStatus {
            staging_full: true,
            staging_disk_full: true,
            ..Default::default()
        };
        overwrite_in_place(
            &path(dir.path()),
            &serde_json::to_vec_pretty(&short).unwrap(),
        )
        .unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(short));
    }

    #[test]
    fn usage_fields_as_documented() {
        let u = Usage {
            requests: ByOp {
                put: 1,
                get: 2,
                list: 3,
                delete: 4,
                head: 5,
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(
            v["requests"],
            serde_json::json!({"put": 1, "get": 2, "list": 3, "delete": 4, "head": 5})
        );
        for key in [
            "window_seconds",
            "requests_per_hour",
            "requests_per_hour_by_op",
            "wal_bytes",
            "raw_bytes",
            "stored_bytes",
            "stored_per_wal_byte",
            "raw_per_wal_byte",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(*u.requests.get(RequestOp::Head), 5);
        // A status written before these fields existed still reads.
        let old: DaemonStatus = serde_json::from_str(
            r#"{"pid":1,"updated_unix":2,"system_identifier":"3","store":"s","connected":true,
               "timeline":1,"received_lsn":"0/1","flushed_lsn":"0/1","uploaded_lsn":"0/1",
               "upload_lag_bytes":0,"rpo_seconds":0.0,"staging_bytes":0,"staging_full":false,
               "last_error":null}"#,
        )
        .unwrap();
        assert_eq!(old.usage, None);
    }
}
