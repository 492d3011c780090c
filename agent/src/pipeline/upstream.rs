//! The server the pipeline streams from, as one value: where to connect, what the server
//! said about itself, the slot that keeps its WAL, and the open replication connection.
//! Connecting, resuming and streaming all take it, instead of four loose arguments.

use pgagent_protocol::{ConnConfig, ReplicationClient};

use crate::config::Config;
use crate::server::{explain, ServerInfo};

/// The replication connection and what goes with it.
pub(super) struct Upstream {
    /// Where to connect (`postgres.conninfo`): for reconnects and SQL sessions too.
    pub(super) conn: ConnConfig,
    /// What the server said when the pipeline first connected.
    pub(super) server: ServerInfo,
    /// The physical slot that keeps the WAL not yet confirmed (`postgres.slot`).
    pub(super) slot: String,
    /// The open replication connection.
    pub(super) client: ReplicationClient,
}

impl Upstream {
    /// Connects (`postgres.conninfo`, application name `pgagent` unless set) and asks the
    /// server who it is.
    ///
    /// Errors: the connection's, explained, naming the fix.
    pub(super) async fn connect(cfg: &Config) -> anyhow::Result<Upstream> {
        let conn = crate::server::conn_config(cfg, "pgagent")?;
        let (client, server) = crate::server::connect(&conn).await?;
        Ok(Upstream {
            conn,
            server,
            slot: cfg.raw.postgres.slot.clone(),
            client,
        })
    }

    /// A replication-client error as one line that names the fix.
    pub(super) fn explain(&self, e: &pgagent_protocol::Error) -> String {
        explain(&self.conn, e)
    }

    /// Creates the slot when it is missing.
    ///
    /// Errors: the server's, explained.
    pub(super) async fn ensure_slot(&mut self) -> anyhow::Result<()> {
        match self.client.create_physical_slot(&self.slot).await {
            Ok(true) => {
                tracing::info!(slot = self.slot, "created physical replication slot");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(anyhow::anyhow!(self.explain(&e))),
        }
    }
}
