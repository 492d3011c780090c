//! pgagent as a CloudNativePG plugin (CNPG-I, gRPC; docs/cnpg.md).
//!
//! Three processes of one binary, each serving its own CNPG-I services ([`identity::Role`]):
//!
//! ```text
//! pgagent cnpg operator   TCP + mutual TLS 1.3   Identity, Operator (validation),
//!                                                OperatorLifecycle (sidecar injection)
//! pgagent cnpg instance   <plugins>/pgagent.io   Identity, WAL (archive, restore), Backup,
//!                                                Metrics; streams while the pod is primary
//! pgagent cnpg restore    <plugins>/pgagent.io   Identity, RestoreJobHooks, WAL (restore)
//! ```
//!
//! Pure logic, free of I/O: [`cluster`] (the parts of a `Cluster` definition the plugin
//! reads), [`params`] (the plugin's parameters, checked with pgagent's own configuration
//! rules and turned into the sidecar's environment), [`lifecycle`] (the JSON patch that
//! injects the sidecar). The services: [`identity`], [`operator`], [`wal_service`] with
//! [`archive`], [`backup_service`], [`metrics_service`], [`restore_job`]; [`streaming`]
//! starts and stops the daemon's pipeline as the pod's role changes ([`pod`]: who and what
//! this pod is); [`instance`] composes a sidecar, whose services share one opened store
//! ([`store_once`]); [`serve`] and [`tls`] are where the services listen; [`client`] dials
//! a plugin socket (the sidecar's health check).
//!
//! No Kubernetes API is used: everything comes with CNPG's requests (the `Cluster`
//! definition) and the sidecar's environment (the parameters, the Secret).

pub mod archive;
pub mod backup_service;
pub mod client;
pub mod cluster;
pub mod identity;
pub mod instance;
pub mod lifecycle;
pub mod metrics_service;
pub mod operator;
pub mod params;
pub mod pod;
pub mod restore_job;
pub mod serve;
pub mod store_once;
pub mod streaming;
pub mod tls;
pub mod wal_service;

/// The plugin's name, as Clusters name it in `spec.plugins[].name` and
/// `spec.externalClusters[].plugin.name`.
pub const PLUGIN_NAME: &str = "pgagent.io";
