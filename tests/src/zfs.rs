//! A ZFS pool for a test: a file-backed pool in a temporary directory, through zfs-fuse
//! (or the kernel module where it is loaded), destroyed on drop.
//!
//! Needs the `zpool`/`zfs` commands, root, and a running ZFS daemon; `scripts/install-deps`
//! installs zfs-fuse and starts it. When `zpool` cannot reach a daemon and `zfs-fuse` is
//! installed, the harness starts it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::util::{keep_temp_dirs, wait_until};

static POOLS: AtomicU32 = AtomicU32::new(0);

/// A pool `pgat<pid>x<n>` on a sparse file, mounted under its temporary directory.
#[derive(Debug)]
pub struct ZfsPool {
    name: String,
    dir: Option<TempDir>,
    root: PathBuf,
}

/// Runs `program args…`; the error carries its output.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} (is ZFS installed? scripts/install-deps)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure a ZFS daemon answers (starting zfs-fuse if needed).
fn ensure_daemon() -> anyhow::Result<()> {
    if run("zpool", &["list", "-H"]).is_ok() {
        return Ok(());
    }
    let _ = run("zfs-fuse", &["--pidfile", "/run/zfs-fuse.pid"]);
    if wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        run("zpool", &["list", "-H"]).is_ok()
    }) {
        Ok(())
    } else {
        bail!("no ZFS daemon answers `zpool list` (start zfs-fuse, or run scripts/install-deps)")
    }
}

impl ZfsPool {
    /// Creates a pool of `size_mib` MiB mounted at `<tmp>/mnt`.
    pub fn create(size_mib: u64) -> anyhow::Result<ZfsPool> {
        ensure_daemon()?;
        let dir = tempfile::Builder::new().prefix("pgagent-zfs-").tempdir()?;
        let root = dir.path().to_path_buf();
        let name = format!(
            "pgat{}x{}",
            std::process::id(),
            POOLS.fetch_add(1, Ordering::SeqCst)
        );
        let file = root.join("pool.img");
        std::fs::File::create(&file)?.set_len(size_mib << 20)?;
        let mnt = root.join("mnt");
        run(
            "zpool",
            &[
                "create",
                "-m",
                &mnt.display().to_string(),
                &name,
                &file.display().to_string(),
            ],
        )?;
        Ok(ZfsPool {
            name,
            dir: Some(dir),
            root,
        })
    }

    /// The pool's name (also its root dataset).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the pool's root dataset is mounted.
    pub fn mountpoint(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// The temporary directory (outside the pool) for things beside it.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// `zfs create -o mountpoint=… <pool>/<name>` (`mountpoint` `None`: inherited); returns
    /// the dataset name.
    pub fn create_dataset(&self, name: &str, mountpoint: Option<&Path>) -> anyhow::Result<String> {
        let dataset = format!("{}/{name}", self.name);
        let mut args = vec!["create".to_string()];
        if let Some(m) = mountpoint {
            args.extend(["-o".into(), format!("mountpoint={}", m.display())]);
        }
        args.push(dataset.clone());
        run("zfs", &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(dataset)
    }

    /// `zfs args…`.
    pub fn zfs(&self, args: &[&str]) -> anyhow::Result<String> {
        run("zfs", args)
    }

    /// `zfs args…`, again while zfs-fuse answers "busy" (it does for a moment after a
    /// process or a mount left a dataset), for up to 10 seconds.
    pub fn zfs_when_idle(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut tries = 0;
        loop {
            match run("zfs", args) {
                Err(e) if e.to_string().contains("busy") && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// Unmounts and destroys a dataset; zfs-fuse may answer "busy" for a moment after a
    /// process left it, so that is retried.
    pub fn destroy(&self, dataset: &str) -> anyhow::Result<()> {
        let _ = run("zfs", &["umount", dataset]);
        self.zfs_when_idle(&["destroy", dataset]).map(drop)
    }

    /// Names of the snapshots under the pool, sorted.
    pub fn snapshots(&self) -> anyhow::Result<Vec<String>> {
        let out = run(
            "zfs",
            &[
                "list", "-H", "-r", "-t", "snapshot", "-o", "name", &self.name,
            ],
        )?;
        let mut v: Vec<String> = out.lines().map(str::to_string).collect();
        v.sort();
        Ok(v)
    }
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        if keep_temp_dirs() {
            eprintln!("keeping pool {} in {}", self.name, self.root.display());
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
            return;
        }
        // Mounts a test layered under the pool's directory (bind mounts) would keep it busy.
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut under: Vec<&str> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| {
                    Path::new(m).starts_with(&self.root) && Path::new(m) != self.mountpoint()
                })
                .collect();
            under.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in under {
                let _ = run("umount", &["-l", m]);
            }
        }
        // zfs-fuse may still be unmounting a dataset a moment after a process left it, and
        // a restore-mode fetch server started by a test's recovery exits when idle.
        for _ in 0..40 {
            if run("zpool", &["destroy", "-f", &self.name]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("could not destroy pool {}", self.name);
    }
}
