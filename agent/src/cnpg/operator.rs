//! `pgagent cnpg operator`: the operator-side plugin, beside CNPG's operator.
//!
//! It serves, over TCP with mutual TLS ([`super::tls`], [`super::serve::serve_tls`]):
//! `Identity`; `Operator`, whose `ValidateClusterCreate` and `ValidateClusterChange` check
//! the plugin parameters with pgagent's own configuration rules
//! ([`super::params`]); and `OperatorLifecycle`, whose hook answers the JSON patch that
//! injects the sidecar into instance pods and recovery jobs ([`super::lifecycle`]). It reads
//! nothing from Kubernetes: everything comes in the requests.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pgagent_cnpgi::identity::identity_server::IdentityServer;
use pgagent_cnpgi::lifecycle::operator_lifecycle_server::{
    OperatorLifecycle, OperatorLifecycleServer,
};
use pgagent_cnpgi::lifecycle::operator_operation_type::Type as OpType;
use pgagent_cnpgi::lifecycle::{
    OperatorLifecycleCapabilities, OperatorLifecycleCapabilitiesRequest,
    OperatorLifecycleCapabilitiesResponse, OperatorLifecycleRequest, OperatorLifecycleResponse,
    OperatorOperationType,
};
use pgagent_cnpgi::operator::operator_capability::rpc::Type as RpcType;
use pgagent_cnpgi::operator::operator_capability::{self, Rpc};
use pgagent_cnpgi::operator::operator_server::{Operator, OperatorServer};
use pgagent_cnpgi::operator::*;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::cluster::Cluster;
use super::identity::{PluginIdentity, Role};
use super::lifecycle::{self, OperationType, Sidecar};
use super::params::{self as plugin_params, ValidationError as ParamError};
use super::tls::{ReloadingTls, TlsFiles};

/// How the operator-side plugin runs.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    /// `host:port` to listen on.
    pub listen: String,
    /// Its TLS files.
    pub tls: TlsFiles,
    /// The sidecar image injected into pods and jobs.
    pub sidecar_image: String,
}

/// Serves the operator-side plugin until `shutdown`.
///
/// Errors: the certificates do not load, the address cannot be bound, the server fails.
pub async fn serve(settings: OperatorSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tls = Arc::new(
        ReloadingTls::load(settings.tls.clone())
            .map_err(|e| anyhow::anyhow!("TLS certificates: {e}"))?,
    );
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen on {}: {e}", settings.listen))?;
    tracing::info!(
        "serving CNPG-I (operator side) on {} with mutual TLS",
        settings.listen
    );
    let sidecar = Sidecar {
        image: settings.sidecar_image.clone(),
    };
    let router = Server::builder()
        .add_service(IdentityServer::new(PluginIdentity::new(
            Role::Operator,
            Arc::new(AtomicBool::new(true)),
        )))
        .add_service(OperatorServer::new(ClusterValidation))
        .add_service(OperatorLifecycleServer::new(Lifecycle { sidecar }));
    super::serve::serve_tls(listener, tls, router, shutdown).await
}

/// The `Operator` service: validation of the Cluster's plugin parameters.
pub struct ClusterValidation;

fn cluster(bytes: &[u8], what: &str) -> Result<Cluster, Status> {
    Cluster::from_json(bytes).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

fn to_proto(errors: Vec<ParamError>) -> Vec<ValidationError> {
    errors
        .into_iter()
        .map(|e| ValidationError {
            path_components: e.path_components,
            value: e.value,
            message: e.message,
        })
        .collect()
}

#[tonic::async_trait]
impl Operator for ClusterValidation {
    async fn get_capabilities(
        &self,
        _: Request<OperatorCapabilitiesRequest>,
    ) -> Result<Response<OperatorCapabilitiesResult>, Status> {
        let rpc = |t: RpcType| OperatorCapability {
            r#type: Some(operator_capability::Type::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(OperatorCapabilitiesResult {
            capabilities: vec![
                rpc(RpcType::ValidateClusterCreate),
                rpc(RpcType::ValidateClusterChange),
            ],
        }))
    }

    async fn validate_cluster_create(
        &self,
        request: Request<OperatorValidateClusterCreateRequest>,
    ) -> Result<Response<OperatorValidateClusterCreateResult>, Status> {
        let c = cluster(&request.into_inner().definition, "cluster definition")?;
        Ok(Response::new(OperatorValidateClusterCreateResult {
            validation_errors: to_proto(plugin_params::validate_cluster(&c)),
        }))
    }

    async fn validate_cluster_change(
        &self,
        request: Request<OperatorValidateClusterChangeRequest>,
    ) -> Result<Response<OperatorValidateClusterChangeResult>, Status> {
        let req = request.into_inner();
        let old = cluster(&req.old_cluster, "old cluster definition")?;
        let new = cluster(&req.new_cluster, "new cluster definition")?;
        let mut errors = plugin_params::validate_cluster(&new);
        errors.extend(plugin_params::validate_change(&old, &new));
        Ok(Response::new(OperatorValidateClusterChangeResult {
            validation_errors: to_proto(errors),
        }))
    }

    async fn mutate_cluster(
        &self,
        _: Request<OperatorMutateClusterRequest>,
    ) -> Result<Response<OperatorMutateClusterResult>, Status> {
        Err(Status::unimplemented("MutateCluster is not declared"))
    }

    async fn set_status_in_cluster(
        &self,
        _: Request<SetStatusInClusterRequest>,
    ) -> Result<Response<SetStatusInClusterResponse>, Status> {
        Err(Status::unimplemented("SetStatusInCluster is not declared"))
    }

    async fn deregister(
        &self,
        _: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        Err(Status::unimplemented("Deregister is not declared"))
    }
}

/// The `OperatorLifecycle` service: the sidecar injected into pods and jobs.
pub struct Lifecycle {
    sidecar: Sidecar,
}

fn op_type(t: OperationType) -> OpType {
    match t {
        OperationType::Create => OpType::Create,
        OperationType::Patch => OpType::Patch,
        OperationType::Update => OpType::Update,
        OperationType::Delete => OpType::Delete,
        OperationType::Evaluate => OpType::Evaluate,
    }
}

#[tonic::async_trait]
impl OperatorLifecycle for Lifecycle {
    async fn get_capabilities(
        &self,
        _: Request<OperatorLifecycleCapabilitiesRequest>,
    ) -> Result<Response<OperatorLifecycleCapabilitiesResponse>, Status> {
        let lifecycle_capabilities = lifecycle::capabilities()
            .iter()
            .map(|hook| OperatorLifecycleCapabilities {
                group: hook.group.to_string(),
                kind: hook.kind.to_string(),
                operation_types: hook
                    .operations
                    .iter()
                    .map(|o| OperatorOperationType {
                        r#type: op_type(*o) as i32,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(OperatorLifecycleCapabilitiesResponse {
            lifecycle_capabilities,
        }))
    }

    async fn lifecycle_hook(
        &self,
        request: Request<OperatorLifecycleRequest>,
    ) -> Result<Response<OperatorLifecycleResponse>, Status> {
        let req = request.into_inner();
        let cluster = cluster(&req.cluster_definition, "cluster definition")?;
        let object: serde_json::Value = serde_json::from_slice(&req.object_definition)
            .map_err(|e| Status::invalid_argument(format!("object definition: {e}")))?;
        let json_patch = lifecycle::patch(&cluster, &object, &self.sidecar)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(OperatorLifecycleResponse { json_patch }))
    }
}
