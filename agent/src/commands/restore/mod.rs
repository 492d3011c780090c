//! `pgagent restore --pgdata DIR …`: a data directory from the bucket, set up to recover to
//! a target through `restore_command = 'pgagent fetch %f %p'`.
//!
//! Chooses the newest complete backup that can reach the target, writes its files
//! ([`crate::backup::materialize`]), then `recovery.signal` and the recovery settings in
//! `postgresql.auto.conf` (PostgreSQL docs, "Recovery Target" 20.5.5, and
//! "Archive Recovery" 20.5.4). Starting PostgreSQL is left to the caller.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context};
use pgagent_protocol::Lsn;
use pgagent_storage::cluster::read_cluster;
use pgagent_storage::manifest::{BackupManifest, BackupStatus};

use crate::backup::catalog;
use crate::backup::materialize::{materialize, Mode};
use crate::config::Config;
use crate::exit::Refused;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the WAL in the store, on the latest timeline.
    Latest,
    /// `recovery_target_time`, as given, and parsed (UTC when no zone is given).
    Time(String, SystemTime),
    /// `recovery_target_xid`.
    Xid(String),
    /// `recovery_target_name` (a restore point).
    Name(String),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
}

impl RecoveryTarget {
    /// Parses `--target-time`.
    ///
    /// Errors: not an RFC 3339 timestamp (`2026-11-21T10:54:32Z`, or with a space and no
    /// zone, read as UTC).
    pub fn time(text: &str) -> anyhow::Result<RecoveryTarget> {
        let t = humantime::parse_rfc3339_weak(text.trim_end_matches(['Z', 'z'])).map_err(|e| {
            anyhow::anyhow!("--target-time {text:?}: {e}; use UTC like 2026-11-21T10:54:32Z")
        })?;
        Ok(RecoveryTarget::Time(
            format!(
                "{} UTC",
                humantime::format_rfc3339_seconds(t)
                    .to_string()
                    .trim_end_matches('Z')
                    .replace('T', " ")
            ),
            t,
        ))
    }

    /// Whether a recovery from `m` can stop at this target: the backup must have ended
    /// before it (a recovery cannot stop before the backup's stop LSN).
    fn reachable_from(&self, m: &BackupManifest) -> bool {
        match self {
            RecoveryTarget::Time(_, t) => m
                .finished_at
                .as_deref()
                .and_then(|f| humantime::parse_rfc3339(f).ok())
                .is_some_and(|f| f <= *t),
            RecoveryTarget::Lsn(l) => m.stop().ok().flatten().is_some_and(|(s, _)| s <= *l),
            RecoveryTarget::Latest | RecoveryTarget::Xid(_) | RecoveryTarget::Name(_) => true,
        }
    }

    /// The `postgresql.auto.conf` lines for this target.
    fn settings(&self, action: &str) -> Vec<String> {
        let mut lines = vec!["recovery_target_timeline = 'latest'".to_string()];
        let target = match self {
            RecoveryTarget::Latest => None,
            RecoveryTarget::Time(t, _) => Some(format!("recovery_target_time = {}", quote(t))),
            RecoveryTarget::Xid(x) => Some(format!("recovery_target_xid = {}", quote(x))),
            RecoveryTarget::Name(n) => Some(format!("recovery_target_name = {}", quote(n))),
            RecoveryTarget::Lsn(l) => Some(format!("recovery_target_lsn = '{l}'")),
        };
        if let Some(t) = target {
            lines.push(t);
            lines.push(format!("recovery_target_action = {}", quote(action)));
        }
        lines
    }
}

/// What `pgagent restore` was asked.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The data directory to create or fill.
    pub pgdata: PathBuf,
    /// A backup id, or `None` for the newest that can reach the target.
    pub backup: Option<String>,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// `recovery_target_action`: `promote`, `pause` or `shutdown`.
    pub action: String,
    /// Empty a non-empty data directory first.
    pub force: bool,
    /// Keep files that already match the backup, rewrite the others, remove the rest.
    pub delta: bool,
    /// The `restore_command` to write.
    pub restore_command: String,
}

/// Restores per `req`.
///
/// Errors: [`Refused`] (exit 3) for a non-empty data directory without `--force` or a
/// running server in it; no backup can reach the target; store, verification or I/O
/// errors.
pub async fn run(cfg: &Config, req: &RestoreRequest) -> anyhow::Result<()> {
    let store = pgagent_storage::open(&cfg.raw.store.url, &cfg.store_options()).await?;
    let cluster = read_cluster(store.as_ref()).await?.with_context(|| {
        format!(
            "{} holds no cluster.json: not a pgagent store",
            store.describe()
        )
    })?;
    let manifest = choose_backup(store.as_ref(), req).await?;
    prepare_pgdata(&req.pgdata, req.force && !req.delta, req.delta)?;
    tracing::info!(
        backup = manifest.id,
        system_identifier = cluster.system_identifier,
        "restoring {} files ({}) into {}",
        manifest.stats.files,
        bytesize::ByteSize(manifest.stats.raw_bytes),
        req.pgdata.display()
    );
    let original = |_oid: u32, location: &str| PathBuf::from(location);
    let progress = crate::progress::Progress::new(
        &format!("restore {}", manifest.id),
        manifest.stats.raw_bytes,
    );
    let written = materialize(
        store.clone(),
        &manifest,
        &req.pgdata,
        &original,
        cfg.raw.store.upload_concurrency,
        if req.delta { Mode::Delta } else { Mode::Fresh },
        &progress,
    )
    .await
    .with_context(|| {
        format!(
            "restore backup {} into {}",
            manifest.id,
            req.pgdata.display()
        )
    })?;
    progress.finish();
    write_recovery_settings(&req.pgdata, &manifest, req)?;
    let tablespaces: Vec<PathBuf> = manifest
        .tablespaces
        .iter()
        .map(|t| PathBuf::from(&t.location))
        .collect();
    give_to_owner(&req.pgdata, &tablespaces)?;
    println!(
        "restored backup {} ({} files written, {}; {} unchanged, {} removed) into {}; recovery to {} is set up: start PostgreSQL",
        manifest.id,
        written.files,
        bytesize::ByteSize(written.bytes),
        written.unchanged,
        written.removed,
        req.pgdata.display(),
        describe(&req.target)
    );
    if !req.restore_command.contains(" --config ") && cfg.raw.store.url.starts_with("s3://") {
        println!(
            "note: restore_command names no configuration file: PostgreSQL's environment must \
             hold the store credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or run \
             pgagent restore with --config FILE"
        );
    }
    Ok(())
}

fn describe(t: &RecoveryTarget) -> String {
    match t {
        RecoveryTarget::Latest => "the end of the WAL in the store".into(),
        RecoveryTarget::Time(s, _) => format!("time {s}"),
        RecoveryTarget::Xid(x) => format!("xid {x}"),
        RecoveryTarget::Name(n) => format!("restore point {n:?}"),
        RecoveryTarget::Lsn(l) => format!("LSN {l}"),
    }
}

async fn choose_backup(
    store: &dyn pgagent_storage::ObjectStore,
    req: &RestoreRequest,
) -> anyhow::Result<BackupManifest> {
    if let Some(id) = req.backup.as_deref().filter(|i| *i != "latest") {
        let m = catalog::get_manifest(store, id)
            .await?
            .with_context(|| format!("no backup {id} in {}", store.describe()))?;
        if m.status != BackupStatus::Complete {
            bail!("backup {id} is not complete (its WAL never reached the store)");
        }
        if !req.target.reachable_from(&m) {
            bail!(
                "backup {id} ended after the target {}",
                describe(&req.target)
            );
        }
        return Ok(m);
    }
    let ids = catalog::backup_ids(store).await?;
    for id in ids.iter().rev() {
        let Some(m) = catalog::get_manifest(store, id).await? else {
            continue;
        };
        if m.status == BackupStatus::Complete && req.target.reachable_from(&m) {
            return Ok(m);
        }
    }
    bail!(
        "no complete backup in {} can reach {} ({} backups listed)",
        store.describe(),
        describe(&req.target),
        ids.len()
    )
}

/// Makes sure `pgdata` is an empty directory (creating it 0700, or emptying it with
/// `force`), or any directory with `delta`; never one a server runs in.
fn prepare_pgdata(pgdata: &Path, force: bool, delta: bool) -> anyhow::Result<()> {
    match fs::symlink_metadata(pgdata) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(pgdata).with_context(|| format!("create {}", pgdata.display()))?;
            fs::set_permissions(pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", pgdata.display())),
        Ok(m) if !m.is_dir() => {
            return Err(Refused(format!(
                "{} exists and is not a directory",
                pgdata.display()
            ))
            .into())
        }
        Ok(_) => {}
    }
    let entries: Vec<_> = fs::read_dir(pgdata)?.collect::<Result<_, _>>()?;
    if entries.is_empty() {
        return Ok(());
    }
    if pgdata.join("postmaster.pid").exists() {
        return Err(Refused(format!(
            "{} holds postmaster.pid: stop the server running there first",
            pgdata.display()
        ))
        .into());
    }
    if delta {
        return Ok(());
    }
    if !force {
        return Err(Refused(format!(
            "{} is not empty; restore into an empty directory, or pass --force to replace what it holds",
            pgdata.display()
        ))
        .into());
    }
    for e in entries {
        let p = e.path();
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        }
        .with_context(|| format!("remove {}", p.display()))?;
    }
    Ok(())
}

/// `recovery.signal` and the recovery settings, appended to `postgresql.auto.conf` (read
/// after `postgresql.conf`, so they win).
fn write_recovery_settings(
    pgdata: &Path,
    m: &BackupManifest,
    req: &RestoreRequest,
) -> anyhow::Result<()> {
    fs::write(pgdata.join("recovery.signal"), b"")?;
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(pgdata.join("postgresql.auto.conf"))?;
    writeln!(
        conf,
        "\n# pgagent restore of backup {} ({})",
        m.id,
        describe(&req.target)
    )?;
    writeln!(conf, "restore_command = {}", quote(&req.restore_command))?;
    for line in req.target.settings(&req.action) {
        writeln!(conf, "{line}")?;
    }
    conf.sync_all()?;
    Ok(())
}

/// When run as root, hands the restored tree and the tablespace directories to the owner of
/// the data directory's parent (PostgreSQL refuses to run as root and to use files it does
/// not own).
fn give_to_owner(pgdata: &Path, tablespaces: &[PathBuf]) -> anyhow::Result<()> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Ok(());
    }
    let parent = pgdata.parent().unwrap_or(Path::new("/"));
    let (uid, gid) = fs::metadata(parent).map(|m| (m.uid(), m.gid()))?;
    if uid == 0 {
        tracing::warn!(
            "{} belongs to root: the restored files stay root's; chown them to the PostgreSQL user",
            parent.display()
        );
        return Ok(());
    }
    for dir in std::iter::once(pgdata).chain(tablespaces.iter().map(PathBuf::as_path)) {
        chown_tree(dir, uid, gid)?;
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for e in fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A PostgreSQL configuration string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_settings() {
        let t = RecoveryTarget::time("2026-11-21T10:54:32Z").unwrap();
        assert_eq!(
            t.settings("promote"),
            [
                "recovery_target_timeline = 'latest'",
                "recovery_target_time = '2026-11-21 10:54:32 UTC'",
                "recovery_target_action = 'promote'"
            ]
        );
        assert_eq!(RecoveryTarget::Latest.settings("promote").len(), 1);
        let n = RecoveryTarget::Name("it's".into()).settings("pause");
        assert_eq!(n[1], "recovery_target_name = 'it''s'");
        assert!(RecoveryTarget::time("yesterday").is_err());
    }

    #[test]
    fn a_non_empty_pgdata_is_refused_without_force() {
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path().join("data");
        prepare_pgdata(&pgdata, false, false).unwrap();
        fs::write(pgdata.join("PG_VERSION"), "15").unwrap();
        let err = prepare_pgdata(&pgdata, false, false).unwrap_err();
        assert!(err.is::<Refused>(), "{err}");
        fs::write(pgdata.join("postmaster.pid"), "1").unwrap();
        assert!(prepare_pgdata(&pgdata, true, false)
            .unwrap_err()
            .is::<Refused>());
        fs::remove_file(pgdata.join("postmaster.pid")).unwrap();
        prepare_pgdata(&pgdata, true, false).unwrap();
        assert_eq!(fs::read_dir(&pgdata).unwrap().count(), 0);
    }
}
