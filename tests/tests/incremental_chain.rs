//! A chain of incremental backups restored by pgagent is the data directory
//! `pg_combinebackup` makes of the same backups, byte for byte, and recovers the same way.
//!
//! PostgreSQL 18 (the client programs' own server, which has `amcheck`): a full backup and
//! six incremental ones over updates, inserts that extend files, DROP/CREATE/TRUNCATE
//! TABLE, CREATE DATABASE, a table moved to a new tablespace, an unlogged table, and a
//! relation of more than one 1 GiB segment that VACUUM then truncates. At depths 1, 3 and
//! 6: `pgagent restore` of the chain against `pg_combinebackup` over `pgagent restore
//! --raw` of each backup — every file equal but `backup_manifest` (each writes its own) —
//! then both started: they end recovery at the same LSN, `pg_amcheck --all` finds nothing,
//! and `pg_dumpall` prints the same.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::recovery::*;
use common::*;
use pgagent_tests::pg::{pg_tools_dir, PgInstall};
use pgagent_tests::{run_pgagent, OsUser, PgOptions, PgServer};

/// Every regular file and symlink under `dir` (symlinks not followed), by relative path:
/// contents, or `-> target` for a link.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("-> {}", target.display()).into_bytes());
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Asserts that two data directories (and their tablespace directories) hold the same
/// files, byte for byte, but `backup_manifest` and the tablespace links.
fn assert_same_files(ours: &Path, theirs: &Path, ts: (&Path, &Path)) {
    let (mut a, mut b) = (tree(ours), tree(theirs));
    for t in [&mut a, &mut b] {
        t.remove("backup_manifest");
        t.retain(|k, _| !k.starts_with("pg_tblspc/"));
    }
    let (sa, sb) = (tree(ts.0), tree(ts.1));
    for (label, x, y) in [("data directory", &a, &b), ("tablespace", &sa, &sb)] {
        let only_x: Vec<_> = x.keys().filter(|k| !y.contains_key(*k)).collect();
        let only_y: Vec<_> = y.keys().filter(|k| !x.contains_key(*k)).collect();
        assert!(
            only_x.is_empty() && only_y.is_empty(),
            "{label}: only in pgagent's {only_x:?}; only in pg_combinebackup's {only_y:?}"
        );
        let differ: Vec<_> = x.keys().filter(|k| x[*k] != y[*k]).collect();
        assert!(differ.is_empty(), "{label}: files differ: {differ:?}");
    }
    assert!(a.len() > 500, "{} files", a.len());
}

fn chown_to_postgres(path: &Path) {
    if let Some(user) = OsUser::for_postgres().unwrap() {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
}

/// [`chown_to_postgres`] for `dir` and everything under it (links themselves, not their
/// targets).
fn chown_tree_to_postgres(dir: &Path) {
    let Some(user) = OsUser::for_postgres().unwrap() else {
        return;
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        std::os::unix::fs::lchown(&d, Some(user.uid), Some(user.gid)).unwrap();
        if !std::fs::symlink_metadata(&d).unwrap().is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            stack.push(e.unwrap().path());
        }
    }
}

fn tools_server(extra_conf: Vec<String>) -> PgServer {
    PgServer::start(PgOptions {
        install: Some(PgInstall::tools().expect("PostgreSQL 18 client programs")),
        extra_conf,
        ..PgOptions::default()
    })
    .expect("start PostgreSQL 18")
}

fn empty_server() -> PgServer {
    PgServer::without_cluster(PgOptions {
        install: Some(PgInstall::tools().unwrap()),
        ..PgOptions::default()
    })
    .unwrap()
}

/// `pgagent backup --fast`, incremental unless it is the first; returns the id.
fn backup(env: &[(&'static str, String)], first: bool) -> String {
    let out = run_pgagent(&["backup", "--fast"], env);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert_eq!(!first, !printed.contains("not incremental"), "{printed}");
    printed
        .lines()
        .find_map(|l| l.split_whitespace().next().filter(|w| w.ends_with('Z')))
        .unwrap()
        .to_string()
}

/// Starts a restored cluster, waits for the end of recovery, checks it with `pg_amcheck
/// --all`, and returns where recovery ended (the switch point in the new timeline's
/// history file) and `pg_dumpall`'s output.
fn recover_and_check(pg: &mut PgServer) -> (String, String) {
    pg.start_server().unwrap();
    wait_promoted(pg, Duration::from_secs(180));
    let out = pg
        .client_command("pg_amcheck")
        .args(["--all", "--install-missing", "--heapallindexed"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_amcheck: {}", text(&out));
    let history = pg
        .psql("SELECT content FROM pg_read_file('pg_wal/00000002.history') AS content")
        .unwrap();
    let out = pg.client_command("pg_dumpall").output().unwrap();
    assert!(out.status.success(), "pg_dumpall: {}", text(&out));
    // PostgreSQL 18.6 brackets a dump with \restrict and \unrestrict lines holding a random
    // key; everything else must match.
    let dump: String = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| format!("{l}\n"))
        .collect();
    pg.stop().unwrap();
    (history, dump)
}

struct Chain {
    ids: Vec<String>,
    config: FetchConfig,
    location: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Chain {
    /// pgagent's restore of backup `depth`, and pg_combinebackup's of the `--raw` restores of
    /// backups `0..=depth`, compared file by file, then started one after the other.
    fn check(&self, depth: usize) {
        let scratch = tempfile::tempdir_in(self._scratch.path()).unwrap();
        std::fs::set_permissions(
            scratch.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        chown_to_postgres(scratch.path());
        // The raw restores, each moved out of the tablespace location after it.
        let mut raws = Vec::new();
        for (i, id) in self.ids[..=depth].iter().enumerate() {
            let dir = scratch.path().join(format!("raw{i}"));
            let out = run_restore(&self.config.config, &dir, &["--backup", id, "--raw"]);
            assert!(out.status.success(), "restore --raw {id}: {}", text(&out));
            if self.location.exists() {
                let moved = scratch.path().join(format!("ts-raw{i}"));
                std::fs::rename(&self.location, &moved).unwrap();
                for link in std::fs::read_dir(dir.join("pg_tblspc")).unwrap() {
                    let link = link.unwrap().path();
                    std::fs::remove_file(&link).unwrap();
                    std::os::unix::fs::symlink(&moved, &link).unwrap();
                }
            }
            raws.push(dir);
        }
        let mut theirs = empty_server();
        let combined_ts = scratch.path().join("ts-combined");
        // As root, like the raw restores it reads.
        let out = std::process::Command::new(pg_tools_dir().unwrap().join("pg_combinebackup"))
            .arg("-o")
            .arg(theirs.data_dir())
            .arg("-T")
            .arg(format!(
                "{}={}",
                self.location.display(),
                combined_ts.display()
            ))
            .args(&raws)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_combinebackup: {}", text(&out));

        let mut ours = empty_server();
        let id = &self.ids[depth];
        let out = run_restore(
            &self.config.config,
            &ours.data_dir(),
            &["--backup", id, "--target", "latest"],
        );
        assert!(out.status.success(), "restore {id}: {}", text(&out));
        // The same recovery settings in both (pgagent writes them; pg_combinebackup does not).
        for f in ["postgresql.auto.conf", "recovery.signal"] {
            std::fs::copy(ours.data_dir().join(f), theirs.data_dir().join(f)).unwrap();
        }
        let ours_ts = if self.location.exists() {
            self.location.clone()
        } else {
            scratch.path().join("none")
        };
        std::fs::create_dir_all(&combined_ts).unwrap();
        std::fs::create_dir_all(&ours_ts).unwrap();
        assert_same_files(
            &ours.data_dir(),
            &theirs.data_dir(),
            (&ours_ts, &combined_ts),
        );

        let (ours_end, ours_dump) = recover_and_check(&mut ours);
        // The other copy takes the tablespace location (tablespace_map names it).
        if self.location.exists() {
            std::fs::rename(&self.location, scratch.path().join("ts-ours")).unwrap();
            std::fs::rename(&combined_ts, &self.location).unwrap();
            chown_tree_to_postgres(&self.location);
        }
        let (their_end, their_dump) = recover_and_check(&mut theirs);
        assert_eq!(ours_end, their_end, "recovery ended elsewhere");
        assert!(
            ours_dump == their_dump,
            "pg_dumpall differs at depth {depth}"
        );
        assert!(
            ours_dump.contains("CREATE TABLE public.grow"),
            "{}",
            &ours_dump[..2000.min(ours_dump.len())]
        );
        if self.location.exists() {
            std::fs::remove_dir_all(&self.location).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_six_restores_as_pg_combinebackup_combines_it() {
    let scratch = tempfile::tempdir().unwrap();
    let rig = Rig::fs();
    let mut pg = tools_server(vec![
        "summarize_wal = on".into(),
        "wal_keep_size = '2GB'".into(),
        "max_wal_size = '4GB'".into(),
    ]);
    let mut agent = rig.spawn_caught_up(&pg);
    let env = rig.env(&pg);
    let location = scratch.path().join("ts1");
    std::fs::create_dir(&location).unwrap();
    std::fs::set_permissions(
        scratch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    chown_to_postgres(&location);

    // A relation of more than one segment: one row of 760 bytes per page (fillfactor 10).
    pg.psql(
        "CREATE TABLE big (id int, v text STORAGE PLAIN) WITH (fillfactor = 10, autovacuum_enabled = off);
         INSERT INTO big SELECT g, repeat(md5(g::text), 24) FROM generate_series(1, 140000) g;
         CREATE TABLE upd AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g;
         CREATE TABLE grow (id int, v text);
         INSERT INTO grow SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
         CREATE TABLE doomed AS SELECT g FROM generate_series(1, 10000) g;
         CREATE TABLE emptied AS SELECT g FROM generate_series(1, 10000) g;
         CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 10000) g;
         CHECKPOINT",
    )
    .unwrap();
    let segments: i64 = pg
        .psql("SELECT pg_relation_size('big') / (1024 * 1024 * 1024)")
        .unwrap()
        .parse()
        .unwrap();
    assert!(segments >= 1, "big is under 1 GiB");
    let mut ids = vec![backup(&env, true)];
    let rounds = [
        // 1: updates in both segments of the big relation, inserts that extend a file.
        "UPDATE upd SET v = 'one' WHERE id % 50 = 0;
         UPDATE big SET v = 'changed' WHERE id IN (7, 135000);
         INSERT INTO grow SELECT g, 'more' FROM generate_series(1, 20000) g",
        // 2: DROP, CREATE, TRUNCATE.
        "DROP TABLE doomed;
         CREATE TABLE born AS SELECT g FROM generate_series(1, 5000) g;
         TRUNCATE emptied;
         INSERT INTO scratch SELECT generate_series(1, 100)",
        // 3: a new database, a table moved to a new tablespace.
        &format!(
            "CREATE DATABASE other;
             CREATE TABLESPACE ts1 LOCATION '{}';
             ALTER TABLE upd SET TABLESPACE ts1",
            location.display()
        ),
        // 4: updates in the moved table, more growth.
        "UPDATE upd SET v = 'four' WHERE id % 7 = 0;
         INSERT INTO grow SELECT g, 'four' FROM generate_series(1, 5000) g",
        // 5: the big relation loses its second segment (VACUUM truncates it).
        "DELETE FROM big WHERE id > 100000; VACUUM big",
        // 6: a little of everything again.
        "UPDATE grow SET v = 'six' WHERE id % 3 = 0;
         INSERT INTO born SELECT generate_series(1, 100);
         UPDATE big SET v = 'six' WHERE id = 1",
    ];
    for sql in rounds {
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            pg.psql(statement).unwrap();
        }
        pg.psql("CHECKPOINT").unwrap();
        ids.push(backup(&env, false));
    }
    let end = lsn(&pg.switch_wal().unwrap());
    rig.wait_uploaded(&agent, end, Duration::from_secs(120));
    // A drill restores the newest backup, six deep, and checks it.
    let (code, report, out) = common::drill::drill(&rig, &pg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(common::drill::failed(&report).is_empty(), "{report:#}");
    assert!(
        report.to_string().contains(ids.last().unwrap().as_str()),
        "{report:#}"
    );
    assert!(agent.terminate().success(), "{}", agent.output_text());
    pg.stop().unwrap();
    drop(pg);
    std::fs::remove_dir_all(&location).unwrap();

    let chain = Chain {
        ids,
        config: fetch_config(&rig.store_url, &[]),
        location,
        _scratch: scratch,
    };
    for depth in [1, 3, 6] {
        chain.check(depth);
    }
}
