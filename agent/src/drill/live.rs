//! The live server, asked in passing: a drill runs whether or not the server is up (it is
//! often down when one restores), so what it asks there is only ever extra.

use crate::config::Config;

/// One value from the live server (`postgres.conninfo`), or `None` when it does not answer
/// within 5 s: a drill runs whether or not the server is up (it is often down when one
/// restores), so what it asks the server is only ever extra.
pub(super) async fn ask_live(cfg: &Config, sql: &str) -> Option<String> {
    let asked = async {
        let conn = crate::server::conn_config(cfg, "pgagent drill").ok()?;
        let mut session = pgagent_protocol::SqlSession::connect(&conn).await.ok()?;
        let value = session.query_one(sql).await.ok();
        let _ = session.close().await;
        value
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), asked)
        .await
        .ok()
        .flatten()
}
