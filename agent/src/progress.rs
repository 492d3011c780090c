//! Progress of long commands (backup, restore): a bar on a terminal (indicatif), a log line
//! at every tenth of the way otherwise (a service's journal, CI logs).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over a known number of bytes. Shared between tasks (`&self`).
#[derive(Debug)]
pub struct Progress {
    what: String,
    total: u64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Progress of `what` over `total` bytes: a bar when stderr is a terminal.
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            bar
        });
        Progress {
            what: what.to_string(),
            total,
            done: AtomicU64::new(0),
            bar,
        }
    }

    /// Adds `bytes` done.
    pub fn add(&self, bytes: u64) {
        let before = self.done.fetch_add(bytes, Ordering::Relaxed);
        let after = before + bytes;
        match &self.bar {
            Some(bar) => bar.inc(bytes),
            None if self.total > 0 => {
                let step = |n: u64| n.saturating_mul(10) / self.total;
                if step(after) > step(before) && after < self.total {
                    tracing::info!(
                        "{}: {}% ({} of {})",
                        self.what,
                        after.saturating_mul(100) / self.total,
                        bytesize::ByteSize(after),
                        bytesize::ByteSize(self.total)
                    );
                }
            }
            None => {}
        }
    }

    /// Bytes done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_from_several_threads() {
        let p = std::sync::Arc::new(Progress::new("restore", 1000));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || (0..25).for_each(|_| p.add(10)))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(p.done(), 1000);
        p.finish();
    }
}
