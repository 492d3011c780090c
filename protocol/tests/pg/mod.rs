//! A throwaway PostgreSQL cluster for the live tests of this crate.
//!
//! `initdb` in a temporary directory owned by the `postgres` OS user (the
//! server refuses to run as root), a random loopback port, a socket in the
//! same directory, `wal_level = replica`, TLS with a certificate for
//! `localhost`/127.0.0.1 signed by a throwaway CA, and one role per authentication method:
//!
//! | role | pg_hba method (replication, 127.0.0.1) | password |
//! | --- | --- | --- |
//! | `trustuser` | trust | – |
//! | `scramuser` | scram-sha-256 | `scram-pw` |
//! | `md5user` | md5 (password stored as MD5) | `md5-pw` |
//! | `norepl` | trust, but the role lacks REPLICATION | – |
//!
//! The client binaries (`psql`) come from `PGAGENT_TEST_PG_BIN`, else the highest
//! `/usr/lib/postgresql/*/bin`; the server's (`initdb`, `pg_ctl`) from there too, unless
//! `PGAGENT_TEST_PG=<major>` chooses another major: `/usr/lib/postgresql/<major>/bin`, else
//! `$PGAGENT_TEST_PG_ROOT/<major>/bin` (default root `/opt/pgagent-test/pg`, as
//! `scripts/install-deps` unpacks them) run with `LD_LIBRARY_PATH=<root>/<major>/lib`. A missing
//! installation fails the test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Client programs (`psql`).
    pub bin: PathBuf,
    /// Server programs (`initdb`, `pg_ctl`, `postgres`) and their `lib` directory, if any.
    pub server: (PathBuf, Option<PathBuf>),
    pub port: u16,
}

/// The server programs of `PGAGENT_TEST_PG` (see the module docs), else `client`.
fn server_dirs(client: &Path) -> (PathBuf, Option<PathBuf>) {
    let Some(major) = std::env::var_os("PGAGENT_TEST_PG") else {
        return (client.to_path_buf(), None);
    };
    let major = major.to_string_lossy();
    let packaged = Path::new("/usr/lib/postgresql").join(&*major).join("bin");
    if packaged.join("initdb").exists() {
        return (packaged, None);
    }
    let root = std::env::var_os("PGAGENT_TEST_PG_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pgagent-test/pg"));
    let dir = root.join(&*major);
    assert!(
        dir.join("bin/initdb").exists(),
        "PGAGENT_TEST_PG={major}: PostgreSQL {major} is not installed (no {} nor {}); \
         run scripts/install-deps as root",
        packaged.display(),
        dir.join("bin").display()
    );
    (dir.join("bin"), Some(dir.join("lib")))
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGAGENT_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).expect(
        "PostgreSQL server binaries not found: install postgresql (Debian: /usr/lib/postgresql/<v>/bin) \
         or set PGAGENT_TEST_PG_BIN to the bin directory",
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a PostgreSQL binary as the `postgres` OS user when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    server_command(&(bin.to_path_buf(), None), program)
}

/// Like [`pg_command`] for a server program, with `LD_LIBRARY_PATH` set to its `lib`
/// directory (for that program and the processes it starts only).
fn server_command(server: &(PathBuf, Option<PathBuf>), program: &str) -> Command {
    let mut c = Command::new(if is_root() { "runuser" } else { "env" });
    if is_root() {
        c.args(["-u", "postgres", "--", "env"]);
    }
    c.arg("-u").arg("LD_LIBRARY_PATH");
    if let Some(lib) = &server.1 {
        c.arg(format!("LD_LIBRARY_PATH={}", lib.display()));
    }
    c.arg(server.0.join(program));
    c
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Creates, configures and starts a cluster.
    pub fn start() -> Cluster {
        let bin = bin_dir();
        let server = server_dirs(&bin);
        let dir = tempfile::Builder::new()
            .prefix("pgagent-protocol-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let root = dir.path().to_path_buf();
        let root = root.as_path();
        let data = root.join("data");
        // A self-signed CA and a server certificate it signs for localhost and 127.0.0.1.
        check(
            "openssl req (CA)",
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=pgagent test CA"])
                .arg("-keyout")
                .arg(root.join("ca.key"))
                .arg("-out")
                .arg(root.join("ca.crt"))
                .output(),
        );
        check(
            "openssl req (server)",
            Command::new("openssl")
                .args([
                    "req",
                    "-new",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                ])
                .arg("-keyout")
                .arg(root.join("server.key"))
                .arg("-out")
                .arg(root.join("server.csr"))
                .output(),
        );
        std::fs::write(
            root.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        check(
            "openssl x509 (sign)",
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(root.join("server.csr"))
                .arg("-CA")
                .arg(root.join("ca.crt"))
                .arg("-CAkey")
                .arg(root.join("ca.key"))
                .arg("-extfile")
                .arg(root.join("san.ext"))
                .arg("-out")
                .arg(root.join("server.crt"))
                .output(),
        );
        std::fs::create_dir(root.join("sock")).unwrap();
        if is_root() {
            check(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(root)
                    .output(),
            );
        }
        check(
            "chmod",
            Command::new("chmod")
                .arg("0600")
                .arg(root.join("server.key"))
                .output(),
        );
        check(
            "initdb",
            server_command(&server, "initdb")
                .args(["-A", "trust", "-U", "postgres", "-N", "-D"])
                .arg(&data)
                .output(),
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             wal_level = replica\n\
             max_wal_senders = 4\n\
             max_replication_slots = 4\n\
             wal_sender_timeout = '2s'\n\
             fsync = off\n\
             ssl = on\n\
             ssl_cert_file = '{root}/server.crt'\n\
             ssl_key_file = '{root}/server.key'\n",
            sock = root.join("sock").display(),
            root = root.display(),
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             local replication all trust\n\
             host replication trustuser 127.0.0.1/32 trust\n\
             host replication norepl 127.0.0.1/32 trust\n\
             host replication scramuser 127.0.0.1/32 scram-sha-256\n\
             host replication md5user 127.0.0.1/32 md5\n\
             host all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let cluster = Cluster {
            dir,
            bin,
            server,
            port,
        };
        cluster.pg_ctl(&["start", "-w", "-l"], Some(&root.join("server.log")));
        cluster.psql(
            "CREATE ROLE trustuser LOGIN REPLICATION; \
             CREATE ROLE norepl LOGIN; \
             SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 'scram-pw'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5-pw';",
        );
        cluster
    }

    /// The server's major version (`server_version_num / 10000`).
    pub fn server_major(&self) -> u32 {
        self.psql("SHOW server_version_num").parse::<u32>().unwrap() / 10_000
    }

    /// The major version of the client programs (`psql --version`).
    pub fn client_major(&self) -> u32 {
        let out = check(
            "psql --version",
            Command::new(self.bin.join("psql"))
                .arg("--version")
                .output(),
        );
        // "psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .expect("psql --version")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The CA certificate that signed the server's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Runs `pg_ctl <args> [log]` against this cluster.
    pub fn pg_ctl(&self, args: &[&str], log: Option<&Path>) {
        let mut c = server_command(&self.server, "pg_ctl");
        c.arg("-D").arg(self.data()).args(args);
        if let Some(log) = log {
            c.arg(log);
        }
        check(&format!("pg_ctl {args:?}"), c.output());
    }

    /// Runs SQL through `psql` as `postgres` over the socket; returns
    /// unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let out = check(
            &format!("psql {sql:?}"),
            pg_command(&self.bin, "psql")
                .arg("-h")
                .arg(self.socket_dir())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .output(),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A TCP conninfo for `user` with extra settings.
    pub fn tcp(&self, user: &str, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} sslmode=disable {extra}",
            self.port
        )
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = server_command(&self.server, "pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w"])
            .output();
    }
}
