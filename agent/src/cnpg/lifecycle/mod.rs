//! The operator lifecycle hook (CNPG-I `OperatorLifecycle`): CloudNativePG sends each Pod
//! and Job it is about to create, and the plugin answers with an RFC 6902 JSON patch that
//! injects its sidecar ([`patch`]). The patch is the difference between the object as sent
//! and the object with the sidecar (`json_patch::diff`), so an object that already has the
//! sidecar gets an empty patch (`[]`).
//!
//! - Instance pods of a cluster with this plugin enabled get the sidecar `["cnpg",
//!   "instance"]` in front of the `postgres` container, configured by the cluster's
//!   parameters.
//! - The full-recovery job (label `cnpg.io/jobRole: full-recovery`, CloudNativePG's
//!   `pkg/specs/jobs.go`) of a cluster restored from an `externalClusters` entry of this
//!   plugin gets the sidecar `["cnpg", "restore"]` beside its main container (named after the
//!   role), configured by the source's parameters. Other jobs (initdb, join, import,
//!   pgbasebackup, snapshot-recovery) are left alone.
//!
//! [`capabilities`] lists the hooks to declare in `GetCapabilities`, as
//! plugin-barman-cloud's `internal/cnpgi/operator/lifecycle.go` does: Pod create and
//! evaluate (CloudNativePG evaluates the pod an instance should have, to roll out a change of
//! parameters), Job create.

mod podspec;
#[cfg(test)]
mod tests;

use serde_json::Value;

use super::cluster::Cluster;
use super::params::{plugin_path, source_path, PluginParams, ValidationError};

pub use podspec::{HEALTHCHECK, PLUGINS_DIR, PLUGINS_VOLUME, SIDECAR_NAME};

/// The sidecar to inject: `image` is `--sidecar-image` (`PGAGENT_CNPG_SIDECAR_IMAGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// The container image, e.g. `ghcr.io/pgagent/pgagent:0.1.0`.
    pub image: String,
}

/// An operation of CNPG-I's `OperatorOperationType` (`cnpg-i/proto/operator_lifecycle.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationType {
    /// `TYPE_CREATE`: the object is about to be created.
    Create,
    /// `TYPE_PATCH`.
    Patch,
    /// `TYPE_UPDATE`.
    Update,
    /// `TYPE_DELETE`.
    Delete,
    /// `TYPE_EVALUATE`: CloudNativePG computes what the object should be, to compare.
    Evaluate,
}

/// One hook declared in `GetCapabilities` (`OperatorLifecycleCapabilities`): objects of
/// `group`/`kind` (`""` is the core group) for these operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// API group: `""` (core) or `batch`.
    pub group: &'static str,
    /// `Pod` or `Job`.
    pub kind: &'static str,
    /// The operations hooked.
    pub operations: &'static [OperationType],
}

/// The hooks the plugin declares: Pod create and evaluate, batch Job create.
pub fn capabilities() -> &'static [Hook] {
    const HOOKS: &[Hook] = &[
        Hook {
            group: "",
            kind: "Pod",
            operations: &[OperationType::Create, OperationType::Evaluate],
        },
        Hook {
            group: "batch",
            kind: "Job",
            operations: &[OperationType::Create],
        },
    ];
    HOOKS
}

/// The label naming a CloudNativePG job's role (`JobRoleLabelName` in CloudNativePG's
/// `pkg/utils/labels_annotations.go`).
pub const JOB_ROLE_LABEL: &str = "cnpg.io/jobRole";
/// The role of the job that restores a base backup (`jobRoleFullRecovery`).
pub const FULL_RECOVERY_ROLE: &str = "full-recovery";
/// The main container of an instance pod (`PostgresContainerName`).
pub const POSTGRES_CONTAINER: &str = "postgres";

/// `PGAGENT_STAGING_DIR`: on the PGDATA volume, beside PGDATA (`/var/lib/postgresql/data/pgdata`),
/// so staged WAL survives a pod restart.
pub const STAGING_DIR: &str = "/var/lib/postgresql/data/pgagent";
/// `PGAGENT_POSTGRES_CONNINFO`: the instance's unix socket (`PGHOST` of CloudNativePG's
/// pods), as the pod's user.
pub const CONNINFO: &str = "host=/controller/run user=postgres dbname=postgres";
/// `PGAGENT_METRICS_LISTEN`: loopback, and not 9187, where CloudNativePG's own exporter
/// listens in the same pod (`PostgresMetricsPort` in its `pkg/management/url`). The
/// sidecar's figures also reach that exporter through the `Metrics` service.
pub const METRICS_LISTEN: &str = "127.0.0.1:9188";
/// `PGAGENT_BACKUP_SCHEDULE`: none; base backups come from CloudNativePG's `Backup` and
/// `ScheduledBackup` objects (a `backup.schedule` parameter overrides it).
pub const BACKUP_SCHEDULE: &str = "";

/// Why no patch could be made.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The object is not shaped like a Pod or Job.
    #[error("{0}")]
    InvalidObject(String),
    /// A kind the plugin does not hook.
    #[error("the plugin hooks Pods and Jobs, not {0:?}")]
    UnsupportedKind(String),
    /// The main container is missing.
    #[error("the pod has no container named {0:?} to put the pgagent sidecar beside")]
    NoMainContainer(String),
    /// The cluster's parameters are refused (validation should have stopped them earlier).
    #[error("the pgagent.io plugin parameters are invalid: {}", list(.0))]
    Parameters(Vec<ValidationError>),
}

fn list(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The patch for `object`, a Pod or a Job by its `kind` (see [`pod_patch`], [`job_patch`]).
///
/// Errors: another kind, or as those functions.
pub fn patch(
    cluster: &Cluster,
    object: &Value,
    sidecar: &Sidecar,
) -> Result<Vec<u8>, LifecycleError> {
    match object.get("kind").and_then(Value::as_str) {
        Some("Pod") => pod_patch(cluster, object, sidecar),
        Some("Job") => job_patch(cluster, object, sidecar),
        other => Err(LifecycleError::UnsupportedKind(
            other.unwrap_or_default().to_string(),
        )),
    }
}

/// The JSON patch (bytes of a JSON array) that injects the instance sidecar into `pod`, an
/// instance pod of `cluster`; `[]` when the cluster has this plugin disabled or absent, or
/// the pod has the sidecar as it should be.
///
/// Errors: the cluster's parameters are invalid (a pod without its backups would be worse
/// than a pod not created), the pod has no `spec` or no `postgres` container.
pub fn pod_patch(
    cluster: &Cluster,
    pod: &Value,
    sidecar: &Sidecar,
) -> Result<Vec<u8>, LifecycleError> {
    let Some((i, entry)) = cluster.plugin() else {
        return diff(pod, pod);
    };
    let params = PluginParams::parse(&entry.parameters, &plugin_path(i))
        .map_err(LifecycleError::Parameters)?;
    let spec = SidecarParts {
        args: ["cnpg", "instance"],
        env: params.to_env(),
        secret: params.secret(),
        resources: params.resources().to_json(),
    };
    let mut patched = pod.clone();
    let pod_spec = patched
        .get_mut("spec")
        .ok_or_else(|| LifecycleError::InvalidObject("the pod has no spec".into()))?;
    spec.inject(cluster, sidecar, pod_spec, POSTGRES_CONTAINER)?;
    diff(pod, &patched)
}

/// The JSON patch that injects the restore sidecar into `job`; `[]` unless the job is the
/// full-recovery job of a cluster restored by this plugin, or when it has the sidecar.
///
/// The sidecar reads the source's store: its environment comes from the source's
/// parameters; its Secret is the one either entry names (one at most, see
/// [`crate::cnpg::params::validate_cluster`]); its resources are the cluster's own entry's
/// when it has one, else the source's.
///
/// Errors: invalid parameters, a job without `spec.template.spec` or without a container
/// named after its role.
pub fn job_patch(
    cluster: &Cluster,
    job: &Value,
    sidecar: &Sidecar,
) -> Result<Vec<u8>, LifecycleError> {
    let role = job
        .pointer("/spec/template/metadata/labels")
        .or_else(|| job.pointer("/metadata/labels"))
        .and_then(|labels| labels.get(JOB_ROLE_LABEL))
        .and_then(Value::as_str);
    let source = cluster.recovery_source();
    let (Some(FULL_RECOVERY_ROLE), Some((j, source))) = (role, source) else {
        return diff(job, job);
    };
    let source_params = source.plugin.as_ref().map(|p| &p.parameters);
    let source = PluginParams::parse(
        source_params.unwrap_or(&Default::default()),
        &source_path(j),
    )
    .map_err(LifecycleError::Parameters)?;
    let own = match cluster.plugin() {
        Some((i, entry)) => Some(
            PluginParams::parse(&entry.parameters, &plugin_path(i))
                .map_err(LifecycleError::Parameters)?,
        ),
        None => None,
    };
    let spec = SidecarParts {
        args: ["cnpg", "restore"],
        env: source.to_env(),
        secret: source
            .secret()
            .or(own.as_ref().and_then(PluginParams::secret)),
        resources: own.as_ref().unwrap_or(&source).resources().to_json(),
    };
    let mut patched = job.clone();
    let pod_spec = patched
        .pointer_mut("/spec/template/spec")
        .ok_or_else(|| LifecycleError::InvalidObject("the job has no spec.template.spec".into()))?;
    spec.inject(cluster, sidecar, pod_spec, FULL_RECOVERY_ROLE)?;
    diff(job, &patched)
}

/// What differs between the instance and the restore sidecar.
struct SidecarParts<'a> {
    args: [&'static str; 2],
    env: Vec<(String, String)>,
    secret: Option<&'a str>,
    resources: Value,
}

impl SidecarParts<'_> {
    fn inject(
        self,
        cluster: &Cluster,
        sidecar: &Sidecar,
        pod_spec: &mut Value,
        main: &str,
    ) -> Result<(), LifecycleError> {
        // The layout's variables, then the parameters' (which may set the same names).
        let mut env: std::collections::BTreeMap<String, String> = [
            ("PGAGENT_STAGING_DIR", STAGING_DIR),
            ("PGAGENT_POSTGRES_CONNINFO", CONNINFO),
            ("PGAGENT_METRICS_LISTEN", METRICS_LISTEN),
            ("PGAGENT_BACKUP_SCHEDULE", BACKUP_SCHEDULE),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(self.env);
        let spec = podspec::SidecarSpec {
            image: &sidecar.image,
            pull_policy: cluster.spec.image_pull_policy.as_deref(),
            args: self.args,
            env: env.into_iter().collect(),
            secret: self.secret,
            resources: self.resources,
        };
        podspec::inject(pod_spec, main, &spec)
    }
}

/// The RFC 6902 patch from `before` to `after`, serialized.
fn diff(before: &Value, after: &Value) -> Result<Vec<u8>, LifecycleError> {
    Ok(serde_json::to_vec(&json_patch::diff(before, after)).expect("a patch serializes"))
}
