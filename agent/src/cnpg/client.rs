//! A gRPC channel to a plugin socket, and the health check built on it.
//!
//! CNPG's instance manager dials `unix://<plugins dir>/<plugin name>`; the sidecar's
//! startup probe (`pgagent cnpg healthcheck`) does the same and asks `Identity.Probe`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use pgagent_cnpgi::identity::identity_client::IdentityClient;
use pgagent_cnpgi::identity::ProbeRequest;
use tonic::transport::{Channel, Endpoint};

/// A channel to the gRPC server on the unix socket `socket` (connected lazily).
///
/// Errors: none in practice (the endpoint URI is fixed); kept for the signature.
pub fn unix_channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    Ok(
        Endpoint::try_from("http://[::]:50051")?.connect_with_connector_lazy(tower::service_fn(
            move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            },
        )),
    )
}

/// Asks `Identity.Probe` on `socket`; Ok when it answers ready within `timeout`.
///
/// Errors: no answer, an error status, or `ready = false`.
pub async fn probe(socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    let channel = unix_channel(socket)?;
    let answer = tokio::time::timeout(timeout, IdentityClient::new(channel).probe(ProbeRequest {}))
        .await
        .map_err(|_| anyhow::anyhow!("{}: no answer within {timeout:?}", socket.display()))?
        .map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    if answer.into_inner().ready {
        Ok(())
    } else {
        anyhow::bail!("{}: not ready", socket.display())
    }
}
