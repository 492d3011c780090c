//! Connection settings in libpq's formats.
//!
//! Accepts both forms of the PostgreSQL documentation, "Connection
//! Strings": `key=value` pairs (values may be single-quoted; `\` escapes the
//! next character) and `postgres://` / `postgresql://` URIs. Settings not
//! given are taken from the libpq environment variables, then from libpq's
//! defaults; the password may come from the password file
//! ([`crate::client::pgpass`]). Only one host is supported.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::pgpass::{self, PgPassQuery};
use crate::error::Error;

/// Default socket directory of the PostgreSQL packages for Debian and Ubuntu
/// (`DEFAULT_PGSOCKET_DIR` as they build libpq).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// Default port (`DEF_PGPORT`).
pub const DEFAULT_PORT: u16 = 5432;

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory holding the server's socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `sslmode` (PostgreSQL documentation, "SSL Support" and "Protection Provided in Different Modes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Plain connection; this client does not retry with TLS when the server
    /// rejects a plain one (libpq does), so it behaves as `disable`.
    Allow,
    /// Try TLS, fall back to plain when the server does not offer it; the
    /// certificate is not verified. The libpq default.
    #[default]
    Prefer,
    /// TLS required; the certificate is not verified unless `sslrootcert` is
    /// given, in which case this acts as `verify-ca` (as libpq does).
    Require,
    /// TLS required; the certificate chain must lead to a trusted root.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, Error> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(Error::config(format!("invalid sslmode value: {other:?}"))),
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Validated connection settings for a physical replication connection.
///
/// `Debug` and [`ConnConfig::redacted`] never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// Host name or socket directory (`host`).
    pub host: Host,
    /// IP address to connect to instead of resolving `host` (`hostaddr`);
    /// `host` is still used for TLS name checks and the password file.
    pub hostaddr: Option<IpAddr>,
    /// TCP port, also the socket file suffix (`port`).
    pub port: u16,
    /// Role name (`user`).
    pub user: String,
    /// Password (`password`, `PGPASSWORD` or the password file).
    pub password: Option<String>,
    /// Database (`dbname`); unused by physical replication except in the
    /// password file lookup, where its absence means `replication`.
    pub dbname: Option<String>,
    /// TLS policy (`sslmode`).
    pub ssl_mode: SslMode,
    /// PEM file of trusted root certificates (`sslrootcert`); `system` means
    /// the bundled web PKI roots.
    pub ssl_root_cert: Option<PathBuf>,
    /// Shown in `pg_stat_replication` (`application_name`).
    pub application_name: Option<String>,
    /// Limit for connecting, TLS and authentication together (`connect_timeout`,
    /// seconds; values below 2 s are raised to 2 s as libpq does).
    pub connect_timeout: Option<Duration>,
    /// Password file (`passfile`), default `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// Server options sent at startup (`options`).
    pub options: Option<String>,
}

/// Keys this client understands.
const KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "passfile",
    "options",
];

/// libpq keys that are accepted and have no effect on this client.
const IGNORED_KEYS: &[&str] = &[
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "gssencmode",
    "sslcompression",
    "sslsni",
    "client_encoding",
    "replication",
    "channel_binding",
    "krbsrvname",
];

/// Environment variables consulted for keys not given, as libpq does
/// (PostgreSQL documentation, "Environment Variables").
const ENV_VARS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("dbname", "PGDATABASE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("application_name", "PGAPPNAME"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("passfile", "PGPASSFILE"),
    ("options", "PGOPTIONS"),
];

impl ConnConfig {
    /// Parses `s` (key/value or URI form), filling gaps from the process
    /// environment and the password file.
    pub fn parse(s: &str) -> Result<ConnConfig, Error> {
        ConnConfig::parse_with_env(s, |name| std::env::var(name).ok())
    }

    /// As [`ConnConfig::parse`], reading environment variables (`PGHOST`…,
    /// `HOME`) through `env`.
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnConfig, Error> {
        let pairs = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            crate::client::conninfo_uri::parse_uri(s)?
        } else {
            parse_key_values(s)?
        };
        let mut values: Vec<(&str, String)> = Vec::new();
        for (key, value) in pairs {
            let key = KEYS
                .iter()
                .chain(IGNORED_KEYS)
                .find(|k| **k == key)
                .ok_or_else(|| Error::config(format!("invalid connection option {key:?}")))?;
            if let Some(v) = values.iter_mut().find(|(k, _)| k == key) {
                v.1 = value;
            } else {
                values.push((key, value));
            }
        }
        let get = |key: &str| -> Option<String> {
            let given = values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone());
            let from_env = || {
                ENV_VARS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, var)| env(var))
            };
            given.or_else(from_env).filter(|v| !v.is_empty())
        };
        let mut cfg = ConnConfig::from_values(&get)?;
        if cfg.password.is_none() {
            let home = env("HOME").map(PathBuf::from).or_else(os_home_dir);
            let file = cfg
                .passfile
                .clone()
                .or_else(|| home.map(|h| h.join(".pgpass")));
            if let Some(file) = file {
                cfg.password = cfg.password_from_file(&file);
            }
        }
        Ok(cfg)
    }

    fn from_values(get: &dyn Fn(&str) -> Option<String>) -> Result<ConnConfig, Error> {
        let hostaddr = get("hostaddr")
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| Error::config(format!("invalid hostaddr {a:?}")))
            })
            .transpose()?;
        let host = match get("host") {
            Some(h) if h.contains(',') => {
                return Err(Error::config("multiple hosts are not supported"))
            }
            Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
            Some(h) => Host::Tcp(h),
            None => match hostaddr {
                Some(a) => Host::Tcp(a.to_string()),
                None if Path::new(DEFAULT_SOCKET_DIR).is_dir() => {
                    Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
                }
                None => Host::Tcp("localhost".to_owned()),
            },
        };
        let port = match get("port") {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Error::config(format!("invalid port number {p:?}")))?,
            None => DEFAULT_PORT,
        };
        let user = match get("user") {
            Some(u) => u,
            None => os_user_name().ok_or_else(|| {
                Error::config("no user given and the current OS user name is unknown")
            })?,
        };
        let ssl_mode = get("sslmode")
            .map(|m| SslMode::parse(&m))
            .transpose()?
            .unwrap_or_default();
        let connect_timeout = get("connect_timeout")
            .map(|t| {
                t.trim()
                    .parse::<i64>()
                    .map_err(|_| Error::config(format!("invalid connect_timeout {t:?}")))
            })
            .transpose()?
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t.max(2) as u64));
        Ok(ConnConfig {
            host,
            hostaddr,
            port,
            user,
            password: get("password"),
            dbname: get("dbname"),
            ssl_mode,
            ssl_root_cert: get("sslrootcert").map(PathBuf::from),
            application_name: get("application_name").or_else(|| get("fallback_application_name")),
            connect_timeout,
            passfile: get("passfile").map(PathBuf::from),
            options: get("options"),
        })
    }

    /// The host name the password file is matched against: `localhost` for
    /// the default socket directory (libpq's rule), else `host` as given.
    fn pgpass_host(&self) -> String {
        match &self.host {
            Host::Unix(p)
                if p == Path::new(DEFAULT_SOCKET_DIR) || p == Path::new("/run/postgresql") =>
            {
                "localhost".to_owned()
            }
            h => h.to_string(),
        }
    }

    fn password_from_file(&self, file: &Path) -> Option<String> {
        let host = self.pgpass_host();
        let port = self.port.to_string();
        let query = PgPassQuery {
            host: &host,
            port: &port,
            database: self.dbname.as_deref().unwrap_or("replication"),
            user: &self.user,
        };
        pgpass::lookup_file(file, &query)
    }

    /// A display form for logs: host, port, user, sslmode, application name;
    /// never the password.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self)
    }
}

/// Log-safe display of a [`ConnConfig`] (see [`ConnConfig::redacted`]).
pub struct Redacted<'a>(&'a ConnConfig);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(f, "host={} port={} user={}", c.host, c.port, c.user)?;
        if let Some(a) = c.hostaddr {
            write!(f, " hostaddr={a}")?;
        }
        write!(f, " sslmode={}", c.ssl_mode.as_str())?;
        if let Some(a) = &c.application_name {
            write!(f, " application_name={a}")?;
        }
        if c.password.is_some() {
            f.write_str(" password=<redacted>")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("passfile", &self.passfile)
            .field("options", &self.options)
            .finish()
    }
}

fn os_user_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn os_home_dir() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// Splits a `key=value ...` string as `conninfo_parse` in
/// `src/interfaces/libpq/fe-connect.c` does.
pub(crate) fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::config(format!(
                "missing \"=\" after {key:?} in connection info string"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(Error::config(
                            "unterminated quoted string in connection info string",
                        ))
                    }
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
#[path = "conninfo_tests.rs"]
mod tests;
