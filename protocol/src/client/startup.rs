//! Connection setup: socket, TLS negotiation, StartupMessage and authentication.
//!
//! Sequence from the PostgreSQL documentation, "Message Flow" (Start-up,
//! SSL Session Encryption, SASL Authentication): an optional SSLRequest
//! answered by one byte `S`/`N`; a StartupMessage with `replication=true`
//! (a physical replication connection, handled by a walsender) or with a
//! `database` (a regular SQL session); then
//! trust, cleartext password, MD5 or SCRAM-SHA-256 until AuthenticationOk;
//! then ParameterStatus/BackendKeyData until ReadyForQuery.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::client::codec::{log_notice, server_error, BackendMessage, Conn, Socket};
use crate::client::connection::Connection;
use crate::client::conninfo::{ConnConfig, Host, SslMode};
use crate::client::tls;
use crate::error::Error;

/// What the StartupMessage asks the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionKind {
    /// `replication=true`: a walsender for physical replication commands.
    Physical,
    /// A regular backend connected to `dbname` (default `postgres`), for SQL.
    Sql,
}

/// Connects, negotiates TLS and authenticates, within `connect_timeout` if
/// set. The connection returned has reached ReadyForQuery and holds the
/// server's ParameterStatus values.
pub(crate) async fn establish(cfg: &ConnConfig, kind: SessionKind) -> Result<Connection, Error> {
    match cfg.connect_timeout {
        Some(limit) => tokio::time::timeout(limit, establish_inner(cfg, kind))
            .await
            .map_err(|_| {
                Error::timeout(format!(
                    "connecting to {} took longer than {} s",
                    cfg.redacted(),
                    limit.as_secs()
                ))
            })?,
        None => establish_inner(cfg, kind).await,
    }
}

async fn establish_inner(cfg: &ConnConfig, kind: SessionKind) -> Result<Connection, Error> {
    let socket = match &cfg.host {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", cfg.port));
            let s = UnixStream::connect(&path).await.map_err(|e| {
                Error::io_context(format!("connecting to socket {}", path.display()), e)
            })?;
            Socket::Unix(s)
        }
        Host::Tcp(host) => {
            let tcp = match cfg.hostaddr {
                Some(addr) => TcpStream::connect((addr, cfg.port)).await,
                None => TcpStream::connect((host.as_str(), cfg.port)).await,
            }
            .map_err(|e| Error::io_context(format!("connecting to {host}:{}", cfg.port), e))?;
            tcp.set_nodelay(true).map_err(Error::io)?;
            negotiate_tls(cfg, host, tcp).await?
        }
    };
    let mut conn = Conn::new(socket);
    let mut params: Vec<(&str, &str)> = vec![("user", &cfg.user)];
    match kind {
        SessionKind::Physical => params.push(("replication", "true")),
        SessionKind::Sql => params.push(("database", cfg.dbname.as_deref().unwrap_or("postgres"))),
    }
    if let Some(app) = &cfg.application_name {
        params.push(("application_name", app));
    }
    if let Some(options) = &cfg.options {
        params.push(("options", options));
    }
    conn.queue(|buf| frontend::startup_message(params.iter().copied(), buf))?;
    conn.flush().await?;
    authenticate(&mut conn, cfg).await?;
    let mut parameters = Vec::new();
    loop {
        match conn.recv().await? {
            BackendMessage::Pg(Message::ParameterStatus(body)) => {
                let name = body.name().map_err(|e| Error::protocol(e.to_string()))?;
                let value = body.value().map_err(|e| Error::protocol(e.to_string()))?;
                parameters.push((name.to_owned(), value.to_owned()));
            }
            BackendMessage::Pg(Message::BackendKeyData(_)) => {}
            BackendMessage::Pg(Message::NoticeResponse(body)) => log_notice(&body),
            BackendMessage::Pg(Message::ReadyForQuery(_)) => {
                return Ok(Connection::new(conn, parameters))
            }
            BackendMessage::Pg(Message::ErrorResponse(body)) => return Err(server_error(&body)),
            _ => return Err(Error::protocol("unexpected message during startup")),
        }
    }
}

/// Sends SSLRequest when `sslmode` wants TLS and performs the handshake.
/// `allow` and `disable` never ask; `prefer` continues in plain text when the
/// server answers `N`.
async fn negotiate_tls(cfg: &ConnConfig, host: &str, mut tcp: TcpStream) -> Result<Socket, Error> {
    if matches!(cfg.ssl_mode, SslMode::Disable | SslMode::Allow) {
        return Ok(Socket::Tcp(tcp));
    }
    let config = tls::client_config(cfg)?;
    let name = tls::server_name(host)?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(Error::io)?;
    // Exactly one byte is read, so nothing sent in plain text after the answer
    // can be mistaken for part of the TLS stream.
    let answer = tcp.read_u8().await.map_err(Error::io)?;
    match answer {
        b'S' => {
            let stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Error::tls_cause(format!("TLS handshake with {host}"), e))?;
            Ok(Socket::Tls(Box::new(stream)))
        }
        b'N' if cfg.ssl_mode == SslMode::Prefer => Ok(Socket::Tcp(tcp)),
        b'N' => Err(Error::tls(format!(
            "server {host} does not support SSL, but sslmode={} requires it",
            cfg.ssl_mode.as_str()
        ))),
        other => Err(Error::protocol(format!(
            "unexpected answer {:?} to SSLRequest",
            char::from(other)
        ))),
    }
}

fn password(cfg: &ConnConfig) -> Result<&str, Error> {
    cfg.password.as_deref().ok_or_else(|| {
        Error::auth(format!(
            "the server asked for a password for user {:?} but none was supplied \
             (set password in the connection string, PGPASSWORD or a password file)",
            cfg.user
        ))
    })
}

async fn authenticate(conn: &mut Conn, cfg: &ConnConfig) -> Result<(), Error> {
    loop {
        let message = match conn.recv().await? {
            BackendMessage::Pg(m) => m,
            BackendMessage::CopyBothResponse => {
                return Err(Error::protocol(
                    "unexpected CopyBothResponse during authentication",
                ))
            }
        };
        match message {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                let pw = password(cfg)?;
                conn.queue(|buf| frontend::password_message(pw.as_bytes(), buf))?;
                conn.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let pw = password(cfg)?;
                let hash = md5_hash(cfg.user.as_bytes(), pw.as_bytes(), body.salt());
                conn.queue(|buf| frontend::password_message(hash.as_bytes(), buf))?;
                conn.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Some(m) = mechanisms.next().map_err(|e| Error::protocol(e.to_string()))? {
                    offered.push(m.to_owned());
                }
                if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(Error::auth(format!(
                        "no supported SASL mechanism offered (server offers {offered:?})"
                    )));
                }
                scram(conn, password(cfg)?).await?;
            }
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            Message::NoticeResponse(body) => log_notice(&body),
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi => {
                return Err(Error::auth(
                    "the server asked for an authentication method this client does not support \
                     (GSSAPI, SSPI, Kerberos or SCM credentials); use scram-sha-256, md5, password or trust",
                ))
            }
            _ => return Err(Error::protocol("unexpected message during authentication")),
        }
    }
}

/// SCRAM-SHA-256 without channel binding (RFC 7677; `SCRAM-SHA-256-PLUS` is not used).
async fn scram(conn: &mut Conn, password: &str) -> Result<(), Error> {
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    conn.queue(|buf| frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), buf))?;
    conn.flush().await?;
    match conn.recv().await? {
        BackendMessage::Pg(Message::AuthenticationSaslContinue(body)) => {
            scram
                .update(body.data())
                .map_err(|e| Error::auth(format!("SCRAM exchange failed: {e}")))?;
        }
        BackendMessage::Pg(Message::ErrorResponse(body)) => return Err(server_error(&body)),
        _ => return Err(Error::protocol("expected AuthenticationSASLContinue")),
    }
    conn.queue(|buf| frontend::sasl_response(scram.message(), buf))?;
    conn.flush().await?;
    match conn.recv().await? {
        BackendMessage::Pg(Message::AuthenticationSaslFinal(body)) => scram
            .finish(body.data())
            .map_err(|e| Error::auth(format!("SCRAM server signature invalid: {e}"))),
        BackendMessage::Pg(Message::ErrorResponse(body)) => Err(server_error(&body)),
        _ => Err(Error::protocol("expected AuthenticationSASLFinal")),
    }
}
