//! A labelled counter family whose values live elsewhere (atomics the code adds to without
//! a metrics handle) and are read at each scrape: `pgagent_store_requests_total{op}` from
//! the storage crate's request counts, `pgagent_backup_incremental_fallbacks_total{reason}`
//! from the backup code's fallback counts. Every label value is present, from 0.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts, Registry};

/// Reads the current value of each label: `(label value, count)`, every value each time.
pub type ReadCounts = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// The family `opts` with one label, `label`, filled from `read` at each scrape.
pub struct ScrapedCounters {
    opts: Opts,
    label: &'static str,
    read: ReadCounts,
    /// Describes the family to the registry; never holds values.
    described: IntCounterVec,
}

impl ScrapedCounters {
    /// A family named `name` (with `help`), its label `label`, its values from `read`.
    pub fn new(name: &str, help: &str, label: &'static str, read: ReadCounts) -> Self {
        let opts = Opts::new(name, help);
        let described = IntCounterVec::new(opts.clone(), &[label]).expect("valid metric");
        ScrapedCounters {
            opts,
            label,
            read,
            described,
        }
    }
}

impl Collector for ScrapedCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.described.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // A fresh family per scrape: concurrent scrapes cannot add a value twice.
        let family = IntCounterVec::new(self.opts.clone(), &[self.label]).expect("valid metric");
        for (value, count) in (self.read)() {
            family.with_label_values(&[value]).inc_by(count);
        }
        family.collect()
    }
}

/// The text exposition format of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut buf,
    )
    .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("exposition format is UTF-8")
}
