//! Prometheus metrics. The names are a contract (DESIGN.md, "Metrics"); they live here and
//! nowhere else.

pub mod backup;
mod scraped;
mod stores;

pub use backup::{incremental_fallback, BackupMetrics, FallbackReason};
pub use stores::{StoreHealth, StoreMetrics, StoreSample};

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use pgagent_storage::{RequestCounts, RequestOp, RequestTotals};
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use scraped::ScrapedCounters;
use tokio_util::sync::CancellationToken;

/// The `kind` label of `pgagent_uploads_total` and `pgagent_upload_errors_total`: the kinds
/// of WAL object the pipeline uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    /// A complete segment.
    Segment,
    /// A `.partial` segment.
    Partial,
    /// A timeline history file.
    History,
}

impl UploadKind {
    /// Every kind: each series exists, at 0, from the start.
    pub const ALL: [UploadKind; 3] = [
        UploadKind::Segment,
        UploadKind::Partial,
        UploadKind::History,
    ];

    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            UploadKind::Segment => "segment",
            UploadKind::Partial => "partial",
            UploadKind::History => "history",
        }
    }
}

/// The `stage` label of `pgagent_upload_bytes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteStage {
    /// Bytes before compression.
    Raw,
    /// Bytes stored (the envelope: header and zstd frame).
    Stored,
}

impl ByteStage {
    /// Every stage: each series exists, at 0, from the start.
    pub const ALL: [ByteStage; 2] = [ByteStage::Raw, ByteStage::Stored];

    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            ByteStage::Raw => "raw",
            ByteStage::Stored => "stored",
        }
    }
}

/// Everything the daemon reports.
///
/// Labelled counters are reached through typed accessors ([`Metrics::uploads`]…), whose label
/// types list every value; each series is created at 0 when the registry is, so an alert on
/// `increase(…) > 0` sees the first event too (DESIGN.md, "Metrics": "Labelled counters start
/// at 0 for every known label").
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `pgagent_wal_received_lsn`: end of WAL received from the server (bytes, as an LSN).
    pub wal_received_lsn: IntGauge,
    /// `pgagent_wal_flushed_lsn`: the `flush` position last confirmed to the server.
    pub wal_flushed_lsn: IntGauge,
    /// `pgagent_wal_uploaded_lsn`: end of the contiguous WAL durable in the bucket.
    pub wal_uploaded_lsn: IntGauge,
    /// `pgagent_upload_lag_bytes`: received minus uploaded.
    pub upload_lag_bytes: IntGauge,
    /// `pgagent_rpo_seconds`: age of the oldest received WAL not yet in the bucket.
    pub rpo_seconds: Gauge,
    /// `pgagent_staging_bytes`: bytes of WAL files in staging.
    pub staging_bytes: IntGauge,
    /// `pgagent_staging_full`: 1 while receiving is paused because staging is at its quota
    /// or its disk is full.
    pub staging_full: IntGauge,
    /// `pgagent_staging_quota_bytes`: `staging.quota`, so alerts can compare
    /// `pgagent_staging_bytes` with it.
    pub staging_quota_bytes: IntGauge,
    /// `pgagent_wal_gap_bytes`: bytes of WAL that are neither in the bucket nor on the server
    /// (found at start); a recovery from the bucket cannot pass them. 0 when none.
    pub wal_gap_bytes: IntGauge,
    /// `pgagent_uploads_total{kind}`: objects uploaded; see [`Metrics::uploads`].
    uploads_total: IntCounterVec,
    /// `pgagent_upload_errors_total{kind}`: failed upload attempts; see
    /// [`Metrics::upload_errors`].
    upload_errors_total: IntCounterVec,
    /// `pgagent_upload_bytes_total{stage}`: bytes uploaded; see [`Metrics::upload_bytes`].
    upload_bytes_total: IntCounterVec,
    /// `pgagent_conflicts_total`: an immutable object exists with different content.
    pub conflicts_total: IntCounter,
    /// `pgagent_up`: 1 while the replication connection streams.
    pub up: IntGauge,
    /// `pgagent_backup_last_success_timestamp_seconds`: end of the last complete scheduled
    /// base backup, Unix seconds.
    pub backup_last_success_timestamp_seconds: Gauge,
    /// `pgagent_backup_duration_seconds`: how long the last complete scheduled backup took.
    pub backup_duration_seconds: Gauge,
    /// `pgagent_snapshot_last_success_timestamp_seconds`: end of the last scheduled ZFS
    /// snapshot whose record reached the store, Unix seconds.
    pub snapshot_last_success_timestamp_seconds: Gauge,
    /// `pgagent_backup_dedup_ratio`: share of the last backup's chunks already stored (0..1).
    pub backup_dedup_ratio: Gauge,
    /// `pgagent_drill_last_success_timestamp_seconds`: end of the last drill whose every
    /// check passed, Unix seconds (read from the store's drill records at start).
    pub drill_last_success_timestamp_seconds: Gauge,
    /// `pgagent_drill_duration_seconds`: how long the last scheduled drill took.
    pub drill_duration_seconds: Gauge,
    /// `pgagent_drill_rto_seconds`: restore plus replay time of the last scheduled drill.
    pub drill_rto_seconds: Gauge,
    /// `pgagent_drill_checks_failed`: checks the last scheduled drill failed (0: passed).
    pub drill_checks_failed: IntGauge,
    /// `pgagent_fetch_seconds`: time the fetch server took to answer a `restore_command`
    /// request, in seconds (histogram).
    pub fetch_seconds: Histogram,
    /// `pgagent_prefetch_hits_total`: segment requests answered from the prefetch cache.
    pub prefetch_hits_total: IntCounter,
    /// `pgagent_prefetch_misses_total`: segment requests that had to be fetched on demand.
    pub prefetch_misses_total: IntCounter,
    /// `pgagent_store_requests_total{op}`: requests sent to the store, read from these
    /// counters at each scrape; see [`Metrics::store_requests`].
    store_requests: Arc<RequestCounts>,
    /// The `store`-labelled families of a cluster kept in several stores.
    pub stores: Arc<StoreMetrics>,
    /// `pgagent_backup_chain_depth`, `pgagent_backup_server_bytes` and
    /// `pgagent_backup_incremental_fallbacks_total{reason}` (counted by
    /// [`incremental_fallback`]).
    pub backup: BackupMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric; `pgagent_store_requests_total` reports the
    /// requests of every store this process opened ([`crate::store::requests`]).
    pub fn new() -> Self {
        Self::counting_store_requests(crate::store::requests().clone())
    }

    /// [`Metrics::new`] with `pgagent_store_requests_total` read from `store_requests`.
    pub fn counting_store_requests(store_requests: Arc<RequestCounts>) -> Self {
        let registry = Registry::new();
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let fetch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "pgagent_fetch_seconds",
                "Seconds the fetch server took to answer a restore_command request.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(fetch_seconds.clone()))
            .expect("unique");
        let rpo_seconds = Gauge::new(
            "pgagent_rpo_seconds",
            "Age in seconds of the oldest received WAL not yet durable in the bucket.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(rpo_seconds.clone()))
            .expect("unique");
        let conflicts_total = IntCounter::new(
            "pgagent_conflicts_total",
            "Uploads refused because an immutable object exists with different content.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(conflicts_total.clone()))
            .expect("unique");
        registry
            .register(Box::new(store_requests_family(store_requests.clone())))
            .expect("unique");
        let stores = Arc::new(StoreMetrics::register(&registry));
        let backup = BackupMetrics::register(&registry, backup::fallbacks().clone());
        let m = Metrics {
            stores,
            backup,
            wal_received_lsn: int_gauge(
                "pgagent_wal_received_lsn",
                "End of WAL received from the server, as a byte position.",
            ),
            wal_flushed_lsn: int_gauge(
                "pgagent_wal_flushed_lsn",
                "Flush position last confirmed to the server, as a byte position.",
            ),
            wal_uploaded_lsn: int_gauge(
                "pgagent_wal_uploaded_lsn",
                "End of the contiguous WAL durable in the bucket, as a byte position.",
            ),
            upload_lag_bytes: int_gauge(
                "pgagent_upload_lag_bytes",
                "Bytes of WAL received but not yet durable in the bucket.",
            ),
            staging_bytes: int_gauge(
                "pgagent_staging_bytes",
                "Bytes of WAL files in the staging directory.",
            ),
            staging_full: int_gauge(
                "pgagent_staging_full",
                "1 while receiving is paused: staging at its quota, or its disk full.",
            ),
            staging_quota_bytes: int_gauge(
                "pgagent_staging_quota_bytes",
                "staging.quota: bytes of WAL not yet in the store at which receiving pauses.",
            ),
            wal_gap_bytes: int_gauge(
                "pgagent_wal_gap_bytes",
                "Bytes of WAL missing from the bucket that the server no longer has: a recovery cannot pass them.",
            ),
            uploads_total: counter_vec(
                "pgagent_uploads_total",
                "Objects uploaded, by kind (segment, partial, history).",
                "kind",
            ),
            upload_errors_total: counter_vec(
                "pgagent_upload_errors_total",
                "Failed upload attempts, by kind.",
                "kind",
            ),
            upload_bytes_total: counter_vec(
                "pgagent_upload_bytes_total",
                "Bytes uploaded, before (raw) and after (stored) compression.",
                "stage",
            ),
            up: int_gauge(
                "pgagent_up",
                "1 while the replication connection is streaming.",
            ),
            prefetch_hits_total: counter(
                "pgagent_prefetch_hits_total",
                "Segment requests answered from the prefetch cache.",
            ),
            prefetch_misses_total: counter(
                "pgagent_prefetch_misses_total",
                "Segment requests that were not prefetched and were fetched on demand.",
            ),
            backup_last_success_timestamp_seconds: gauge(
                "pgagent_backup_last_success_timestamp_seconds",
                "End of the last complete scheduled base backup, Unix seconds.",
            ),
            backup_duration_seconds: gauge(
                "pgagent_backup_duration_seconds",
                "Duration of the last complete scheduled base backup, seconds.",
            ),
            snapshot_last_success_timestamp_seconds: gauge(
                "pgagent_snapshot_last_success_timestamp_seconds",
                "End of the last scheduled ZFS snapshot recorded in the store, Unix seconds.",
            ),
            backup_dedup_ratio: gauge(
                "pgagent_backup_dedup_ratio",
                "Share of the last base backup's chunks that were already stored (0..1).",
            ),
            drill_last_success_timestamp_seconds: gauge(
                "pgagent_drill_last_success_timestamp_seconds",
                "End of the last drill whose every check passed, Unix seconds.",
            ),
            drill_duration_seconds: gauge(
                "pgagent_drill_duration_seconds",
                "Duration of the last scheduled drill, seconds.",
            ),
            drill_rto_seconds: gauge(
                "pgagent_drill_rto_seconds",
                "Restore plus replay time of the last scheduled drill, seconds.",
            ),
            drill_checks_failed: int_gauge(
                "pgagent_drill_checks_failed",
                "Checks the last scheduled drill failed; 0 when it passed.",
            ),
            fetch_seconds,
            rpo_seconds,
            conflicts_total,
            store_requests,
            registry,
        };
        for kind in UploadKind::ALL {
            m.uploads(kind);
            m.upload_errors(kind);
        }
        for stage in ByteStage::ALL {
            m.upload_bytes(stage);
        }
        m
    }

    /// `pgagent_uploads_total{kind}`: objects of `kind` uploaded.
    pub fn uploads(&self, kind: UploadKind) -> IntCounter {
        self.uploads_total.with_label_values(&[kind.label()])
    }

    /// `pgagent_upload_errors_total{kind}`: failed attempts to upload an object of `kind`.
    pub fn upload_errors(&self, kind: UploadKind) -> IntCounter {
        self.upload_errors_total.with_label_values(&[kind.label()])
    }

    /// `pgagent_upload_bytes_total{stage}`: bytes uploaded, counted at `stage`.
    pub fn upload_bytes(&self, stage: ByteStage) -> IntCounter {
        self.upload_bytes_total.with_label_values(&[stage.label()])
    }

    /// `pgagent_store_requests_total{op}` now: requests sent to the store, by operation.
    pub fn store_requests(&self) -> RequestTotals {
        self.store_requests.totals()
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        scraped::render(&self.registry)
    }
}

/// `pgagent_store_requests_total{op}`: read, at each scrape, from the atomic counters the
/// store wrapper ([`pgagent_storage::CountedStore`]) adds to, so the storage crate needs no
/// metrics library. The `op` label is a [`RequestOp`] (`put`, `get`, `list`, `delete`,
/// `head`; what one request is: [`pgagent_storage::requests`]).
fn store_requests_family(counts: Arc<RequestCounts>) -> ScrapedCounters {
    ScrapedCounters::new(
        "pgagent_store_requests_total",
        "Requests sent to the object store, by operation (put, get, list, delete, head); failed ones included.",
        "op",
        Box::new(move || {
            RequestOp::ALL
                .iter()
                .map(|op| (op.label(), counts.get(*op)))
                .collect()
        }),
    )
}

/// Serves `/metrics`, `/healthz` (the process is alive) and `/readyz` (streaming) on
/// `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    max_rpo_seconds: f64,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state((metrics, max_rpo_seconds));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn render(State((m, _)): State<(Arc<Metrics>, f64)>) -> String {
    m.render()
}

async fn ready(State((m, max_rpo)): State<(Arc<Metrics>, f64)>) -> (StatusCode, String) {
    let (code, text) = readiness(&m, max_rpo);
    (code, format!("{text}\n"))
}

/// `/readyz`: streaming, RPO within `max_rpo` seconds, staging below its quota, every store
/// taking uploads and every async store within its `max_lag` (`store_down:<name>`,
/// `store_lag:<name>`).
pub fn readiness(m: &Metrics, max_rpo: f64) -> (StatusCode, String) {
    if m.up.get() != 1 {
        (StatusCode::SERVICE_UNAVAILABLE, "not streaming".into())
    } else if m.rpo_seconds.get() > max_rpo {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "RPO {:.0} s above metrics.max_rpo_seconds = {max_rpo}",
                m.rpo_seconds.get()
            ),
        )
    } else if m.wal_gap_bytes.get() > 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} bytes of WAL missing from the store: take a new base backup",
                m.wal_gap_bytes.get()
            ),
        )
    } else if m.staging_full.get() == 1 {
        (StatusCode::SERVICE_UNAVAILABLE, "staging is full".into())
    } else if let reasons @ [_, ..] = m.stores.unready().as_slice() {
        (StatusCode::SERVICE_UNAVAILABLE, reasons.join(" "))
    } else {
        (StatusCode::OK, "ready".into())
    }
}

/// Writes the metrics to `<dir>/pgagent.prom` for node_exporter's textfile collector
/// (temporary file + rename, so the collector never reads half a file).
///
/// Errors: the directory is missing or not writable.
pub fn write_textfile(m: &Metrics, dir: &std::path::Path) -> std::io::Result<()> {
    let tmp = dir.join(".pgagent.prom.tmp");
    std::fs::write(&tmp, m.render())?;
    std::fs::rename(&tmp, dir.join("pgagent.prom"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_counters_start_at_zero_for_every_known_label() {
        let text = Metrics::counting_store_requests(Arc::default()).render();
        for series in [
            "pgagent_uploads_total{kind=\"segment\"} 0",
            "pgagent_uploads_total{kind=\"partial\"} 0",
            "pgagent_uploads_total{kind=\"history\"} 0",
            "pgagent_upload_errors_total{kind=\"segment\"} 0",
            "pgagent_upload_errors_total{kind=\"partial\"} 0",
            "pgagent_upload_errors_total{kind=\"history\"} 0",
            "pgagent_upload_bytes_total{stage=\"raw\"} 0",
            "pgagent_upload_bytes_total{stage=\"stored\"} 0",
            "pgagent_store_requests_total{op=\"put\"} 0",
            "pgagent_store_requests_total{op=\"get\"} 0",
            "pgagent_store_requests_total{op=\"list\"} 0",
            "pgagent_store_requests_total{op=\"delete\"} 0",
            "pgagent_store_requests_total{op=\"head\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == series),
                "{series} missing from\n{text}"
            );
        }
    }

    #[test]
    fn contract_names_are_exposed() {
        let requests = Arc::new(RequestCounts::new());
        let m = Metrics::counting_store_requests(requests.clone());
        requests.add(RequestOp::List, 3);
        m.uploads(UploadKind::Segment).inc();
        m.upload_errors(UploadKind::Segment).inc();
        m.upload_bytes(ByteStage::Raw).inc_by(10);
        m.wal_received_lsn.set(42);
        let text = m.render();
        for name in [
            "pgagent_wal_received_lsn 42",
            "pgagent_wal_flushed_lsn",
            "pgagent_wal_uploaded_lsn",
            "pgagent_upload_lag_bytes",
            "pgagent_rpo_seconds",
            "pgagent_staging_bytes",
            "pgagent_staging_quota_bytes",
            "pgagent_uploads_total{kind=\"segment\"} 1",
            "pgagent_upload_errors_total{kind=\"segment\"} 1",
            "pgagent_upload_bytes_total{stage=\"raw\"} 10",
            "pgagent_conflicts_total",
            "pgagent_up",
            "pgagent_fetch_seconds_bucket",
            "pgagent_backup_last_success_timestamp_seconds",
            "pgagent_backup_duration_seconds",
            "pgagent_backup_dedup_ratio",
            "pgagent_backup_chain_depth",
            "pgagent_backup_server_bytes",
            "pgagent_backup_incremental_fallbacks_total{reason=\"no_parent\"}",
            "pgagent_snapshot_last_success_timestamp_seconds",
            "pgagent_drill_last_success_timestamp_seconds",
            "pgagent_drill_duration_seconds",
            "pgagent_drill_rto_seconds",
            "pgagent_drill_checks_failed",
            "pgagent_prefetch_hits_total",
            "pgagent_prefetch_misses_total",
            "pgagent_store_requests_total{op=\"list\"} 3",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert_eq!(m.store_requests().get(RequestOp::List), 3);
    }

    #[test]
    fn store_requests_follow_the_counters_at_each_scrape() {
        let requests = Arc::new(RequestCounts::new());
        let m = Metrics::counting_store_requests(requests.clone());
        let put = "pgagent_store_requests_total{op=\"put\"}";
        assert!(m.render().contains(&format!("{put} 0")));
        requests.add(RequestOp::Put, 2);
        assert!(m.render().contains(&format!("{put} 2")));
        requests.add(RequestOp::Put, 5);
        // Scraping twice does not add twice.
        let _ = m.render();
        assert!(m.render().contains(&format!("{put} 7")), "{}", m.render());
    }
}
