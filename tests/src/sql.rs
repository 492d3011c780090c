//! A blocking SQL session for tests that poll the server often (every few milliseconds),
//! where starting `psql` each time would cost more than the interval being measured.

use anyhow::Context;
use pgagent_protocol::{ConnConfig, SqlSession};

use crate::PgServer;

/// One SQL session with its own single-threaded runtime; reconnects after an error. Use it
/// from plain `#[test]` functions (not from inside a tokio runtime).
pub struct SqlClient {
    rt: tokio::runtime::Runtime,
    conn: ConnConfig,
    session: Option<SqlSession>,
}

impl std::fmt::Debug for SqlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlClient")
            .field("conn", &self.conn.redacted().to_string())
            .field("connected", &self.session.is_some())
            .finish()
    }
}

/// libpq-style connection string of `pg`'s superuser over its unix socket, with
/// `application_name` set to `name`.
pub fn superuser_conninfo(pg: &PgServer, name: &str) -> String {
    format!(
        "host={} port={} user={} dbname=postgres application_name={name}",
        pg.socket_dir().display(),
        pg.port(),
        crate::pg::SUPERUSER
    )
}

impl SqlClient {
    /// A session as `pg`'s superuser over the unix socket (application name `pgagent-tests`).
    pub fn superuser(pg: &PgServer) -> anyhow::Result<SqlClient> {
        SqlClient::connect(&superuser_conninfo(pg, "pgagent-tests"))
    }

    /// A session with `conninfo` (libpq style).
    pub fn connect(conninfo: &str) -> anyhow::Result<SqlClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("runtime for the SQL session")?;
        let conn = ConnConfig::parse(conninfo).context("conninfo")?;
        let mut client = SqlClient {
            rt,
            conn,
            session: None,
        };
        client.ensure()?;
        Ok(client)
    }

    fn ensure(&mut self) -> anyhow::Result<&mut SqlSession> {
        if self.session.is_none() {
            let session = self
                .rt
                .block_on(SqlSession::connect(&self.conn))
                .with_context(|| format!("connect to {}", self.conn.redacted()))?;
            self.session = Some(session);
        }
        Ok(self.session.as_mut().expect("connected"))
    }

    /// Runs `sql` (simple query protocol); the rows of the last result as text, `None` for
    /// NULL. A failed query drops the session; the next call reconnects.
    pub fn query(&mut self, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        self.ensure()?;
        let session = self.session.as_mut().expect("connected");
        match self.rt.block_on(session.query(sql)) {
            Ok(rows) => Ok(rows),
            Err(e) => {
                self.session = None;
                Err(anyhow::Error::new(e).context(format!("query {sql:?}")))
            }
        }
    }

    /// The first column of the first row, `None` when there is no row or it is NULL.
    pub fn query_opt(&mut self, sql: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .query(sql)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }
}
