//! `pgagent status`: what the running daemon last published in `<staging>/status.json`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::statusfile::{self, DaemonStatus};

/// Seconds after which a published status counts as stale (the daemon writes every second).
pub const STALE_AFTER_SECS: u64 = 10;

/// Prints the daemon's status; fails when there is none.
pub async fn run(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let dir = cfg.staging_dir();
    let status = statusfile::read(dir)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no status in {}: is `pgagent run` running with staging.dir = {}?",
            dir.join(statusfile::STATUS_FILE).display(),
            dir.display()
        )
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let age = now.saturating_sub(status.updated_unix);
    if json {
        let mut v = serde_json::to_value(&status)?;
        v["age_seconds"] = age.into();
        v["stale"] = (age > STALE_AFTER_SECS).into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&status, age));
    }
    Ok(())
}

/// The human form.
pub fn render(s: &DaemonStatus, age: u64) -> String {
    let mut out = String::new();
    let state = if s.stopped {
        format!("stopped cleanly (pid {} is gone)", s.pid)
    } else if age > STALE_AFTER_SECS {
        format!("not running? (last update {age}s ago, pid {})", s.pid)
    } else if s.connected {
        format!("streaming (pid {})", s.pid)
    } else {
        format!("disconnected, retrying (pid {})", s.pid)
    };
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:<18}{v}\n"));
    line(&mut out, "daemon", state);
    line(&mut out, "system identifier", s.system_identifier.clone());
    line(&mut out, "store", s.store.clone());
    line(
        &mut out,
        "timeline",
        s.timeline.map_or("-".into(), |t| t.to_string()),
    );
    line(&mut out, "received", s.received_lsn.clone());
    line(&mut out, "in bucket", s.uploaded_lsn.clone());
    line(&mut out, "confirmed (flush)", s.flushed_lsn.clone());
    line(
        &mut out,
        "upload lag",
        format!(
            "{} ({:.1}s RPO)",
            bytesize::ByteSize(s.upload_lag_bytes),
            s.rpo_seconds
        ),
    );
    let full = if s.staging_full {
        " (at quota: receiving paused)"
    } else {
        ""
    };
    line(
        &mut out,
        "staging",
        format!("{}{full}", bytesize::ByteSize(s.staging_bytes)),
    );
    if let Some(e) = &s.last_error {
        line(&mut out, "last error", e.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_says_stale_and_errors() {
        let s = DaemonStatus {
            pid: 9,
            connected: true,
            last_error: Some("upload wal/x: timeout".into()),
            ..Default::default()
        };
        let fresh = render(&s, 1);
        assert!(fresh.contains("streaming (pid 9)"), "{fresh}");
        assert!(fresh.contains("upload wal/x: timeout"));
        assert!(render(&s, 60).contains("not running?"));
    }
}
