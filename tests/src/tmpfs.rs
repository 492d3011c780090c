//! A small tmpfs mounted over a test's directory: a disk that can be filled for real, by a
//! ballast file, to see what a full disk does. Unmounted on drop, a failed test included.
//!
//! Needs root (`mount -t tmpfs`), as the ZFS tests do; CI runs as root.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A tmpfs mounted at a directory of the test's.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at `dir` (created if missing).
    pub fn mount(dir: &Path, size_mib: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .context("run mount(8)")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs at {} (the test needs root): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes `<dir>/<name>` until the disk is full (`ENOSPC`); returns its path and size.
    pub fn fill(&self, name: &str) -> anyhow::Result<(PathBuf, u64)> {
        let path = self.dir.join(name);
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        let mut size = 0;
        // Large blocks first, then pages, so the last free page is taken too.
        for block in [1 << 20, 4096] {
            size += write_until_full(&mut file, block)?;
        }
        Ok((path, size))
    }
}

fn write_until_full(file: &mut File, block: usize) -> anyhow::Result<u64> {
    let buf = vec![0xA5u8; block];
    let mut written = 0;
    loop {
        match file.write(&buf) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) || e.kind() == ErrorKind::StorageFull => {
                return Ok(written)
            }
            Err(e) => return Err(e).context("write the ballast"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process that still has a file open there does not keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
