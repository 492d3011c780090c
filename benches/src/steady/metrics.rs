//! The daemon's `/metrics` as the steady-load benchmark reads it: a scrape over plain HTTP,
//! a parser for the Prometheus text exposition format, and the counters the benchmark takes
//! differences of.
//!
//! Format: Prometheus docs, "Exposition formats", text-based format: one sample per line,
//! `name{label="value",…} value [timestamp]`, comment lines starting with `#`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// Bytes compressed (before compression) by the uploader: `pgagent_upload_bytes_total{stage="raw"}`.
pub const UPLOAD_BYTES: &str = "pgagent_upload_bytes_total";
/// Objects uploaded, by kind: `pgagent_uploads_total{kind}`.
pub const UPLOADS: &str = "pgagent_uploads_total";
/// Requests to the store, by operation: `pgagent_store_requests_total{op}` (DESIGN.md,
/// "Metrics"). Older daemons do not export it.
pub const STORE_REQUESTS: &str = "pgagent_store_requests_total";

/// How long a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One sample of the exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `pgagent_uploads_total`.
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the text exposition format; comment and blank lines are skipped.
///
/// Errors name the first line that is not `name[{labels}] value [timestamp]`.
pub fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).with_context(|| format!("metrics line {l:?}")))
        .collect()
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| anyhow!("no value"))?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// `k="v",k2="v2"}` → the pairs and the text after the closing brace. Values may hold
/// `\"`, `\\` and `\n` escapes.
fn parse_labels(mut s: &str) -> anyhow::Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or_else(|| anyhow!("label without '='"))?;
        let key = s[..eq].trim().to_owned();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            bail!("label {key} has no quoted value");
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, c) => value.push(c),
                (false, '\\') => {}
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
            escaped = !escaped && c == '\\';
        }
        let end = end.ok_or_else(|| anyhow!("label {key} is not terminated"))?;
        labels.push((key, value));
        s = &s[end..];
    }
}

/// The sum of every sample named `name` whose labels include all of `with`; `None` when no
/// sample has that name (the metric is not exported).
pub fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let mut named = samples.iter().filter(|s| s.name == name).peekable();
    named.peek()?;
    Some(
        named
            .filter(|s| with.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
            .sum(),
    )
}

/// `GET /metrics` from `addr` over HTTP/1.0; the body.
///
/// Errors: the connection fails or the status is not 200.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)
        .with_context(|| format!("connect to the metrics listener {addr}"))?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("read /metrics")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {addr}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET /metrics from {addr}: {status}");
    }
    Ok(body.to_owned())
}

/// Where a PUT count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutSource {
    /// `pgagent_store_requests_total{op="put"}`: every PUT request sent, retries included.
    StoreRequests,
    /// The sum of `pgagent_uploads_total` over all kinds: objects created (a multipart
    /// upload counts once, a failed attempt not at all).
    Uploads,
}

impl PutSource {
    /// The metric expression, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            PutSource::StoreRequests => "pgagent_store_requests_total{op=\"put\"}",
            PutSource::Uploads => "sum of pgagent_uploads_total{kind=…}",
        }
    }
}

/// The upload counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// `pgagent_upload_bytes_total{stage="raw"}`.
    pub raw_bytes: f64,
    /// `pgagent_upload_bytes_total{stage="stored"}`.
    pub stored_bytes: f64,
    /// PUTs so far, and which metric counted them.
    pub puts: f64,
    /// The metric `puts` comes from.
    pub put_source: PutSource,
    /// `pgagent_store_requests_total` by `op` (`put`, `get`, `list`…); empty when the
    /// daemon does not export it.
    pub requests: BTreeMap<String, f64>,
}

impl Counters {
    /// Reads the counters from a scrape's samples: PUTs from `pgagent_store_requests_total`
    /// when the daemon exports it, else from `pgagent_uploads_total`.
    ///
    /// Errors when the upload byte or object counters are missing.
    pub fn from_samples(samples: &[Sample]) -> anyhow::Result<Counters> {
        let bytes = |stage| {
            sum(samples, UPLOAD_BYTES, &[("stage", stage)])
                .ok_or_else(|| anyhow!("{UPLOAD_BYTES} is not exported"))
        };
        let (puts, put_source) = match sum(samples, STORE_REQUESTS, &[("op", "put")]) {
            Some(puts) => (puts, PutSource::StoreRequests),
            None => (
                sum(samples, UPLOADS, &[]).ok_or_else(|| anyhow!("{UPLOADS} is not exported"))?,
                PutSource::Uploads,
            ),
        };
        let mut requests = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == STORE_REQUESTS) {
            if let Some(op) = s.label("op") {
                *requests.entry(op.to_owned()).or_insert(0.0) += s.value;
            }
        }
        Ok(Counters {
            raw_bytes: bytes("raw")?,
            stored_bytes: bytes("stored")?,
            puts,
            put_source,
            requests,
        })
    }

    /// Scrapes `addr` and reads the counters.
    pub fn scrape(addr: SocketAddr) -> anyhow::Result<Counters> {
        Counters::from_samples(&parse(&scrape(addr)?)?)
    }

    /// What changed from `earlier` to `self`.
    ///
    /// Errors when the two come from different PUT metrics or a counter went down (the
    /// daemon restarted in between).
    pub fn since(&self, earlier: &Counters) -> anyhow::Result<Counters> {
        if self.put_source != earlier.put_source {
            bail!("the PUT counter changed between two scrapes");
        }
        let delta = |now: f64, then: f64, what: &str| {
            if now < then {
                bail!("{what} went down from {then} to {now}: did the daemon restart?");
            }
            Ok(now - then)
        };
        let mut requests = BTreeMap::new();
        for (op, now) in &self.requests {
            let then = earlier.requests.get(op).copied().unwrap_or(0.0);
            requests.insert(op.clone(), delta(*now, then, op)?);
        }
        Ok(Counters {
            raw_bytes: delta(self.raw_bytes, earlier.raw_bytes, "raw bytes")?,
            stored_bytes: delta(self.stored_bytes, earlier.stored_bytes, "stored bytes")?,
            puts: delta(self.puts, earlier.puts, "PUTs")?,
            put_source: self.put_source,
            requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: &str = "\
# HELP pgagent_upload_bytes_total Bytes uploaded, before (raw) and after (stored) compression.
# TYPE pgagent_upload_bytes_total counter
pgagent_upload_bytes_total{stage=\"raw\"} 1048576
pgagent_upload_bytes_total{stage=\"stored\"} 65536
# TYPE pgagent_uploads_total counter
pgagent_uploads_total{kind=\"history\"} 0
pgagent_uploads_total{kind=\"partial\"} 57
pgagent_uploads_total{kind=\"segment\"} 2
pgagent_wal_uploaded_lsn 4294967296
";

    #[test]
    fn parses_samples_with_and_without_labels() {
        let samples = parse(TODAY).unwrap();
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[0].name, UPLOAD_BYTES);
        assert_eq!(samples[0].label("stage"), Some("raw"));
        assert_eq!(samples[0].value, 1048576.0);
        assert_eq!(samples[5].labels, vec![]);
        assert_eq!(samples[5].value, 4294967296.0);
    }

    #[test]
    fn parses_escaped_label_values_timestamps_and_infinities() {
        let s = parse("m{a=\"x\\\"y\\\\\",b=\"1,2\"} +Inf 1700000000\nn 2.5e3\n").unwrap();
        assert_eq!(
            s[0].labels,
            vec![("a".into(), "x\"y\\".into()), ("b".into(), "1,2".into())]
        );
        assert!(s[0].value.is_infinite());
        assert_eq!(s[1].value, 2500.0);
        assert!(parse("m{a=\"x} 1").is_err());
        assert!(parse("m{a=x} 1").is_err());
        assert!(parse("m").is_err());
        assert!(parse("m one").is_err());
    }

    #[test]
    fn sums_over_labels_and_tells_a_missing_metric_from_zero() {
        let samples = parse(TODAY).unwrap();
        assert_eq!(sum(&samples, UPLOADS, &[]), Some(59.0));
        assert_eq!(sum(&samples, UPLOADS, &[("kind", "partial")]), Some(57.0));
        assert_eq!(sum(&samples, UPLOADS, &[("kind", "delta")]), Some(0.0));
        assert_eq!(sum(&samples, STORE_REQUESTS, &[("op", "put")]), None);
    }

    #[test]
    fn counts_puts_from_store_requests_when_exported() {
        let today = Counters::from_samples(&parse(TODAY).unwrap()).unwrap();
        assert_eq!(today.put_source, PutSource::Uploads);
        assert_eq!(today.puts, 59.0);
        assert_eq!(today.raw_bytes, 1048576.0);
        let with_requests = format!(
            "{TODAY}pgagent_store_requests_total{{op=\"put\"}} 61\n\
             pgagent_store_requests_total{{op=\"get\"}} 3\n"
        );
        let later = Counters::from_samples(&parse(&with_requests).unwrap()).unwrap();
        assert_eq!(later.put_source, PutSource::StoreRequests);
        assert_eq!(later.puts, 61.0);
        assert_eq!(
            later.requests,
            BTreeMap::from([("get".to_owned(), 3.0), ("put".to_owned(), 61.0)])
        );
        assert!(today.requests.is_empty());
        assert!(Counters::from_samples(&parse("pgagent_up 1\n").unwrap()).is_err());
    }

    #[test]
    fn differences_refuse_a_restarted_daemon() {
        let before = Counters {
            raw_bytes: 100.0,
            stored_bytes: 10.0,
            puts: 5.0,
            put_source: PutSource::Uploads,
            requests: BTreeMap::from([("put".to_owned(), 5.0)]),
        };
        let after = Counters {
            raw_bytes: 350.0,
            stored_bytes: 30.0,
            puts: 8.0,
            requests: BTreeMap::from([("put".to_owned(), 8.0), ("get".to_owned(), 4.0)]),
            ..before.clone()
        };
        let d = after.since(&before).unwrap();
        assert_eq!((d.raw_bytes, d.stored_bytes, d.puts), (250.0, 20.0, 3.0));
        assert_eq!(
            d.requests,
            BTreeMap::from([("get".to_owned(), 4.0), ("put".to_owned(), 3.0)])
        );
        assert!(before.since(&after).is_err());
        let other = Counters {
            put_source: PutSource::StoreRequests,
            ..after
        };
        assert!(other.since(&before).is_err());
    }
}
