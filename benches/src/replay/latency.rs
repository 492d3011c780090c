//! What the proxy adds to one small request: measured, not assumed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Median, over `samples` fresh connections, of the time from connecting to `addr` until the
/// first byte of the answer to a small HTTP request (`GET /`, unauthenticated: the S3 server
/// answers with an error document at once).
///
/// Errors: the connection fails or the server sends nothing within 10 s.
pub fn first_byte_time(addr: SocketAddr, samples: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).context("read the answer")? == 0 {
            bail!("{addr} closed the connection without answering");
        }
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}
