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
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use forward::accept_loop;

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

mod forward;
#[cfg(test)]
mod tests;
