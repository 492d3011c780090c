//! `<staging>/status.json`: the daemon's state, published every second, read by
//! `pgagent status` (which needs no connection to the daemon).

use std::path::{Path, PathBuf};

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
    /// Receiving is paused at the staging quota.
    pub staging_full: bool,
    /// Last error worth an operator's attention.
    pub last_error: Option<String>,
    /// WAL missing from the bucket that the server no longer has, as `from-to` LSNs: a
    /// recovery from the bucket cannot pass it.
    #[serde(default)]
    pub wal_gap: Option<String>,
}

fn path(staging_dir: &Path) -> PathBuf {
    staging_dir.join(STATUS_FILE)
}

/// Writes the status atomically (temp file + rename; no fsync: it is advisory).
pub fn write(staging_dir: &Path, status: &DaemonStatus) -> std::io::Result<()> {
    let tmp = staging_dir.join(format!(".{STATUS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(&tmp, path(staging_dir))
}

/// Reads the status, `None` if there is none.
pub fn read(staging_dir: &Path) -> std::io::Result<Option<DaemonStatus>> {
    match std::fs::read(path(staging_dir)) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
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
            ..Default::default()
        };
        write(dir.path(), &s).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(s));
    }
}
