//! `cnpg-standin`: what CloudNativePG's instance manager does when PostgreSQL runs its
//! `archive_command` or `restore_command` with a WAL plugin: one `WAL.Archive` or
//! `WAL.Restore` call on the plugin's unix socket, with the Cluster's definition.
//!
//! ```text
//! cnpg-standin SOCKET CLUSTER_JSON wal-archive PATH
//! cnpg-standin SOCKET CLUSTER_JSON wal-restore FILE PATH [rewind]
//! ```
//!
//! `CNPG_STANDIN_LOG`, when set, is a file that gets one line per call:
//! `<archive|restore> <file> <microseconds> <grpc code>`, the time of the call alone (the
//! connection and the RPC; not this process's start).
//!
//! Exit status: 0 done; 1 an archive that failed, or a file the plugin says is not found;
//! 255 any other restore failure, so PostgreSQL stops recovery instead of ending it early.

use std::io::Write;
use std::time::Instant;

use pgagent_cnpgi::wal::wal_client::WalClient;
use pgagent_cnpgi::wal::wal_restore_request::Mode;
use pgagent_cnpgi::wal::{WalArchiveRequest, WalRestoreRequest};
use tonic::Code;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: cnpg-standin SOCKET CLUSTER_JSON wal-archive PATH | wal-restore FILE PATH [rewind]");
        std::process::ExitCode::from(2)
    };
    if args.len() < 4 {
        return usage();
    }
    let Ok(cluster) = std::fs::read(&args[1]) else {
        eprintln!("cnpg-standin: cannot read {}", args[1]);
        return std::process::ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let socket = std::path::PathBuf::from(&args[0]);
    let (op, file, result) = runtime.block_on(async {
        let started = Instant::now();
        let mut wal = WalClient::new(pgagent_tests::cnpg::unix_channel(&socket));
        let (op, file, result) = match (args[2].as_str(), &args[3..]) {
            ("wal-archive", [path]) => {
                let r = wal
                    .archive(WalArchiveRequest {
                        cluster_definition: cluster,
                        source_file_name: path.clone(),
                        parameters: Default::default(),
                        check_empty_wal_archive: None,
                    })
                    .await
                    .map(|_| ());
                (
                    "archive",
                    path.rsplit('/').next().unwrap_or(path).to_string(),
                    r,
                )
            }
            ("wal-restore", [name, path, rest @ ..]) => {
                let mode = if rest.first().is_some_and(|r| r == "rewind") {
                    Mode::Rewind
                } else {
                    Mode::Recovery
                };
                let r = wal
                    .restore(WalRestoreRequest {
                        cluster_definition: cluster,
                        source_wal_name: name.clone(),
                        destination_file_name: path.clone(),
                        parameters: Default::default(),
                        mode: mode as i32,
                    })
                    .await
                    .map(|_| ());
                ("restore", name.clone(), r)
            }
            _ => {
                return (
                    "usage",
                    String::new(),
                    Err(tonic::Status::invalid_argument("usage")),
                )
            }
        };
        let micros = started.elapsed().as_micros();
        if let Ok(log) = std::env::var("CNPG_STANDIN_LOG") {
            let code = result.as_ref().err().map_or(Code::Ok, |s| s.code());
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let _ = writeln!(f, "{op} {file} {micros} {code:?}");
            }
        }
        (op, file, result)
    });
    match (op, result) {
        ("usage", _) => usage(),
        (_, Ok(())) => std::process::ExitCode::SUCCESS,
        ("archive", Err(s)) => {
            eprintln!("cnpg-standin: archive {file}: {s}");
            std::process::ExitCode::from(1)
        }
        (_, Err(s)) if s.code() == Code::NotFound => std::process::ExitCode::from(1),
        (_, Err(s)) => {
            eprintln!("cnpg-standin: restore {file}: {s}");
            std::process::ExitCode::from(255)
        }
    }
}
