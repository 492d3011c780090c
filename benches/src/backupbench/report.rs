//! Results of the backup benchmark as markdown tables.

use std::time::Duration;

/// One case's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Case label.
    pub label: String,
    /// Wall time of the backup.
    pub backup: Duration,
    /// Bytes the backup stored (compressed).
    pub stored: u64,
    /// How `stored` was measured (e.g. "on disk", "list backups").
    pub stored_by: &'static str,
    /// Wall time of the restore into an empty directory, `None` when not run.
    pub restore: Option<Duration>,
    /// Bytes of the regular files in the restored directory.
    pub restored: u64,
}

const MIB: f64 = (1u64 << 20) as f64;

/// The results table: case, backup seconds, stored MiB (with how it was measured), ratio of
/// the database size to the stored bytes, backup MiB/s of database, restore seconds,
/// restored MiB.
pub fn table(rows: &[Row], db_bytes: u64) -> String {
    let mut out = String::from(
        "| case | backup (s) | stored (MiB) | ratio | backup MiB/s | restore (s) | restored (MiB) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let restore = r
            .restore
            .map_or("–".to_owned(), |d| format!("{:.1}", d.as_secs_f64()));
        out.push_str(&format!(
            "| {} | {:.1} | {:.0} ({}) | {:.2}:1 | {:.0} | {restore} | {:.0} |\n",
            r.label,
            r.backup.as_secs_f64(),
            r.stored as f64 / MIB,
            r.stored_by,
            db_bytes as f64 / (r.stored.max(1) as f64),
            db_bytes as f64 / MIB / r.backup.as_secs_f64().max(1e-9),
            r.restored as f64 / MIB,
        ));
    }
    out
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_row() {
        let t = table(
            &[Row {
                label: "x".to_owned(),
                backup: Duration::from_secs(4),
                stored: 256 << 20,
                stored_by: "on disk",
                restore: None,
                restored: 1 << 30,
            }],
            1 << 30,
        );
        assert!(
            t.ends_with("| x | 4.0 | 256 (on disk) | 4.00:1 | 256 | – | 1024 |\n"),
            "{t}"
        );
        assert_eq!(percent(5, 200), 2.5);
        assert_eq!(percent(5, 0), 0.0);
    }
}
