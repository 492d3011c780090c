//! Runs the `zfs` command (zfs(8)) and parses what it prints with `-H` (tab-separated, no
//! header). Only options that every ZFS implementation in use shares are used (OpenZFS and
//! zfs-fuse 0.7): one snapshot per `zfs snapshot` call, no `-p` on `zfs list`.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A `zfs` invocation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    /// The command could not be started (not installed, not executable).
    #[error("cannot run {bin}: {source} (is ZFS installed? set zfs.command)")]
    Spawn {
        /// The command.
        bin: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command exited non-zero.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

impl ZfsError {
    /// Whether ZFS said the dataset or snapshot does not exist.
    pub fn is_missing(&self) -> bool {
        matches!(self, ZfsError::Failed { stderr, .. } if stderr.contains("does not exist"))
    }
}

/// A file system dataset as `zfs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// `pool/name`.
    pub name: String,
    /// The `mountpoint` property: a path, `legacy` or `none`.
    pub mountpoint: String,
    /// Whether it is mounted now.
    pub mounted: bool,
    /// The `canmount` property: `on`, `off` or `noauto`.
    pub canmount: String,
}

/// One snapshot and the values of the properties asked for (`None` when unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `pool/name@snap`.
    pub name: String,
    /// One value per property asked for, in order.
    pub properties: Vec<Option<String>>,
}

/// The `zfs` command to run.
#[derive(Debug, Clone)]
pub struct Zfs {
    bin: PathBuf,
}

impl Zfs {
    /// Runs `bin` (`zfs`, looked up in `PATH`, or a path).
    pub fn new(bin: impl Into<PathBuf>) -> Zfs {
        Zfs { bin: bin.into() }
    }

    /// Runs `zfs args…` and returns its standard output.
    ///
    /// Errors: [`ZfsError::Spawn`], [`ZfsError::Failed`] with the command's stderr.
    pub fn run(&self, args: &[&str]) -> Result<String, ZfsError> {
        let out = crate::child::command(&self.bin)
            .args(args)
            .output()
            .map_err(|source| ZfsError::Spawn {
                bin: self.bin.display().to_string(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ZfsError::Failed {
                command: format!("{} {}", self.bin.display(), args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Every file system dataset.
    pub fn datasets(&self) -> Result<Vec<Dataset>, ZfsError> {
        let out = self.run(&[
            "list",
            "-H",
            "-t",
            "filesystem",
            "-o",
            "name,mountpoint,mounted,canmount",
        ])?;
        Ok(parse_datasets(&out))
    }

    /// Properties of `target` (a dataset or snapshot): name → (value, source).
    pub fn get(
        &self,
        target: &str,
        props: &[&str],
    ) -> Result<BTreeMap<String, (String, String)>, ZfsError> {
        let out = self.run(&[
            "get",
            "-H",
            "-o",
            "property,value,source",
            &props.join(","),
            target,
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, '\t');
                Some((
                    f.next()?.to_string(),
                    (f.next()?.to_string(), f.next().unwrap_or("").to_string()),
                ))
            })
            .collect())
    }

    /// Sets `property=value` on `target`.
    pub fn set(&self, target: &str, property: &str, value: &str) -> Result<(), ZfsError> {
        self.run(&["set", &format!("{property}={value}"), target])
            .map(drop)
    }

    /// Takes `snapshot` (`dataset@name`) of the dataset and its descendants
    /// (`zfs snapshot -r -o k=v …`).
    pub fn snapshot(&self, snapshot: &str, props: &[(&str, &str)]) -> Result<(), ZfsError> {
        let opts: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["snapshot", "-r"];
        for o in &opts {
            args.extend(["-o", o.as_str()]);
        }
        args.push(snapshot);
        self.run(&args).map(drop)
    }

    /// The snapshots of `dataset` and its descendants with the values of `properties`
    /// (user properties hold no tabs, so the columns are unambiguous).
    pub fn snapshots(&self, dataset: &str, properties: &[&str]) -> Result<Vec<Snapshot>, ZfsError> {
        let columns = std::iter::once("name")
            .chain(properties.iter().copied())
            .collect::<Vec<_>>()
            .join(",");
        let out = self.run(&[
            "list", "-H", "-r", "-t", "snapshot", "-o", &columns, dataset,
        ])?;
        Ok(parse_snapshots(&out))
    }

    /// Destroys `snapshot` and the same-named snapshots of the descendants (`-r`). zfs-fuse
    /// may answer "busy" once while it unmounts; that is retried.
    pub fn destroy_snapshot(&self, snapshot: &str) -> Result<(), ZfsError> {
        self.retry_busy(&["destroy", "-r", snapshot])
    }

    fn retry_busy(&self, args: &[&str]) -> Result<(), ZfsError> {
        use backon::BlockingRetryable;
        (|| self.run(args))
            .retry(crate::retry::Policy::ZFS_BUSY.backoff().with_max_times(5))
            .sleep(std::thread::sleep)
            .when(|e| matches!(e, ZfsError::Failed { stderr, .. } if stderr.contains("busy")))
            .call()
            .map(drop)
    }

    /// `zfs clone -o mountpoint=… snapshot target`.
    pub fn clone_to(&self, snapshot: &str, target: &str, mountpoint: &str) -> Result<(), ZfsError> {
        self.run(&[
            "clone",
            "-o",
            &format!("mountpoint={mountpoint}"),
            snapshot,
            target,
        ])
        .map(drop)
    }

    /// `zfs rollback -r snapshot`: the dataset goes back to the snapshot and newer
    /// snapshots of it are destroyed.
    pub fn rollback(&self, snapshot: &str) -> Result<(), ZfsError> {
        self.run(&["rollback", "-r", snapshot]).map(drop)
    }

    /// `zfs create -o k=v … dataset`.
    pub fn create(&self, dataset: &str, props: &[(&str, &str)]) -> Result<(), ZfsError> {
        let opts: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["create"];
        for o in &opts {
            args.extend(["-o", o.as_str()]);
        }
        args.push(dataset);
        self.run(&args).map(drop)
    }
}

fn parse_datasets(out: &str) -> Vec<Dataset> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 4).then(|| Dataset {
                name: f[0].to_string(),
                mountpoint: f[1].to_string(),
                mounted: f[2] == "yes",
                canmount: f[3].to_string(),
            })
        })
        .collect()
}

fn parse_snapshots(out: &str) -> Vec<Snapshot> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let name = f.next().filter(|n| !n.is_empty())?.to_string();
            let properties = f
                .map(|v| (v != "-" && !v.is_empty()).then(|| v.to_string()))
                .collect();
            Some(Snapshot { name, properties })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_output_parses() {
        let d = parse_datasets("tank\t/tank\tyes\ton\ntank/pg\t/var/lib/postgresql\tno\tnoauto\n");
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].mountpoint, "/var/lib/postgresql");
        assert!(!d[1].mounted);
        assert_eq!(d[1].canmount, "noauto");
        let s = parse_snapshots("tank/pg@a\t-\t-\ntank/pg@pgagent-1\t1\t{\"a\": 1}\n");
        assert_eq!(s[0].properties, [None, None]);
        assert_eq!(s[1].properties[0].as_deref(), Some("1"));
        assert_eq!(s[1].properties[1].as_deref(), Some("{\"a\": 1}"));
    }

    #[test]
    fn a_missing_binary_is_named() {
        let err = Zfs::new("/nonexistent/zfs").datasets().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/zfs"), "{err}");
    }
}
