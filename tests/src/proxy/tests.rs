//! The proxy against an echo server: each mode, the cut rule and the recording.

use super::*;
use std::io::{ErrorKind, Read, Write};
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
