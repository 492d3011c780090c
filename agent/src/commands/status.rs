//! `pgagent status`: what the running daemon last published in `<staging>/status.json`.

use std::time::{SystemTime, UNIX_EPOCH};

use pgagent_storage::RequestOp;

use crate::config::Config;
use crate::statusfile::{self, DaemonStatus, Usage};
use crate::store::{last_points, LastPoints};

/// Seconds after which a published status counts as stale (the daemon writes every second).
pub const STALE_AFTER_SECS: u64 = 10;

/// Prints the daemon's status (and, from the store, the last backup and snapshot); fails
/// when there is no status.
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
    let points = match cfg.stores.as_slice() {
        [one] => store_points(&cfg.for_store(one)).await,
        several => {
            // Several stores: each one's points, read at the same time.
            let each = futures::future::join_all(
                several
                    .iter()
                    .map(|s| async { (s.name.clone(), store_points(&cfg.for_store(s)).await) }),
            )
            .await;
            return print_each(&status, age, now, json, &each);
        }
    };
    if json {
        let mut v = serde_json::to_value(&status)?;
        v["age_seconds"] = age.into();
        v["stale"] = (age > STALE_AFTER_SECS).into();
        match &points {
            Ok(p) => {
                for (key, point) in [
                    ("last_backup", &p.last_backup),
                    ("last_snapshot", &p.last_snapshot),
                ] {
                    v[key] = match point {
                        Some((id, at)) => serde_json::json!({ "id": id, "finished_at": at }),
                        None => serde_json::Value::Null,
                    };
                }
                v["last_drill"] = serde_json::to_value(&p.last_drill)?;
            }
            Err(e) => v["store_error"] = e.clone().into(),
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&status, age));
        let point = |p: &Option<(String, String)>| {
            p.as_ref().map_or("none".to_string(), |(id, at)| {
                format!("{id} (finished {at})")
            })
        };
        match &points {
            Ok(p) => {
                println!("{:<18}{}", "last backup", point(&p.last_backup));
                println!("{:<18}{}", "last snapshot", point(&p.last_snapshot));
                println!(
                    "{:<18}{}",
                    "last drill",
                    drill_line(p.last_drill.as_ref(), now)
                );
            }
            Err(e) => println!("{:<18}unknown: {e}", "last backup"),
        }
    }
    Ok(())
}

/// The newest backup, snapshot and drill in the one store of `cfg`, waited for 10 s.
async fn store_points(cfg: &Config) -> Result<LastPoints, String> {
    let points = async {
        let store = crate::store::open(cfg).await?;
        let cipher = crate::store::read_cipher(store.as_ref(), cfg).await?;
        last_points(store.as_ref(), cipher.as_ref()).await
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), points).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("the store did not answer within 10 s".to_string()),
    }
}

/// `status` with several stores: the daemon's status, then each store's newest backup,
/// snapshot and drill (JSON: under `stores.<name>`).
fn print_each(
    status: &DaemonStatus,
    age: u64,
    now: u64,
    json: bool,
    each: &[(String, Result<LastPoints, String>)],
) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(status)?;
        v["age_seconds"] = age.into();
        v["stale"] = (age > STALE_AFTER_SECS).into();
        for (name, points) in each {
            v["stores"][name] = match points {
                Ok(p) => serde_json::to_value(p)?,
                Err(e) => serde_json::json!({ "store_error": e }),
            };
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", render(status, age));
    for (name, points) in each {
        let label = format!("{name}: last backup");
        match points {
            Ok(p) => {
                let point = |p: &Option<(String, String)>| {
                    p.as_ref().map_or("none".to_string(), |(id, at)| {
                        format!("{id} (finished {at})")
                    })
                };
                println!("{label:<24}{}", point(&p.last_backup));
                println!(
                    "{:<24}{}",
                    format!("{name}: last snapshot"),
                    point(&p.last_snapshot)
                );
                println!(
                    "{:<24}{}",
                    format!("{name}: last drill"),
                    drill_line(p.last_drill.as_ref(), now)
                );
            }
            Err(e) => println!("{label:<24}unknown: {e}"),
        }
    }
    Ok(())
}

/// "3 days ago, passed, RTO 41 s" (or the failed checks) for the newest drill, `now` in
/// Unix seconds.
pub fn drill_line(d: Option<&crate::store::LastDrill>, now: u64) -> String {
    let Some(d) = d else {
        return "none (pgagent drill proves the store restores)".to_string();
    };
    let ago = crate::times::unix_seconds(&d.finished_at)
        .map(|t| ago(now.saturating_sub(t as u64)))
        .unwrap_or_else(|| d.finished_at.clone());
    let rto = d
        .rto_seconds
        .map(|s| format!(", RTO {s:.0} s"))
        .unwrap_or_default();
    if d.passed {
        format!("{ago}, passed{rto}")
    } else {
        format!("{ago}, FAILED ({}){rto}", d.failed_checks.join(", "))
    }
}

/// A duration in seconds as people say it: "40 s ago", "5 min ago", "3 h ago", "3 days ago".
fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s ago"),
        s if s < 2 * 3600 => format!("{} min ago", s / 60),
        s if s < 2 * 86400 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
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
    // One line per store when there are several: how far behind each is.
    if s.stores.len() > 1 {
        for st in &s.stores {
            line(&mut out, &format!("store {}", st.name), store_line(st));
        }
    }
    let full = if s.staging_disk_full {
        " (disk full: receiving paused until there is room; the slot keeps the WAL)"
    } else if s.staging_full {
        " (at quota: receiving paused)"
    } else {
        ""
    };
    line(
        &mut out,
        "staging",
        format!("{}{full}", bytesize::ByteSize(s.staging_bytes)),
    );
    if let Some(gap) = &s.wal_gap {
        line(
            &mut out,
            "WAL GAP",
            format!(
                "{gap} is missing from the store: recovery cannot pass it; take a new base backup"
            ),
        );
    }
    if let Some(u) = &s.usage {
        let (requests, uploaded) = usage_lines(u);
        line(&mut out, "requests", requests);
        line(&mut out, "uploaded", uploaded);
    }
    if let Some(e) = &s.last_error {
        line(&mut out, "last error", e.clone());
    }
    out
}

/// One store's line: `async, at 0/3000000, 16.0 MiB behind (12.3s RPO), uploads failing`.
fn store_line(st: &crate::statusfile::StoreStatus) -> String {
    let mut text = format!(
        "{}, at {}, {} behind ({:.1}s RPO)",
        st.role,
        st.uploaded_lsn,
        bytesize::ByteSize(st.lag_bytes),
        st.rpo_seconds
    );
    if st.failing {
        text.push_str(", uploads failing");
    }
    if st.lag_exceeded {
        text.push_str(", past its max_lag");
    }
    text
}

/// The `requests` and `uploaded` lines: `3,480/h over the last 60 min (put 3,420, get 2,
/// list 58, delete 0, head 0)` and `0.41 stored bytes (2.0 raw) per WAL byte over the last
/// 60 min`.
fn usage_lines(u: &Usage) -> (String, String) {
    let over = format!("over the last {}", window(u.window_seconds));
    let by_op = RequestOp::ALL
        .map(|op| {
            let n = *u.requests_per_hour_by_op.get(op);
            format!("{op} {}", thousands(n.round() as u64))
        })
        .join(", ");
    let requests = format!(
        "{}/h {over} ({by_op})",
        thousands(u.requests_per_hour.round() as u64)
    );
    let uploaded = match (u.stored_per_wal_byte, u.raw_per_wal_byte) {
        (Some(stored), Some(raw)) => format!(
            "{} stored bytes ({} raw) per WAL byte {over}",
            ratio(stored),
            ratio(raw)
        ),
        _ => format!(
            "{} stored, no WAL received {over}",
            bytesize::ByteSize(u.stored_bytes)
        ),
    };
    (requests, uploaded)
}

/// `45 s` under 90 seconds, else whole minutes: `12 min`, `60 min`.
fn window(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{} s", seconds.round() as u64)
    } else {
        format!("{} min", (seconds / 60.0).round() as u64)
    }
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Two significant digits, enough to compare: `0.41`, `2.0`, `13`.
fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
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
        let gap = DaemonStatus {
            wal_gap: Some("0/5000000-0/8000000".into()),
            ..s
        };
        let text = render(&gap, 1);
        assert!(text.contains("0/5000000-0/8000000 is missing"), "{text}");
        assert!(!text.contains("requests"), "no usage yet: {text}");
    }

    #[test]
    fn render_shows_requests_per_hour_and_bytes_per_wal_byte() {
        use crate::statusfile::ByOp;
        let per_hour = ByOp {
            put: 3420.0,
            get: 2.0,
            list: 58.0,
            delete: 0.0,
            head: 0.4,
        };
        let s = DaemonStatus {
            usage: Some(Usage {
                window_seconds: 3590.0,
                requests_per_hour: 3480.4,
                requests_per_hour_by_op: per_hour,
                stored_per_wal_byte: Some(0.4149),
                raw_per_wal_byte: Some(2.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render(&s, 1);
        assert!(
            text.contains(
                "requests          3,480/h over the last 60 min \
                 (put 3,420, get 2, list 58, delete 0, head 0)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "uploaded          0.41 stored bytes (2.0 raw) per WAL byte over the last 60 min\n"
            ),
            "{text}"
        );
        let young = DaemonStatus {
            usage: Some(Usage {
                window_seconds: 42.0,
                stored_bytes: 2048,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render(&young, 1);
        assert!(
            text.contains("uploaded          2.0 KiB stored, no WAL received over the last 42 s"),
            "{text}"
        );
    }

    #[test]
    fn render_has_one_line_per_store_when_there_are_several() {
        let store = |name: &str, role: &str, failing: bool| crate::statusfile::StoreStatus {
            name: name.into(),
            role: role.into(),
            uploaded_lsn: "0/3000000".into(),
            lag_bytes: 16 << 20,
            rpo_seconds: 12.3,
            failing,
            lag_exceeded: failing,
        };
        let one = DaemonStatus {
            connected: true,
            stores: vec![store("default", "required", false)],
            ..Default::default()
        };
        assert!(
            !render(&one, 1).contains("store default"),
            "one store: no line"
        );
        let two = DaemonStatus {
            stores: vec![store("nas", "required", false), store("r2", "async", true)],
            ..one
        };
        let text = render(&two, 1);
        assert!(
            text.contains(
                "store nas         required, at 0/3000000, 16.0 MiB behind (12.3s RPO)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("store r2          async, at 0/3000000, 16.0 MiB behind (12.3s RPO), uploads failing, past its max_lag\n"),
            "{text}"
        );
    }

    #[test]
    fn numbers_read_easily() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(
            (ratio(0.41), ratio(2.04), ratio(13.4)),
            ("0.41".into(), "2.0".into(), "13".into())
        );
        assert_eq!(
            (window(59.6), window(90.0), window(3599.0)),
            ("60 s".into(), "2 min".into(), "60 min".into())
        );
    }
}
