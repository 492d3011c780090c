//! Checks of the test harness itself: the PostgreSQL cluster, the Garage server and the
//! fault-injecting proxy behave as the other integration tests assume.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use pgagent_tests::pg::{NOREPL_USER, PASSWORD, REPL_USER, TRUST_USER};
use pgagent_tests::{Garage, PgOptions, PgServer, Proxy, ProxyMode};

/// Runs `psql -c <sql>` over TCP as `user` with the password in `PGPASSWORD`.
fn psql_tcp(
    pg: &PgServer,
    user: &str,
    password: &str,
    extra: &str,
    sql: &str,
) -> std::process::Output {
    Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-w", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres sslmode=disable {extra}",
            pg.port()
        ))
        .env("PGPASSWORD", password)
        .env_remove("PGPASSFILE")
        .output()
        .expect("run psql")
}

#[test]
fn postgres_authenticates_roles_as_configured() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    assert_eq!(pg.psql("SELECT 1").unwrap(), "1");
    assert!(pg.server_version_num().unwrap() >= 130000);
    assert_eq!(pg.psql("SHOW wal_level").unwrap(), "replica");
    assert_eq!(pg.psql("SHOW fsync").unwrap(), "on");
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port()))
        .exists());

    // SCRAM with the right password, over TCP.
    let ok = psql_tcp(&pg, REPL_USER, PASSWORD, "", "SELECT current_user");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), REPL_USER);
    let wrong = psql_tcp(&pg, REPL_USER, "wrong", "", "SELECT 1");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));

    // Physical replication connections: allowed for pgagent and trust_user, not for norepl.
    let ident = psql_tcp(
        &pg,
        REPL_USER,
        PASSWORD,
        "replication=true",
        "IDENTIFY_SYSTEM",
    );
    assert!(
        ident.status.success(),
        "{}",
        String::from_utf8_lossy(&ident.stderr)
    );
    let sysid = pg.system_identifier().unwrap().to_string();
    assert!(String::from_utf8_lossy(&ident.stdout).starts_with(&sysid));
    let trusted = psql_tcp(&pg, TRUST_USER, "", "replication=true", "IDENTIFY_SYSTEM");
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let denied = psql_tcp(
        &pg,
        NOREPL_USER,
        PASSWORD,
        "replication=true",
        "IDENTIFY_SYSTEM",
    );
    assert!(!denied.status.success());
    let login = pg
        .psql_with(&pg.conninfo(NOREPL_USER), "SELECT current_user")
        .unwrap();
    assert_eq!(login, NOREPL_USER);
}

#[test]
fn postgres_survives_crash_and_exposes_wal() {
    let mut pg = PgServer::start(PgOptions::default()).unwrap();
    pg.psql("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 1000)")
        .unwrap();
    let segment = pg
        .psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    let before = pg.current_wal_lsn().unwrap();
    assert!(before.contains('/'), "{before}");
    pg.switch_wal().unwrap();
    let bytes = pg.wal_file(&segment).expect("segment in pg_wal");
    assert_eq!(bytes.len(), 16 * 1024 * 1024);
    assert_eq!(pg.wal_file("000000010000000000000000FF"), None);

    pg.kill9().unwrap();
    assert!(!pg.is_running());
    pg.start_server().unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM t").unwrap(), "1000");

    pg.restart().unwrap();
    pg.pgbench_init(1).unwrap();
    pg.pgbench(&["-t", "10", "-c", "1"]).unwrap();
    assert_eq!(
        pg.psql("SELECT count(*) FROM pgbench_history").unwrap(),
        "10"
    );
}

#[test]
fn postgres_applies_extra_settings() {
    let opts = PgOptions {
        extra_conf: vec!["wal_sender_timeout = '7s'".to_owned()],
        initdb_args: vec!["--wal-segsize=1".to_owned()],
        ..PgOptions::default()
    };
    let pg = PgServer::start(opts).unwrap();
    assert_eq!(pg.psql("SHOW wal_sender_timeout").unwrap(), "7s");
    assert_eq!(pg.psql("SHOW wal_segment_size").unwrap(), "1MB");
}

#[test]
fn postgres_starts_on_a_prepared_data_dir() {
    let source = PgServer::start(PgOptions::default()).unwrap();
    source.psql("CREATE TABLE copied AS SELECT 7 AS v").unwrap();
    let mut copy = PgServer::without_cluster(PgOptions::default()).unwrap();
    assert!(!copy.is_running());
    if !source.pg_basebackup_works().unwrap() {
        // A newer server than the packaged pg_basebackup: pgagent's BASE_BACKUP client.
        source
            .base_backup_over_protocol(&copy.data_dir(), true)
            .unwrap();
        copy.start_server().unwrap();
        assert_eq!(copy.psql("SELECT v FROM copied").unwrap(), "7");
        return;
    }
    // pg_basebackup runs as the test user here, like a restore would.
    let output = Command::new(source.bin_dir().join("pg_basebackup"))
        .arg("-D")
        .arg(copy.data_dir())
        .args([
            "-X",
            "stream",
            "-c",
            "fast",
            "-d",
            &source.conninfo(TRUST_USER),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    copy.start_server().unwrap();
    assert_ne!(copy.port(), source.port());
    assert_eq!(copy.psql("SELECT v FROM copied").unwrap(), "7");
    assert_eq!(
        copy.system_identifier().unwrap(),
        source.system_identifier().unwrap()
    );
}

#[test]
fn garage_answers_s3_requests() {
    let garage = Garage::start().unwrap();
    assert!(garage.access_key_id().starts_with("GK"));
    assert!(!garage.secret_access_key().is_empty());
    assert_eq!(
        garage.store_url("cluster-a"),
        format!(
            "s3://pgagent-test/cluster-a?endpoint={}&region=garage&path_style=true",
            garage.endpoint()
        )
    );

    // An anonymous request gets an S3 XML error, not a connection error.
    let response = http_get(garage.s3_addr(), "/pgagent-test/");
    assert!(response.starts_with("HTTP/1.1 4"), "{response}");
    assert!(response.contains("<Error>"), "{response}");

    garage.create_bucket("second").unwrap();
    let buckets = garage.cli(&["bucket", "list"]).unwrap();
    assert!(
        buckets.contains("second") && buckets.contains("pgagent-test"),
        "{buckets}"
    );
    let (id, secret) = garage.create_key_without_write("pgagent-test").unwrap();
    assert!(id.starts_with("GK") && !secret.is_empty());
    let info = garage.cli(&["key", "info", &id]).unwrap();
    assert!(info.contains("pgagent-test"), "{info}");
}

#[test]
fn proxy_in_front_of_postgres() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let proxy = Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap());
    let via_proxy = format!(
        "host=127.0.0.1 port={} user={TRUST_USER} dbname=postgres sslmode=disable connect_timeout=2",
        proxy.addr().port()
    );
    assert_eq!(pg.psql_with(&via_proxy, "SELECT 42").unwrap(), "42");
    proxy.set_mode(ProxyMode::Refuse);
    assert!(pg.psql_with(&via_proxy, "SELECT 42").is_err());
    proxy.set_mode(ProxyMode::Blackhole);
    // connect_timeout bounds the hang.
    assert!(pg.psql_with(&via_proxy, "SELECT 42").is_err());
    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(20)));
    assert_eq!(pg.psql_with(&via_proxy, "SELECT 42").unwrap(), "42");
    assert!(proxy.connections_accepted() >= 4);
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
