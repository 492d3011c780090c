//! The faults of the soak (`tests/tests/soak.rs`), drawn from a seeded RNG, and what it
//! needs to inject them: the run's settings from the environment, a log of the faults
//! that prints the seed when the test fails, and a small tmpfs for the staging directory.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

/// Seconds of faults of the three variants together (`PGAGENT_SOAK_SECONDS`).
pub const SECONDS_ENV: &str = "PGAGENT_SOAK_SECONDS";
/// Default of [`SECONDS_ENV`]: about 6 minutes in all, 2 per variant.
pub const DEFAULT_SECONDS: u64 = 360;
/// The seed of the fault sequence (`PGAGENT_SOAK_SEED`); random when unset.
pub const SEED_ENV: &str = "PGAGENT_SOAK_SEED";
/// The staging-full fault is in the mix unless this is `0` (it needs root, as CI runs: it
/// mounts a tmpfs; without root it is left out with a note).
pub const STAGING_FULL_ENV: &str = "PGAGENT_SOAK_STAGING_FULL";
/// Size of the staging tmpfs when the staging-full fault is on.
pub const STAGING_TMPFS_MIB: u64 = 512;

/// How long one variant injects faults: its third of [`SECONDS_ENV`].
pub fn variant_budget() -> Duration {
    let total = std::env::var(SECONDS_ENV)
        .ok()
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{SECONDS_ENV}={v:?}: {e}"))
        })
        .unwrap_or(DEFAULT_SECONDS);
    Duration::from_secs(total / 3)
}

/// The seed: [`SEED_ENV`] when set, else a random one.
pub fn seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{SEED_ENV}={v:?}: {e}")),
        Err(_) => rand::random(),
    }
}

/// Whether the staging-full fault is in the mix: unless [`STAGING_FULL_ENV`] is `0`.
pub fn staging_full_enabled() -> bool {
    std::env::var(STAGING_FULL_ENV).map_or(true, |v| v.trim() != "0")
}

/// One fault, with the parameters drawn for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the agent, started again after `pause`.
    KillAgent { pause: Duration },
    /// SIGTERM to the agent, waiting for its exit, then a new start.
    RestartAgent,
    /// The agent's walsender terminated (`pg_terminate_backend`): the replication
    /// connection is cut and the agent must reconnect.
    CutReplication,
    /// The bucket refuses every connection (the proxy in front of it) for `down`.
    BucketDown { down: Duration },
    /// The bucket answers `delay` later in each direction for `slow`.
    BucketSlow { delay: Duration, slow: Duration },
    /// PostgreSQL stopped in immediate mode (a crash) and started again after `down`.
    CrashServer { down: Duration },
    /// The staging file system filled by a ballast file for `full`.
    StagingFull { full: Duration },
}

impl Fault {
    /// Draws the next fault (the staging-full kind only when `staging_full`).
    pub fn draw(rng: &mut StdRng, staging_full: bool) -> Fault {
        let kinds = if staging_full { 7 } else { 6 };
        let secs = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_secs(rng.gen_range(lo..=hi));
        match rng.gen_range(0..kinds) {
            0 => Fault::KillAgent {
                pause: Duration::from_millis(rng.gen_range(0..=3000)),
            },
            1 => Fault::RestartAgent,
            2 => Fault::CutReplication,
            3 => Fault::BucketDown {
                down: secs(rng, 10, 60),
            },
            4 => Fault::BucketSlow {
                delay: Duration::from_millis(rng.gen_range(100..=1500)),
                slow: secs(rng, 10, 30),
            },
            5 => Fault::CrashServer {
                down: Duration::from_millis(rng.gen_range(0..=5000)),
            },
            _ => Fault::StagingFull {
                full: secs(rng, 10, 30),
            },
        }
    }

    /// Short name, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillAgent { .. } => "kill-9",
            Fault::RestartAgent => "restart",
            Fault::CutReplication => "cut-replication",
            Fault::BucketDown { .. } => "bucket-down",
            Fault::BucketSlow { .. } => "bucket-slow",
            Fault::CrashServer { .. } => "crash-postgres",
            Fault::StagingFull { .. } => "staging-full",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillAgent { pause } => {
                write!(f, "kill -9 of the agent, restart after {pause:?}")
            }
            Fault::RestartAgent => f.write_str("clean restart of the agent (SIGTERM)"),
            Fault::CutReplication => {
                f.write_str("replication connection cut (walsender terminated)")
            }
            Fault::BucketDown { down } => write!(f, "bucket down for {down:?}"),
            Fault::BucketSlow { delay, slow } => {
                write!(f, "bucket slow (+{delay:?} each way) for {slow:?}")
            }
            Fault::CrashServer { down } => {
                write!(
                    f,
                    "PostgreSQL stopped in immediate mode, started after {down:?}"
                )
            }
            Fault::StagingFull { full } => write!(f, "staging full for {full:?}"),
        }
    }
}

/// The faults injected so far. Dropped while the test panics (a failed check), it prints
/// the seed, how to replay it, and the last faults.
pub struct FaultLog {
    name: &'static str,
    seed: u64,
    origin: Instant,
    entries: Vec<(Duration, Fault, String)>,
}

impl FaultLog {
    /// An empty log of test `name`, run with `seed`; times count from `origin`.
    pub fn new(name: &'static str, seed: u64, origin: Instant) -> FaultLog {
        FaultLog {
            name,
            seed,
            origin,
            entries: Vec::new(),
        }
    }

    /// Records `fault`, begun at `at` (since the origin), with what was seen doing it.
    pub fn push(&mut self, at: Duration, fault: Fault, note: String) {
        println!(
            "[{}] {:>6.1}s  #{} {fault}{}",
            self.name,
            at.as_secs_f64(),
            self.entries.len() + 1,
            if note.is_empty() {
                String::new()
            } else {
                format!(" ({note})")
            }
        );
        self.entries.push((at, fault, note));
    }

    /// Time since the origin.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// How many faults were injected.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Counts per kind, e.g. `kill-9 ×3, bucket-down ×1`.
    pub fn summary(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for (_, f, _) in &self.entries {
            match counts.iter_mut().find(|(k, _)| *k == f.kind()) {
                Some((_, n)) => *n += 1,
                None => counts.push((f.kind(), 1)),
            }
        }
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        format!("{} faults: {}", self.entries.len(), parts.join(", "))
    }

    /// The last `n` faults, one line each, with their times.
    pub fn last(&self, n: usize) -> String {
        let from = self.entries.len().saturating_sub(n);
        self.entries[from..]
            .iter()
            .enumerate()
            .map(|(i, (at, f, note))| {
                format!(
                    "  #{} at {:.1}s: {f} {note}",
                    from + i + 1,
                    at.as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How to run this test again with the same fault sequence.
    pub fn replay_hint(&self) -> String {
        format!(
            "seed {seed}: replay with {SEED_ENV}={seed} cargo nextest run -p pgagent-tests --test soak -E 'test(={name})'",
            seed = self.seed,
            name = self.name
        )
    }
}

impl Drop for FaultLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[{}] FAILED with {}\n[{}] {}; the last ones:\n{}",
                self.name,
                self.replay_hint(),
                self.name,
                self.summary(),
                self.last(8)
            );
        }
    }
}

/// A tmpfs mounted on a directory, for the staging-full fault: the agent's staging
/// directory lives inside it, and a ballast file next to it fills it. Unmounted on drop.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir` (which must exist and be empty). `None`, with a
    /// note printed, unless the tests run as root.
    pub fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            println!("the staging-full fault needs root (it mounts a tmpfs); it is left out");
            return None;
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join("ballast")
    }

    /// Writes the ballast file until the file system is full; returns its size.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.ballast()).expect("create the ballast file");
        let block = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        written
    }

    /// Removes the ballast file.
    pub fn empty(&self) {
        let _ = std::fs::remove_file(self.ballast());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: an agent still holding a file there must not keep the test from ending.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
