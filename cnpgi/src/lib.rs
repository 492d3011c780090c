//! The CloudNativePG plugin interface (CNPG-I) as gRPC messages and services.
//!
//! CNPG's operator and instance manager talk to plugins over gRPC with the services of
//! [cloudnative-pg/cnpg-i](https://github.com/cloudnative-pg/cnpg-i) (`proto/*.proto`,
//! Apache-2.0). The `.proto` files in this crate's `proto/` folder are written from that
//! interface; package, service, method and field names and numbers are CNPG's, so the method
//! paths on the wire are the ones CNPG calls (checked by a golden test, [`METHOD_PATHS`]).
//! Two packages hold services of two files each, as CNPG declares them: `cnpgi.wal.v1` holds
//! `WAL` and `RestoreJobHooks`; `cnpgi.identity.v1` holds `Identity` and `Postgres`.
//!
//! Each module is one protobuf package: its messages (prost) and, per service, a server
//! (`*_server`, a trait to implement and a tower service to serve) and a client (`*_client`).
//! Nothing here does I/O of its own.

#![allow(missing_docs)] // generated code: the documentation is the .proto files'

/// `cnpgi.identity.v1`: `Identity` (metadata, capabilities, probe) and `Postgres`.
pub mod identity {
    tonic::include_proto!("cnpgi.identity.v1");
}

/// `cnpgi.wal.v1`: `WAL` (archive, restore, status) and `RestoreJobHooks` (recovery job).
pub mod wal {
    tonic::include_proto!("cnpgi.wal.v1");
}

/// `cnpgi.backup.v1`: `Backup`.
pub mod backup {
    tonic::include_proto!("cnpgi.backup.v1");
}

/// `cnpgi.operator.v1`: `Operator` (cluster validation and defaulting).
pub mod operator {
    tonic::include_proto!("cnpgi.operator.v1");
}

/// `cnpgi.operator_lifecycle.v1`: `OperatorLifecycle` (patches to pods and jobs).
pub mod lifecycle {
    tonic::include_proto!("cnpgi.operator_lifecycle.v1");
}

/// `cnpgi.reconciler.v1`: `ReconcilerHooks`.
pub mod reconciler {
    tonic::include_proto!("cnpgi.reconciler.v1");
}

/// `cnpgi.metrics.v1`: `Metrics` (definitions and collection).
pub mod metrics {
    tonic::include_proto!("cnpgi.metrics.v1");
}

/// Every gRPC method path of CNPG-I, as CNPG calls them (`/<package>.<Service>/<Method>`).
pub const METHOD_PATHS: &[&str] = &[
    "/cnpgi.identity.v1.Identity/GetPluginMetadata",
    "/cnpgi.identity.v1.Identity/GetPluginCapabilities",
    "/cnpgi.identity.v1.Identity/Probe",
    "/cnpgi.identity.v1.Postgres/GetCapabilities",
    "/cnpgi.identity.v1.Postgres/EnrichConfiguration",
    "/cnpgi.wal.v1.WAL/GetCapabilities",
    "/cnpgi.wal.v1.WAL/Archive",
    "/cnpgi.wal.v1.WAL/Restore",
    "/cnpgi.wal.v1.WAL/Status",
    "/cnpgi.wal.v1.WAL/SetFirstRequired",
    "/cnpgi.wal.v1.RestoreJobHooks/GetCapabilities",
    "/cnpgi.wal.v1.RestoreJobHooks/Restore",
    "/cnpgi.backup.v1.Backup/GetCapabilities",
    "/cnpgi.backup.v1.Backup/Backup",
    "/cnpgi.operator.v1.Operator/GetCapabilities",
    "/cnpgi.operator.v1.Operator/ValidateClusterCreate",
    "/cnpgi.operator.v1.Operator/ValidateClusterChange",
    "/cnpgi.operator.v1.Operator/MutateCluster",
    "/cnpgi.operator.v1.Operator/SetStatusInCluster",
    "/cnpgi.operator.v1.Operator/Deregister",
    "/cnpgi.operator_lifecycle.v1.OperatorLifecycle/GetCapabilities",
    "/cnpgi.operator_lifecycle.v1.OperatorLifecycle/LifecycleHook",
    "/cnpgi.reconciler.v1.ReconcilerHooks/GetCapabilities",
    "/cnpgi.reconciler.v1.ReconcilerHooks/Pre",
    "/cnpgi.reconciler.v1.ReconcilerHooks/Post",
    "/cnpgi.metrics.v1.Metrics/GetCapabilities",
    "/cnpgi.metrics.v1.Metrics/Define",
    "/cnpgi.metrics.v1.Metrics/Collect",
];
