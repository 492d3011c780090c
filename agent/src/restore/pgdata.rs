//! The data directory around a restore: made ready to receive files, cleaned after a
//! snapshot came back, given the recovery settings and handed to its owner.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pgagent_storage::snapshot::SnapshotRecord;

use super::autoconf::{disable_in_conf, quote, rewrite_auto_conf, MARKER};
use super::request::RestoreRequest;
use crate::exit::Refused;

/// Makes sure `pgdata` is an empty directory (creating it 0700, or emptying it with
/// `force`), or any directory with `delta`; never one a server runs in.
pub(super) fn prepare_pgdata(pgdata: &Path, force: bool, delta: bool) -> anyhow::Result<()> {
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

/// `recovery.signal` and one clean set of recovery settings: `postgresql.auto.conf` (read
/// after `postgresql.conf`, so its settings win) rewritten by [`rewrite_auto_conf`] with
/// `restore_command` and the target, and the recovery settings of `postgresql.conf`
/// commented out ([`disable_in_conf`]; left alone, with a warning, when it is a symlink: a
/// restore writes nothing outside the data directory). `source` names what was restored,
/// for the comment above the settings. Each file is replaced atomically, keeping its mode and
/// owner ([`replace_file`]).
///
/// Returns the lines taken out of effect, each as `<file>: <line>`.
///
/// Errors: I/O errors, naming the file.
pub(super) fn write_recovery_settings(
    pgdata: &Path,
    source: &str,
    req: &RestoreRequest,
) -> anyhow::Result<Vec<String>> {
    let signal = pgdata.join("recovery.signal");
    fs::write(&signal, b"").with_context(|| format!("write {}", signal.display()))?;
    let mut removed = Vec::new();

    let conf = pgdata.join("postgresql.conf");
    match fs::symlink_metadata(&conf) {
        Ok(m) if m.file_type().is_symlink() => {
            if let Ok(text) = fs::read(&conf) {
                if let Some(r) = disable_in_conf(&text) {
                    tracing::warn!(
                        "{} (a symlink out of the data directory) sets {}: recovery will use them; comment them out there",
                        conf.display(),
                        r.removed.join(", ")
                    );
                }
            }
        }
        Ok(_) => {
            let text = fs::read(&conf).with_context(|| format!("read {}", conf.display()))?;
            if let Some(r) = disable_in_conf(&text) {
                replace_file(&conf, &r.text)?;
                removed.extend(r.removed.iter().map(|l| format!("postgresql.conf: {l}")));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", conf.display())),
    }

    let auto = pgdata.join("postgresql.auto.conf");
    let existing = match fs::read(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", auto.display())),
    };
    let mut settings = vec![format!("restore_command = {}", quote(&req.restore_command))];
    settings.extend(req.target.settings(&req.action));
    let header = format!("{MARKER}{source} ({})", req.target.describe());
    let r = rewrite_auto_conf(&existing, &header, &settings);
    replace_file(&auto, &r.text)?;
    removed.extend(
        r.removed
            .iter()
            .map(|l| format!("postgresql.auto.conf: {l}")),
    );
    Ok(removed)
}

/// Replaces `path` with `text` atomically: a temporary file in the same directory, written
/// and fsynced, given the mode and owner of the file it replaces (else 0600 and the
/// directory's owner), renamed over `path`, then the directory fsynced, so a crash leaves
/// the old file or the new one, never a mix (as PostgreSQL's `durable_rename` does for
/// `ALTER SYSTEM`).
///
/// Errors: I/O errors, naming the file.
fn replace_file(path: &Path, text: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (mode, owner) = match fs::metadata(path) {
        Ok(m) => (m.mode() & 0o7777, (m.uid(), m.gid())),
        Err(_) => {
            let d = fs::metadata(dir).with_context(|| format!("read {}", dir.display()))?;
            (0o600, (d.uid(), d.gid()))
        }
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".pgagent-tmp")
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let write = |f: &mut fs::File| -> std::io::Result<()> {
        f.write_all(text)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        if rustix::process::geteuid().as_raw() == 0 {
            std::os::unix::fs::fchown(&*f, Some(owner.0), Some(owner.1))?;
        }
        f.sync_all()
    };
    write(tmp.as_file_mut()).with_context(|| format!("write {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("replace {}", path.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

/// When run as root, hands the restored tree and the tablespace directories to `owner`
/// (uid, gid), else to the owner of the data directory's parent (PostgreSQL refuses to run
/// as root and to use files it does not own).
pub(super) fn give_to_owner(
    pgdata: &Path,
    tablespaces: &[PathBuf],
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Ok(());
    }
    let parent = pgdata.parent().unwrap_or(Path::new("/"));
    let (uid, gid) = match owner {
        Some(o) => o,
        None => fs::metadata(parent).map(|m| (m.uid(), m.gid()))?,
    };
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

/// The pid in `pgdata/postmaster.pid` when that process is alive.
pub(super) fn running_server(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::test_kill_process(pid)
        .is_ok()
        .then(|| pid.as_raw_nonzero().get())
}

/// Turns a data directory that came back from a snapshot of a running server into a base
/// backup ready for recovery, as PostgreSQL docs 26.3.4 ("Recovering Using a Continuous
/// Archive Backup") say: no postmaster.pid/opts, pg_wal emptied (the snapshot's WAL may be
/// older than what the archive holds; restore_command serves it), no replication slots
/// (as `pg_basebackup` leaves them out), no standby.signal; then `backup_label` and
/// `tablespace_map` from `pg_backup_stop`.
///
/// Errors: I/O errors, naming the path.
pub(super) fn prepare_snapshot_copy(pgdata: &Path, r: &SnapshotRecord) -> anyhow::Result<()> {
    for name in [
        "postmaster.pid",
        "postmaster.opts",
        "standby.signal",
        "recovery.signal",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
    ] {
        match fs::remove_file(pgdata.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("remove {name} in {}", pgdata.display()))
            }
            _ => {}
        }
    }
    for dir in ["pg_wal", "pg_wal/archive_status", "pg_replslot"] {
        empty_dir(&pgdata.join(dir), dir == "pg_replslot")?;
    }
    let owner = fs::metadata(pgdata).map(|m| (m.uid(), m.gid()))?;
    write_owned(&pgdata.join("backup_label"), &r.backup_label, owner)?;
    if let Some(map) = &r.tablespace_map {
        write_owned(&pgdata.join("tablespace_map"), map, owner)?;
    }
    Ok(())
}

/// Removes the files (and with `dirs`, the directories) directly in `dir`.
fn empty_dir(dir: &Path, dirs: bool) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let p = e.path();
        let t = e.file_type()?;
        if t.is_dir() {
            if dirs {
                fs::remove_dir_all(&p).with_context(|| format!("remove {}", p.display()))?;
            }
        } else {
            fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
        }
    }
    Ok(())
}

/// Writes `text` to `path` (mode 0600) owned by `owner` (uid, gid) when run as root.
fn write_owned(path: &Path, text: &str, owner: (u32, u32)) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if rustix::process::geteuid().as_raw() == 0 {
        std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))?;
    }
    Ok(())
}

/// A record for tests.
#[cfg(test)]
pub(super) fn tests_record() -> &'static str {
    tests::RECORD
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_snapshot_copy_is_cleaned_for_recovery() {
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path();
        for dir in ["pg_wal/archive_status", "pg_replslot/pgagent", "global"] {
            fs::create_dir_all(pgdata.join(dir)).unwrap();
        }
        for file in [
            "postmaster.pid",
            "standby.signal",
            "pg_wal/000000010000000000000003",
            "pg_wal/archive_status/000000010000000000000003.ready",
            "pg_replslot/pgagent/state",
            "global/pg_control",
        ] {
            fs::write(pgdata.join(file), "x").unwrap();
        }
        let mut r: SnapshotRecord = serde_json::from_str(RECORD).unwrap();
        r.tablespace_map = Some("16385 /srv/ts\n".into());
        prepare_snapshot_copy(pgdata, &r).unwrap();
        assert!(!pgdata.join("postmaster.pid").exists());
        assert!(!pgdata.join("standby.signal").exists());
        assert!(
            pgdata.join("global/pg_control").exists(),
            "cluster files stay"
        );
        assert!(pgdata.join("pg_wal/archive_status").is_dir());
        assert_eq!(
            fs::read_dir(pgdata.join("pg_wal/archive_status"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(fs::read_dir(pgdata.join("pg_replslot")).unwrap().count(), 0);
        assert_eq!(
            fs::read_to_string(pgdata.join("backup_label")).unwrap(),
            r.backup_label
        );
        assert_eq!(
            fs::read_to_string(pgdata.join("tablespace_map")).unwrap(),
            "16385 /srv/ts\n"
        );
        let mode = fs::metadata(pgdata.join("backup_label")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn recovery_settings_replace_what_the_files_carried() {
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path();
        fs::write(
            pgdata.join("postgresql.conf"),
            "port = 5433\nrestore_command = 'cp /archive/%f %p'\n",
        )
        .unwrap();
        let auto = pgdata.join("postgresql.auto.conf");
        fs::write(
            &auto,
            "work_mem = '64MB'\n\n# pgagent restore of backup A (time x)\nrestore_command = 'old'\nrecovery_target_time = '2026-11-21 10:54:32 UTC'\n",
        )
        .unwrap();
        fs::set_permissions(&auto, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let req = RestoreRequest {
            pgdata: pgdata.to_path_buf(),
            backup: None,
            target: super::super::target::RecoveryTarget::Latest,
            action: "promote".into(),
            force: false,
            delta: false,
            raw: false,
            restore_command: "pgagent fetch %f %p".into(),
            from: super::super::request::RestoreFrom::Bucket,
            owner: None,
        };
        let removed = write_recovery_settings(pgdata, "backup B", &req).unwrap();
        assert_eq!(
            removed,
            [
                "postgresql.conf: restore_command = 'cp /archive/%f %p'",
                "postgresql.auto.conf: restore_command = 'old'",
                "postgresql.auto.conf: recovery_target_time = '2026-11-21 10:54:32 UTC'",
            ]
        );
        assert_eq!(
            fs::read_to_string(&auto).unwrap(),
            "work_mem = '64MB'\n\n# pgagent restore of backup B (the end of the WAL in the store)\n\
             restore_command = 'pgagent fetch %f %p'\nrecovery_target_timeline = 'latest'\n"
        );
        assert_eq!(fs::metadata(&auto).unwrap().mode() & 0o777, 0o640);
        assert!(fs::read_to_string(pgdata.join("postgresql.conf"))
            .unwrap()
            .contains("# disabled by pgagent restore: restore_command"));
        assert!(pgdata.join("recovery.signal").exists());
        let names: Vec<_> = fs::read_dir(pgdata)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        // Again over the result: nothing more to remove, the same file.
        let before = fs::read_to_string(&auto).unwrap();
        let removed = write_recovery_settings(pgdata, "backup B", &req).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(fs::read_to_string(&auto).unwrap(), before);
    }

    #[test]
    fn no_server_runs_without_a_live_pid() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(running_server(d.path()), None);
        fs::write(
            d.path().join("postmaster.pid"),
            format!("{}\n/data\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(running_server(d.path()), Some(std::process::id() as i32));
        fs::write(d.path().join("postmaster.pid"), "999999999\n").unwrap();
        assert_eq!(running_server(d.path()), None);
    }

    pub(crate) const RECORD: &str = r#"{"format":1,"id":"20261121T101500Z","system_identifier":7,
        "pg_version":150000,"snapshots":["tank/pg@pgagent-20261121T101500Z"],
        "mountpoints":["/tank/pg"],"pgdata":"/tank/pg","timeline":1,"start_lsn":"0/2000028",
        "stop_lsn":"0/2000100","started_at":"2026-11-21T10:15:00Z",
        "finished_at":"2026-11-21T10:15:01Z","backup_label":"START WAL LOCATION: 0/2000028\n",
        "host":"db1"}"#;
}
