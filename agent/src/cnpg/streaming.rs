//! Streaming WAL only while this pod is the primary.
//!
//! The sidecar learns the cluster's state from the `Cluster` definition CNPG's instance
//! manager sends with its requests (`status.currentPrimary` and `status.targetPrimary`; no
//! Kubernetes API access). Streaming runs while both name this pod: the daemon's services
//! (pipeline, metrics, schedules; started by a [`StartStreaming`] the command gives, so this
//! service does not reach up to the daemon) start on the first request
//! that says so and stop on the first that names another pod (a switchover sets
//! `targetPrimary` first, so streaming stops before the old primary is demoted). A start that
//! fails (PostgreSQL still starting, promotion under way) is tried again after
//! [`RETRY_AFTER`], on the next request or the next tick of [`Streaming::tick`].
//!
//! One pipeline at a time: a new start waits until the previous one has drained (its
//! uploads finished or `wal.stop_timeout` passed), since both would use one staging
//! directory and one slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pipeline::Progress;

/// Starts streaming: runs until the token is cancelled and what was received is uploaded,
/// counting into the metrics and publishing the pipeline's progress on the sender.
pub type StartStreaming = Arc<
    dyn Fn(
            CancellationToken,
            Arc<Metrics>,
            watch::Sender<Option<Progress>>,
        ) -> futures::future::BoxFuture<'static, anyhow::Result<()>>
        + Send
        + Sync,
>;

/// How long after a failed start (or an unexpected stop) streaming is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Whether this pod is the primary, as the last `Cluster` definition said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodRole {
    /// Both `currentPrimary` and `targetPrimary` name this pod.
    Primary,
    /// Another pod is (or is becoming) the primary.
    Replica,
}

enum State {
    Stopped {
        since_failure: Option<Instant>,
    },
    Running {
        token: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
    },
    /// Cancelled, still uploading what it received.
    Draining(JoinHandle<()>),
}

/// Starts and stops the daemon's streaming as the pod's role changes.
pub struct Streaming {
    start: StartStreaming,
    metrics: Arc<Metrics>,
    progress_tx: watch::Sender<Option<Progress>>,
    progress: watch::Receiver<Option<Progress>>,
    state: Mutex<State>,
    last_role: std::sync::Mutex<Option<PodRole>>,
}

impl Streaming {
    /// A controller that streams with `start`, counting into `metrics`; nothing runs yet.
    pub fn new(start: StartStreaming, metrics: Arc<Metrics>) -> Self {
        let (progress_tx, progress) = watch::channel(None);
        Streaming {
            start,
            metrics,
            progress_tx,
            progress,
            state: Mutex::new(State::Stopped {
                since_failure: None,
            }),
            last_role: std::sync::Mutex::new(None),
        }
    }

    /// The running pipeline's progress, while it streams.
    pub fn progress(&self) -> Option<Progress> {
        self.progress.borrow().clone()
    }

    /// A receiver that changes when streaming starts or stops.
    pub fn watch_progress(&self) -> watch::Receiver<Option<Progress>> {
        self.progress.clone()
    }

    /// Applies what a request said of the pod's role: starts streaming on a primary,
    /// stops it on a replica. Returns at once: a stop drains in the background.
    pub async fn observe(&self, role: PodRole) {
        *self.last_role.lock().unwrap_or_else(|e| e.into_inner()) = Some(role);
        self.apply(role).await;
    }

    /// Applies the last role seen again (a failed start is retried, a pipeline that
    /// stopped by itself is restarted); called every few seconds.
    pub async fn tick(&self) {
        let role = *self.last_role.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(role) = role {
            self.apply(role).await;
        }
    }

    /// Stops streaming and waits for the pipeline to drain (the sidecar is exiting).
    pub async fn stop(&self) {
        let mut state = self.state.lock().await;
        match std::mem::replace(
            &mut *state,
            State::Stopped {
                since_failure: None,
            },
        ) {
            State::Running { token, task } => {
                token.cancel();
                report(task.await);
            }
            State::Draining(task) => {
                let _ = task.await;
            }
            State::Stopped { .. } => {}
        }
    }

    async fn apply(&self, role: PodRole) {
        let mut state = self.state.lock().await;
        let stopped = State::Stopped {
            since_failure: None,
        };
        // A pipeline that ended by itself (an error) is reaped; a drain that is over frees
        // the staging directory for the next start.
        match std::mem::replace(&mut *state, stopped) {
            State::Running { task, .. } if task.is_finished() => {
                report(task.await);
                *state = State::Stopped {
                    since_failure: Some(Instant::now()),
                };
            }
            State::Draining(task) if task.is_finished() => {}
            other => *state = other,
        }
        match (role, &*state) {
            (PodRole::Primary, State::Stopped { since_failure }) => {
                if since_failure.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
                    return;
                }
                tracing::info!("this pod is the primary: streaming WAL");
                let token = CancellationToken::new();
                let task = tokio::spawn((self.start)(
                    token.clone(),
                    self.metrics.clone(),
                    self.progress_tx.clone(),
                ));
                *state = State::Running { token, task };
            }
            (PodRole::Replica, State::Running { .. }) => {
                let State::Running { token, task } = std::mem::replace(
                    &mut *state,
                    State::Stopped {
                        since_failure: None,
                    },
                ) else {
                    unreachable!("matched above")
                };
                tracing::info!("another pod is the primary: streaming stops");
                token.cancel();
                *state = State::Draining(tokio::spawn(async move { report(task.await) }));
            }
            _ => {}
        }
    }
}

fn report(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) {
    match joined {
        Ok(Ok(())) => tracing::info!("streaming stopped"),
        Ok(Err(e)) => tracing::warn!("streaming stopped: {e:#}"),
        Err(e) => tracing::error!("streaming task failed: {e}"),
    }
}
