//! preseed and a store that holds no cluster: refused by default (a wrong `store.url` must
//! not turn into a fresh empty cluster), left to initdb with `--allow-new`.

mod common;

use common::text;
use pgagent_tests::run_pgagent;

#[test]
fn an_empty_store_needs_allow_new() {
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("data");
    let env = vec![
        (
            "PGAGENT_STORE_URL",
            format!("file://{}", dir.path().join("store").display()),
        ),
        (
            "PGAGENT_STAGING_DIR",
            dir.path().join("staging").display().to_string(),
        ),
    ];
    let args = [
        "preseed",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--user",
        "0",
    ];
    let out = run_pgagent(&args, &env);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("holds no cluster"), "{}", text(&out));
    assert!(text(&out).contains("--allow-new"), "{}", text(&out));
    assert!(!pgdata.exists(), "nothing created");

    let mut with_flag = args.to_vec();
    with_flag.push("--allow-new");
    let out = run_pgagent(&with_flag, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("stays empty for initdb"),
        "{}",
        text(&out)
    );
    assert!(!pgdata.exists() || std::fs::read_dir(&pgdata).unwrap().next().is_none());
}
