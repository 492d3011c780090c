//! CNPG-I `WAL` (`cnpgi.wal.v1`): `Archive` and `Restore` for CNPG's instance manager,
//! which runs them as PostgreSQL's `archive_command` and `restore_command`.
//!
//! `Restore` in recovery mode asks the sidecar's fetch server (the same server, prefetch
//! window and checks as `pgagent fetch`); in rewind mode (`pg_rewind` fetching what it
//! lacks) it fetches exactly the file asked, with no prefetch. Errors keep `pgagent fetch`'s
//! distinction, as gRPC codes: `NOT_FOUND` only when the store confirms the file absent,
//! `INVALID_ARGUMENT` for a name that is no WAL file, `INTERNAL` for anything that must stop
//! recovery (a store still unreachable after `fetch.timeout`, a failed hash check, another
//! cluster's store).
//!
//! `Status` and `SetFirstRequired` are not declared in `GetCapabilities` and answer
//! `UNIMPLEMENTED`; `Archive` is declared by the instance sidecar only.

use std::path::PathBuf;
use std::sync::Arc;

use pgagent_cnpgi::wal::wal_capability::rpc::Type as RpcType;
use pgagent_cnpgi::wal::wal_capability::{self, Rpc};
use pgagent_cnpgi::wal::wal_restore_request::Mode;
use pgagent_cnpgi::wal::wal_server::Wal;
use pgagent_cnpgi::wal::*;
use tonic::{Request, Response, Status};

use super::archive::{ArchiveError, Archiver};
use super::metrics_service::Recorded;
use super::pod::Pod;
use crate::config::Config;
use crate::fetch::{self, client, FetchError};

/// The `WAL` service of a sidecar: archive (instance sidecar) and restore (both).
pub struct WalService {
    cfg: Config,
    pod: Arc<Pod>,
    archiver: Option<Arc<Archiver>>,
    fetch_socket: PathBuf,
    recorded: Arc<Recorded>,
}

impl WalService {
    /// A service restoring through the fetch server at `fetch_socket`, and archiving with
    /// `archiver` when there is one (each archived file noted in `recorded`).
    pub fn new(
        cfg: Config,
        pod: Arc<Pod>,
        archiver: Option<Arc<Archiver>>,
        fetch_socket: PathBuf,
        recorded: Arc<Recorded>,
    ) -> Self {
        WalService {
            cfg,
            pod,
            archiver,
            fetch_socket,
            recorded,
        }
    }

    /// The RPCs declared in `GetCapabilities`.
    pub fn declared(&self) -> Vec<RpcType> {
        let mut rpcs = vec![RpcType::RestoreWal];
        if self.archiver.is_some() {
            rpcs.insert(0, RpcType::ArchiveWal);
        }
        rpcs
    }
}

#[tonic::async_trait]
impl Wal for WalService {
    async fn get_capabilities(
        &self,
        _: Request<WalCapabilitiesRequest>,
    ) -> Result<Response<WalCapabilitiesResult>, Status> {
        let capabilities = self
            .declared()
            .into_iter()
            .map(|t| WalCapability {
                r#type: Some(wal_capability::Type::Rpc(Rpc { r#type: t as i32 })),
            })
            .collect();
        Ok(Response::new(WalCapabilitiesResult { capabilities }))
    }

    async fn archive(
        &self,
        request: Request<WalArchiveRequest>,
    ) -> Result<Response<WalArchiveResult>, Status> {
        let Some(archiver) = &self.archiver else {
            return Err(Status::unimplemented("the recovery job archives nothing"));
        };
        let req = request.into_inner();
        self.pod.observe(&req.cluster_definition).await;
        let Some(path) = self.pod.path_in_pgdata(&req.source_file_name) else {
            return Err(Status::invalid_argument(format!(
                "{:?} is not a file inside PGDATA",
                req.source_file_name
            )));
        };
        match archiver.archive(&path).await {
            Ok(how) => {
                self.recorded.wal_stored();
                tracing::debug!(file = req.source_file_name, ?how, "archived");
                Ok(Response::new(WalArchiveResult {}))
            }
            Err(e) => {
                tracing::warn!("archive {}: {e}", req.source_file_name);
                Err(match e {
                    ArchiveError::InvalidName(_) => Status::invalid_argument(e.to_string()),
                    ArchiveError::WrongStore(_) => Status::failed_precondition(e.to_string()),
                    ArchiveError::Conflict(_) => Status::internal(e.to_string()),
                    ArchiveError::Failed(_) => Status::unavailable(e.to_string()),
                })
            }
        }
    }

    async fn restore(
        &self,
        request: Request<WalRestoreRequest>,
    ) -> Result<Response<WalRestoreResult>, Status> {
        let req = request.into_inner();
        self.pod.observe(&req.cluster_definition).await;
        let file = req.source_wal_name.clone();
        if !fetch::resolve::is_wal_file_name(&file) {
            return Err(Status::invalid_argument(
                FetchError::InvalidName(file).to_string(),
            ));
        }
        let Some(dest) = self.pod.path_in_pgdata(&req.destination_file_name) else {
            return Err(Status::invalid_argument(format!(
                "{:?} is not a file inside PGDATA",
                req.destination_file_name
            )));
        };
        let rewind = req.mode() == Mode::Rewind;
        let result = if rewind {
            fetch::fetch_standalone(&self.cfg, &file, &dest).await
        } else {
            self.through_fetch_server(&file, dest).await
        };
        match result {
            Ok(()) => Ok(Response::new(WalRestoreResult {})),
            Err(e) => {
                if !matches!(e, FetchError::NotFound { .. }) {
                    tracing::warn!("restore {file}: {e}");
                }
                Err(match e {
                    FetchError::NotFound { .. } => Status::not_found(e.to_string()),
                    FetchError::InvalidName(_) => Status::invalid_argument(e.to_string()),
                    FetchError::Abort(_) => Status::internal(e.to_string()),
                })
            }
        }
    }

    async fn status(
        &self,
        _: Request<WalStatusRequest>,
    ) -> Result<Response<WalStatusResult>, Status> {
        Err(Status::unimplemented("WAL.Status is not declared"))
    }

    async fn set_first_required(
        &self,
        _: Request<SetFirstRequiredRequest>,
    ) -> Result<Response<SetFirstRequiredResult>, Status> {
        Err(Status::unimplemented(
            "WAL.SetFirstRequired is not declared",
        ))
    }
}

impl WalService {
    /// Asks the sidecar's fetch server (prefetching the segments recovery asks next); if it
    /// does not answer, fetches directly.
    async fn through_fetch_server(&self, file: &str, dest: PathBuf) -> Result<(), FetchError> {
        let req = fetch::request(&self.cfg, file, &dest);
        let (socket, wait, target) = (
            self.fetch_socket.clone(),
            fetch::server_wait(&self.cfg),
            dest.clone(),
        );
        let answer = tokio::task::spawn_blocking(move || client::ask(&socket, &req, &target, wait))
            .await
            .map_err(|e| FetchError::Abort(format!("fetch task: {e}")))?;
        match answer {
            client::Answer::Done(r) => r.map(|_| ()),
            client::Answer::Unavailable(why) => {
                tracing::info!("{file}: fetch server unavailable ({why}): fetching directly");
                fetch::fetch_standalone(&self.cfg, file, &dest).await
            }
        }
    }
}
