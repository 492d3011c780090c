//! `pgagent fetch <file> <path>`: PostgreSQL's `restore_command` (DESIGN.md, "fetch").
//!
//! PostgreSQL runs `restore_command` once per file it needs during archive recovery and reads
//! the exit status (`RestoreArchivedFile` in `src/backend/access/transam/xlogarchive.c`):
//! 0 means the file is at `%p`; any other status below 126 means "not available", after which
//! recovery may end and the server promote; a status above 125 (or a signal) makes the startup
//! process stop with FATAL. So only a confirmed absence may give 1 ([`FetchError::NotFound`]);
//! everything that is not known to be absent gives 255 ([`FetchError::Abort`]): a store that
//! stays unreachable past `fetch.timeout`, an object failing its length or hash check, a store
//! without `cluster.json` (a wrong `store.url` must not look like the end of WAL).
//!
//! `pgagent fetch` asks a fetch server over a unix socket ([`client`], [`wire`]): the daemon's
//! (`pgagent run`), else a restore-mode server it starts ([`restore_mode`]); both serve from
//! a prefetch cache kept ahead of recovery ([`server`], [`cache`], [`plan`]). When no server
//! can answer, it fetches from the store itself ([`fetch_standalone`]). The store side is
//! shared: [`resolve`] (which keys answer a name, pure), [`forks`] (whether a segment's
//! partial content may answer for it, pure), [`Fetcher`] (`fetcher`: store access with
//! retries up to a deadline; `assemble`: a segment's deltas and `.partial` read and put
//! together), [`deliver_verified`] (in [`deliver`]: envelope checks, padding, atomic write).

mod assemble;
pub mod cache;
pub mod client;
pub mod deliver;
mod fetcher;
pub mod forks;
pub mod paths;
pub mod plan;
pub mod resolve;
pub mod restore_mode;
pub mod server;
pub mod wire;

pub use assemble::{Assembled, Part};
pub use deliver::{deliver_verified, Delivered};
pub use fetcher::{Fetcher, Found};

use std::path::Path;
use std::time::{Duration, Instant};

use pgagent_protocol::WalFileName;

use crate::config::Config;

/// Default log filter of `pgagent fetch` when `PGAGENT_LOG` is unset: PostgreSQL copies the
/// command's stderr into its log for every file restored, so only warnings, errors and the
/// notice that a partial segment was served are shown.
pub const LOG_FILTER: &str = "warn,pgagent::fetch=info";

/// Why a fetch did not deliver; each variant has its own exit status
/// (decided with the other exit codes, in `exit.rs`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The file is confirmed absent from the store (exit 1). Normal: PostgreSQL probes for
    /// history files of future timelines and for the segment after the last one.
    #[error("{file}: not found in {store}")]
    NotFound {
        /// The requested file name.
        file: String,
        /// The store location, without credentials.
        store: String,
    },
    /// The requested name is not a WAL file name (exit 2); no store key was built from it.
    #[error("{0:?} is not a WAL segment, .partial, .history or .backup file name")]
    InvalidName(String),
    /// Recovery must stop (exit 255): the file may exist but cannot be delivered verified.
    #[error("{0}; recovery must not continue without it")]
    Abort(String),
}

impl FetchError {
    /// The exit status of `pgagent fetch` for this error: 1 (confirmed not found), 2 (not a
    /// WAL file name) or 255 (recovery must stop).
    pub fn exit_code(&self) -> u8 {
        match self {
            FetchError::NotFound { .. } => crate::exit::FAILURE,
            FetchError::InvalidName(_) => crate::exit::USAGE,
            FetchError::Abort(_) => crate::exit::FETCH_ABORT,
        }
    }
}

impl From<FetchError> for crate::exit::Coded {
    fn from(e: FetchError) -> Self {
        crate::exit::Coded {
            code: e.exit_code(),
            error: Box::new(e),
        }
    }
}

fn abort(msg: impl Into<String>) -> FetchError {
    FetchError::Abort(msg.into())
}

/// Fetches `file` into `path` with a store connection of its own (no daemon, no prefetch).
///
/// Errors: see [`FetchError`]; an unexpected failure is always [`FetchError::Abort`].
pub async fn fetch_standalone(cfg: &Config, file: &str, path: &Path) -> Result<(), FetchError> {
    if !resolve::is_wal_file_name(file) {
        return Err(FetchError::InvalidName(file.to_string()));
    }
    let deadline = Instant::now() + cfg.raw.fetch.timeout;
    let fetcher = Fetcher::connect(cfg, deadline).await?;
    let resolved = fetcher.resolve(file)?;
    let Some(found) = fetcher.find(&resolved, deadline).await? else {
        return Err(FetchError::NotFound {
            file: file.to_string(),
            store: fetcher.describe(),
        });
    };
    let target = path.to_path_buf();
    let cipher = fetcher.cipher().cloned();
    let (found, delivered) = tokio::task::spawn_blocking(move || {
        let r = deliver_verified(&found, cipher.as_ref(), &target);
        (found, r)
    })
    .await
    .map_err(|e| abort(format!("delivery task failed: {e}")))?;
    let delivered = delivered?;
    if let Some(note) = partial_note(file, &resolved.name, &found) {
        tracing::info!("{note}");
    }
    tracing::debug!(
        "{file}: delivered {} bytes from {}",
        delivered.file_len,
        found.describe()
    );
    Ok(())
}

/// The info line for a segment served from its partial content (not logged for a request
/// that names a `.partial` itself: that one is expected to be partial).
pub(crate) fn partial_note(file: &str, name: &WalFileName, found: &Found) -> Option<String> {
    match (found, name) {
        (_, WalFileName::Partial { .. }) | (Found::Whole { .. }, _) => None,
        (Found::Partial(a), _) => Some(a.note(file)),
    }
}

/// Entry point of the command: through a fetch server if one answers or can be started,
/// else standalone. `cfg` is the result of loading the configuration, whose failure must
/// also stop recovery (exit 255, not 2).
pub fn run(
    cfg: anyhow::Result<Config>,
    file: &str,
    path: &Path,
    launch: &client::Launch,
) -> Result<(), FetchError> {
    if !resolve::is_wal_file_name(file) {
        return Err(FetchError::InvalidName(file.to_string()));
    }
    let cfg = cfg.map_err(|e| abort(format!("configuration: {e:#}")))?;
    if let Some(served) = through_server(&cfg, file, path, launch)? {
        tracing::debug!(
            "{file}: delivered {} bytes from {}",
            served.len,
            served.served_from
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| abort(format!("start runtime: {e}")))?;
    runtime.block_on(fetch_standalone(&cfg, file, path))
}

/// How long the client waits for the server beyond `fetch.timeout`, which bounds the
/// server's own retries.
const SERVER_GRACE: Duration = Duration::from_secs(30);

/// How long a restore-mode server may take to start listening.
const SERVER_START: Duration = Duration::from_secs(5);

/// The request a fetch server answers for `file`, delivered to `path`, from the stores of
/// `cfg`.
pub fn request(cfg: &Config, file: &str, path: &Path) -> wire::Request {
    wire::Request {
        version: wire::VERSION,
        file: file.to_string(),
        store: paths::store_identity(cfg),
        timeout_ms: u64::try_from(cfg.raw.fetch.timeout.as_millis()).unwrap_or(u64::MAX),
        path: std::path::absolute(path)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string)),
    }
}

/// How long a client waits for a fetch server's answer: `fetch.timeout`, which bounds the
/// server's own retries, and a grace beyond it.
pub fn server_wait(cfg: &Config) -> Duration {
    cfg.raw.fetch.timeout + SERVER_GRACE
}

/// Asks the daemon's server, then the restore-mode server (starting it if needed).
/// `Ok(None)`: no server could answer; the reasons are logged.
fn through_server(
    cfg: &Config,
    file: &str,
    path: &Path,
    launch: &client::Launch,
) -> Result<Option<client::Served>, FetchError> {
    let req = request(cfg, file, path);
    let wait = server_wait(cfg);
    let mut why = Vec::new();
    let daemon = paths::daemon_socket(cfg.staging_dir());
    let restore = paths::RestorePaths::for_config(cfg);
    let sockets = [
        Some(daemon.clone()).filter(|d| d.exists()),
        restore.as_ref().map(|r| r.socket.clone()),
    ];
    for socket in sockets.iter().flatten() {
        match client::ask(socket, &req, path, wait) {
            client::Answer::Done(r) => return r.map(Some),
            client::Answer::Unavailable(m) => why.push(m),
        }
    }
    match &restore {
        Some(rp) => match client::start_server(rp, launch) {
            Ok(mut child) => {
                if client::wait_for_socket(&rp.socket, &mut child, SERVER_START) {
                    match client::ask(&rp.socket, &req, path, wait) {
                        client::Answer::Done(r) => return r.map(Some),
                        client::Answer::Unavailable(m) => why.push(m),
                    }
                } else {
                    why.push(format!(
                        "the fetch server did not start, see {}",
                        rp.log.display()
                    ));
                }
            }
            Err(e) => why.push(e.to_string()),
        },
        None => why.push(format!(
            "{} is not writable and there is no private runtime directory",
            cfg.staging_dir().display()
        )),
    }
    tracing::info!(
        "{file}: fetching directly from the store, no fetch server: {}",
        why.join("; ")
    );
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{code_for, FAILURE, FETCH_ABORT, USAGE};

    #[test]
    fn fetch_errors_decide_their_own_code() {
        let coded = |e: FetchError| anyhow::Error::new(crate::exit::Coded::from(e));
        let abort = coded(FetchError::Abort("x".into())).context("outer");
        assert_eq!(code_for(&abort), FETCH_ABORT);
        let absent = FetchError::NotFound {
            file: "00000002.history".into(),
            store: "file:///s".into(),
        };
        assert_eq!(code_for(&coded(absent)), FAILURE);
        assert_eq!(
            code_for(&coded(FetchError::InvalidName("../x".into()))),
            USAGE
        );
    }
}
