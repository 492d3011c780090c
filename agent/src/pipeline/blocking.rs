//! Blocking work (staging file I/O, compression) from the pipeline's async tasks.
//!
//! The daemon runs on tokio's multi-thread runtime: there, blocking work leaves the async
//! worker ([`block`]: `block_in_place`, for short writes the caller waits on anyway;
//! [`off_thread`]: `spawn_blocking`, for compression another task may overlap with). On a
//! current-thread runtime, where `block_in_place` is not allowed, both run the work in place:
//! that is how the pipeline's simulation runs the same code on one thread, in a repeatable
//! order, with its clock paused.

use tokio::runtime::{Handle, RuntimeFlavor};

fn multi_thread() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// Runs `f`, which blocks for a short while, from async code, and returns its value.
pub fn block<T>(f: impl FnOnce() -> T) -> T {
    if multi_thread() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Runs `f` on the blocking pool and waits for it (in place on a current-thread runtime).
///
/// Panics if `f` panics, as awaiting `spawn_blocking` would.
pub async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    if multi_thread() {
        tokio::task::spawn_blocking(f)
            .await
            .expect("blocking task panicked")
    } else {
        f()
    }
}
