//! Small helpers shared by the harness and the tests: polling, free ports, process signals and
//! the switch that keeps temporary directories for inspection.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Environment variable that, when set to `1`, keeps every temporary directory the harness
/// creates (data directories, logs, configs) and prints its path instead of removing it.
pub const KEEP_ENV: &str = "PGAGENT_TEST_KEEP";

/// libpq environment variables (libpq docs, section 34.15) that redirect a client's connection;
/// the harness removes them from the environment of the programs it starts.
pub const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGTARGETSESSIONATTRS",
];

/// Polls `condition` every `poll` until it returns `true` or `timeout` has elapsed.
///
/// Returns `true` when the condition held (it is checked one last time at the deadline), `false`
/// on timeout. Blocks the calling thread: from async code use [`wait_until_async`].
pub fn wait_until(timeout: Duration, poll: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
}

/// Async form of [`wait_until`]: sleeps on the tokio timer between checks, so the runtime keeps
/// serving other tasks.
pub async fn wait_until_async(
    timeout: Duration,
    poll: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(poll).await;
    }
}

/// Tries a server's start: `launch` picks free ports and starts it; when it fails because
/// the server exited during startup (`exited`: a port taken between choosing it and
/// binding it), it is tried again on new ports, `attempts` times at most. `what` names the
/// server in the message of a retry.
///
/// Errors: the last start's, or the first that is not an exit during startup.
pub fn start_retrying<S>(
    server: &mut S,
    what: &str,
    attempts: usize,
    launch: impl Fn(&mut S) -> anyhow::Result<()>,
    exited: impl Fn(&mut S) -> bool,
) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match launch(server) {
            Ok(()) => return Ok(()),
            Err(err) if attempt < attempts && exited(server) => {
                eprintln!("{what} exited during startup, retrying on new ports: {err:#}");
            }
            Err(err) => return Err(err),
        }
    }
}

/// Returns a loopback TCP port that was free a moment ago (bound to port 0, then released).
///
/// Another process may take it before the caller binds it; callers that start servers on it
/// retry with a new port when the bind fails.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// [`free_port`] as a `127.0.0.1:<port>` socket address.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

/// Whether [`KEEP_ENV`] asks to keep temporary directories.
pub fn keep_temp_dirs() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| v == "1")
}

/// Sends `signal` (a name understood by kill(1), such as `KILL` or `TERM`) to process `pid`.
///
/// Uses the `kill` utility so the harness needs no `unsafe` FFI call.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let output = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .context("run kill(1)")?;
    if !output.status.success() {
        bail!(
            "kill -{signal} {pid} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether a process with this pid exists and is not a zombie (reads `/proc/<pid>/stat`).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Pids of the direct children of `parent`, from `/proc/*/stat`.
pub fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Reads a log file for an error message: its last `max_bytes` bytes, lossily decoded, or a
/// note saying why it could not be read.
pub fn log_tail(path: &Path, max_bytes: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max_bytes);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut calls = 0;
        assert!(wait_until(
            Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                calls += 1;
                calls == 3
            }
        ));
        assert_eq!(calls, 3);
        assert!(!wait_until(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || false
        ));
    }

    #[test]
    fn own_process_is_alive_and_listed_as_child_of_parent() {
        let me = std::process::id();
        assert!(process_alive(me));
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(child_pids(me).contains(&child.id()));
        send_signal(child.id(), "KILL").unwrap();
        child.wait().unwrap();
        assert!(!process_alive(child.id()));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
