//! Compress+hash and open of the object envelope on real 16 MiB WAL segments.
//!
//! `cargo bench -p pgagent-benches --bench seal`. Each iteration processes every sample
//! segment once (see `pgagent_benches::walcache` for where they come from), so throughput is
//! raw WAL bytes per second:
//!
//! - `seal/zstd/N`: [`envelope::seal`] at level N = blake3 of the raw bytes + zstd + header;
//! - `seal/reader-zstd/3`: [`envelope::seal_reader`], the streaming form (1 MiB reads) that the
//!   daemon's compress threads use per segment, at the default level;
//! - `hash/blake3`: the hash alone;
//! - `open/zstd/3`: [`envelope::open`] of level-3 envelopes = zstd decode + blake3 + checks,
//!   what `pgagent fetch` does per segment.
//!
//! Sample counts are small (10 samples, flat sampling) so a full run stays within a few
//! minutes on two cores. Under `cargo test --benches` nothing is measured.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use pgagent_benches::walcache::{sample_segments, Segment};
use pgagent_storage::envelope;

/// zstd levels measured: the fastest, the default (`wal.compression_level`), a dense one.
const LEVELS: [i32; 3] = [1, 3, 9];

fn bench(c: &mut Criterion, segments: &[Segment]) {
    let total: u64 = segments.iter().map(|s| s.bytes.len() as u64).sum();

    let mut seal = c.benchmark_group("seal");
    configure(&mut seal, total);
    for level in LEVELS {
        seal.bench_with_input(BenchmarkId::new("zstd", level), &level, |b, &level| {
            b.iter(|| {
                for s in segments {
                    std::hint::black_box(envelope::seal(&s.bytes, level));
                }
            })
        });
    }
    // The streaming form the daemon's compress threads use: 1 MiB reads, no raw copy held.
    seal.bench_function(BenchmarkId::new("reader-zstd", 3), |b| {
        b.iter(|| {
            for s in segments {
                std::hint::black_box(
                    envelope::seal_reader(&s.bytes[..], Some(s.bytes.len() as u64), 3)
                        .expect("in memory"),
                );
            }
        })
    });
    seal.finish();

    let mut hash = c.benchmark_group("hash");
    configure(&mut hash, total);
    hash.bench_function("blake3", |b| {
        b.iter(|| {
            for s in segments {
                std::hint::black_box(blake3::hash(&s.bytes));
            }
        })
    });
    hash.finish();

    let sealed: Vec<_> = segments
        .iter()
        .map(|s| envelope::seal(&s.bytes, 3).body)
        .collect();
    let mut open = c.benchmark_group("open");
    configure(&mut open, total);
    open.bench_function(BenchmarkId::new("zstd", 3), |b| {
        b.iter(|| {
            for body in &sealed {
                std::hint::black_box(envelope::open(body).expect("envelope opens"));
            }
        })
    });
    open.finish();
}

fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    bytes: u64,
) {
    group
        .throughput(Throughput::Bytes(bytes))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
}

/// Prints the stored size of each sample segment per level, which criterion does not show.
fn print_ratios(segments: &[Segment]) {
    for s in segments {
        let sizes: Vec<String> = LEVELS
            .iter()
            .map(|&level| {
                let stored = envelope::seal(&s.bytes, level).body.len();
                format!(
                    "level {level}: {stored} bytes ({:.2}:1)",
                    s.bytes.len() as f64 / stored as f64
                )
            })
            .collect();
        eprintln!("{}: {}", s.name, sizes.join(", "));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then nothing runs
    // (generating the sample needs a PostgreSQL installation and half a minute).
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("seal: benchmarks run only under `cargo bench`");
        return;
    }
    let segments = match sample_segments() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot get sample WAL segments: {e:#}");
            std::process::exit(1);
        }
    };
    print_ratios(&segments);
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &segments);
    c.final_summary();
}
