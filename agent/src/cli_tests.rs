use super::*;
use clap::CommandFactory;

#[test]
fn cli_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn raw_restores_name_their_backup_and_set_up_no_recovery() {
    let parse = |args: &[&str]| {
        let mut all = vec!["pgagent", "restore", "--pgdata", "/d"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
    };
    let Command::Restore(args) = parse(&["--raw", "--backup", "B"]).unwrap().command else {
        panic!("not a restore");
    };
    let req = args.request("pgagent").unwrap();
    assert!(req.raw && req.backup.as_deref() == Some("B"));
    let Command::Restore(args) = parse(&["--raw"]).unwrap().command else {
        panic!("not a restore");
    };
    let err = args.request("pgagent").unwrap_err();
    assert_eq!(crate::exit::code_for(&err), crate::exit::USAGE);
    for with in [
        &["--delta"][..],
        &["--target-lsn", "0/1"],
        &["--target", "latest"],
        &["--from", "snapshot"],
        &["--target-action", "pause"],
    ] {
        let mut args = vec!["--raw", "--backup", "B"];
        args.extend_from_slice(with);
        assert!(parse(&args).is_err(), "{with:?}");
    }
}

#[test]
fn global_flags_go_anywhere() {
    let cli =
        Cli::try_parse_from(["pgagent", "list", "wal", "--json", "--store", "file:///x"]).unwrap();
    assert_eq!(cli.overrides.store_url(), Some("file:///x"));
    assert!(cli.overrides.store_names().is_empty());
    assert!(matches!(
        cli.command,
        Command::List {
            what: ListWhat::Wal,
            json: true
        }
    ));
}

#[test]
fn store_is_a_url_with_a_scheme_and_a_name_without() {
    let cli =
        Cli::try_parse_from(["pgagent", "restore", "--pgdata", "/d", "--store", "r2"]).unwrap();
    assert_eq!(cli.overrides.store_names(), ["r2"]);
    assert_eq!(cli.overrides.store_url(), None);
    let overrides: Overrides = cli.overrides.into();
    assert_eq!(overrides.store_url, None);
}

/// `--store NAME` repeats, in the order given; a URL stands alone.
#[test]
fn store_names_repeat_and_a_url_stands_alone() {
    let cli = Cli::try_parse_from([
        "pgagent", "fetch", "--store", "r2", "x", "y", "--store", "nas",
    ])
    .unwrap();
    assert_eq!(cli.overrides.store_names(), ["r2", "nas"]);
    assert!(cli.overrides.check_store().is_ok());
    let cli =
        Cli::try_parse_from(["pgagent", "list", "--store", "file:///a", "--store", "nas"]).unwrap();
    let err = cli.overrides.check_store().unwrap_err();
    assert!(err.to_string().contains("given alone"), "{err}");
    let cli = Cli::try_parse_from(["pgagent", "list", "--store", "file:///a"]).unwrap();
    assert!(cli.overrides.check_store().is_ok());
}

#[test]
fn key_actions_parse_and_take_no_passphrase_value() {
    let cli = Cli::try_parse_from(["pgagent", "key", "remove", "0a1b"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Key {
            action: KeyAction::Remove { ref id }
        } if id == "0a1b"
    ));
    let cli =
        Cli::try_parse_from(["pgagent", "key", "add", "--new-passphrase-file", "/p"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Key {
            action: KeyAction::Add {
                new_passphrase_file: Some(_)
            }
        }
    ));
    assert!(Cli::try_parse_from(["pgagent", "key", "add", "--new-passphrase", "x"]).is_err());
    assert!(Cli::try_parse_from(["pgagent", "key", "list", "--json"]).is_ok());
    assert!(Cli::try_parse_from(["pgagent", "key", "remove"]).is_err());
}

#[test]
fn fetch_takes_file_and_path() {
    let cli = Cli::try_parse_from([
        "pgagent",
        "fetch",
        "00000002.history",
        "pg_wal/RECOVERYHISTORY",
    ])
    .unwrap();
    match cli.command {
        Command::Fetch { file, path } => {
            assert_eq!(file, "00000002.history");
            assert_eq!(path, PathBuf::from("pg_wal/RECOVERYHISTORY"));
        }
        other => panic!("{other:?}"),
    }
}
