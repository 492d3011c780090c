//! A regular (non-replication) session for the few SQL functions a physical backup needs
//! beside the replication protocol: `pg_backup_start` / `pg_backup_stop` keep their backup
//! in the session that started it (PostgreSQL docs, "Making a Base Backup Using the Low
//! Level API", 26.3.3), which a walsender cannot run.

use crate::client::connection::Connection;
use crate::client::conninfo::ConnConfig;
use crate::client::startup::{self, SessionKind};
use crate::error::Error;
use crate::wire::command::{check_slot_name, SlotPosition};
use crate::wire::lsn::Lsn;

/// An authenticated SQL session on database `dbname` of the connection settings (default
/// `postgres`), with the same host, user, password and TLS policy as replication.
pub struct SqlSession {
    inner: Connection,
}

impl SqlSession {
    /// Connects; the password file is searched with the settings' database (or
    /// `replication` when none is set, as for the replication connection).
    ///
    /// Errors: as `ReplicationClient::connect` (connection, TLS, authentication or the
    /// server's); `3D000` when the database does not exist.
    pub async fn connect(cfg: &ConnConfig) -> Result<SqlSession, Error> {
        let inner = startup::establish(cfg, SessionKind::Sql).await?;
        Ok(SqlSession { inner })
    }

    /// Runs `sql` with the simple query protocol and returns the rows of the last result
    /// set as text (`None` for NULL). A server error leaves the session usable.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, Error> {
        self.inner.simple_query(sql).await
    }

    /// The first column of the first row of `sql`.
    ///
    /// Errors: the query's, or a protocol error when it returns no row or NULL.
    pub async fn query_one(&mut self, sql: &str) -> Result<String, Error> {
        self.query(sql)
            .await?
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
            .ok_or_else(|| Error::protocol(format!("{sql:?} returned no value")))
    }

    /// The position of physical replication slot `name` from `pg_replication_slots`, for
    /// servers before 15 that have no `READ_REPLICATION_SLOT` (PostgreSQL docs, "System
    /// Views", `pg_replication_slots`). The view has no timeline column, so
    /// `restart_tli` is `None`; `None` when there is no such physical slot.
    ///
    /// Errors: an invalid slot name (checked before anything is sent); the query's.
    pub async fn replication_slot(&mut self, name: &str) -> Result<Option<SlotPosition>, Error> {
        check_slot_name(name)?;
        // The name is [a-z0-9_]{1,63}: it cannot break out of the literal.
        let rows = self
            .query(&format!(
                "SELECT restart_lsn FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = '{name}' AND slot_type = 'physical'"
            ))
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let restart_lsn = match row.into_iter().next().flatten() {
            Some(text) => Some(text.parse::<Lsn>().map_err(|_| {
                Error::protocol(format!(
                    "pg_replication_slots.restart_lsn {text:?} is not an LSN"
                ))
            })?),
            None => None,
        };
        Ok(Some(SlotPosition {
            restart_lsn,
            restart_tli: None,
        }))
    }

    /// A ParameterStatus value the server reported (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.inner.parameter(name)
    }

    /// Sends Terminate and closes the session.
    pub async fn close(self) -> Result<(), Error> {
        self.inner.close().await
    }
}
