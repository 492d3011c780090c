//! Real WAL segments for the micro-benchmarks, generated once and cached.
//!
//! Synthetic bytes say little about zstd on WAL: real segments mix record headers, tuple data,
//! B-tree pages and full-page images (PostgreSQL docs, section 30.1 "full_page_writes"). So the
//! first run starts a throwaway cluster (`initdb` as the PostgreSQL OS user, see
//! [`pgagent_tests::PgServer`]), loads `pgbench -i -s 5`, takes a checkpoint, runs pgbench for
//! a few seconds, and copies [`SAMPLE_SEGMENTS`] complete segments out of `pg_wal` into
//! `target/bench-wal/`: one from the bulk load and two from the transaction run (the first of
//! which is dense with full-page images, as after every checkpoint). Later runs read the cache.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use pgagent_protocol::Lsn;
use pgagent_tests::{PgOptions, PgServer};

/// Environment variable naming a directory of WAL segments to use instead of the cache.
pub const WAL_DIR_ENV: &str = "PGAGENT_BENCH_WAL_DIR";

/// How many segments the generated sample holds.
pub const SAMPLE_SEGMENTS: usize = 3;

/// A WAL segment read into memory.
#[derive(Debug, Clone)]
pub struct Segment {
    /// File name (`000000010000000000000003`).
    pub name: String,
    /// The segment's bytes.
    pub bytes: Vec<u8>,
}

/// The sample segments: from `$PGAGENT_BENCH_WAL_DIR` when set, else from
/// `target/bench-wal/`, generating them there first when it holds none.
///
/// Errors when the directory given by the variable holds no segment, or generating fails
/// (no PostgreSQL installed: see `scripts/install-deps`).
pub fn sample_segments() -> anyhow::Result<Vec<Segment>> {
    if let Some(dir) = std::env::var_os(WAL_DIR_ENV) {
        let segments = read_segments(Path::new(&dir))?;
        if segments.is_empty() {
            bail!(
                "{WAL_DIR_ENV}={} holds no WAL segment",
                dir.to_string_lossy()
            );
        }
        return Ok(segments);
    }
    let cache = crate::target_dir().join("bench-wal");
    let cached = read_segments(&cache).unwrap_or_default();
    if !cached.is_empty() {
        return Ok(cached);
    }
    eprintln!(
        "generating sample WAL segments into {} (once)",
        cache.display()
    );
    generate(&cache)?;
    read_segments(&cache)
}

/// Whether `name` is a WAL segment file name: 24 uppercase hexadecimal digits
/// (`XLogFileName` in `src/include/access/xlog_internal.h`).
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// Reads every segment file in `dir`, sorted by name.
fn read_segments(dir: &Path) -> anyhow::Result<Vec<Segment>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_segment_name(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            Ok(Segment { name, bytes })
        })
        .collect()
}

/// Generates the sample into `dir` (created if missing) from a throwaway cluster.
fn generate(dir: &Path) -> anyhow::Result<()> {
    let pg = PgServer::start(PgOptions {
        wal_keep_size: "2GB".to_owned(),
        extra_conf: vec![
            "max_wal_size = '4GB'".to_owned(),
            "checkpoint_timeout = '1h'".to_owned(),
        ],
        ..PgOptions::default()
    })?;
    let load_start = current_lsn(&pg)?;
    pg.pgbench_init(5)?;
    let load_end = current_lsn(&pg)?;
    pg.psql("CHECKPOINT")?;
    let run_start = current_lsn(&pg)?;
    pg.pgbench(&["-c", "2", "-j", "2", "-T", "8"])?;
    let run_end = current_lsn(&pg)?;
    pg.switch_wal()?;

    let seg_bytes: u64 = pg
        .psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")?
        .parse()
        .context("wal_segment_size")?;
    let mid = |a: Lsn, b: Lsn| Lsn(a.0 + (b.0 - a.0) / 2);
    // The segment after the one holding the checkpoint's redo point starts with pages that
    // are touched for the first time since the checkpoint: the full-page image case.
    let picks = [
        mid(load_start, load_end),
        Lsn(run_start.0 + seg_bytes),
        mid(run_start, run_end),
    ];
    if run_end.0 < run_start.0 + 2 * seg_bytes {
        bail!("the pgbench run wrote too little WAL ({run_start}..{run_end}) for the sample");
    }
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let pg_wal = pg.data_dir().join("pg_wal");
    let mut names = Vec::new();
    for lsn in picks {
        let name = pg.psql(&format!("SELECT pg_walfile_name('{lsn}')"))?;
        if names.contains(&name) {
            continue;
        }
        copy_atomic(&pg_wal.join(&name), &dir.join(&name))?;
        names.push(name);
    }
    Ok(())
}

fn current_lsn(pg: &PgServer) -> anyhow::Result<Lsn> {
    let text = pg.current_wal_lsn()?;
    text.parse()
        .with_context(|| format!("pg_current_wal_lsn() = {text:?}"))
}

/// Copies through a temporary name so an interrupted run leaves no truncated segment behind.
fn copy_atomic(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tmp: PathBuf = to.with_extension("tmp");
    fs::copy(from, &tmp).with_context(|| format!("copy {}", from.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("rename to {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_segment_names() {
        assert!(is_segment_name("000000010000000A000000FE"));
        assert!(!is_segment_name("000000010000000A000000FE.partial"));
        assert!(!is_segment_name("00000002.history"));
        assert!(!is_segment_name("000000010000000a000000fe"));
    }

    #[test]
    fn reads_only_segment_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("000000010000000000000004"), b"b").unwrap();
        fs::write(dir.path().join("000000010000000000000003"), b"a").unwrap();
        fs::write(dir.path().join("000000010000000000000005.tmp"), b"x").unwrap();
        let segs = read_segments(dir.path()).unwrap();
        let names: Vec<&str> = segs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["000000010000000000000003", "000000010000000000000004"]
        );
        assert_eq!(segs[0].bytes, b"a");
    }
}
