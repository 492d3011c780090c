use super::*;

fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

const NO_HOME: &[(&str, &str)] = &[("HOME", "/nonexistent"), ("PGUSER", "envuser")];

#[test]
fn key_values() {
    let pairs =
        parse_key_values(" host = db port=5433 password='a b\\'c' user=x\\ y dbname=").unwrap();
    assert_eq!(
        pairs,
        vec![
            ("host".to_owned(), "db".to_owned()),
            ("port".to_owned(), "5433".to_owned()),
            ("password".to_owned(), "a b'c".to_owned()),
            ("user".to_owned(), "x y".to_owned()),
            ("dbname".to_owned(), String::new()),
        ]
    );
    assert!(parse_key_values("host").is_err());
    assert!(parse_key_values("host='unterminated").is_err());
    assert!(parse_key_values("").unwrap().is_empty());
}

#[test]
fn typed_settings() {
    let c = ConnConfig::parse_with_env(
        "host=db.example port=5433 user=pgagent password=pw sslmode=verify-full \
         sslrootcert=/etc/ca.pem application_name=pgagent connect_timeout=1",
        env_of(NO_HOME),
    )
    .unwrap();
    assert_eq!(c.host, Host::Tcp("db.example".into()));
    assert_eq!(c.port, 5433);
    assert_eq!(c.user, "pgagent");
    assert_eq!(c.password.as_deref(), Some("pw"));
    assert_eq!(c.ssl_mode, SslMode::VerifyFull);
    assert_eq!(c.ssl_root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(c.application_name.as_deref(), Some("pgagent"));
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(2)));
}

#[test]
fn socket_dir_and_env_fallback() {
    const ENV: &[(&str, &str)] = &[
        ("HOME", "/nonexistent"),
        ("PGHOST", "/tmp/sock"),
        ("PGPORT", "6543"),
        ("PGUSER", "envuser"),
        ("PGPASSWORD", "envpw"),
        ("PGSSLMODE", "require"),
        ("PGAPPNAME", "app"),
        ("PGCONNECT_TIMEOUT", "10"),
    ];
    let c = ConnConfig::parse_with_env("", env_of(ENV)).unwrap();
    assert_eq!(c.host, Host::Unix("/tmp/sock".into()));
    assert_eq!(c.port, 6543);
    assert_eq!(c.user, "envuser");
    assert_eq!(c.password.as_deref(), Some("envpw"));
    assert_eq!(c.ssl_mode, SslMode::Require);
    assert_eq!(c.application_name.as_deref(), Some("app"));
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(10)));
    // Explicit settings win over the environment.
    let c = ConnConfig::parse_with_env("port=1 user=u sslmode=disable", env_of(ENV)).unwrap();
    assert_eq!(
        (c.port, c.user.as_str(), c.ssl_mode),
        (1, "u", SslMode::Disable)
    );
}

#[test]
fn defaults() {
    let c = ConnConfig::parse_with_env("", env_of(NO_HOME)).unwrap();
    assert_eq!(c.port, DEFAULT_PORT);
    assert_eq!(c.ssl_mode, SslMode::Prefer);
    assert_eq!(c.connect_timeout, None);
    let expected = if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        Host::Unix(DEFAULT_SOCKET_DIR.into())
    } else {
        Host::Tcp("localhost".into())
    };
    assert_eq!(c.host, expected);
    // Without PGUSER the OS user name is used.
    let c = ConnConfig::parse_with_env("", env_of(&[("HOME", "/nonexistent")])).unwrap();
    assert!(!c.user.is_empty());
}

#[test]
fn rejects() {
    for bad in [
        "nosuchkey=1",
        "port=abc",
        "port=0",
        "sslmode=sometimes",
        "hostaddr=not-an-ip",
        "host=a,b",
        "connect_timeout=soon",
        "postgresql://h/db?x",
        "postgresql://[::1/db",
        "postgresql://h/%zz",
    ] {
        assert!(
            ConnConfig::parse_with_env(bad, env_of(NO_HOME))
                .unwrap_err()
                .is_config(),
            "{bad:?}"
        );
    }
}

#[test]
fn uris() {
    let c = ConnConfig::parse_with_env(
        "postgresql://rep%40l:p%3Aw@db.example:6000/mydb?sslmode=verify-ca&application_name=x",
        env_of(NO_HOME),
    )
    .unwrap();
    assert_eq!(c.user, "rep@l");
    assert_eq!(c.password.as_deref(), Some("p:w"));
    assert_eq!(c.host, Host::Tcp("db.example".into()));
    assert_eq!(c.port, 6000);
    assert_eq!(c.dbname.as_deref(), Some("mydb"));
    assert_eq!(c.ssl_mode, SslMode::VerifyCa);
    assert_eq!(c.application_name.as_deref(), Some("x"));

    let c =
        ConnConfig::parse_with_env("postgres://%2Frun%2Fpostgresql:5433", env_of(NO_HOME)).unwrap();
    assert_eq!(c.host, Host::Unix("/run/postgresql".into()));
    assert_eq!(c.port, 5433);

    let c =
        ConnConfig::parse_with_env("postgresql://[::1]:7000?ssl=true", env_of(NO_HOME)).unwrap();
    assert_eq!(c.host, Host::Tcp("::1".into()));
    assert_eq!(c.port, 7000);
    assert_eq!(c.ssl_mode, SslMode::Require);

    let c = ConnConfig::parse_with_env("postgresql:///?host=/tmp", env_of(NO_HOME)).unwrap();
    assert_eq!(c.host, Host::Unix("/tmp".into()));
}

#[test]
fn password_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(".pgpass");
    std::fs::write(
        &file,
        "localhost:5432:replication:rep:fromsocket\n\
         db.example:5432:replication:rep:fromtcp\n\
         db.example:5432:app:rep:fromapp\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = dir.path().to_str().unwrap().to_owned();
    let env = move |name: &str| (name == "HOME").then(|| home.clone());

    let c = ConnConfig::parse_with_env("host=db.example user=rep", &env).unwrap();
    assert_eq!(c.password.as_deref(), Some("fromtcp"));
    let c = ConnConfig::parse_with_env("host=db.example user=rep dbname=app", &env).unwrap();
    assert_eq!(c.password.as_deref(), Some("fromapp"));
    let c = ConnConfig::parse_with_env("host=/var/run/postgresql user=rep", &env).unwrap();
    assert_eq!(c.password.as_deref(), Some("fromsocket"));
    let c = ConnConfig::parse_with_env("host=db.example user=rep password=given", &env).unwrap();
    assert_eq!(c.password.as_deref(), Some("given"));
    let c = ConnConfig::parse_with_env("host=other user=rep", &env).unwrap();
    assert_eq!(c.password, None);

    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "*:*:*:*:frompassfile\n").unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = format!("host=other user=rep passfile={}", elsewhere.display());
    let c = ConnConfig::parse_with_env(&s, &env).unwrap();
    assert_eq!(c.password.as_deref(), Some("frompassfile"));
}

#[test]
fn password_never_shown() {
    let c = ConnConfig::parse_with_env("host=h user=u password=hunter2", env_of(NO_HOME)).unwrap();
    let debug = format!("{c:?}");
    let shown = c.redacted().to_string();
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("host=h port=5432 user=u"), "{shown}");
}
