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
//!
//! Results and how to reproduce them: `docs/benchmarks.md`. Nothing here runs under
//! `cargo test` except the unit tests of the pure helpers.

pub mod catchup;
pub mod measure;
pub mod replay;
pub mod report;
pub mod walcache;

/// The workspace's `target/` directory: `$CARGO_TARGET_DIR`, else `target/` next to this crate.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}
