//! Compress+hash workers: threads fed by a crossbeam channel (CPU-bound work stays off the
//! async runtime), handing sealed objects to the async uploader.

use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use pgagent_protocol::WalSegmentSize;
use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::envelope;
use tokio::sync::mpsc;

use super::jobs::{CompressJob, RawSource, UploadJob};

/// Reads bytes `[pos, end)` of a file with positional reads, leaving the file offset alone
/// (the receiver keeps writing the same file with `pwrite`).
struct RangeReader<'a> {
    file: &'a std::fs::File,
    pos: u64,
    end: u64,
}

impl std::io::Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.end.saturating_sub(self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// How WAL objects are sealed: the zstd level, the segment size (which names each object)
/// and the store's cipher (`None`: a plaintext store).
#[derive(Clone)]
pub struct Sealer {
    /// zstd level (`wal.compression_level`).
    pub level: i32,
    /// The cluster's WAL segment size.
    pub seg: WalSegmentSize,
    /// The store's cipher; an encrypted object's associated data is its store key.
    pub cipher: Option<ObjectCipher>,
}

impl Sealer {
    /// Seals one job: streams its bytes through zstd and (keyed) blake3, and through the
    /// AEAD in an encrypted store, never holding the raw segment in memory.
    ///
    /// Errors: the staged bytes cannot be read.
    pub fn seal(&self, job: CompressJob) -> std::io::Result<UploadJob> {
        let name = job.object.key(self.seg);
        let (level, cipher) = (self.level, self.cipher.as_ref());
        let sealed = match &job.source {
            RawSource::Path(p) => {
                let file = std::fs::File::open(p)?;
                let len = file.metadata()?.len();
                envelope::seal_reader_for(file, Some(len), level, cipher, &name)?
            }
            RawSource::Range { file, from, to } => envelope::seal_reader_for(
                RangeReader {
                    file,
                    pos: *from,
                    end: *to,
                },
                Some(to - from),
                level,
                cipher,
                &name,
            )?,
            RawSource::Bytes(b) => {
                envelope::seal_reader_for(&b[..], Some(b.len() as u64), level, cipher, &name)?
            }
        };
        let remove_after = match job.source {
            RawSource::Path(p) => Some(super::jobs::StagedRelease::new(p)),
            _ => None,
        };
        Ok(UploadJob {
            object: job.object,
            sealed,
            remove_after,
        })
    }
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
        sealer: Sealer,
        jobs: Receiver<CompressJob>,
        out: mpsc::Sender<UploadJob>,
        fatal: mpsc::UnboundedSender<anyhow::Error>,
    ) -> std::io::Result<CompressPool> {
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let jobs = jobs.clone();
            let out = out.clone();
            let fatal = fatal.clone();
            let sealer = sealer.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pgagent-compress-{i}"))
                .spawn(move || {
                    for job in jobs {
                        let name = format!("{:?}", job.object);
                        match sealer.seal(job) {
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
