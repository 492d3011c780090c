//! The mount table (`/proc/self/mountinfo`, proc(5)) and the layout problems that make a
//! data directory untrustworthy: two file systems mounted on the same path (the lower one
//! hidden, with whatever it holds), or two ZFS datasets whose `mountpoint` is the same
//! path (which one is seen depends on mount order).

use std::fmt;
use std::path::{Path, PathBuf};

use super::command::Dataset;

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (field 5, octal escapes decoded).
    pub mount_point: PathBuf,
    /// File system type (`zfs`, `fuse.zfs`, `ext4`, `overlay`…).
    pub fs_type: String,
    /// Mount source: the dataset name for ZFS, a device otherwise.
    pub source: String,
}

impl Mount {
    /// Whether this is a ZFS dataset (in the kernel or through zfs-fuse).
    pub fn is_zfs(&self) -> bool {
        self.fs_type == "zfs" || self.fs_type == "fuse.zfs"
    }
}

/// Reads this process's mount table.
///
/// Errors: `/proc` is not mounted or readable.
pub fn read_mounts() -> std::io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Parses mountinfo text: `id parent dev root mount_point options [optional…] - type source
/// super_options` (proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mount_point = head.split(' ').nth(4)?;
            let mut t = tail.split(' ');
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: t.next()?.to_string(),
                source: unescape(t.next()?),
            })
        })
        .collect()
}

/// Decodes the `\ooo` octal escapes mountinfo uses for space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path` (the last mounted of those with the longest matching mount
/// point, as the kernel resolves it). `path` should be absolute and free of symlinks.
pub fn mount_of<'a>(path: &Path, mounts: &'a [Mount]) -> Option<&'a Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
}

/// What is wrong with the layout at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutProblem {
    /// Several file systems are mounted on `path`; only the last is visible.
    Layered {
        /// The path.
        path: PathBuf,
        /// Their sources, first mounted (hidden) first.
        sources: Vec<String>,
    },
    /// Several ZFS datasets have `path` as their `mountpoint`.
    SharedMountpoint {
        /// The path.
        path: PathBuf,
        /// The datasets.
        datasets: Vec<String>,
    },
}

impl fmt::Display for LayoutProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutProblem::Layered { path, sources } => write!(
                f,
                "{} has {} file systems mounted on it ({}); the lower ones are hidden, and \
                 what PostgreSQL sees depends on mount order. Unmount all but the one meant \
                 to be there (umount / zfs umount) and fix the configuration that mounted \
                 the others",
                path.display(),
                sources.len(),
                sources.join(" under ")
            ),
            LayoutProblem::SharedMountpoint { path, datasets } => write!(
                f,
                "ZFS datasets {} all have mountpoint={}; only one can be seen there, and \
                 which one depends on mount order. Give the others another mountpoint \
                 (zfs set mountpoint=… or canmount=off)",
                datasets.join(", "),
                path.display()
            ),
        }
    }
}

/// The layout problems at each of `paths`: file systems layered on the path in `mounts`,
/// and ZFS datasets of `datasets` that share it as mountpoint (counting only datasets that
/// can mount: `canmount` not `off`, a path as mountpoint).
pub fn layout_problems(
    paths: &[&Path],
    mounts: &[Mount],
    datasets: &[Dataset],
) -> Vec<LayoutProblem> {
    let mut problems = Vec::new();
    for path in paths {
        let on: Vec<String> = mounts
            .iter()
            .filter(|m| m.mount_point == *path)
            .map(|m| format!("{} ({})", m.source, m.fs_type))
            .collect();
        if on.len() > 1 {
            problems.push(LayoutProblem::Layered {
                path: path.to_path_buf(),
                sources: on,
            });
        }
        let claim: Vec<String> = datasets
            .iter()
            .filter(|d| d.canmount != "off" && Path::new(&d.mountpoint) == *path)
            .map(|d| d.name.clone())
            .collect();
        if claim.len() > 1 {
            problems.push(LayoutProblem::SharedMountpoint {
                path: path.to_path_buf(),
                datasets: claim,
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:45 / /tank/pg rw,relatime - fuse.zfs tank/old rw,user_id=0
41 40 0:46 / /tank/pg rw,relatime - fuse.zfs tank/new rw,user_id=0
42 22 0:47 / /srv/with\\040space rw - zfs tank/space rw
";

    fn ds(name: &str, mp: &str, canmount: &str) -> Dataset {
        Dataset {
            name: name.into(),
            mountpoint: mp.into(),
            mounted: true,
            canmount: canmount.into(),
        }
    }

    #[test]
    fn mountinfo_parses_with_escapes() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].source, "tank/old");
        assert!(m[1].is_zfs() && m[3].is_zfs() && !m[0].is_zfs());
        assert_eq!(m[3].mount_point, Path::new("/srv/with space"));
        assert_eq!(unescape("a\\134b"), "a\\b");
    }

    #[test]
    fn the_top_mount_holds_a_path() {
        let m = parse_mountinfo(INFO);
        assert_eq!(
            mount_of(Path::new("/tank/pg/data"), &m).unwrap().source,
            "tank/new"
        );
        assert_eq!(mount_of(Path::new("/etc"), &m).unwrap().source, "/dev/sda1");
    }

    #[test]
    fn layering_and_shared_mountpoints_are_found() {
        let m = parse_mountinfo(INFO);
        let d = [
            ds("tank/old", "/tank/pg", "on"),
            ds("tank/new", "/tank/pg", "on"),
            ds("tank/off", "/srv/x", "off"),
            ds("tank/x", "/srv/x", "on"),
        ];
        let p = layout_problems(&[Path::new("/tank/pg/data"), Path::new("/tank/pg")], &m, &d);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].to_string()
                .contains("tank/old (fuse.zfs) under tank/new"),
            "{}",
            p[0]
        );
        assert!(p[1].to_string().contains("tank/old, tank/new"), "{}", p[1]);
        assert!(
            layout_problems(&[Path::new("/srv/x")], &m, &d).is_empty(),
            "canmount=off does not claim"
        );
    }
}
