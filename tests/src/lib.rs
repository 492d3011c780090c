//! Integration-test harness for pgagent: real servers in temporary directories, started and
//! torn down by each test.
//!
//! - [`PgServer`]: a PostgreSQL cluster (`initdb` + `pg_ctl`) on a random loopback port, with
//!   the roles `pgagent` (replication, SCRAM), `trust_user` (replication, trusted) and
//!   `norepl` (no replication).
//! - [`Garage`]: a single-node Garage S3 server with one bucket and its owner key.
//! - [`Moto`]: a moto S3 server, for what Garage lacks: versioning, Object Lock, retention;
//!   with an outside reader of every version under a prefix.
//! - [`Proxy`]: a TCP proxy that can refuse, hang or slow connections ([`ProxyMode`]).
//! - [`AgentProcess`] / [`run_pgagent`]: the `pgagent` binary as a daemon or a one-shot command.
//! - [`ZfsPool`]: a file-backed ZFS pool (zfs-fuse) with datasets and snapshots.
//! - [`Tmpfs`]: a small tmpfs over a test's directory, to fill a disk for real.
//! - [`watcher::Watcher`]: reads the bucket during a fault scenario and checks that its WAL
//!   matches the server's and that the slot never passes it.
//! - [`load::Load`]: pgbench in the background; [`sql::SqlClient`]: a blocking SQL session
//!   for fast polling.
//! - [`layers`]: which module of a crate may import which, read from its sources (the check
//!   behind `tests/tests/architecture.rs`).
//!
//! Environment: `PGAGENT_TEST_PG` (server major version, 13…18; default the packaged one, see
//! [`pg::PgInstall`]), `PGAGENT_TEST_PG_ROOT` (where `scripts/install-deps` unpacks the other
//! majors, default `/opt/pgagent-test/pg`), `PGAGENT_TEST_PG_BIN` (packaged PostgreSQL `bin`
//! directory: the client tools, and the default server), `PGAGENT_TEST_PG_USER`
//! (OS user PostgreSQL runs as when the tests run as root, default `postgres`),
//! `PGAGENT_TEST_GARAGE` (garage binary), `PGAGENT_MOTO_SERVER` (moto_server program),
//! `PGAGENT_BIN` (pgagent binary), `PGAGENT_TEST_KEEP=1` (keep temporary directories and
//! print their paths).
//! `scripts/install-deps` installs PostgreSQL, Garage, moto and zfs-fuse.

pub mod agent;
pub mod cnpg;
pub mod garage;
pub mod layers;
pub mod load;
pub mod moto;
mod osuser;
pub mod pg;
mod postmaster;
pub mod proxy;
pub mod sql;
pub mod tmpfs;
pub mod util;
pub mod watcher;
pub mod zfs;

pub use agent::{pgagent_bin, run_pgagent, run_pgagent_as, AgentProcess};
pub use garage::Garage;
pub use moto::{Moto, Protection};
pub use osuser::OsUser;
pub use pg::{PgOptions, PgServer};
pub use proxy::{Proxy, ProxyMode};
pub use tmpfs::Tmpfs;
pub use util::{free_addr, free_port, wait_until, wait_until_async};
pub use zfs::ZfsPool;
