//! A copy of a running cluster's data directory when the packaged `pg_basebackup` cannot take
//! one: `pg_basebackup` refuses servers of a newer major than its own (`streamutil.c`,
//! `CheckServerVersionForStreaming`), so against PostgreSQL 16+ the harness takes the backup
//! with pgagent's own `BASE_BACKUP` client ([`pgagent_protocol::ReplicationClient::base_backup`]).

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use pgagent_protocol::{BaseBackupEvent, BaseBackupOptions, ConnConfig, ReplicationClient};

use super::{setup::run_checked, PgServer, TRUST_USER};

impl PgServer {
    /// Major version of the packaged client tools (`pg_basebackup --version`), e.g. `15`.
    pub fn client_major(&self) -> anyhow::Result<u32> {
        let out = run_checked(
            Command::new(self.bin_dir().join("pg_basebackup")).arg("--version"),
            "pg_basebackup --version",
        )?;
        // "pg_basebackup (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        out.split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| anyhow!("unexpected pg_basebackup --version output {out:?}"))
    }

    /// Major version of the running server, e.g. `17`.
    pub fn server_major(&self) -> anyhow::Result<u32> {
        Ok(self.server_version_num()? / 10_000)
    }

    /// Whether the packaged `pg_basebackup` can back this server up (its major is not newer).
    pub fn pg_basebackup_works(&self) -> anyhow::Result<bool> {
        Ok(self.server_major()? <= self.client_major()?)
    }

    /// Like `pg_basebackup -D <dest> -c fast -X none` (`with_wal`: `-X fetch`, the segments in
    /// `pg_wal` once the backup has ended), through pgagent's `BASE_BACKUP` client as
    /// [`TRUST_USER`]. `dest` must not exist; it ends up owned by the PostgreSQL OS user.
    /// Clusters with tablespaces are refused.
    pub fn base_backup_over_protocol(&self, dest: &Path, with_wal: bool) -> anyhow::Result<()> {
        let conninfo = self.conninfo(TRUST_USER);
        let archives = std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(receive(&conninfo))
            })
            .join()
            .map_err(|_| anyhow!("base backup thread panicked"))?
        })?;
        let (tar, manifest) = archives;
        std::fs::create_dir(dest).with_context(|| format!("create {}", dest.display()))?;
        let tar_path = dest.with_extension("base.tar");
        std::fs::write(&tar_path, tar)?;
        let extracted = run_checked(
            Command::new("tar")
                .arg("-xf")
                .arg(&tar_path)
                .arg("-C")
                .arg(dest),
            "tar -x",
        );
        std::fs::remove_file(&tar_path)?;
        extracted?;
        std::fs::write(dest.join("backup_manifest"), manifest)?;
        if with_wal {
            let from = self.data_dir().join("pg_wal");
            for entry in std::fs::read_dir(&from)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    std::fs::copy(entry.path(), dest.join("pg_wal").join(entry.file_name()))?;
                }
            }
        }
        let (uid, gid) = self.os_user_ids();
        run_checked(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dest),
            "chown -R",
        )
        .map(drop)
    }
}

/// Runs `BASE_BACKUP` (fast checkpoint, manifest) and returns `base.tar` and the manifest.
async fn receive(conninfo: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let cfg = ConnConfig::parse_with_env(conninfo, |_| None)?;
    let client = ReplicationClient::connect(&cfg).await?;
    let mut stream = client
        .base_backup(&BaseBackupOptions {
            fast_checkpoint: true,
            ..BaseBackupOptions::new("pgagent test copy")
        })
        .await?;
    let (mut tar, mut manifest, mut archives) = (Vec::new(), Vec::new(), 0);
    while let Some(event) = stream.next().await? {
        match event {
            BaseBackupEvent::Archive { name, .. } => {
                archives += 1;
                if name != "base.tar" || archives > 1 {
                    bail!("archive {name}: the test copy does not handle tablespaces");
                }
            }
            BaseBackupEvent::ArchiveData(data) => tar.extend_from_slice(&data),
            BaseBackupEvent::ManifestData(data) => manifest.extend_from_slice(&data),
            BaseBackupEvent::Progress(_) => {}
        }
    }
    Ok((tar, manifest))
}
