//! How times are written in the store's records (RFC 3339, UTC, to the second) and read
//! back as Unix seconds for the gauges. A leaf: it imports nothing of the crate, so records
//! of every kind (backups, snapshots, drills) can share it.

use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC to the second: how times are written in the store's records.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Unix seconds of an RFC 3339 time.
pub fn unix_seconds(rfc3339: &str) -> Option<f64> {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_goes_out_and_comes_back_to_the_second() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_764_504_000_900);
        let written = rfc3339(t);
        assert_eq!(written, "2025-11-30T12:00:00Z");
        assert_eq!(unix_seconds(&written), Some(1_764_504_000.0));
        assert_eq!(unix_seconds("yesterday"), None);
    }
}
