//! CNPG-I `RestoreJobHooks` (`cnpgi.wal.v1`): the recovery job's bootstrap from the store.
//!
//! A Cluster bootstrapped with `recovery.source` naming an `externalClusters` entry whose
//! plugin is pgagent gets a recovery job; its sidecar (`pgagent cnpg restore`) is configured
//! with that entry's store and, on `Restore`, rebuilds PGDATA from the bucket alone (the
//! newest backup that reaches the target, or `recoveryTarget.backupID`), then answers the
//! recovery settings CNPG writes for PostgreSQL: the target, `recovery_target_action =
//! promote`, and a `restore_command` that goes through CNPG's instance manager back to this
//! sidecar's `WAL.Restore`.
//!
//! The Cluster's own store (its `plugins` entry, where it will stream once it runs) must be
//! empty or hold the same system: a store holding another system's WAL is refused before
//! anything is written, so two clusters never mix in one prefix. (The source's own store
//! is refused earlier, by the Cluster's validation: the restored cluster has the source's
//! system identifier, so the check above could not tell the two apart.)

use std::path::PathBuf;

use pgagent_cnpgi::wal::restore_job_hooks_capability::Kind;
use pgagent_cnpgi::wal::restore_job_hooks_server::RestoreJobHooks;
use pgagent_cnpgi::wal::{
    RestoreJobHooksCapabilitiesRequest, RestoreJobHooksCapabilitiesResult,
    RestoreJobHooksCapability, RestoreRequest as HookRequest, RestoreResponse,
};
use pgagent_storage::cluster::read_cluster;
use tonic::{Request, Response, Status};

use super::cluster::{Cluster, RecoveryTarget as CnpgTarget};
use super::params::PluginParams;
use crate::config::Config;
use crate::restore::{restore, RecoveryTarget, RestoreFrom, RestoreRequest};

/// The `restore_command` CNPG's instance manager runs for a plugin's recovery: it calls
/// the plugin's `WAL.Restore` (CNPG `internal/cmd/manager/walrestore`).
pub const CNPG_RESTORE_COMMAND: &str =
    "/controller/manager wal-restore --log-destination /controller/log/postgres.json %f %p";

/// The `RestoreJobHooks` service of the recovery job's sidecar.
pub struct RestoreJob {
    cfg: Config,
    pgdata: PathBuf,
}

impl RestoreJob {
    /// A hook restoring from the store of `cfg` into `pgdata`.
    pub fn new(cfg: Config, pgdata: PathBuf) -> Self {
        RestoreJob { cfg, pgdata }
    }

    async fn run(&self, definition: &[u8]) -> Result<String, Status> {
        let cluster = Cluster::from_json(definition)
            .map_err(|e| Status::invalid_argument(format!("cluster definition: {e}")))?;
        let recovery = cluster.recovery().ok_or_else(|| {
            Status::failed_precondition("the Cluster has no bootstrap.recovery to restore")
        })?;
        let wanted = recovery.recovery_target.clone().unwrap_or_default();
        let target = target(&wanted).map_err(Status::invalid_argument)?;
        let source = crate::store::open_cluster(&self.cfg)
            .await
            .map_err(|e| Status::failed_precondition(format!("recovery source: {e:#}")))?;
        if let Some(own) = cluster.plugin_parameters() {
            let own = PluginParams::parse(own, &[]).map_err(|errors| {
                Status::invalid_argument(
                    errors
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
            check_own_store(own.config(), &source.cluster.system_identifier).await?;
        }
        let req = RestoreRequest {
            pgdata: self.pgdata.clone(),
            backup: wanted.backup_id.clone(),
            target: target.clone(),
            action: "promote".to_string(),
            force: false,
            delta: false,
            raw: false,
            restore_command: CNPG_RESTORE_COMMAND.to_string(),
            from: RestoreFrom::Bucket,
            owner: None,
        };
        // The restore's future is not `Send` for every lifetime the gRPC service needs, so
        // it runs on a blocking thread of its own, driven by this runtime.
        let (cfg, handle) = (self.cfg.clone(), tokio::runtime::Handle::current());
        let served = tokio::task::spawn_blocking(move || handle.block_on(restore(&cfg, &req)))
            .await
            .map_err(|e| Status::internal(format!("restore task: {e}")))?
            .map_err(|e| Status::internal(format!("restore: {e:#}")))?;
        tracing::info!(
            "restored {} into {}; recovery to {}",
            served.source,
            self.pgdata.display(),
            target.describe()
        );
        Ok(restore_config(&target))
    }
}

/// The settings CNPG writes for recovery: the target's (as the restore wrote them into
/// `postgresql.auto.conf`), the action, and CNPG's `restore_command`.
pub fn restore_config(target: &RecoveryTarget) -> String {
    let mut lines = target.settings("promote");
    if !lines
        .iter()
        .any(|l| l.starts_with("recovery_target_action"))
    {
        lines.push("recovery_target_action = 'promote'".to_string());
    }
    lines.push(format!("restore_command = '{CNPG_RESTORE_COMMAND}'"));
    lines.join("\n") + "\n"
}

/// pgagent's recovery target for CNPG's `recoveryTarget`.
///
/// Errors: more than one target, a time or LSN that does not parse, and what this version
/// does not restore to: `targetImmediate`, `exclusive`, a `targetTLI` other than `latest`.
pub fn target(t: &CnpgTarget) -> Result<RecoveryTarget, String> {
    if t.target_immediate == Some(true) {
        return Err("recoveryTarget.targetImmediate is not supported by pgagent yet: give targetTime, targetLSN, targetXID or targetName, or none for the end of the WAL".into());
    }
    if t.exclusive == Some(true) {
        return Err("recoveryTarget.exclusive is not supported by pgagent yet: recovery stops just after the target".into());
    }
    if let Some(tli) = t.target_tli.as_deref().filter(|v| *v != "latest") {
        return Err(format!(
            "recoveryTarget.targetTLI {tli:?}: pgagent recovers along the latest timeline only"
        ));
    }
    let given = [&t.target_time, &t.target_xid, &t.target_name, &t.target_lsn];
    if given.iter().filter(|v| v.is_some()).count() > 1 {
        return Err(
            "recoveryTarget: give one of targetTime, targetXID, targetName, targetLSN".into(),
        );
    }
    Ok(if let Some(time) = &t.target_time {
        RecoveryTarget::time(time).map_err(|e| format!("recoveryTarget.targetTime: {e:#}"))?
    } else if let Some(x) = &t.target_xid {
        RecoveryTarget::Xid(x.clone())
    } else if let Some(n) = &t.target_name {
        RecoveryTarget::Name(n.clone())
    } else if let Some(l) = &t.target_lsn {
        RecoveryTarget::Lsn(
            l.parse()
                .map_err(|e| format!("recoveryTarget.targetLSN {l:?}: {e}"))?,
        )
    } else {
        RecoveryTarget::Latest
    })
}

/// Refuses when the Cluster's own store holds another system than `system` (the backup's).
async fn check_own_store(own: &Config, system: &str) -> Result<(), Status> {
    let store = crate::store::open(own)
        .await
        .map_err(|e| Status::failed_precondition(format!("the Cluster's store: {e}")))?;
    match read_cluster(store.as_ref()).await {
        Ok(Some(info)) if info.system_identifier != system => {
            Err(Status::failed_precondition(format!(
                "{} holds the WAL of system {}, the backup is of system {system}: refusing to \
             restore a cluster that would stream into another system's store; give the \
             Cluster an empty store.url prefix",
                store.describe(),
                info.system_identifier
            )))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(Status::unavailable(format!(
            "the Cluster's store {}: {e}",
            store.describe()
        ))),
    }
}

#[tonic::async_trait]
impl RestoreJobHooks for RestoreJob {
    async fn get_capabilities(
        &self,
        _: Request<RestoreJobHooksCapabilitiesRequest>,
    ) -> Result<Response<RestoreJobHooksCapabilitiesResult>, Status> {
        Ok(Response::new(RestoreJobHooksCapabilitiesResult {
            capabilities: vec![RestoreJobHooksCapability {
                kind: Kind::Restore as i32,
            }],
        }))
    }

    async fn restore(
        &self,
        request: Request<HookRequest>,
    ) -> Result<Response<RestoreResponse>, Status> {
        let restore_config = self.run(&request.into_inner().cluster_definition).await?;
        Ok(Response::new(RestoreResponse {
            restore_config,
            envs: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnpg_targets_become_pgagents() {
        let none = CnpgTarget::default();
        assert_eq!(target(&none).unwrap(), RecoveryTarget::Latest);
        let lsn = CnpgTarget {
            target_lsn: Some("0/3000060".into()),
            ..Default::default()
        };
        assert_eq!(
            target(&lsn).unwrap(),
            RecoveryTarget::Lsn("0/3000060".parse().unwrap())
        );
        let two = CnpgTarget {
            target_lsn: Some("0/3000060".into()),
            target_name: Some("before".into()),
            ..Default::default()
        };
        assert!(target(&two).unwrap_err().contains("one of"));
        for refused in [
            CnpgTarget {
                target_immediate: Some(true),
                ..Default::default()
            },
            CnpgTarget {
                exclusive: Some(true),
                ..Default::default()
            },
            CnpgTarget {
                target_tli: Some("3".into()),
                ..Default::default()
            },
        ] {
            assert!(target(&refused).is_err(), "{refused:?}");
        }
        let latest_tli = CnpgTarget {
            target_tli: Some("latest".into()),
            ..Default::default()
        };
        assert_eq!(target(&latest_tli).unwrap(), RecoveryTarget::Latest);
    }

    #[test]
    fn the_restore_config_names_cnpgs_restore_command_and_promotes() {
        let cfg = restore_config(&RecoveryTarget::Name("before".into()));
        assert_eq!(
            cfg,
            "recovery_target_timeline = 'latest'\nrecovery_target_name = 'before'\n\
             recovery_target_action = 'promote'\nrestore_command = '/controller/manager \
             wal-restore --log-destination /controller/log/postgres.json %f %p'\n"
        );
        assert!(restore_config(&RecoveryTarget::Latest)
            .contains("recovery_target_action = 'promote'\n"));
    }
}
