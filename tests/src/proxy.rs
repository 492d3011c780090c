//! A fault-injecting TCP proxy for testing how the agent copes with a flaky PostgreSQL or
//! object-store connection.
//!
//! The proxy listens on a random loopback port and forwards every accepted connection to a
//! fixed target. Its [`ProxyMode`] can change at any time and applies to new and existing
//! connections alike. Besides the mode, a cut rule ([`Proxy::cut_requests_containing`])
//! closes any connection whose client sends a given byte pattern, which holds back one kind
//! of request (one object's `PUT`) while every other request goes through; a recording
//! ([`Proxy::record_sent`]) keeps what clients send, to count the headers they put on the
//! wire. It runs on plain threads, so it works the same under `#[test]` and `#[tokio::test]` (any flavour).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often blocked forwarding threads look at the mode again.
const POLL: Duration = Duration::from_millis(20);
/// Timeout for connecting to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of each forwarded chunk, in bytes.
const CHUNK: usize = 64 * 1024;

/// Behaviour of a [`Proxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways unchanged.
    Pass,
    /// Close new connections as soon as they are accepted, and close every existing one
    /// (both sides) when this mode is set: the target looks down.
    Refuse,
    /// Accept new connections and keep existing ones open, but forward nothing: the target
    /// looks hung. Bytes already sent are held (in the proxy and in kernel buffers), not
    /// dropped, so switching back to [`ProxyMode::Pass`] resumes every stream intact, like a
    /// network partition that heals.
    Blackhole,
    /// Forward with the given latency added in each direction (each chunk is written that
    /// long after it was read; bandwidth is not limited): a request/response exchange gains
    /// about twice the delay.
    Delay(Duration),
}

/// A running proxy. Dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<ProxyMode>,
    stopped: AtomicBool,
    accepted: AtomicU64,
    next_id: AtomicU64,
    /// Clones of both sockets of each live connection, so a mode change can close them.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    /// Byte patterns that cut a connection when its client sends one (none: no rule).
    cut_patterns: Mutex<Vec<Vec<u8>>>,
    /// Connections cut by a pattern since the start.
    cut: AtomicU64,
    /// Whether what clients send is kept in `sent`.
    recording: AtomicBool,
    /// What each connection's client sent while recording, by connection.
    sent: Mutex<HashMap<u64, Vec<u8>>>,
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        *lock(&self.mode)
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn register(&self, id: u64, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            lock(&self.conns).entry(id).or_default().push(clone);
        }
    }

    fn cut_patterns(&self) -> Vec<Vec<u8>> {
        lock(&self.cut_patterns).clone()
    }

    fn close_all(&self) {
        for stream in lock(&self.conns).values().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a forwarding thread must not take the whole proxy down.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Proxy {
    /// Starts a proxy in [`ProxyMode::Pass`] on `127.0.0.1:<random port>` in front of
    /// `target`. Panics if no loopback port can be bound.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind proxy listener on 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy listener address");
        let shared = Arc::new(Shared {
            mode: Mutex::new(ProxyMode::Pass),
            stopped: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            cut_patterns: Mutex::new(Vec::new()),
            cut: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            sent: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, target, accept_shared))
            .expect("spawn proxy thread");
        Proxy {
            addr,
            target,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// Address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `http://127.0.0.1:<port>`, for pointing an HTTP client (an S3 endpoint) at the proxy.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Changes the mode for new and existing connections. With [`ProxyMode::Refuse`], every
    /// existing connection is closed before this returns.
    pub fn set_mode(&self, mode: ProxyMode) {
        *lock(&self.shared.mode) = mode;
        if mode == ProxyMode::Refuse {
            self.shared.close_all();
        }
    }

    /// Cuts every connection whose client sends bytes containing one of `patterns` (an empty
    /// list removes the rule), whatever the mode. The chunk holding the pattern is not
    /// forwarded and both sockets are shut down, so the client sees its connection closed in
    /// the middle of a request and, if it retries, fails again for as long as the rule is
    /// set. Patterns are looked for in the client-to-target direction only, also across
    /// chunk boundaries. Matching on an HTTP request line holds back one request: for an S3
    /// client addressing objects path-style, `PUT /<bucket>/<key>?` and `PUT /<bucket>/<key> `
    /// match that object's uploads (single and multipart), and no key that merely starts with
    /// `<key>`.
    pub fn cut_requests_containing(&self, patterns: Vec<Vec<u8>>) {
        assert!(
            patterns.iter().all(|p| !p.is_empty()),
            "an empty pattern would cut every connection"
        );
        *lock(&self.shared.cut_patterns) = patterns;
    }

    /// Starts keeping every byte clients send from now on, connection by connection, for
    /// [`Proxy::sent_count`] (bodies included: record only small runs).
    pub fn record_sent(&self) {
        self.shared.recording.store(true, Ordering::SeqCst);
    }

    /// How many times `pattern` occurs in what clients sent while recording; an HTTP
    /// header line such as `content-md5: ` counts the requests that carry that header.
    pub fn sent_count(&self, pattern: &[u8]) -> usize {
        assert!(!pattern.is_empty(), "an empty pattern occurs everywhere");
        lock(&self.shared.sent)
            .values()
            .map(|bytes| {
                bytes
                    .windows(pattern.len())
                    .filter(|w| *w == pattern)
                    .count()
            })
            .sum()
    }

    /// Connections cut by [`Proxy::cut_requests_containing`] since the start.
    pub fn requests_cut(&self) -> u64 {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start, including refused ones.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy.
    pub fn active_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
        self.shared.close_all();
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on a random port; each connection runs on its own thread.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(proxy: &Proxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    }

    fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        stream.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn pass_forwards_both_ways() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(&proxy);
        assert_eq!(round_trip(&mut stream, b"hello").unwrap(), b"hello");
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        assert_eq!(round_trip(&mut stream, &big).unwrap(), big);
        assert_eq!(proxy.connections_accepted(), 1);
        assert_eq!(proxy.active_connections(), 1);
    }

    #[test]
    fn delay_adds_latency_in_each_direction() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"warm-up").unwrap();
        proxy.set_mode(ProxyMode::Delay(Duration::from_millis(150)));
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").unwrap(), b"slow");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    /// Delay is latency, not a bandwidth limit: 4 MiB (64 chunks) through a 50 ms delay
    /// line arrive in far less than 64 × 50 ms.
    #[test]
    fn delay_adds_latency_without_limiting_bandwidth() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(&proxy);
        proxy.set_mode(ProxyMode::Delay(Duration::from_millis(50)));
        let data: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let mut reader = stream.try_clone().unwrap();
        let started = Instant::now();
        let expected = data.clone();
        let echo = thread::spawn(move || {
            let mut got = vec![0u8; expected.len()];
            reader.read_exact(&mut got).unwrap();
            got == expected
        });
        stream.write_all(&data).unwrap();
        assert!(echo.join().unwrap());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(1600),
            "{took:?}"
        );
    }

    #[test]
    fn blackhole_holds_bytes_until_pass() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"before").unwrap();
        proxy.set_mode(ProxyMode::Blackhole);
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        stream.write_all(b"held").unwrap();
        let mut buf = [0u8; 4];
        let err = stream.read_exact(&mut buf).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{err}"
        );

        // A connection opened during the hang is accepted but gets nothing either.
        let mut late = connect(&proxy);
        late.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        late.write_all(b"late").unwrap();
        assert!(late.read(&mut buf).is_err());

        proxy.set_mode(ProxyMode::Pass);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"held");
        late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        late.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"late");
    }

    /// A recording counts a pattern in what clients sent after it started, across writes
    /// and connections, and never in what the target answered.
    #[test]
    fn a_recording_counts_what_clients_sent_since_it_started() {
        let proxy = Proxy::start(echo_server());
        let mut first = connect(&proxy);
        round_trip(&mut first, b"content-md5: before").unwrap();
        proxy.record_sent();
        round_trip(&mut first, b"content-").unwrap();
        round_trip(&mut first, b"md5: x\r\ncontent-md5: y").unwrap();
        let mut second = connect(&proxy);
        round_trip(&mut second, b"content-md5: z").unwrap();
        assert_eq!(proxy.sent_count(b"content-md5: "), 3);
        assert_eq!(proxy.sent_count(b"before"), 0);
    }

    /// Whether `stream` was closed by the proxy: it reads EOF or an error, never data.
    fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1];
        matches!(stream.read(&mut buf), Ok(0) | Err(_))
    }

    /// One object's PUT is cut, every time it is sent, while a key that only starts with its
    /// name (a delta) and other requests go through; a pattern split between two writes is
    /// found; removing the rule lets the PUT through.
    #[test]
    fn cut_rule_closes_only_connections_that_send_the_pattern() {
        let proxy = Proxy::start(echo_server());
        let key = "PUT /bucket/pre/wal/000000010000000000000005";
        proxy.cut_requests_containing(vec![
            format!("{key}?").into_bytes(),
            format!("{key} ").into_bytes(),
        ]);
        for request in [
            format!("{key}?x-id=PutObject HTTP/1.1\r\n"),
            format!("{key} HTTP/1.1\r\n"),
        ] {
            for _ in 0..2 {
                let mut stream = connect(&proxy);
                let _ = stream.write_all(request.as_bytes());
                assert!(closed(&mut stream), "{request:?} went through");
            }
        }
        assert_eq!(proxy.requests_cut(), 4);

        // A delta of the same segment, and a GET of the object, are forwarded; so is a
        // request after an earlier one on the same connection.
        let mut stream = connect(&proxy);
        let delta = format!("{key}.partial.d/0000000000000000-0000000000001000 HTTP/1.1\r\n");
        assert_eq!(
            round_trip(&mut stream, delta.as_bytes()).unwrap(),
            delta.as_bytes()
        );
        let get = b"GET /bucket/pre/wal/000000010000000000000005 HTTP/1.1\r\n";
        assert_eq!(round_trip(&mut stream, get).unwrap(), get);

        // Split over two chunks on a connection that already carried a request.
        stream.write_all(b"PUT /bucket/pre/wal/0000000100").unwrap();
        thread::sleep(Duration::from_millis(100));
        let mut got = vec![0u8; 30];
        stream.read_exact(&mut got).unwrap();
        stream.write_all(b"00000000000005 HTTP/1.1\r\n").unwrap();
        assert!(closed(&mut stream), "a split pattern went through");
        assert_eq!(proxy.requests_cut(), 5);

        proxy.cut_requests_containing(Vec::new());
        let mut stream = connect(&proxy);
        let put = format!("{key} HTTP/1.1\r\n");
        assert_eq!(
            round_trip(&mut stream, put.as_bytes()).unwrap(),
            put.as_bytes()
        );
        assert_eq!(proxy.requests_cut(), 5);
    }

    #[test]
    fn refuse_closes_existing_and_new_connections() {
        let proxy = Proxy::start(echo_server());
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"ok").unwrap();
        proxy.set_mode(ProxyMode::Refuse);
        let mut buf = [0u8; 1];
        // The closed connection reads EOF (or a reset), never data.
        assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));

        let mut fresh = connect(&proxy);
        let _ = fresh.write_all(b"x");
        assert!(matches!(fresh.read(&mut buf), Ok(0) | Err(_)));

        proxy.set_mode(ProxyMode::Pass);
        let mut again = connect(&proxy);
        assert_eq!(round_trip(&mut again, b"back").unwrap(), b"back");
    }
}
