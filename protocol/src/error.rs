//! The error type of the replication client.
//!
//! An opaque [`Error`] with predicates, in the style of `tokio-postgres`:
//! callers decide on retry or abort with [`Error::is_connection`],
//! [`Error::is_auth`], [`Error::is_tls`] and the server's SQLSTATE
//! ([`Error::code`], codes from PostgreSQL's `src/backend/utils/errcodes.txt`).

use std::fmt;
use std::io;

/// SQLSTATE `28P01` invalid_password.
pub const INVALID_PASSWORD: &str = "28P01";
/// SQLSTATE `28000` invalid_authorization_specification (e.g. no pg_hba.conf entry).
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// SQLSTATE `42501` insufficient_privilege (e.g. role lacks REPLICATION).
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `42704` undefined_object (e.g. the slot does not exist).
pub const UNDEFINED_OBJECT: &str = "42704";
/// SQLSTATE `42710` duplicate_object (e.g. the slot already exists).
pub const DUPLICATE_OBJECT: &str = "42710";
/// SQLSTATE `55000` object_not_in_prerequisite_state (e.g. `wal_level` too low).
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";

/// A server `ErrorResponse`, field by field (protocol docs, "Error and
/// Notice Message Fields").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbError {
    /// `V` (non-localized) or `S` severity: ERROR, FATAL, PANIC.
    pub severity: String,
    /// `C` SQLSTATE code.
    pub code: String,
    /// `M` primary message.
    pub message: String,
    /// `D` detail.
    pub detail: Option<String>,
    /// `H` hint.
    pub hint: Option<String>,
}

impl DbError {
    /// A short explanation for the SQLSTATEs a replication client commonly meets.
    fn advice(&self) -> Option<&'static str> {
        let m = self.message.as_str();
        Some(match self.code.as_str() {
            INVALID_PASSWORD => "the password was rejected; check password, PGPASSWORD or the password file",
            INVALID_AUTHORIZATION_SPECIFICATION if m.contains("pg_hba.conf") => {
                "pg_hba.conf has no entry for this replication connection; add a `host replication <user> <address> scram-sha-256` line"
            }
            INVALID_AUTHORIZATION_SPECIFICATION => "the server refused this role for replication",
            INSUFFICIENT_PRIVILEGE => {
                "the role needs the REPLICATION attribute (ALTER ROLE ... REPLICATION)"
            }
            OBJECT_NOT_IN_PREREQUISITE_STATE if m.contains("wal_level") => {
                "set wal_level = replica (or logical) and restart PostgreSQL"
            }
            UNDEFINED_OBJECT if m.contains("slot") => "the replication slot does not exist",
            _ => return None,
        })
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; DETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; HINT: {h}")?;
        }
        if let Some(a) = self.advice() {
            write!(f, " [{a}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Io,
    Closed,
    Tls,
    Auth,
    Db,
    Protocol,
    Timeout,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Config => "invalid connection settings",
            Kind::Io => "connection error",
            Kind::Closed => "connection closed",
            Kind::Tls => "TLS error",
            Kind::Auth => "authentication failed",
            Kind::Db => "server error",
            Kind::Protocol => "protocol error",
            Kind::Timeout => "timed out",
        }
    }
}

#[derive(Debug)]
struct ErrorInner {
    kind: Kind,
    db: Option<DbError>,
    message: Option<String>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// An error from connecting, authenticating, a replication command or the
/// WAL stream.
pub struct Error(Box<ErrorInner>);

impl Error {
    fn new(kind: Kind, message: Option<String>) -> Error {
        Error(Box::new(ErrorInner {
            kind,
            db: None,
            message,
            cause: None,
        }))
    }

    fn with_cause(mut self, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        self.0.cause = Some(cause.into());
        self
    }

    pub(crate) fn config(msg: impl Into<String>) -> Error {
        Error::new(Kind::Config, Some(msg.into()))
    }

    pub(crate) fn io(e: io::Error) -> Error {
        Error::new(Kind::Io, None).with_cause(e)
    }

    pub(crate) fn io_context(msg: impl Into<String>, e: io::Error) -> Error {
        Error::new(Kind::Io, Some(msg.into())).with_cause(e)
    }

    pub(crate) fn closed(msg: impl Into<String>) -> Error {
        Error::new(Kind::Closed, Some(msg.into()))
    }

    pub(crate) fn tls(msg: impl Into<String>) -> Error {
        Error::new(Kind::Tls, Some(msg.into()))
    }

    pub(crate) fn tls_cause(
        msg: impl Into<String>,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::new(Kind::Tls, Some(msg.into())).with_cause(e)
    }

    pub(crate) fn auth(msg: impl Into<String>) -> Error {
        Error::new(Kind::Auth, Some(msg.into()))
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Error {
        Error::new(Kind::Protocol, Some(msg.into()))
    }

    pub(crate) fn timeout(msg: impl Into<String>) -> Error {
        Error::new(Kind::Timeout, Some(msg.into()))
    }

    pub(crate) fn db(db: DbError) -> Error {
        let mut e = Error::new(Kind::Db, None);
        e.0.db = Some(db);
        e
    }

    /// The connection is gone or could not be made (I/O error, refused,
    /// closed by the server, timeout, server shutting down or starting up):
    /// reconnecting later may succeed.
    pub fn is_connection(&self) -> bool {
        match self.0.kind {
            Kind::Io | Kind::Closed | Kind::Timeout => true,
            Kind::Db => self.code().is_some_and(|c| {
                // 08xxx connection_exception, 57P01 admin_shutdown,
                // 57P02 crash_shutdown, 57P03 cannot_connect_now.
                c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        }
    }

    /// Authentication failed or is impossible: wrong password (`28P01`), no
    /// pg_hba.conf entry or role not allowed (`28000`), no password
    /// available, or a method this client does not support.
    pub fn is_auth(&self) -> bool {
        match self.0.kind {
            Kind::Auth => true,
            Kind::Db => matches!(
                self.code(),
                Some(INVALID_PASSWORD | INVALID_AUTHORIZATION_SPECIFICATION)
            ),
            _ => false,
        }
    }

    /// TLS could not be set up (server refused SSL, handshake or certificate failure).
    pub fn is_tls(&self) -> bool {
        self.0.kind == Kind::Tls
    }

    /// The connection settings could not be parsed or are inconsistent.
    pub fn is_config(&self) -> bool {
        self.0.kind == Kind::Config
    }

    /// The server's SQLSTATE, for errors the server reported.
    pub fn code(&self) -> Option<&str> {
        self.0.db.as_ref().map(|d| d.code.as_str())
    }

    /// The server's primary message, for errors the server reported.
    pub fn server_message(&self) -> Option<&str> {
        self.0.db.as_ref().map(|d| d.message.as_str())
    }

    /// The full server error, for errors the server reported.
    pub fn as_db_error(&self) -> Option<&DbError> {
        self.0.db.as_ref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("db", &self.0.db)
            .field("message", &self.0.message)
            .field("cause", &self.0.cause)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.kind.as_str())?;
        if let Some(m) = &self.0.message {
            write!(f, ": {m}")?;
        }
        if let Some(db) = &self.0.db {
            write!(f, ": {db}")?;
        }
        if let Some(c) = &self.0.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .cause
            .as_ref()
            .map(|c| &**c as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> Error {
        Error::db(DbError {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            detail: Some("d".into()),
            hint: Some("h".into()),
        })
    }

    #[test]
    fn predicates() {
        let e = server(
            INVALID_PASSWORD,
            "password authentication failed for user \"x\"",
        );
        assert!(e.is_auth() && !e.is_connection() && !e.is_tls());
        assert_eq!(e.code(), Some("28P01"));
        assert!(server("28000", "no pg_hba.conf entry").is_auth());
        assert!(server("57P01", "terminating connection").is_connection());
        assert!(server("08006", "x").is_connection());
        assert!(!server("42501", "x").is_connection());
        assert!(Error::io(io::Error::from(io::ErrorKind::ConnectionRefused)).is_connection());
        assert!(Error::closed("eof").is_connection());
        assert!(Error::tls("no").is_tls());
        assert!(Error::auth("no password").is_auth());
        assert!(Error::config("bad").is_config());
        assert_eq!(Error::protocol("x").code(), None);
    }

    #[test]
    fn display() {
        let e = server(
            INSUFFICIENT_PRIVILEGE,
            "must be superuser or replication role to start walsender",
        );
        let s = e.to_string();
        assert!(
            s.starts_with("server error: FATAL: must be superuser"),
            "{s}"
        );
        assert!(
            s.contains("SQLSTATE 42501") && s.contains("DETAIL: d") && s.contains("HINT: h"),
            "{s}"
        );
        assert!(s.contains("REPLICATION attribute"), "{s}");
        let s = server(
            "55000",
            "replication slots can only be used if wal_level >= replica",
        )
        .to_string();
        assert!(s.contains("set wal_level"), "{s}");
        let s = server("28000", "no pg_hba.conf entry for replication connection").to_string();
        assert!(s.contains("host replication"), "{s}");
        let s = Error::io_context(
            "connecting to 127.0.0.1:1",
            io::Error::from(io::ErrorKind::ConnectionRefused),
        )
        .to_string();
        assert!(
            s.starts_with("connection error: connecting to 127.0.0.1:1: "),
            "{s}"
        );
    }
}
