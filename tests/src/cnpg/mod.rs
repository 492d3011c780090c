//! A stand-in for CloudNativePG's side of CNPG-I: gRPC channels to a plugin (a unix socket
//! like the instance manager's, TCP with mutual TLS like the operator's) and the plugin
//! loading CNPG does (`internal/cnpi/plugin/connection` in CNPG: metadata, capabilities,
//! then each declared service's capabilities).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use pgagent_cnpgi::identity::identity_client::IdentityClient;
use pgagent_cnpgi::identity::plugin_capability::service::Type as ServiceType;
use pgagent_cnpgi::identity::plugin_capability::Type as CapabilityType;
use pgagent_cnpgi::identity::{GetPluginCapabilitiesRequest, GetPluginMetadataRequest};
use pgagent_cnpgi::*;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

mod pod;
pub use pod::{archiver, slot_active, Pod};

/// Every service type CNPG-I defines, as CNPG may ask for them.
pub const ALL_SERVICES: &[ServiceType] = &[
    ServiceType::OperatorService,
    ServiceType::WalService,
    ServiceType::BackupService,
    ServiceType::LifecycleService,
    ServiceType::ReconcilerHooks,
    ServiceType::RestoreJob,
    ServiceType::Postgres,
    ServiceType::Metrics,
];

/// A channel to the gRPC server on the unix socket `socket`.
pub fn unix_channel(socket: &Path) -> Channel {
    let socket: PathBuf = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .expect("a fixed URI")
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
}

/// A channel to `addr` over TLS with `config` (its ALPN set to `h2`), checking the server's
/// certificate against `server_name`.
pub fn tls_channel(
    addr: SocketAddr,
    server_name: &str,
    mut config: rustls::ClientConfig,
) -> Channel {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name =
        rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("a DNS name");
    Endpoint::try_from(format!("http://{addr}"))
        .expect("an address")
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
}

/// What loading a plugin found.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// `GetPluginMetadata`'s name and version.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The services `GetPluginCapabilities` declares.
    pub declared: BTreeSet<ServiceType>,
    /// The services whose `GetCapabilities` answered (any status but `UNIMPLEMENTED`).
    pub served: BTreeSet<ServiceType>,
}

/// Loads the plugin on `channel` as CNPG does, then asks every CNPG-I service's
/// `GetCapabilities`, declared or not.
///
/// Errors: metadata or capabilities not answered.
pub async fn load(channel: Channel) -> Result<Loaded, Status> {
    let mut identity = IdentityClient::new(channel.clone());
    let meta = identity
        .get_plugin_metadata(GetPluginMetadataRequest {})
        .await?
        .into_inner();
    let caps = identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await?
        .into_inner();
    let declared = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(CapabilityType::Service(s)) => ServiceType::try_from(s.r#type).ok(),
            None => None,
        })
        .collect();
    let mut served = BTreeSet::new();
    for service in ALL_SERVICES {
        match service_capabilities(&channel, *service).await {
            Ok(()) => {
                served.insert(*service);
            }
            Err(s) if s.code() == Code::Unimplemented => {}
            Err(s) => return Err(s),
        }
    }
    Ok(Loaded {
        name: meta.name,
        version: meta.version,
        declared,
        served,
    })
}

/// Calls the `GetCapabilities` of `service`; an answer with no capability is an error.
pub async fn service_capabilities(channel: &Channel, service: ServiceType) -> Result<(), Status> {
    let c = channel.clone();
    let empty = |n: usize| {
        if n == 0 {
            Err(Status::failed_precondition("no capability declared"))
        } else {
            Ok(())
        }
    };
    match service {
        ServiceType::OperatorService => empty(
            operator::operator_client::OperatorClient::new(c)
                .get_capabilities(operator::OperatorCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .len(),
        ),
        ServiceType::WalService => empty(
            wal::wal_client::WalClient::new(c)
                .get_capabilities(wal::WalCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .len(),
        ),
        ServiceType::BackupService => empty(
            backup::backup_client::BackupClient::new(c)
                .get_capabilities(backup::BackupCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .len(),
        ),
        ServiceType::LifecycleService => empty(
            lifecycle::operator_lifecycle_client::OperatorLifecycleClient::new(c)
                .get_capabilities(lifecycle::OperatorLifecycleCapabilitiesRequest {})
                .await?
                .into_inner()
                .lifecycle_capabilities
                .len(),
        ),
        ServiceType::ReconcilerHooks => empty(
            reconciler::reconciler_hooks_client::ReconcilerHooksClient::new(c)
                .get_capabilities(reconciler::ReconcilerHooksCapabilitiesRequest {})
                .await?
                .into_inner()
                .reconciler_capabilities
                .len(),
        ),
        ServiceType::RestoreJob => empty(
            wal::restore_job_hooks_client::RestoreJobHooksClient::new(c)
                .get_capabilities(wal::RestoreJobHooksCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .len(),
        ),
        ServiceType::Postgres => empty(
            identity::postgres_client::PostgresClient::new(c)
                .get_capabilities(identity::PostgresCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .len(),
        ),
        ServiceType::Metrics => empty(
            metrics::metrics_client::MetricsClient::new(c)
                .get_capabilities(metrics::MetricsCapabilitiesRequest {})
                .await?
                .into_inner()
                .capabilities
                .len(),
        ),
        // Not a service; CNPG never asks for it.
        ServiceType::Unspecified
        | ServiceType::InstanceSidecarInjection
        | ServiceType::InstanceJobSidecarInjection => Err(Status::unimplemented("no such service")),
    }
}

/// A `Cluster` definition as CNPG sends it, with our plugin (`parameters`) and `primary` as
/// both current and target primary.
pub fn cluster_json(name: &str, primary: &str, parameters: &[(&str, &str)]) -> Vec<u8> {
    let params: serde_json::Map<String, serde_json::Value> = parameters
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "instances": 2,
            "plugins": [{"name": "pgagent.io", "isWALArchiver": true, "parameters": params}],
        },
        "status": {"currentPrimary": primary, "targetPrimary": primary},
    }))
    .expect("JSON")
}
