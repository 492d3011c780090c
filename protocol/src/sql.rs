//! A regular (non-replication) session for the few SQL functions a physical backup needs
//! beside the replication protocol: `pg_backup_start` / `pg_backup_stop` keep their backup
//! in the session that started it (PostgreSQL docs, "Making a Base Backup Using the Low
//! Level API", 26.3.3), which a walsender cannot run.

use crate::client::ReplicationClient;
use crate::conninfo::ConnConfig;
use crate::error::Error;
use crate::startup::{self, SessionKind};

/// An authenticated SQL session on database `dbname` of the connection settings (default
/// `postgres`), with the same host, user, password and TLS policy as replication.
pub struct SqlSession {
    inner: ReplicationClient,
}

impl SqlSession {
    /// Connects; the password file is searched with the settings' database (or
    /// `replication` when none is set, as for the replication connection).
    ///
    /// Errors: as [`ReplicationClient::connect`]; `3D000` when the database does not exist.
    pub async fn connect(cfg: &ConnConfig) -> Result<SqlSession, Error> {
        let established = startup::establish(cfg, SessionKind::Sql).await?;
        Ok(SqlSession {
            inner: ReplicationClient::from_parts(established.conn, established.parameters, false),
        })
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

    /// A ParameterStatus value the server reported (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.inner.parameter(name)
    }

    /// Sends Terminate and closes the session.
    pub async fn close(self) -> Result<(), Error> {
        self.inner.close().await
    }
}
