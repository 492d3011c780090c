//! The parts of a CloudNativePG `Cluster` (`postgresql.cnpg.io/v1`) the plugin reads, from
//! the JSON definition CNPG-I requests carry (`cluster_definition`). Every other field is
//! ignored, so a newer CloudNativePG with more fields still parses.
//!
//! Field names and defaults follow CloudNativePG's `api/v1/cluster_types.go` (`ClusterSpec`,
//! `PluginConfiguration`, `BootstrapRecovery`, `RecoveryTarget`, `ExternalCluster`,
//! `ClusterStatus`) and `api/v1/cluster_funcs.go` (`PluginConfiguration.IsEnabled`,
//! `Cluster.GetRecoverySourcePlugin`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::PLUGIN_NAME;

/// A Cluster definition that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Not JSON, or a field of the wrong type.
    #[error("the Cluster definition is not a postgresql.cnpg.io/v1 Cluster: {0}")]
    Json(#[from] serde_json::Error),
    /// `metadata.name` is missing or empty.
    #[error("the Cluster definition has no metadata.name")]
    NoName,
}

/// A `Cluster`: `{"metadata": {...}, "spec": {...}, "status": {...}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Cluster {
    /// `metadata`.
    pub metadata: Metadata,
    /// `spec`.
    pub spec: ClusterSpec,
    /// `status`.
    pub status: ClusterStatus,
}

/// `metadata`: `{"name": "pg1", "namespace": "db"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// `metadata.name`.
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    /// `metadata.namespace`.
    #[serde(deserialize_with = "null_default")]
    pub namespace: String,
}

/// `spec`: `{"imagePullPolicy": "IfNotPresent", "plugins": [...], "bootstrap": {...},
/// "externalClusters": [...]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// `spec.imagePullPolicy` (`Always`, `Never`, `IfNotPresent`), used by every container
    /// of the cluster's pods; `None`: the Kubernetes default.
    pub image_pull_policy: Option<String>,
    /// `spec.plugins[]`.
    #[serde(deserialize_with = "null_default")]
    pub plugins: Vec<PluginConfiguration>,
    /// `spec.bootstrap`.
    pub bootstrap: Option<Bootstrap>,
    /// `spec.externalClusters[]`.
    #[serde(deserialize_with = "null_default")]
    pub external_clusters: Vec<ExternalCluster>,
}

/// A plugin entry: `{"name": "pgagent.io", "enabled": true, "isWALArchiver": false,
/// "parameters": {"store.url": "s3://…"}}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PluginConfiguration {
    /// `name`.
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    /// `enabled`; absent means enabled (`+kubebuilder:default:=true`).
    pub enabled: Option<bool>,
    /// `isWALArchiver`; absent means false.
    #[serde(rename = "isWALArchiver")]
    pub is_wal_archiver: Option<bool>,
    /// `parameters`, a string map.
    #[serde(deserialize_with = "null_default")]
    pub parameters: BTreeMap<String, String>,
}

impl PluginConfiguration {
    /// Whether the entry is in use: `enabled` is absent or true (`IsEnabled`).
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// Whether the entry names this plugin ([`PLUGIN_NAME`]) and is enabled.
    pub fn is_ours(&self) -> bool {
        self.name == PLUGIN_NAME && self.is_enabled()
    }
}

/// `spec.bootstrap`: only `recovery` is read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Bootstrap {
    /// `spec.bootstrap.recovery`.
    pub recovery: Option<BootstrapRecovery>,
}

/// `spec.bootstrap.recovery`: `{"source": "origin", "recoveryTarget": {...}}`, or a `backup`
/// (a Backup object, which this plugin does not restore from).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BootstrapRecovery {
    /// `source`: the name of the `externalClusters` entry to restore from.
    pub source: Option<String>,
    /// `backup`: `{"name": "backup-1"}`.
    pub backup: Option<LocalObjectReference>,
    /// `recoveryTarget`; `None`: recover all the WAL there is.
    pub recovery_target: Option<RecoveryTarget>,
}

/// A reference by name: `{"name": "…"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LocalObjectReference {
    /// `name`.
    #[serde(deserialize_with = "null_default")]
    pub name: String,
}

/// `recoveryTarget`: where recovery stops (at most one target; `exclusive` and
/// `targetTLI` qualify it). Values are kept as written; PostgreSQL's `recovery_target_*`
/// settings take them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RecoveryTarget {
    /// `backupID`: the backup to start from; `None`: chosen from the target.
    #[serde(rename = "backupID")]
    pub backup_id: Option<String>,
    /// `targetTLI`: `latest` or a timeline number.
    #[serde(rename = "targetTLI")]
    pub target_tli: Option<String>,
    /// `targetXID`.
    #[serde(rename = "targetXID")]
    pub target_xid: Option<String>,
    /// `targetName`: a restore point made with `pg_create_restore_point`.
    pub target_name: Option<String>,
    /// `targetLSN`.
    #[serde(rename = "targetLSN")]
    pub target_lsn: Option<String>,
    /// `targetTime`: RFC 3339 or a PostgreSQL timestamp; without a zone, UTC.
    pub target_time: Option<String>,
    /// `targetImmediate`: stop as soon as the backup is consistent.
    pub target_immediate: Option<bool>,
    /// `exclusive`: stop just before the target (`recovery_target_inclusive = false`).
    pub exclusive: Option<bool>,
}

/// An `externalClusters` entry: `{"name": "origin", "plugin": {"name": "pgagent.io",
/// "parameters": {...}}}`; connection fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ExternalCluster {
    /// `name`.
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    /// `plugin`: the plugin that reads this cluster's backups.
    pub plugin: Option<PluginConfiguration>,
}

/// `status`: `{"currentPrimary": "pg1-1", "targetPrimary": "pg1-1"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClusterStatus {
    /// `currentPrimary`: the pod that is primary now.
    pub current_primary: Option<String>,
    /// `targetPrimary`: the pod that is to be primary (differs during a switchover).
    pub target_primary: Option<String>,
}

impl Cluster {
    /// Reads a Cluster from its JSON definition.
    ///
    /// Errors: not JSON, a known field of the wrong type, or no `metadata.name`.
    pub fn from_json(bytes: &[u8]) -> Result<Cluster, ClusterError> {
        let cluster: Cluster = serde_json::from_slice(bytes)?;
        if cluster.metadata.name.is_empty() {
            return Err(ClusterError::NoName);
        }
        Ok(cluster)
    }

    /// This plugin's entry of `spec.plugins` and its index, when present and enabled (the
    /// first one naming [`PLUGIN_NAME`]).
    pub fn plugin(&self) -> Option<(usize, &PluginConfiguration)> {
        self.spec
            .plugins
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == PLUGIN_NAME)
            .filter(|(_, p)| p.is_enabled())
    }

    /// This plugin's parameters, when the cluster has the plugin enabled.
    pub fn plugin_parameters(&self) -> Option<&BTreeMap<String, String>> {
        self.plugin().map(|(_, p)| &p.parameters)
    }

    /// `spec.bootstrap.recovery`, if the cluster is bootstrapped by a recovery.
    pub fn recovery(&self) -> Option<&BootstrapRecovery> {
        self.spec.bootstrap.as_ref()?.recovery.as_ref()
    }

    /// The `externalClusters` entry `spec.bootstrap.recovery.source` names, and its index,
    /// when its plugin is this one and enabled: the cluster is restored by this plugin.
    pub fn recovery_source(&self) -> Option<(usize, &ExternalCluster)> {
        let source = self.recovery()?.source.as_deref()?;
        self.spec
            .external_clusters
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == source)
            .filter(|(_, e)| e.plugin.as_ref().is_some_and(PluginConfiguration::is_ours))
    }

    /// The recovery source's plugin parameters, when the cluster is restored by this plugin.
    pub fn recovery_source_parameters(&self) -> Option<&BTreeMap<String, String>> {
        self.recovery_source()
            .and_then(|(_, e)| e.plugin.as_ref())
            .map(|p| &p.parameters)
    }

    /// Whether the pod named `pod_name` is the primary: both `status.currentPrimary` and
    /// `status.targetPrimary` name it (during a switchover they differ, and neither pod
    /// is treated as the primary until it is done).
    pub fn is_primary(&self, pod_name: &str) -> bool {
        let s = &self.status;
        !pod_name.is_empty()
            && s.current_primary.as_deref() == Some(pod_name)
            && s.target_primary.as_deref() == Some(pod_name)
    }
}

/// A field that may be `null` (as Go writes a nil slice or map without `omitempty`) reads
/// as its default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &[u8] = include_bytes!("lifecycle/testdata/cluster.json");

    #[test]
    fn reads_a_cluster_and_ignores_other_fields() {
        let c = Cluster::from_json(CLUSTER).unwrap();
        assert_eq!(c.metadata.name, "pg1");
        assert_eq!(c.metadata.namespace, "db");
        assert_eq!(c.spec.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let (i, p) = c.plugin().unwrap();
        assert_eq!(i, 1, "after another plugin's entry");
        assert_eq!(p.is_wal_archiver, Some(true));
        assert_eq!(
            c.plugin_parameters().unwrap()["store.url"],
            "s3://backups/pg1?endpoint=https://minio.db.svc:9000&region=us-east-1&path_style=true"
        );
        let (j, source) = c.recovery_source().unwrap();
        assert_eq!((j, source.name.as_str()), (1, "origin"));
        assert_eq!(
            c.recovery_source_parameters().unwrap()["store.url"],
            "s3://backups/origin?endpoint=https://minio.db.svc:9000&region=us-east-1&path_style=true"
        );
        let target = c.recovery().unwrap().recovery_target.clone().unwrap();
        assert_eq!(target.target_time.as_deref(), Some("2026-05-01T10:00:00Z"));
        assert_eq!(target.exclusive, Some(false));
        assert_eq!(target.target_xid, None);
    }

    #[test]
    fn a_disabled_or_foreign_plugin_is_not_ours() {
        let json = br#"{"metadata": {"name": "pg1"}, "spec": {
            "plugins": [{"name": "pgagent.io", "enabled": false, "parameters": {"store.url": "s3://b/p"}},
                        {"name": "barman-cloud.cloudnative-pg.io"}],
            "bootstrap": {"recovery": {"source": "a"}},
            "externalClusters": [{"name": "a", "plugin": {"name": "barman-cloud.cloudnative-pg.io"}},
                                 {"name": "b", "plugin": {"name": "pgagent.io"}}]}}"#;
        let c = Cluster::from_json(json).unwrap();
        assert!(c.plugin().is_none());
        assert!(c.plugin_parameters().is_none());
        assert!(
            c.recovery_source().is_none(),
            "the source names another plugin"
        );
    }

    #[test]
    fn nulls_and_absent_sections_read_as_empty() {
        let json = br#"{"metadata": {"name": "pg1", "namespace": null},
            "spec": {"plugins": [{"name": "pgagent.io", "parameters": null}], "externalClusters": null},
            "status": {}}"#;
        let c = Cluster::from_json(json).unwrap();
        assert!(
            c.plugin_parameters().unwrap().is_empty(),
            "enabled by default"
        );
        assert!(c.recovery().is_none());
        assert!(!c.is_primary("pg1-1"));
    }

    #[test]
    fn refuses_what_is_not_a_cluster() {
        let e = Cluster::from_json(b"[1, 2]").unwrap_err();
        assert!(
            e.to_string()
                .contains("not a postgresql.cnpg.io/v1 Cluster"),
            "{e}"
        );
        let e = Cluster::from_json(br#"{"spec": {"plugins": "x"}, "metadata": {"name": "a"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = Cluster::from_json(br#"{"spec": {}}"#).unwrap_err();
        assert!(matches!(e, ClusterError::NoName), "{e}");
    }

    #[test]
    fn the_primary_is_named_by_both_current_and_target() {
        let status = |current: &str, target: &str| Cluster {
            status: ClusterStatus {
                current_primary: Some(current.into()),
                target_primary: Some(target.into()),
            },
            ..Cluster::default()
        };
        assert!(status("pg1-1", "pg1-1").is_primary("pg1-1"));
        assert!(!status("pg1-1", "pg1-1").is_primary("pg1-2"));
        // A switchover from 1 to 2: neither streams until it is done.
        assert!(!status("pg1-1", "pg1-2").is_primary("pg1-1"));
        assert!(!status("pg1-1", "pg1-2").is_primary("pg1-2"));
        assert!(!Cluster::default().is_primary(""));
        let c = Cluster::from_json(CLUSTER).unwrap();
        assert!(c.is_primary("pg1-1") && !c.is_primary("pg1-2"));
    }
}
