//! Per-store metrics, labelled `store`: how far each store of a cluster kept in several
//! stores is behind, and whether it is taking writes.
//!
//! The unlabelled series (`pgagent_wal_uploaded_lsn`, `pgagent_upload_lag_bytes`,
//! `pgagent_rpo_seconds`) keep their one-store meaning: what every **required** store
//! holds, the position `flush` follows. These families say it per store, async ones
//! included.

use std::sync::Mutex;

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// One store's state as `/readyz` judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// The store's name.
    pub name: String,
    /// Its last upload attempt succeeded (or none failed yet).
    pub up: bool,
    /// An async store behind by more than its `max_lag`.
    pub lag_exceeded: bool,
}

/// One store's numbers, as the status publisher sets them.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSample {
    /// The state `/readyz` looks at.
    pub health: StoreHealth,
    /// End of the contiguous WAL durable in the store (bytes, as an LSN).
    pub uploaded_lsn: u64,
    /// Bytes received and not yet in the store.
    pub lag_bytes: u64,
    /// Age in seconds of the oldest WAL the store lacks.
    pub rpo_seconds: f64,
}

/// The `store`-labelled families.
#[derive(Debug)]
pub struct StoreMetrics {
    /// `pgagent_store_up{store}`: 1 while uploads to the store succeed.
    up: IntGaugeVec,
    /// `pgagent_store_uploaded_lsn{store}`: end of the contiguous WAL in the store.
    uploaded_lsn: IntGaugeVec,
    /// `pgagent_store_lag_bytes{store}`: WAL received and not yet in the store.
    lag_bytes: IntGaugeVec,
    /// `pgagent_store_rpo_seconds{store}`: age of the oldest WAL the store lacks.
    rpo_seconds: GaugeVec,
    /// `pgagent_store_lag_exceeded{store}`: 1 while an async store is past its `max_lag`.
    lag_exceeded: IntGaugeVec,
    /// `pgagent_store_copies_total{store}`: WAL objects copied into the store from
    /// another store (a lagging store catching up).
    copies_total: IntCounterVec,
    /// The last sample of each store, for `/readyz`.
    health: Mutex<Vec<StoreHealth>>,
}

impl StoreMetrics {
    /// Creates the families and registers them in `registry`.
    ///
    /// Panics if a family of the same name is already registered (a programming error).
    pub fn register(registry: &Registry) -> StoreMetrics {
        let int = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["store"]).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let rpo_seconds = GaugeVec::new(
            Opts::new(
                "pgagent_store_rpo_seconds",
                "Age in seconds of the oldest received WAL not yet durable in this store.",
            ),
            &["store"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(rpo_seconds.clone()))
            .expect("unique");
        let copies_total = IntCounterVec::new(
            Opts::new(
                "pgagent_store_copies_total",
                "WAL objects copied into this store from another store while it caught up.",
            ),
            &["store"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(copies_total.clone()))
            .expect("unique");
        StoreMetrics {
            up: int(
                "pgagent_store_up",
                "1 while uploads to this store succeed, 0 while they fail.",
            ),
            uploaded_lsn: int(
                "pgagent_store_uploaded_lsn",
                "End of the contiguous WAL durable in this store, as a byte position.",
            ),
            lag_bytes: int(
                "pgagent_store_lag_bytes",
                "Bytes of WAL received but not yet durable in this store.",
            ),
            rpo_seconds,
            lag_exceeded: int(
                "pgagent_store_lag_exceeded",
                "1 while an async store is behind by more than its max_lag.",
            ),
            copies_total,
            health: Mutex::new(Vec::new()),
        }
    }

    /// Creates every store's series at 0 (labelled counters start at 0 for every known
    /// label).
    pub fn known(&self, names: &[String]) {
        for n in names {
            self.copies_total.with_label_values(&[n]);
        }
    }

    /// Counts one object copied into `store`.
    pub fn copied(&self, store: &str) {
        self.copies_total.with_label_values(&[store]).inc();
    }

    /// Sets every store's series from `samples`.
    pub fn set(&self, samples: &[StoreSample]) {
        for s in samples {
            let l = [s.health.name.as_str()];
            self.up.with_label_values(&l).set(i64::from(s.health.up));
            self.uploaded_lsn
                .with_label_values(&l)
                .set(i64::try_from(s.uploaded_lsn).unwrap_or(i64::MAX));
            self.lag_bytes
                .with_label_values(&l)
                .set(i64::try_from(s.lag_bytes).unwrap_or(i64::MAX));
            self.rpo_seconds.with_label_values(&l).set(s.rpo_seconds);
            self.lag_exceeded
                .with_label_values(&l)
                .set(i64::from(s.health.lag_exceeded));
        }
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) =
            samples.iter().map(|s| s.health.clone()).collect();
    }

    /// Why `/readyz` fails because of a store: `store_down:<name>` for a store whose
    /// uploads fail, `store_lag:<name>` for an async store past its `max_lag`; empty when
    /// every store is fine.
    pub fn unready(&self) -> Vec<String> {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let down = health
            .iter()
            .filter(|h| !h.up)
            .map(|h| format!("store_down:{}", h.name));
        let lag = health
            .iter()
            .filter(|h| h.lag_exceeded)
            .map(|h| format!("store_lag:{}", h.name));
        down.chain(lag).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, up: bool, lag_exceeded: bool) -> StoreSample {
        StoreSample {
            health: StoreHealth {
                name: name.into(),
                up,
                lag_exceeded,
            },
            uploaded_lsn: 0x100,
            lag_bytes: 7,
            rpo_seconds: 1.5,
        }
    }

    #[test]
    fn each_store_has_its_series_and_its_readiness_reason() {
        let registry = Registry::new();
        let m = StoreMetrics::register(&registry);
        m.known(&["nas".into(), "r2".into()]);
        m.set(&[sample("nas", true, false), sample("r2", false, true)]);
        let text = crate::metrics::scraped::render(&registry);
        for series in [
            "pgagent_store_up{store=\"nas\"} 1",
            "pgagent_store_up{store=\"r2\"} 0",
            "pgagent_store_lag_bytes{store=\"r2\"} 7",
            "pgagent_store_uploaded_lsn{store=\"nas\"} 256",
            "pgagent_store_rpo_seconds{store=\"nas\"} 1.5",
            "pgagent_store_lag_exceeded{store=\"r2\"} 1",
            "pgagent_store_copies_total{store=\"nas\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        assert_eq!(m.unready(), vec!["store_down:r2", "store_lag:r2"]);
        m.set(&[sample("nas", true, false), sample("r2", true, false)]);
        assert!(m.unready().is_empty());
    }
}
