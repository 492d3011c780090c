//! Compress+hash workers: threads fed by a crossbeam channel (CPU-bound work stays off the
//! async runtime), handing sealed objects to the async uploader.

use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use pgagent_storage::envelope;
use tokio::sync::mpsc;

use super::jobs::{CompressJob, RawSource, UploadJob};

/// Reads the raw bytes of a job.
pub fn read_raw(source: &RawSource) -> std::io::Result<Vec<u8>> {
    match source {
        RawSource::Path(p) => std::fs::read(p),
        RawSource::Prefix { file, len } => {
            let mut buf = vec![0u8; *len as usize];
            file.read_exact_at(&mut buf, 0)?;
            Ok(buf)
        }
        RawSource::Bytes(b) => Ok(b.clone()),
    }
}

/// Seals one job (compress with zstd at `level`, hash with blake3).
pub fn seal_job(job: CompressJob, level: i32) -> std::io::Result<UploadJob> {
    let raw = read_raw(&job.source)?;
    let sealed = envelope::seal(&raw, level);
    let remove_after = match job.source {
        RawSource::Path(p) => Some(p),
        _ => None,
    };
    Ok(UploadJob {
        object: job.object,
        sealed,
        remove_after,
    })
}

/// The worker pool. Dropping every `Sender` of the job channel stops the workers once the
/// queue is drained; `CompressPool::join` waits for that.
#[derive(Debug)]
pub struct CompressPool {
    handles: Vec<JoinHandle<()>>,
}

impl CompressPool {
    /// Starts `threads` workers. A job whose staged file cannot be read is reported on
    /// `fatal` (the daemon stops: a staged segment it cannot read is a broken disk).
    pub fn start(
        threads: usize,
        level: i32,
        jobs: Receiver<CompressJob>,
        out: mpsc::Sender<UploadJob>,
        fatal: mpsc::UnboundedSender<anyhow::Error>,
    ) -> std::io::Result<CompressPool> {
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let jobs = jobs.clone();
            let out = out.clone();
            let fatal = fatal.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pgagent-compress-{i}"))
                .spawn(move || {
                    for job in jobs {
                        let name = format!("{:?}", job.object);
                        match seal_job(job, level) {
                            Ok(upload) => {
                                if out.blocking_send(upload).is_err() {
                                    return; // uploader gone: shutting down
                                }
                            }
                            Err(e) => {
                                let _ = fatal.send(anyhow::anyhow!(
                                    "cannot read staged WAL for {name}: {e}"
                                ));
                                return;
                            }
                        }
                    }
                })?;
            handles.push(handle);
        }
        Ok(CompressPool { handles })
    }

    /// Waits for every worker to finish.
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}
