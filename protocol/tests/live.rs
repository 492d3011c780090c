//! Live tests against a real PostgreSQL started by `pg::Cluster`.

// The harness serves several test files; not all of them use every helper.
#[allow(dead_code)]
mod pg;

use std::time::{Duration, Instant, SystemTime};

use pgagent_protocol::{
    pg_epoch_micros, ConnConfig, Lsn, ReplicationClient, StandbyStatusUpdate, StreamEvent,
    TimelineHistory, TimelineId, WalSegmentSize, XLogLongPageHeader,
};

/// Parses a conninfo without the caller's environment or password file.
fn config(conninfo: &str) -> ConnConfig {
    ConnConfig::parse_with_env(conninfo, |name| {
        (name == "HOME").then(|| "/nonexistent".to_owned())
    })
    .unwrap()
}

async fn connect(conninfo: &str) -> ReplicationClient {
    ReplicationClient::connect(&config(conninfo))
        .await
        .unwrap_or_else(|e| panic!("connecting with {conninfo:?}: {e}"))
}

async fn connect_err(conninfo: &str) -> pgagent_protocol::Error {
    match ReplicationClient::connect(&config(conninfo)).await {
        Ok(_) => panic!("connecting with {conninfo:?} succeeded"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn authentication_and_commands() {
    let pg = pg::Cluster::start();

    // trust over TCP and over the unix socket
    let mut c = connect(&pg.tcp("trustuser", "application_name=pgagent_test")).await;
    let id = c.identify_system().await.unwrap();
    let sysid: u64 = pg
        .psql("SELECT system_identifier FROM pg_control_system()")
        .parse()
        .unwrap();
    assert_eq!(id.system_id, sysid);
    assert_eq!(id.timeline, TimelineId(1));
    assert!(id.xlogpos > Lsn(0x100_0000), "{}", id.xlogpos);
    assert_eq!(id.dbname, None);
    assert_eq!(c.wal_segment_size().await.unwrap(), WalSegmentSize::DEFAULT);
    let version = c.server_version_num().await.unwrap();
    let expected: u32 = pg.psql("SHOW server_version_num").parse().unwrap();
    assert_eq!(version, expected);
    assert_eq!(c.show("wal_level").await.unwrap(), "replica");
    let rows = c.simple_query("SHOW max_wal_senders").await.unwrap();
    assert_eq!(rows, vec![vec![Some("4".to_owned())]]);
    c.close().await.unwrap();

    let sock = format!(
        "host={} port={} user=trustuser",
        pg.socket_dir().display(),
        pg.port
    );
    let mut c = connect(&sock).await;
    assert_eq!(c.identify_system().await.unwrap().system_id, sysid);

    // slots: idempotent creation, read back, missing slot
    assert!(c.create_physical_slot("agent_slot").await.unwrap());
    assert!(!c.create_physical_slot("agent_slot").await.unwrap());
    // pg_replication_slots over a SQL session (how the position is read before 15).
    let mut sql =
        pgagent_protocol::SqlSession::connect(&config(&format!("{sock} dbname=postgres")))
            .await
            .unwrap();
    let by_sql = sql.replication_slot("agent_slot").await.unwrap().unwrap();
    let restart = by_sql.restart_lsn.expect("RESERVE_WAL sets restart_lsn");
    assert!(restart > Lsn::INVALID && restart <= c.identify_system().await.unwrap().xlogpos);
    assert_eq!(sql.replication_slot("no_such_slot").await.unwrap(), None);
    assert!(sql
        .replication_slot("x'; drop")
        .await
        .unwrap_err()
        .is_config());
    if version >= 150_000 {
        // READ_REPLICATION_SLOT (15+) agrees with pg_replication_slots.
        let slot = c
            .read_replication_slot("agent_slot")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(slot.restart_lsn, Some(restart));
        assert_eq!(slot.restart_tli, Some(TimelineId(1)));
        assert_eq!(c.read_replication_slot("no_such_slot").await.unwrap(), None);
    }
    sql.close().await.unwrap();
    // Timeline 1 has no history file: a server error, and the connection stays usable.
    let e = c.timeline_history(TimelineId(1)).await.unwrap_err();
    assert!(e.code().is_some(), "{e}");
    let e = c
        .start_replication(Some("no_such_slot"), restart, TimelineId(1))
        .await
        .err()
        .expect("a missing slot is an error");
    assert_eq!(e.code(), Some("42704"), "{e}");

    // password methods
    let mut c = connect(&pg.tcp("scramuser", "password=scram-pw")).await;
    c.identify_system().await.unwrap();
    let mut c = connect(&pg.tcp("md5user", "password=md5-pw")).await;
    c.identify_system().await.unwrap();
    let e = connect_err(&pg.tcp("scramuser", "password=wrong")).await;
    assert!(e.is_auth() && !e.is_connection(), "{e}");
    assert_eq!(e.code(), Some("28P01"));
    let e = connect_err(&pg.tcp("md5user", "password=wrong")).await;
    assert!(e.is_auth(), "{e}");
    let e = connect_err(&pg.tcp("scramuser", "")).await;
    assert!(e.is_auth() && e.code().is_none(), "{e}");

    // no pg_hba.conf entry, role without REPLICATION, nothing listening
    let e = connect_err(&pg.tcp("postgres", "")).await;
    assert!(e.is_auth(), "{e}");
    assert_eq!(e.code(), Some("28000"));
    assert!(e.to_string().contains("pg_hba.conf"), "{e}");
    let e = connect_err(&pg.tcp("norepl", "")).await;
    assert_eq!(e.code(), Some("42501"), "{e}");
    assert!(!e.is_auth() && !e.is_connection(), "{e}");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = connect_err(&format!(
        "host=127.0.0.1 port={closed_port} user=x sslmode=disable"
    ))
    .await;
    assert!(e.is_connection(), "{e}");
}

#[tokio::test]
async fn tls() {
    let pg = pg::Cluster::start();
    let base = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=scramuser password=scram-pw",
        pg.port
    );

    let mut c = connect(&format!(
        "{base} sslmode=require application_name=tls_require"
    ))
    .await;
    c.identify_system().await.unwrap();
    let ssl = pg.psql(
        "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'tls_require'",
    );
    assert_eq!(ssl, "t");

    let cert = pg.ca_cert();
    let mut c = connect(&format!(
        "{base} sslmode=verify-full sslrootcert={}",
        cert.display()
    ))
    .await;
    c.identify_system().await.unwrap();
    // The certificate names localhost and 127.0.0.1, not 127.0.0.2.
    let mismatch = format!(
        "host=127.0.0.2 hostaddr=127.0.0.1 port={} user=scramuser password=scram-pw sslrootcert={}",
        pg.port,
        cert.display()
    );
    let e = connect_err(&format!("{mismatch} sslmode=verify-full")).await;
    assert!(e.is_tls(), "{e}");
    let mut c = connect(&format!("{mismatch} sslmode=verify-ca")).await;
    c.identify_system().await.unwrap();
    // A private CA is not among the public roots.
    let e = connect_err(&format!("{base} sslmode=verify-full sslrootcert=system")).await;
    assert!(e.is_tls(), "{e}");
    // The unix socket never uses TLS; prefer falls back silently there.
    let sock = format!(
        "host={} port={} user=trustuser sslmode=prefer",
        pg.socket_dir().display(),
        pg.port
    );
    connect(&sock).await.identify_system().await.unwrap();
}

#[tokio::test]
async fn streaming() {
    let pg = pg::Cluster::start();
    let conninfo = pg.tcp("trustuser", "application_name=stream_test");
    let mut c = connect(&conninfo).await;
    let seg = c.wal_segment_size().await.unwrap();
    c.create_physical_slot("stream_slot").await.unwrap();
    // From pg_replication_slots: READ_REPLICATION_SLOT is 15+ only.
    let restart: Lsn = pg
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'stream_slot'")
        .parse()
        .unwrap();
    // Streaming starts at a segment boundary, as pg_receivewal does.
    let start = restart.segment_number(seg).start_lsn(seg);
    let mut stream = c
        .start_replication(Some("stream_slot"), start, TimelineId(1))
        .await
        .unwrap();
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let switched: Lsn = pg.psql("SELECT pg_switch_wal()").parse().unwrap();

    let mut received = start;
    let mut first_page = None;
    let mut keepalive_replied = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    // Read until the switched segment is complete and a keepalive asked for
    // a reply; the ticker cancels `next` often, which must lose no bytes.
    while received < switched.segment_number(seg).end_lsn(seg) || !keepalive_replied {
        assert!(Instant::now() < deadline, "stream stalled at {received}");
        tokio::select! {
            event = stream.next() => match event.unwrap() {
                StreamEvent::XLogData(x) => {
                    assert_eq!(x.wal_start, received, "gap or overlap in the stream");
                    if first_page.is_none() {
                        first_page = Some(x.data.slice(..40.min(x.data.len())));
                    }
                    received = x.data_end();
                }
                StreamEvent::Keepalive(k) => {
                    if k.reply_requested {
                        stream.send_status(&status(received, false)).await.unwrap();
                        keepalive_replied = true;
                    }
                }
                other => panic!("unexpected {other:?}"),
            },
            _ = ticker.tick() => {}
        }
    }
    let header = XLogLongPageHeader::parse(&first_page.unwrap()).unwrap();
    assert_eq!(header.page_addr, start);
    assert_eq!(header.tli, TimelineId(1));

    // A status update moves the slot's restart_lsn to the flushed position.
    stream.send_status(&status(received, true)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let restart: Lsn = pg
            .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'stream_slot'")
            .parse()
            .unwrap();
        if restart == received {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restart_lsn stuck at {restart}, sent {received}"
        );
        // Keep reading so the server sees us alive and answers the reply request.
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    }
    let flush: Lsn = pg
        .psql("SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'stream_test'")
        .parse()
        .unwrap();
    assert_eq!(flush, received);

    // A server shutdown ends the stream with a connection error.
    pg.pg_ctl(&["stop", "-m", "fast", "-w"], None);
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => break e,
            Err(_) => panic!("no error after shutdown"),
        }
    };
    assert!(e.is_connection(), "{e}");
}

fn status(lsn: Lsn, reply: bool) -> StandbyStatusUpdate {
    StandbyStatusUpdate {
        write: lsn,
        flush: lsn,
        apply: Lsn::INVALID,
        client_time: pg_epoch_micros(SystemTime::now()),
        reply_requested: reply,
    }
}

#[tokio::test]
async fn timeline_switch() {
    let pg = pg::Cluster::start();
    let mut c = connect(&pg.tcp("trustuser", "")).await;
    let seg = c.wal_segment_size().await.unwrap();
    let old_end = c.identify_system().await.unwrap().xlogpos;
    c.close().await.unwrap();

    // Restart as a standby with nothing to follow, then promote: timeline 2.
    pg.pg_ctl(&["stop", "-m", "fast", "-w"], None);
    std::fs::write(pg.data().join("standby.signal"), "").unwrap();
    pg.pg_ctl(
        &["start", "-w", "-l"],
        Some(&pg.dir.path().join("server2.log")),
    );
    pg.pg_ctl(&["promote", "-w"], None);

    let mut c = connect(&pg.tcp("trustuser", "")).await;
    let id = c.identify_system().await.unwrap();
    assert_eq!(id.timeline, TimelineId(2));
    let (name, content) = c.timeline_history(TimelineId(2)).await.unwrap();
    assert_eq!(name, "00000002.history");
    let history = TimelineHistory::parse(std::str::from_utf8(&content).unwrap()).unwrap();
    let switch = history.switch_point_of(TimelineId(1)).unwrap();
    assert!(
        switch >= old_end,
        "switch {switch} before old end {old_end}"
    );
    assert_eq!(
        history.timeline_for_lsn(TimelineId(2), old_end),
        TimelineId(1)
    );

    // Streaming timeline 1 ends at the switch point with the next timeline.
    let start = old_end.segment_number(seg).start_lsn(seg);
    let mut stream = c
        .start_replication(None, start, TimelineId(1))
        .await
        .unwrap();
    let mut received = start;
    let (next_tli, next_start) = loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap()
            .unwrap()
        {
            StreamEvent::XLogData(x) => {
                assert_eq!(x.wal_start, received);
                received = x.data_end();
            }
            StreamEvent::Keepalive(k) => {
                if k.reply_requested {
                    stream.send_status(&status(received, false)).await.unwrap();
                }
            }
            StreamEvent::EndOfTimeline {
                next_tli,
                next_tli_start,
            } => break (next_tli, next_tli_start),
        }
    };
    assert_eq!((next_tli, next_start), (TimelineId(2), switch));
    assert_eq!(received, switch);

    // Back in command mode, streaming continues on timeline 2.
    let mut c = stream.into_client();
    assert_eq!(c.identify_system().await.unwrap().timeline, TimelineId(2));
    let mut stream = c
        .start_replication(None, switch, TimelineId(2))
        .await
        .unwrap();
    pg.psql("SELECT pg_switch_wal()");
    match tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap()
    {
        StreamEvent::XLogData(x) => assert_eq!(x.wal_start, switch),
        StreamEvent::Keepalive(_) => {}
        other => panic!("unexpected {other:?}"),
    }
}
