//! A single-node Garage S3 server for integration tests.
//!
//! [`Garage::start`] writes a configuration into a fresh temporary directory (SQLite metadata,
//! replication factor 1, random loopback ports for RPC, S3 and admin APIs), starts
//! `garage server`, assigns a one-node layout, and creates an access key and a bucket the key
//! owns with read and write rights. Configuration reference: Garage docs,
//! "Configuration file format"; commands: `garage help`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

use crate::util::{free_port, keep_temp_dirs, log_tail};

/// Environment variable naming the `garage` binary.
pub const GARAGE_ENV: &str = "PGAGENT_TEST_GARAGE";
/// Region Garage answers to (`s3_region`).
pub const REGION: &str = "garage";
/// Bucket created by [`Garage::start`].
pub const BUCKET: &str = "pgagent-test";

/// How long to wait for the server to answer `garage status`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with fresh ports when the server exits during startup (a port was taken).
const START_ATTEMPTS: usize = 3;

/// A running single-node Garage. Dropping it kills the server and removes its directory
/// unless `PGAGENT_TEST_KEEP=1`.
#[derive(Debug)]
pub struct Garage {
    dir: Option<TempDir>,
    bin: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    s3_port: u16,
    admin_port: u16,
    admin_token: String,
    key_id: String,
    secret: String,
}

impl Garage {
    /// Starts the server and creates the bucket [`BUCKET`] and its owner key.
    ///
    /// Errors include the server log when the server does not become ready within 30 s.
    pub fn start() -> anyhow::Result<Garage> {
        let bin = garage_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("pgagent-garage-")
            .tempdir()
            .context("create temporary directory for Garage")?;
        let mut garage = Garage {
            config: dir.path().join("garage.toml"),
            dir: Some(dir),
            bin,
            child: None,
            s3_port: 0,
            admin_port: 0,
            admin_token: random_hex(32),
            key_id: String::new(),
            secret: String::new(),
        };
        crate::util::start_retrying(
            &mut garage,
            "garage",
            START_ATTEMPTS,
            Garage::launch,
            Garage::exited,
        )?;
        garage.init_cluster()?;
        let (key_id, secret) = garage.create_key("pgagent-test")?;
        garage.key_id = key_id;
        garage.secret = secret;
        garage.create_bucket(BUCKET)?;
        Ok(garage)
    }

    /// S3 endpoint, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Socket address of the S3 API, e.g. for a [`crate::Proxy`] in front of it.
    pub fn s3_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.s3_port))
    }

    /// Admin API endpoint, `http://127.0.0.1:<port>` (bearer token: [`Garage::admin_token`]).
    pub fn admin_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Bearer token of the admin API.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Region name: `garage`.
    pub fn region(&self) -> &'static str {
        REGION
    }

    /// Access key id of the key owning [`BUCKET`] (`GK…`).
    pub fn access_key_id(&self) -> &str {
        &self.key_id
    }

    /// Secret of [`Garage::access_key_id`].
    pub fn secret_access_key(&self) -> &str {
        &self.secret
    }

    /// The bucket created at startup.
    pub fn bucket(&self) -> &'static str {
        BUCKET
    }

    /// Store URL for `prefix` in [`BUCKET`] (DESIGN.md "Command line"):
    /// `s3://<bucket>/<prefix>?endpoint=<endpoint>&region=garage&path_style=true`.
    pub fn store_url(&self, prefix: &str) -> String {
        self.store_url_via(prefix, &self.endpoint())
    }

    /// Like [`Garage::store_url`] with another endpoint, e.g. a proxy's `http://…` address.
    pub fn store_url_via(&self, prefix: &str, endpoint: &str) -> String {
        format!("s3://{BUCKET}/{prefix}?endpoint={endpoint}&region={REGION}&path_style=true")
    }

    /// Credentials as the AWS SDK environment expects them: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`; ready for [`crate::AgentProcess::spawn`].
    pub fn s3_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.to_owned()),
        ]
    }

    /// Creates bucket `name` and gives the main key read, write and owner rights on it.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.cli(&["bucket", "create", name])?;
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.key_id,
        ])
        .map(drop)
    }

    /// Creates a key that may read `bucket` but not write it; returns `(key id, secret)`.
    pub fn create_key_without_write(&self, bucket: &str) -> anyhow::Result<(String, String)> {
        let (id, secret) = self.create_key(&format!("read-only-{}", random_hex(4)))?;
        self.cli(&["bucket", "allow", "--read", bucket, "--key", &id])?;
        Ok((id, secret))
    }

    /// Creates a key with no rights on any bucket; returns `(key id, secret)`.
    pub fn create_key(&self, name: &str) -> anyhow::Result<(String, String)> {
        let out = self.cli(&["key", "create", name])?;
        parse_key(&out).ok_or_else(|| {
            anyhow!("cannot find key id and secret in `garage key create` output:\n{out}")
        })
    }

    /// Runs `garage -c <config> <args>` and returns stdout; errors carry stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        if !output.status.success() {
            bail!(
                "garage {} failed ({}):\n{}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Server log file (stdout and stderr of `garage server`).
    pub fn log_file(&self) -> PathBuf {
        self.root().join("garage.log")
    }

    fn root(&self) -> &Path {
        self.config.parent().unwrap_or(Path::new("."))
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Writes a configuration on fresh ports, starts the server and waits until it answers.
    fn launch(&mut self) -> anyhow::Result<()> {
        let root = self.root().to_path_buf();
        let rpc_port = free_port()?;
        self.s3_port = free_port()?;
        self.admin_port = free_port()?;
        let config = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
api_bind_addr = "127.0.0.1:{s3_port}"
s3_region = "{REGION}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#,
            meta = root.join("meta").display(),
            data = root.join("data").display(),
            secret = random_hex(32),
            s3_port = self.s3_port,
            admin_port = self.admin_port,
            admin_token = self.admin_token,
        );
        fs::write(&self.config, config).context("write garage.toml")?;
        // Garage refuses configuration files holding secrets that other users can read.
        fs::set_permissions(&self.config, fs::Permissions::from_mode(0o600))?;
        let log = fs::File::create(self.log_file()).context("create garage.log")?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} server", self.bin.display()))?;
        if let Some(mut old) = self.child.replace(child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let started = Instant::now();
        loop {
            let status = self.cli(&["status"]);
            if status.is_ok() {
                return Ok(());
            }
            if self.exited() || started.elapsed() > READY_TIMEOUT {
                let err = status.err().map(|e| format!("{e:#}")).unwrap_or_default();
                bail!(
                    "garage did not become ready ({err})\nserver log:\n{}",
                    log_tail(&self.log_file(), 8192)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Assigns this node a 1 GB capacity in zone `dc1` and applies layout version 1.
    fn init_cluster(&self) -> anyhow::Result<()> {
        let out = self.cli(&["node", "id", "-q"])?;
        let node_id = out
            .trim()
            .split('@')
            .next()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| anyhow!("unexpected `garage node id` output: {out:?}"))?
            .to_owned();
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id])?;
        self.cli(&["layout", "apply", "--version", "1"]).map(drop)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            if keep_temp_dirs() {
                eprintln!("keeping Garage directory {}", dir.keep().display());
            }
        }
    }
}

/// The `garage` binary: `$PGAGENT_TEST_GARAGE`, else `$CARGO_HOME/bin/garage` (default
/// `~/.cargo/bin/garage`), else the first `garage` on `PATH`.
pub fn garage_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(GARAGE_ENV) {
        return Ok(PathBuf::from(path));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let path = std::env::var_os("PATH").unwrap_or_default();
    cargo_home
        .map(|home| home.join("bin"))
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("garage"))
        .find(|bin| bin.is_file())
        .ok_or_else(|| anyhow!("no garage binary: run scripts/install-deps or set {GARAGE_ENV}"))
}

/// Extracts `(key id, secret)` from `garage key create` output, which prints
/// `Key ID: GK…` and `Secret key: …` lines.
fn parse_key(output: &str) -> Option<(String, String)> {
    let field = |label: &str| {
        output.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim().eq_ignore_ascii_case(label)).then(|| value.trim().to_owned())
        })
    };
    let id = field("Key ID").filter(|id| id.starts_with("GK"))?;
    let secret = field("Secret key").filter(|s| !s.is_empty())?;
    Some((id, secret))
}

/// `bytes` random bytes as lowercase hex.
fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_create_output() {
        let out = "==== ACCESS KEY INFORMATION ====\n\
                   Key ID:              GK0123456789abcdef01234567\n\
                   Key name:            pgagent-test\n\
                   Secret key:          00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\
                   Created:             2025-01-01 00:00:00.000 +00:00\n";
        let (id, secret) = parse_key(out).unwrap();
        assert_eq!(id, "GK0123456789abcdef01234567");
        assert_eq!(
            secret,
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
        );
        assert_eq!(parse_key("Key name: x\n"), None);
    }

    #[test]
    fn random_hex_has_two_digits_per_byte() {
        let hex = random_hex(32);
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
