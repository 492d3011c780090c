//! `pgagent drill`: prove that the store restores, by restoring it and starting the copy.
//!
//! 1. [`scratch`]: a directory of its own under `drill.dir` (never PGDATA or inside it);
//!    what a drill that crashed left there is removed first.
//! 2. [`crate::restore::restore`] into it, from a clone of a local snapshot or
//!    from the bucket, set up to recover to the target through `pgagent fetch`.
//! 3. [`server`]: a throwaway PostgreSQL of the backup's major version on a private unix
//!    socket (no TCP), `archive_mode = off`, small memory settings, as the PostgreSQL OS
//!    user when run as root; it recovers and promotes.
//! 4. Checks ([`checks`]), connected as the role [`role`] chooses (`drill.user`, else the
//!    copy's bootstrap superuser): the point reached against the newest WAL in the store (a
//!    recovery that ended early, the failure a drill exists to catch, fails it), connect,
//!    databases, tables, `pg_amcheck`, `drill.check_sql`.
//! 5. The server is stopped and the scratch directory removed (unless `--keep`); the
//!    [`DrillReport`] ([`report`]) is what `pgagent drill` prints and records in the store. A stop
//!    (the daemon stopping, or SIGTERM/SIGINT to `pgagent drill`) cuts the drill short at
//!    any step and still does this.

pub mod checks;
mod live;
pub mod pgbin;
pub mod report;
mod request;
pub mod role;
mod run;
pub mod scratch;
pub mod server;

pub use report::{Check, DrillReport, Reached};
pub use request::DrillRequest;
pub use run::{drill, run_and_record};
