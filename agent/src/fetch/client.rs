//! `pgagent fetch` as a client of a fetch server: ask over the unix socket, copy the
//! verified file it hands over to `%p`, or start a restore-mode server when none runs.
//!
//! Blocking and small on purpose: PostgreSQL starts this process once per file, so it
//! builds no async runtime, store client or TLS session.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::deliver;
use super::paths::RestorePaths;
use super::wire::{self, Reply, Request};
use super::FetchError;

/// How to start this program again as a restore-mode fetch server.
#[derive(Debug, Clone)]
pub struct Launch {
    /// This executable (`/proc/self/exe`), so it works whether `restore_command` names
    /// pgagent by absolute path or through `PATH`.
    pub exe: PathBuf,
    /// Global options to pass on (`--config`, `--store`, `--staging-dir`), before the
    /// subcommand.
    pub args: Vec<OsString>,
}

/// The hidden subcommand that runs a restore-mode fetch server.
pub const SERVER_COMMAND: &str = "fetch-server";

/// What asking one server gave.
#[derive(Debug)]
pub enum Answer {
    /// The server answered; this is the result of the fetch.
    Done(Result<Served, FetchError>),
    /// No usable answer (no server, another store, the server went away): ask elsewhere.
    Unavailable(String),
}

/// A file delivered through a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Bytes written to `%p`.
    pub len: u64,
    /// `staging`, `prefetch` or `store`.
    pub served_from: String,
}

/// Asks the server at `socket` for `req.file` and, on success, copies it to `path`.
/// `wait` bounds the wait for the answer (the server itself gives up after
/// `fetch.timeout`).
pub fn ask(socket: &Path, req: &Request, path: &Path, wait: Duration) -> Answer {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return Answer::Unavailable(format!("{}: {e}", socket.display())),
    };
    match exchange(&stream, req, wait) {
        Ok((reply, fd)) => Answer::Done(match reply {
            Reply::Ready {
                len,
                served_from,
                note,
            } => {
                let Some(fd) = fd else {
                    return Answer::Unavailable("the server sent no file".into());
                };
                if let Some(note) = note {
                    tracing::info!("{note}");
                }
                deliver::copy_atomically(path, &mut File::from(fd), len)
                    .map(|()| Served { len, served_from })
                    .map_err(|e| FetchError::Abort(format!("write {}: {e}", path.display())))
            }
            Reply::Placed {
                len,
                served_from,
                note,
            } => {
                if let Some(note) = note {
                    tracing::info!("{note}");
                }
                match std::fs::symlink_metadata(path) {
                    Ok(m) if m.is_file() && m.len() == len => Ok(Served { len, served_from }),
                    Ok(m) => Err(FetchError::Abort(format!(
                        "{}: the fetch server placed {} bytes, not {len}",
                        path.display(),
                        m.len()
                    ))),
                    Err(e) => Err(FetchError::Abort(format!(
                        "{}: not there after the fetch server placed it: {e}",
                        path.display()
                    ))),
                }
            }
            Reply::Absent { store } => Err(FetchError::NotFound {
                file: req.file.clone(),
                store,
            }),
            Reply::Abort { message } => Err(FetchError::Abort(message)),
            Reply::Unavailable { message } => return Answer::Unavailable(message),
        }),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Answer::Done(Err(FetchError::Abort(format!(
                "the fetch server at {} gave no answer within {}",
                socket.display(),
                humantime::format_duration(wait)
            ))))
        }
        Err(e) => Answer::Unavailable(format!("{}: {e}", socket.display())),
    }
}

fn exchange(
    stream: &UnixStream,
    req: &Request,
    wait: Duration,
) -> io::Result<(Reply, Option<std::os::fd::OwnedFd>)> {
    stream.set_read_timeout(Some(wait))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    (&mut &*stream).write_all(&line)?;
    let (text, fd) = wire::recv_line(stream)?;
    let reply =
        serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((reply, fd))
}

/// Starts a restore-mode server for `paths` in the background: its own process group,
/// no terminal, stderr appended to `paths.log`, working directory `/` (so it never holds
/// PGDATA's file system busy: a clone or snapshot there can be unmounted or rolled back).
/// It outlives this process; `launch` must name files by absolute paths.
///
/// Errors: the directory or the log cannot be created, or the process cannot start.
pub fn start_server(paths: &RestorePaths, launch: &Launch) -> io::Result<Child> {
    paths.prepare()?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&paths.log)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", paths.log.display())))?;
    // The fetch server opens the store: it keeps the passphrase (crate::child).
    crate::child::keeping_passphrase(&launch.exe)
        .args(&launch.args)
        .arg(SERVER_COMMAND)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .current_dir("/")
        .process_group(0)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("start {}: {e}", launch.exe.display())))
}

/// Waits until something accepts connections on `socket`, for at most `limit`. Gives up
/// early if `child` fails (exits with an error status); a child that exits cleanly lost the
/// race to another server, which is waited for.
pub fn wait_for_socket(socket: &Path, child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if UnixStream::connect(socket).is_ok() {
            return true;
        }
        if let Ok(Some(status)) = child.try_wait() {
            if !status.success() {
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}
