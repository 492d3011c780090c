//! Synthetic `BASE_BACKUP` answers, shaped after `basebackup_copy.c` (15+)
//! and `basebackup.c` of PostgreSQL 13 and 14.

use super::*;

fn row(cols: &[Option<&str>]) -> Backend {
    Backend::DataRow(
        cols.iter()
            .map(|c| c.map(|s| Bytes::copy_from_slice(s.as_bytes())))
            .collect(),
    )
}

/// A 15+ CopyData payload: type byte and body.
fn typed(kind: u8, body: &[u8]) -> Backend {
    let mut v = vec![kind];
    v.extend_from_slice(body);
    Backend::CopyData(Bytes::from(v))
}

fn raw(body: &[u8]) -> Backend {
    Backend::CopyData(Bytes::copy_from_slice(body))
}

fn progress(bytes: i64) -> Backend {
    typed(b'p', &bytes.to_be_bytes())
}

fn server(severity: &str, code: &str, message: &str) -> Backend {
    Backend::ErrorResponse(DbError {
        severity: severity.into(),
        code: code.into(),
        message: message.into(),
        detail: None,
        hint: None,
    })
}

const TS_LOCATION: &str = "/srv/pg/ts1";

fn ts_row() -> Tablespace {
    Tablespace {
        oid: Some(16385),
        location: Some(TS_LOCATION.into()),
        size_kib: Some(20),
    }
}

/// Start position 0/2000028 on timeline 1, one tablespace, then the data
/// directory (last, as the server sends it).
fn header() -> Vec<Backend> {
    vec![
        Backend::RowDescription,
        row(&[Some("0/2000028"), Some("1")]),
        Backend::CommandComplete,
        Backend::RowDescription,
        row(&[Some("16385"), Some(TS_LOCATION), Some("20")]),
        row(&[None, None, Some("30000")]),
        Backend::CommandComplete,
    ]
}

fn end_result() -> Vec<Backend> {
    vec![
        Backend::RowDescription,
        row(&[Some("0/2000100"), Some("1")]),
        Backend::CommandComplete,
        Backend::CommandComplete,
        Backend::ReadyForQuery,
    ]
}

/// Feeds `messages` until the first error; returns the events and the error.
fn run(d: &mut BaseBackupDecoder, messages: Vec<Backend>) -> (Vec<BaseBackupEvent>, Option<Error>) {
    let mut events = Vec::new();
    for m in messages {
        match d.feed(m) {
            Ok(Step::Event(e)) => events.push(e),
            Ok(Step::Continue) => {}
            Ok(Step::Done) => assert_eq!(d.status(), Status::Done),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

fn stream_body() -> Vec<Backend> {
    vec![
        Backend::CopyOutResponse,
        typed(b'n', format!("16385.tar\0{TS_LOCATION}\0").as_bytes()),
        typed(b'd', b"ts-tar-1"),
        typed(b'd', b"ts-tar-2"),
        progress(16),
        typed(b'n', b"base.tar\0\0"),
        typed(b'd', b"base-tar"),
        progress(24),
        typed(b'm', b""),
        typed(b'd', b"{\"PostgreSQL-Backup-Manifest-Version\": 1}"),
        Backend::CopyDone,
    ]
}

fn data(s: &'static [u8]) -> BaseBackupEvent {
    BaseBackupEvent::ArchiveData(Bytes::from_static(s))
}

#[test]
fn stream_format_15() {
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let (events, err) = run(&mut d, header());
    assert!(err.is_none() && events.is_empty());
    assert!(!d.header_complete());
    assert_eq!(d.start(), Some((Lsn(0x200_0028), TimelineId(1))));
    let (events, err) = run(&mut d, vec![Backend::CopyOutResponse]);
    assert!(err.is_none() && events.is_empty());
    assert!(d.header_complete());
    assert_eq!(
        d.tablespaces(),
        &[
            ts_row(),
            Tablespace {
                oid: None,
                location: None,
                size_kib: Some(30000)
            }
        ]
    );
    let mut rest = stream_body();
    rest.remove(0);
    rest.extend(end_result());
    let (events, err) = run(&mut d, rest);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        events,
        vec![
            BaseBackupEvent::Archive {
                name: "16385.tar".into(),
                tablespace: Some(ts_row()),
            },
            data(b"ts-tar-1"),
            data(b"ts-tar-2"),
            BaseBackupEvent::Progress(16),
            BaseBackupEvent::Archive {
                name: "base.tar".into(),
                tablespace: None,
            },
            data(b"base-tar"),
            BaseBackupEvent::Progress(24),
            BaseBackupEvent::ManifestData(Bytes::from_static(
                b"{\"PostgreSQL-Backup-Manifest-Version\": 1}"
            )),
        ]
    );
    assert_eq!(d.status(), Status::Done);
    assert_eq!(d.end(), Some((Lsn(0x200_0100), TimelineId(1))));
    assert!(d.connection_usable());
    // Nothing more is accepted once done.
    assert!(d.feed(Backend::ReadyForQuery).is_err());
    assert!(d.connection_usable());
}

#[test]
fn per_tablespace_format_13_14() {
    let mut d = BaseBackupDecoder::new(ArchiveFormat::PerTablespace, true);
    let (events, err) = run(&mut d, header());
    assert!(err.is_none() && events.is_empty());
    // The first CopyOutResponse begins the first listed tablespace's archive.
    assert_eq!(
        d.feed(Backend::CopyOutResponse).unwrap(),
        Step::Event(BaseBackupEvent::Archive {
            name: "16385.tar".into(),
            tablespace: Some(ts_row()),
        })
    );
    assert!(d.header_complete());
    let mut rest = vec![
        raw(b"ts-tar"),
        Backend::CopyDone,
        Backend::CopyOutResponse,
        raw(b"base-1"),
        raw(b"base-2"),
        Backend::CopyDone,
        Backend::CopyOutResponse,
        raw(b"{\"PostgreSQL-Backup-Manifest-Version\": 1}"),
        Backend::CopyDone,
    ];
    rest.extend(end_result());
    let (events, err) = run(&mut d, rest);
    assert!(err.is_none(), "{err:?}");
    let tar_end = BaseBackupEvent::ArchiveData(Bytes::from_static(&[0; 1024]));
    assert_eq!(
        events,
        vec![
            data(b"ts-tar"),
            tar_end.clone(),
            BaseBackupEvent::Archive {
                name: "base.tar".into(),
                tablespace: None,
            },
            data(b"base-1"),
            data(b"base-2"),
            tar_end,
            BaseBackupEvent::ManifestData(Bytes::from_static(
                b"{\"PostgreSQL-Backup-Manifest-Version\": 1}"
            )),
        ]
    );
    assert_eq!(d.end(), Some((Lsn(0x200_0100), TimelineId(1))));
    assert!(d.connection_usable());
}

#[test]
fn per_tablespace_without_manifest() {
    let mut d = BaseBackupDecoder::new(ArchiveFormat::PerTablespace, false);
    let mut all = header();
    all.extend([
        Backend::CopyOutResponse,
        Backend::CopyDone,
        Backend::CopyOutResponse,
        Backend::CopyDone,
    ]);
    all.extend(end_result());
    let (_, err) = run(&mut d, all);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(d.status(), Status::Done);

    // A COPY beyond the archives, with no manifest requested.
    let mut d = BaseBackupDecoder::new(ArchiveFormat::PerTablespace, false);
    let mut all = header();
    all.extend([
        Backend::CopyOutResponse,
        Backend::CopyDone,
        Backend::CopyOutResponse,
        Backend::CopyDone,
        Backend::CopyOutResponse,
    ]);
    let (_, err) = run(&mut d, all);
    assert!(err.unwrap().to_string().contains("more COPY results"));
    assert!(!d.connection_usable());
}

#[test]
fn missing_pieces() {
    // 13/14: the end position arrives before the manifest.
    let mut d = BaseBackupDecoder::new(ArchiveFormat::PerTablespace, true);
    let mut all = header();
    all.extend([
        Backend::CopyOutResponse,
        Backend::CopyDone,
        Backend::CopyOutResponse,
        Backend::CopyDone,
    ]);
    all.extend(end_result());
    let (_, err) = run(&mut d, all);
    assert!(err.unwrap().to_string().contains("no backup manifest"));

    // 15+: CopyDone after one of two archives.
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, false);
    let mut all = header();
    all.extend([
        Backend::CopyOutResponse,
        typed(b'n', b"base.tar\0\0"),
        Backend::CopyDone,
    ]);
    let (_, err) = run(&mut d, all);
    let e = err.unwrap();
    assert!(
        e.to_string().contains("1 archives for 2 tablespaces"),
        "{e}"
    );

    // No end position row before ReadyForQuery.
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let mut all = header();
    all.extend(stream_body());
    all.extend([Backend::CommandComplete, Backend::ReadyForQuery]);
    let (_, err) = run(&mut d, all);
    assert!(err.unwrap().to_string().contains("no end position"));
    assert_eq!(d.end(), None);

    // No tablespace list before the COPY.
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let (_, err) = run(
        &mut d,
        vec![
            Backend::RowDescription,
            row(&[Some("0/2000028"), Some("1")]),
            Backend::CopyOutResponse,
        ],
    );
    assert!(err.unwrap().to_string().contains("no tablespace list"));
}

#[test]
fn server_error_mid_stream_waits_for_ready() {
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let mut all = header();
    all.extend([
        Backend::CopyOutResponse,
        typed(b'n', b"base.tar\0\0"),
        typed(b'd', b"partial"),
        server("ERROR", "57014", "canceling statement due to user request"),
        // Whatever the server had queued before ReadyForQuery is skipped.
        typed(b'd', b"late"),
    ]);
    let (events, err) = run(&mut d, all);
    assert!(err.is_none());
    assert_eq!(events.len(), 2);
    assert_eq!(d.status(), Status::Running);
    let e = d.feed(Backend::ReadyForQuery).unwrap_err();
    assert_eq!(e.code(), Some("57014"));
    assert_eq!(
        e.server_message(),
        Some("canceling statement due to user request")
    );
    assert!(!e.is_connection());
    assert_eq!(d.status(), Status::Failed);
    assert!(d.connection_usable());
    assert_eq!(d.end(), None);
    assert!(d.feed(typed(b'd', b"x")).is_err());
}

#[test]
fn server_error_before_any_result() {
    // E.g. a second backup in a session that started one with SQL functions.
    let mut d = BaseBackupDecoder::new(ArchiveFormat::PerTablespace, true);
    let (_, err) = run(
        &mut d,
        vec![
            server(
                "ERROR",
                "55000",
                "a backup is already in progress in this session",
            ),
            Backend::ReadyForQuery,
        ],
    );
    let e = err.unwrap();
    assert_eq!(e.code(), Some("55000"));
    assert!(
        e.to_string().contains("a backup is already in progress"),
        "{e}"
    );
    assert!(!d.header_complete());
    assert!(d.connection_usable());
}

#[test]
fn fatal_errors_end_at_once() {
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let mut all = header();
    all.extend([
        Backend::CopyOutResponse,
        typed(b'n', b"base.tar\0\0"),
        server(
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        ),
    ]);
    let (_, err) = run(&mut d, all);
    let e = err.unwrap();
    assert_eq!(e.code(), Some("57P01"));
    assert!(e.is_connection());
    assert!(!d.connection_usable());

    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let e = d
        .feed(server(
            "FATAL",
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 4)",
        ))
        .unwrap_err();
    assert_eq!(e.code(), Some("53300"));
    assert!(e.server_message().unwrap().contains("max_wal_senders"));
    assert_eq!(d.status(), Status::Failed);
}

#[test]
fn checksum_failure_after_end_position() {
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let mut all = header();
    all.extend(stream_body());
    all.extend([
        Backend::RowDescription,
        row(&[Some("0/2000100"), Some("1")]),
        Backend::CommandComplete,
        server(
            "ERROR",
            "XX001",
            "checksum verification failure during base backup",
        ),
        Backend::ReadyForQuery,
    ]);
    let (events, err) = run(&mut d, all);
    assert_eq!(events.len(), 8);
    assert_eq!(err.unwrap().code(), Some("XX001"));
    assert_eq!(d.end(), None, "a failed backup has no end");
    assert!(d.connection_usable());
}

/// Runs the header, a CopyOutResponse and then `tail`; returns the error.
fn stream_error(tail: Vec<Backend>) -> Error {
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let mut all = header();
    all.push(Backend::CopyOutResponse);
    all.extend(tail);
    let (_, err) = run(&mut d, all);
    assert!(!d.connection_usable());
    assert!(
        d.feed(Backend::ReadyForQuery).is_err(),
        "failed stays failed"
    );
    err.expect("an error")
}

#[test]
fn protocol_errors() {
    let cases: Vec<(Vec<Backend>, &str)> = vec![
        (
            vec![Backend::Other("CopyBothResponse")],
            "unexpected CopyBothResponse inside COPY",
        ),
        (vec![typed(b'd', b"x")], "data before the first archive"),
        (vec![typed(b'x', b"")], "unknown CopyData type 'x'"),
        (vec![raw(b"")], "empty CopyData"),
        (vec![typed(b'p', &[0; 4])], "malformed progress"),
        (vec![progress(-1)], "negative progress"),
        (vec![typed(b'n', b"base.tar\0")], "malformed new-archive"),
        (
            vec![typed(b'n', b"base.tar\0\0extra")],
            "malformed new-archive",
        ),
        (
            vec![typed(b'n', b"9.tar\0/elsewhere\0")],
            "unlisted tablespace",
        ),
        (
            vec![
                typed(b'n', b"base.tar\0\0"),
                typed(b'm', b""),
                typed(b'n', b"x.tar\0\0"),
            ],
            "a new archive after the manifest",
        ),
        (
            vec![typed(b'm', b""), typed(b'm', b"")],
            "a second manifest",
        ),
        (
            vec![
                typed(b'n', b"base.tar\0\0"),
                typed(b'n', b"base.tar\0\0"),
                typed(b'n', b"base.tar\0\0"),
            ],
            "more archives than tablespaces",
        ),
        (
            vec![Backend::ReadyForQuery],
            "unexpected ReadyForQuery inside COPY",
        ),
        (
            vec![Backend::CopyOutResponse],
            "unexpected CopyOutResponse inside COPY",
        ),
    ];
    for (tail, expected) in cases {
        let e = stream_error(tail);
        assert!(
            e.to_string().contains(expected),
            "{e} (expected {expected:?})"
        );
        assert_eq!(e.code(), None);
    }
}

#[test]
fn malformed_result_rows() {
    let start = |r: Backend| vec![Backend::RowDescription, r];
    let cases: Vec<(Vec<Backend>, &str)> = vec![
        (start(row(&[Some("2000028"), Some("1")])), "recptr"),
        (
            start(row(&[Some("0/2000028"), Some("-1")])),
            "tli out of range",
        ),
        (
            start(row(&[Some("0/2000028"), None])),
            "malformed WAL position",
        ),
        (
            vec![
                Backend::RowDescription,
                row(&[Some("0/1"), Some("1")]),
                row(&[Some("0/2"), Some("1")]),
            ],
            "more than one start position",
        ),
        (
            vec![
                Backend::RowDescription,
                row(&[Some("0/1"), Some("1")]),
                Backend::RowDescription,
                row(&[Some("x"), Some("/ts"), None]),
            ],
            "invalid spcoid",
        ),
        (
            vec![
                Backend::RowDescription,
                row(&[Some("0/1"), Some("1")]),
                Backend::RowDescription,
                row(&[None, None, Some("-5")]),
            ],
            "invalid tablespace size",
        ),
        (
            vec![
                Backend::RowDescription,
                row(&[Some("0/1"), Some("1")]),
                Backend::RowDescription,
                row(&[None, None]),
            ],
            "fewer than 3 columns",
        ),
        (
            vec![row(&[Some("0/1"), Some("1")])],
            "unexpected DataRow before the archives",
        ),
        (vec![Backend::CopyOutResponse], "no start position"),
        (
            vec![Backend::ReadyForQuery],
            "unexpected ReadyForQuery before the archives",
        ),
    ];
    for (messages, expected) in cases {
        let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
        let (_, err) = run(&mut d, messages);
        let e = err.unwrap_or_else(|| panic!("no error, expected {expected:?}"));
        assert!(
            e.to_string().contains(expected),
            "{e} (expected {expected:?})"
        );
        assert!(!d.connection_usable());
    }
}

#[test]
fn abandon_after_io_error() {
    let mut d = BaseBackupDecoder::new(ArchiveFormat::Stream, true);
    let (_, err) = run(&mut d, header());
    assert!(err.is_none());
    d.abandon();
    assert_eq!(d.status(), Status::Failed);
    assert!(!d.connection_usable());
}
