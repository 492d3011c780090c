//! `pgagent preseed --pgdata DIR`: run before PostgreSQL starts (systemd `ExecStartPre`,
//! a Kubernetes init container) so that PostgreSQL never starts on the wrong data
//! directory (DESIGN.md, "ZFS").
//!
//! What the directory holds decides, never a marker: a valid cluster is left untouched; a
//! missing or empty directory is restored to the newest point (`--from auto`); anything
//! else is refused with exit 3 and the fix. The layout is checked first: a data directory
//! (or its parent) with file systems layered on it, or a mountpoint two ZFS datasets claim,
//! is refused, because what is visible there depends on mount order — the way an old
//! marker on a hidden dataset once made a restore script skip its restore. After a restore
//! a record is written beside the data directory (`.<name>.pgagent-preseed.json` in its
//! parent), for people; preseed itself never reads it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;
use crate::exit::Refused;
use crate::restore::{restore, RecoveryTarget, RestoreFrom, RestoreRequest, RESTORING_FILE};
use crate::zfs::mounts::{layout_problems, read_mounts};
use crate::zfs::Zfs;

/// What a data directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgdataState {
    /// Missing, or an empty directory.
    Empty,
    /// `PG_VERSION` and `global/pg_control` readable, no restore in progress.
    Cluster {
        /// The major version in `PG_VERSION`.
        version: String,
    },
    /// Something else: the names of up to 5 entries, and a hint.
    Other {
        /// Some of what it holds.
        entries: Vec<String>,
        /// Why it is not a cluster.
        reason: String,
    },
}

/// Reads what `pgdata` holds (a cluster per PostgreSQL's own start-up checks:
/// `PG_VERSION` in `checkDataDir`, `src/backend/utils/init/miscinit.c`, and
/// `global/pg_control`, read by `ReadControlFile`).
///
/// Errors: `pgdata` exists but cannot be read, or is not a directory.
pub fn inspect(pgdata: &Path) -> anyhow::Result<PgdataState> {
    let entries = match fs::read_dir(pgdata) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PgdataState::Empty),
        r => r.with_context(|| format!("read {}", pgdata.display()))?,
    };
    let mut names: Vec<String> = entries
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Ok(PgdataState::Empty);
    }
    names.sort();
    let other = |reason: String| PgdataState::Other {
        entries: names.iter().take(5).cloned().collect(),
        reason,
    };
    if names.iter().any(|n| n == RESTORING_FILE) {
        return Ok(other("an earlier restore into it did not finish".into()));
    }
    let version = match fs::read_to_string(pgdata.join("PG_VERSION")) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ if names.iter().any(|n| n == "lost+found") => {
            return Ok(other(
                "it is the root of a file system (lost+found); point PGDATA at a subdirectory"
                    .into(),
            ))
        }
        _ => return Ok(other("no readable PG_VERSION".into())),
    };
    match fs::read(pgdata.join("global/pg_control")) {
        Ok(b) if !b.is_empty() => Ok(PgdataState::Cluster { version }),
        _ => Ok(other("PG_VERSION but no readable global/pg_control".into())),
    }
}

/// Who PostgreSQL runs as: `--user` (a name or uid), else this process's user, else (as
/// root) the owner of the nearest existing parent of `pgdata`.
///
/// Errors: an unknown user; as root without `--user` when that parent is root's.
pub fn expected_owner(user: Option<&str>, pgdata: &Path) -> anyhow::Result<(u32, u32)> {
    if let Some(u) = user {
        let found = match u.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?,
            Err(_) => nix::unistd::User::from_name(u)?,
        };
        return match (found, u.parse::<u32>()) {
            (Some(p), _) => Ok((p.uid.as_raw(), p.gid.as_raw())),
            // A bare uid without a passwd entry (containers): its group is the same number.
            (None, Ok(uid)) => Ok((uid, uid)),
            (None, Err(_)) => {
                Err(crate::config::ConfigError(format!("--user {u}: no such user")).into())
            }
        };
    }
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 {
        return Ok((euid, rustix::process::getegid().as_raw()));
    }
    let parent = pgdata
        .ancestors()
        .skip(1)
        .find_map(|a| fs::metadata(a).ok())
        .context("no parent of PGDATA exists")?;
    if parent.uid() == 0 {
        return Err(Refused(format!(
            "running as root and the parent of {} belongs to root, so the PostgreSQL user is unknown; pass --user (e.g. --user postgres)",
            pgdata.display()
        ))
        .into());
    }
    Ok((parent.uid(), parent.gid()))
}

/// The owner and mode problems of an existing data directory that would stop PostgreSQL
/// (it must be owned by its user and be 0700 or 0750: `checkDataDir`).
pub fn ownership_problem(pgdata: &Path, owner: (u32, u32)) -> Option<String> {
    let m = fs::metadata(pgdata).ok()?;
    let mode = m.mode() & 0o777;
    if m.uid() != owner.0 {
        return Some(format!(
            "{} belongs to uid {}, PostgreSQL runs as uid {}; fix: chown -R {}:{} {}",
            pgdata.display(),
            m.uid(),
            owner.0,
            owner.0,
            owner.1,
            pgdata.display()
        ));
    }
    if mode != 0o700 && mode != 0o750 {
        return Some(format!(
            "{} has mode {mode:04o}; PostgreSQL wants 0700 (or 0750); fix: chmod 0700 {}",
            pgdata.display(),
            pgdata.display()
        ));
    }
    None
}

/// `pgdata` made absolute, its existing part with symlinks resolved.
fn resolve(pgdata: &Path) -> PathBuf {
    let abs = if pgdata.is_absolute() {
        pgdata.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(pgdata)
    };
    for a in abs.ancestors() {
        if let Ok(real) = a.canonicalize() {
            let rest = abs.strip_prefix(a).unwrap_or(Path::new(""));
            return if rest.as_os_str().is_empty() {
                real
            } else {
                real.join(rest)
            };
        }
    }
    abs
}

/// Layout problems at `pgdata` and its parent, as one message; `None` when there are none.
pub fn layout_message(cfg: &Config, pgdata: &Path) -> anyhow::Result<Option<String>> {
    let mounts = read_mounts().context("read /proc/self/mountinfo")?;
    // Without ZFS there are no datasets to compare; the mount table still shows layering.
    let datasets = Zfs::new(&cfg.raw.zfs.command)
        .datasets()
        .unwrap_or_default();
    let parent = pgdata.parent().unwrap_or(Path::new("/"));
    let problems = layout_problems(&[pgdata, parent], &mounts, &datasets);
    Ok((!problems.is_empty()).then(|| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }))
}

/// What `pgagent preseed` was asked besides the data directory.
#[derive(Debug, Clone, Default)]
pub struct PreseedOptions {
    /// `--user`: the PostgreSQL user, a name or uid.
    pub user: Option<String>,
    /// `--allow-new`: an empty store means a new cluster (leave PGDATA to initdb).
    pub allow_new: bool,
    /// The start of the `restore_command` a restore writes.
    pub fetch_prefix: String,
}

/// Whether the store holds a cluster at all; a store that cannot be read is an error.
async fn store_has_cluster(cfg: &Config) -> anyhow::Result<bool> {
    let store = crate::store::open(cfg).await?;
    Ok(pgagent_storage::cluster::read_cluster(store.as_ref())
        .await?
        .is_some())
}

/// `pgagent preseed`.
///
/// Errors: [`Refused`] (exit 3) for a layered or shared mountpoint, a non-empty data
/// directory without a valid cluster, an owner/mode PostgreSQL would reject, or an empty
/// data directory and a store without a cluster (unless `--allow-new`); the restore's
/// errors.
pub async fn run(cfg: &Config, pgdata: &Path, opts: &PreseedOptions) -> anyhow::Result<()> {
    let pgdata = resolve(pgdata);
    if let Some(problem) = layout_message(cfg, &pgdata)? {
        return Err(Refused(format!("preseed refuses {}: {problem}", pgdata.display())).into());
    }
    let owner = expected_owner(opts.user.as_deref(), &pgdata)?;
    match inspect(&pgdata)? {
        PgdataState::Cluster { version } => {
            if let Some(p) = ownership_problem(&pgdata, owner) {
                return Err(Refused(format!("preseed: {p}")).into());
            }
            println!(
                "preseed: {} holds a PostgreSQL {version} cluster; nothing to do",
                pgdata.display()
            );
            Ok(())
        }
        PgdataState::Other { entries, reason } => Err(Refused(format!(
            "preseed refuses {}: it is not empty but holds no valid cluster ({reason}; it holds {}); \
             fix: move what it holds away and run preseed again, or restore over it with \
             pgagent restore --pgdata {} --force",
            pgdata.display(),
            entries.join(", "),
            pgdata.display()
        ))
        .into()),
        PgdataState::Empty => {
            // An empty directory loses nothing: as root, preseed gives it to the PostgreSQL
            // user (the restore does) with mode 0700; otherwise it must be right already.
            if pgdata.exists() {
                if rustix::process::geteuid().as_raw() == 0 {
                    fs::set_permissions(&pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                        .with_context(|| format!("chmod 0700 {}", pgdata.display()))?;
                } else if let Some(p) = ownership_problem(&pgdata, owner) {
                    return Err(Refused(format!("preseed: {p}")).into());
                }
            }
            // A store with no cluster is either a first deployment or a wrong store.url;
            // only the operator can tell, so an empty PGDATA is left to initdb only when
            // asked, never by default (that is how an empty cluster replaces a restore).
            if !store_has_cluster(cfg).await? {
                if opts.allow_new {
                    println!(
                        "preseed: the store ({}) holds no cluster yet and --allow-new is given: {} stays empty for initdb",
                        cfg.store().url,
                        pgdata.display()
                    );
                    return Ok(());
                }
                return Err(Refused(format!(
                    "preseed refuses {}: it is empty and the store ({}) holds no cluster, so there is \
                     nothing to restore. If store.url is right and this is the first deployment, \
                     run preseed once with --allow-new so PostgreSQL can initdb; otherwise fix store.url",
                    pgdata.display(),
                    cfg.store().url
                ))
                .into());
            }
            let req = RestoreRequest {
                pgdata: pgdata.clone(),
                backup: None,
                target: RecoveryTarget::Latest,
                action: "promote".into(),
                force: false,
                delta: false,
                raw: false,
                restore_command: format!("{} fetch %f %p", opts.fetch_prefix),
                from: RestoreFrom::Auto,
                owner: Some(owner),
            };
            let served = restore(cfg, &req).await?;
            if let Some(why) = &served.passed_over {
                println!("preseed: tier snapshot not used: {why}");
            }
            for line in &served.removed_settings {
                println!("preseed: removed a recovery setting the restored files carried: {line}");
            }
            println!(
                "preseed: {} was empty; tier {}: restored {}; PostgreSQL will recover to the end of the WAL in the store",
                pgdata.display(),
                served.tier,
                served.source
            );
            write_record(&pgdata, served.tier, &served.source);
            Ok(())
        }
    }
}

/// The record beside the data directory, for people (preseed never reads it).
fn write_record(pgdata: &Path, tier: &str, source: &str) {
    let (Some(parent), Some(name)) = (pgdata.parent(), pgdata.file_name()) else {
        return;
    };
    let path = parent.join(format!(".{}.pgagent-preseed.json", name.to_string_lossy()));
    let body = serde_json::json!({
        "pgdata": pgdata,
        "restored_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "tier": tier,
        "source": source,
        "note": "written by pgagent preseed after a restore; informational, never read back",
    });
    if let Err(e) = fs::write(&path, format!("{body:#}\n")) {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn what_a_data_directory_holds() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data");
        assert_eq!(inspect(&p).unwrap(), PgdataState::Empty);
        fs::create_dir(&p).unwrap();
        assert_eq!(inspect(&p).unwrap(), PgdataState::Empty);
        fs::write(p.join("PG_VERSION"), "15\n").unwrap();
        assert!(
            matches!(inspect(&p).unwrap(), PgdataState::Other { reason, .. } if reason.contains("pg_control"))
        );
        fs::create_dir(p.join("global")).unwrap();
        fs::write(p.join("global/pg_control"), [1u8; 8192]).unwrap();
        assert_eq!(
            inspect(&p).unwrap(),
            PgdataState::Cluster {
                version: "15".into()
            }
        );
        fs::write(p.join(RESTORING_FILE), "").unwrap();
        assert!(
            matches!(inspect(&p).unwrap(), PgdataState::Other { reason, .. } if reason.contains("did not finish"))
        );
        let q = d.path().join("root");
        fs::create_dir_all(q.join("lost+found")).unwrap();
        assert!(
            matches!(inspect(&q).unwrap(), PgdataState::Other { reason, .. } if reason.contains("lost+found"))
        );
    }

    #[test]
    fn owner_and_mode_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(ownership_problem(d.path(), me), None);
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ownership_problem(d.path(), me)
            .unwrap()
            .contains("chmod 0700"));
        assert!(ownership_problem(d.path(), (me.0 + 1, 0))
            .unwrap()
            .contains("chown"));
        assert_eq!(expected_owner(Some("0"), d.path()).unwrap(), (0, 0));
        assert!(expected_owner(Some("no-such-user-here"), d.path()).is_err());
    }
}
