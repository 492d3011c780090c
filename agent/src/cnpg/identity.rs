//! CNPG-I `Identity` (`cnpgi.identity.v1`): what the plugin is, which services each of its
//! processes declares, and whether it is ready.
//!
//! CNPG loads a plugin by asking `GetPluginMetadata`, then `GetPluginCapabilities`, then each
//! declared service's `GetCapabilities` (cnpg-i `proto/identity.proto`); a service that is
//! declared must be served and one that is not must answer `Unimplemented`
//! ([`super::serve`] builds each role's router from [`Role::services`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pgagent_cnpgi::identity::identity_server::Identity;
use pgagent_cnpgi::identity::plugin_capability::service::Type as ServiceType;
use pgagent_cnpgi::identity::plugin_capability::{self, Service};
use pgagent_cnpgi::identity::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginMetadataRequest,
    GetPluginMetadataResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use tonic::{Request, Response, Status};

use super::PLUGIN_NAME;

/// Which process of the plugin answers: each serves its own set of CNPG-I services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `pgagent cnpg operator`: beside CNPG's operator, over TCP with mutual TLS.
    Operator,
    /// `pgagent cnpg instance`: the sidecar of an instance pod, over a unix socket.
    Instance,
    /// `pgagent cnpg restore`: the sidecar of the recovery job, over a unix socket.
    Restore,
}

impl Role {
    /// The services this role declares in `GetPluginCapabilities`, and serves.
    pub fn services(self) -> &'static [ServiceType] {
        match self {
            Role::Operator => &[ServiceType::OperatorService, ServiceType::LifecycleService],
            Role::Instance => &[
                ServiceType::WalService,
                ServiceType::BackupService,
                ServiceType::Metrics,
            ],
            Role::Restore => &[ServiceType::RestoreJob, ServiceType::WalService],
        }
    }

    /// The subcommand that runs this role (`pgagent cnpg <name>`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Instance => "instance",
            Role::Restore => "restore",
        }
    }
}

/// The `Identity` service of one role; `ready` answers `Probe`.
#[derive(Debug, Clone)]
pub struct PluginIdentity {
    role: Role,
    ready: Arc<AtomicBool>,
}

impl PluginIdentity {
    /// The identity of `role`, ready when `ready` is set.
    pub fn new(role: Role, ready: Arc<AtomicBool>) -> Self {
        PluginIdentity { role, ready }
    }
}

/// The metadata CNPG shows for the plugin (cnpg-i `GetPluginMetadataResponse`).
pub fn metadata() -> GetPluginMetadataResponse {
    GetPluginMetadataResponse {
        name: PLUGIN_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        display_name: "pgagent".to_string(),
        description: "Streams WAL over physical replication into an S3 bucket, takes \
                      deduplicated base backups, and restores from the bucket alone"
            .to_string(),
        project_url: env!("CARGO_PKG_REPOSITORY").to_string(),
        repository_url: env!("CARGO_PKG_REPOSITORY").to_string(),
        license: "Apache-2.0".to_string(),
        license_url: "https://www.apache.org/licenses/LICENSE-2.0".to_string(),
        maturity: "alpha".to_string(),
        vendor: "pgagent".to_string(),
        manifest: Default::default(),
    }
}

#[tonic::async_trait]
impl Identity for PluginIdentity {
    async fn get_plugin_metadata(
        &self,
        _: Request<GetPluginMetadataRequest>,
    ) -> Result<Response<GetPluginMetadataResponse>, Status> {
        Ok(Response::new(metadata()))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let capabilities = self
            .role
            .services()
            .iter()
            .map(|t| PluginCapability {
                r#type: Some(plugin_capability::Type::Service(Service {
                    r#type: *t as i32,
                })),
            })
            .collect();
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: self.ready.load(Ordering::SeqCst),
        }))
    }
}
