//! pgagent as a CloudNativePG plugin (CNPG-I): the operator-side logic, free of I/O.
//!
//! - [`cluster`]: the parts of a `Cluster` definition the plugin reads;
//! - [`params`]: the plugin's parameters, checked (`Operator.ValidateClusterCreate`,
//!   `ValidateClusterChange`) and turned into the sidecar's environment;
//! - [`lifecycle`]: the JSON patch that injects the sidecar into instance pods and the
//!   recovery job (`OperatorLifecycle.LifecycleHook`), and the hooks declared
//!   (`OperatorLifecycle.GetCapabilities`).
//!
//! The names are fixed by the project's CloudNativePG specification (plugin name, parameters,
//! pod layout); the gRPC services wrap these functions.

pub mod cluster;
pub mod lifecycle;
pub mod params;

/// The plugin's name, as Clusters name it in `spec.plugins[].name` and
/// `spec.externalClusters[].plugin.name`.
pub const PLUGIN_NAME: &str = "pgagent.io";
