//! Benchmarks for pgagent.
//!
//! - `benches/seal.rs` (criterion, `cargo bench -p pgagent-benches --bench seal`): the object
//!   envelope's compress+hash ([`pgagent_storage::envelope::seal`]) and open on real 16 MiB
//!   WAL segments, which [`walcache`] generates once from a local PostgreSQL.
//! - `src/bin/catchup.rs` (`cargo run --release -p pgagent-benches --bin catchup`): the time
//!   `pg_receivewal` and `pgagent run` take to make a WAL backlog retained by a replication
//!   slot durable, with CPU time and peak RSS; the scenario lives in [`catchup`].
//! - `src/bin/replay.rs` (`cargo run --release -p pgagent-benches --bin replay`): archive
//!   recovery of the same base backup and WAL with `restore_command` = `cp`, `pgagent fetch`
//!   (Garage, with added latency) and `pgbackrest archive-get`, and the cost of one call;
//!   the scenario lives in [`replay`].
//! - `src/bin/backup.rs` (`cargo run --release -p pgagent-benches --bin backup`): base backup
//!   and restore with `pgagent backup`/`restore`, `pg_basebackup -Ft` and pgBackRest, and the
//!   bytes a second `pgagent backup` stores after a small change; the scenario lives in
//!   [`backupbench`].
//! - `src/bin/incremental.rs` (`cargo run --release -p pgagent-benches --bin incremental-backup`):
//!   incremental base backups on PostgreSQL 17 and 18 against full ones deduplicated by
//!   chunk, after a range and a scattered change, and the restore of a six-deep chain; the
//!   scenario lives in [`incbench`].
//! - `src/bin/steady.rs` (`cargo run --release -p pgagent-benches --bin steady`): what
//!   streaming costs under a light, rate-limited pgbench load (bytes compressed and stored per
//!   WAL byte, PUTs per minute) and how long lone commits wait to be in the bucket; the
//!   scenario lives in [`steady`].
//!
//! Results and how to reproduce them: `docs/benchmarks.md`. Nothing here runs under
//! `cargo test` except the unit tests of the pure helpers.

pub mod backupbench;
pub mod catchup;
pub mod incbench;
pub mod measure;
pub mod replay;
pub mod report;
pub mod steady;
pub mod walcache;

/// The workspace's `target/` directory: `$CARGO_TARGET_DIR`, else `target/` next to this crate.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// A non-empty environment variable.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `BENCH_PASSPHRASE`: when set, every pgagent case runs on an encrypted store (the
/// daemons get it as `PGAGENT_ENCRYPTION_PASSPHRASE`, `restore_command` in a passphrase file
/// named by `[encryption] passphrase_file`), to compare with the same run without it.
pub fn bench_passphrase() -> Option<String> {
    env_var("BENCH_PASSPHRASE")
}

/// The environment variable that gives `pgagent` its encryption passphrase.
pub const PASSPHRASE_ENV: &str = "PGAGENT_ENCRYPTION_PASSPHRASE";

/// The `pgagent` binary to measure: `$PGAGENT_BIN`, else `target/release/pgagent`.
///
/// Errors when it does not exist.
pub fn pgagent_bin() -> anyhow::Result<std::path::PathBuf> {
    let bin = env_var("PGAGENT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release").join("pgagent"));
    if !bin.is_file() {
        anyhow::bail!(
            "{} not found: build it with `cargo build --release -p pgagent` or set PGAGENT_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// `N cores, <CPU model>` for the header of a report (`nproc`, `lscpu`).
pub fn machine() -> String {
    let run = |cmd: &str| {
        std::process::Command::new(cmd)
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
    };
    let cores = run("nproc")
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    let model = run("lscpu")
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_owned()))
        })
        .unwrap_or_else(|| "?".to_owned());
    format!("{cores} cores, {model}")
}

/// The cases whose letters appear in `text` (`"abc"`, `"c,a"`), in the order of `all`;
/// `help` names the letters in the error.
///
/// Errors: a character that is not a case letter, a comma or a space; no case selected.
pub fn select_cases<C: Copy>(
    text: &str,
    all: &[C],
    letter: impl Fn(C) -> char,
    help: &str,
) -> anyhow::Result<Vec<C>> {
    let letters: String = all.iter().map(|c| letter(*c)).collect();
    if let Some(bad) = text
        .chars()
        .find(|c| !letters.contains(*c) && *c != ',' && *c != ' ')
    {
        anyhow::bail!("unknown case {bad:?}: use letters {help}");
    }
    let cases: Vec<C> = all
        .iter()
        .copied()
        .filter(|c| text.contains(letter(*c)))
        .collect();
    if cases.is_empty() {
        anyhow::bail!("no case selected");
    }
    Ok(cases)
}
