//! The proxy's threads: accepting, connecting to the target, and forwarding each direction
//! under the mode, the cut rule and the recording.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{lock, ProxyMode, Shared};

/// How often blocked forwarding threads look at the mode again.
const POLL: Duration = Duration::from_millis(20);
/// Timeout for connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of each forwarded chunk, in bytes.
const CHUNK: usize = 64 * 1024;

pub(super) fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopped() {
            return;
        }
        let Ok(client) = stream else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.mode() == ProxyMode::Refuse {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        shared.register(id, &client);
        let conn_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name(format!("proxy-conn-{id}"))
            .spawn(move || {
                serve(id, client, target, &conn_shared);
                lock(&conn_shared.conns).remove(&id);
            });
        if spawned.is_err() {
            lock(&shared.conns).remove(&id);
        }
    }
}

/// Connects to the target (once the mode allows traffic) and forwards both directions until
/// both are closed.
fn serve(id: u64, client: TcpStream, target: SocketAddr, shared: &Arc<Shared>) {
    loop {
        if shared.stopped() {
            return;
        }
        match shared.mode() {
            ProxyMode::Refuse => return,
            ProxyMode::Blackhole => thread::sleep(POLL),
            ProxyMode::Pass | ProxyMode::Delay(_) => break,
        }
    }
    let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    shared.register(id, &upstream);
    if shared.mode() == ProxyMode::Refuse {
        // Refuse was set between the check above and the registration.
        let _ = upstream.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up_shared = Arc::clone(shared);
    let to_target =
        thread::spawn(move || pump(id, client2, upstream2, &up_shared, Direction::ToTarget));
    pump(id, upstream, client, shared, Direction::ToClient);
    let _ = to_target.join();
}

/// Which way a [`pump`] copies: cut patterns are looked for in what clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToTarget,
    ToClient,
}

/// Copies `from` → `to` chunk by chunk, obeying the mode before each write; towards the
/// target, a chunk that completes a cut pattern closes the connection instead, and every
/// chunk is kept under connection `id` while recording.
///
/// A reader and a writer thread are joined by a queue of chunks stamped with the time they
/// may be written: in [`ProxyMode::Delay`] each chunk is due its delay after it was read, so
/// the delay is added latency and the chunks of a long response still flow back to back (a
/// delay line, not a bandwidth limit).
fn pump(id: u64, mut from: TcpStream, to: TcpStream, shared: &Arc<Shared>, direction: Direction) {
    if from.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<Option<(Instant, Vec<u8>)>>();
    let writer = {
        let shared = Arc::clone(shared);
        let Ok(from2) = from.try_clone() else { return };
        thread::spawn(move || write_due(rx, to, from2, &shared))
    };
    let mut buf = vec![0u8; CHUNK];
    // The last bytes sent towards the target, so a pattern split between two chunks is found.
    let mut seen: Vec<u8> = Vec::new();
    loop {
        if shared.stopped() || shared.mode() == ProxyMode::Refuse {
            break;
        }
        if shared.mode() == ProxyMode::Blackhole {
            // Leave incoming bytes in the kernel buffer: the sender eventually blocks.
            thread::sleep(POLL);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                // Half-close: the peer finished sending; the other direction may continue.
                let _ = tx.send(None);
                break;
            }
            Ok(n) => n,
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if direction == Direction::ToTarget && shared.recording.load(Ordering::SeqCst) {
            lock(&shared.sent)
                .entry(id)
                .or_default()
                .extend_from_slice(&buf[..n]);
        }
        if direction == Direction::ToTarget && completes_cut_pattern(shared, &mut seen, &buf[..n]) {
            shared.cut.fetch_add(1, Ordering::SeqCst);
            // Dropping the queue without a half-close makes the writer shut the target's
            // socket down; queued earlier chunks are written first, this one never.
            let _ = from.shutdown(Shutdown::Both);
            break;
        }
        let delay = match shared.mode() {
            ProxyMode::Delay(d) => d,
            _ => Duration::ZERO,
        };
        if tx
            .send(Some((Instant::now() + delay, buf[..n].to_vec())))
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// Whether `chunk`, after the bytes in `seen`, contains one of the cut patterns; keeps in
/// `seen` the tail a pattern could still start in.
fn completes_cut_pattern(shared: &Shared, seen: &mut Vec<u8>, chunk: &[u8]) -> bool {
    let patterns = shared.cut_patterns();
    let Some(longest) = patterns.iter().map(Vec::len).max() else {
        seen.clear();
        return false;
    };
    seen.extend_from_slice(chunk);
    let found = patterns
        .iter()
        .any(|p| seen.windows(p.len()).any(|w| w == p.as_slice()));
    let keep = seen.len().min(longest - 1);
    seen.drain(..seen.len() - keep);
    found
}

/// The writing half of [`pump`]: writes each chunk once it is due and the mode lets it
/// through; `None` half-closes `to`. On a write error both sockets are shut down.
fn write_due(
    rx: std::sync::mpsc::Receiver<Option<(Instant, Vec<u8>)>>,
    mut to: TcpStream,
    from: TcpStream,
    shared: &Shared,
) {
    while let Ok(item) = rx.recv() {
        let Some((due, chunk)) = item else {
            let _ = to.shutdown(Shutdown::Write);
            return;
        };
        loop {
            if shared.stopped() {
                return;
            }
            match shared.mode() {
                ProxyMode::Pass | ProxyMode::Delay(_) => break,
                ProxyMode::Blackhole => thread::sleep(POLL),
                ProxyMode::Refuse => return,
            }
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        if to.write_all(&chunk).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
    }
    // The reader stopped (error, refuse, stop) without a half-close.
    let _ = to.shutdown(Shutdown::Both);
}
