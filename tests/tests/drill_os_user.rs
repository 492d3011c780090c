//! `pgagent drill` run by an OS user that is not a role of the cluster (neither root nor
//! `postgres`): it connects as the cluster's bootstrap superuser and passes; and a SIGTERM
//! to a drill run by hand stops its throwaway server and removes the copy.

mod common;

use std::time::Duration;

use common::drill::{check, drill_env, failed, streamed};
use common::*;
use pgagent_tests::{run_pgagent_as, OsUser, PgServer};

/// The OS user a drill runs as that is neither root nor a role of the test clusters: when
/// the tests run as root, `nobody` (`PGAGENT_TEST_DRILL_OS_USER` names another); otherwise
/// the current user, already not a role (the clusters' superuser is `postgres`).
fn not_a_role() -> Option<OsUser> {
    if !OsUser::running_as_root() {
        return None;
    }
    let name = std::env::var("PGAGENT_TEST_DRILL_OS_USER").unwrap_or_else(|_| "nobody".into());
    Some(OsUser::named(&name).unwrap())
}

/// Gives what a drill run as `user` needs to it: the store (it records its report there),
/// a staging directory of its own (where the copy's `pgagent fetch` keeps its fetch server)
/// and the drill directory; the rig's directory is made searchable. Returns the drill's
/// environment.
fn give_to(rig: &Rig, pg: &PgServer, user: Option<&OsUser>) -> Vec<(&'static str, String)> {
    use std::os::unix::fs::PermissionsExt;
    let staging = rig.dir.path().join("drill-staging");
    let drill_dir = rig.dir.path().join("drill");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(&drill_dir).unwrap();
    if let Some(u) = user {
        std::fs::set_permissions(rig.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let out = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", u.uid, u.gid))
            .arg(rig.dir.path().join("store"))
            .arg(&staging)
            .arg(&drill_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "chown: {}", text(&out));
    }
    let mut env = drill_env(rig, pg);
    env.push(("PGAGENT_STAGING_DIR", staging.display().to_string()));
    env
}

/// Run by an OS user that is not a role of the cluster (neither root nor `postgres`), a
/// drill connects to its throwaway server as the cluster's bootstrap superuser, read from
/// the restored copy, and passes, amcheck included. A `drill.user` that is not a role
/// fails the drill at once, naming the role.
#[tokio::test(flavor = "multi_thread")]
async fn a_drill_run_by_an_os_user_that_is_not_a_role_connects_as_the_bootstrap_superuser() {
    let rig = Rig::fs();
    let (pg, _) = streamed(&rig, 1);
    let user = not_a_role();
    let mut env = give_to(&rig, &pg, user.as_ref());
    env.push(("PGAGENT_DRILL_TIMEOUT", "90s".into()));
    env.push((
        "PGAGENT_DRILL_CHECK_SQL",
        "SELECT count(*) FROM t WHERE v LIKE 'last%'".into(),
    ));
    let started = std::time::Instant::now();
    let out = run_pgagent_as(&["drill", "--json"], &env, user.as_ref());
    println!(
        "drill as {user:?}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(failed(&report).is_empty(), "{report:#}");
    assert_eq!(check(&report, "check_sql")["detail"], "returned 50");
    let connect = check(&report, "connect")["detail"].as_str().unwrap();
    assert!(
        connect.contains("role postgres") && connect.contains("bootstrap superuser"),
        "{connect}"
    );
    assert_eq!(
        check(&report, "amcheck")["detail"],
        "pg_amcheck --all: no corruption"
    );

    // A drill.user that is no role: the drill fails as soon as the server accepts
    // connections, not at drill.timeout, and names the role.
    env.push(("PGAGENT_DRILL_USER", "no_such_role".into()));
    env.push(("PGAGENT_DRILL_TIMEOUT", "1h".into()));
    let started = std::time::Instant::now();
    let out = run_pgagent_as(&["drill", "--json"], &env, user.as_ref());
    let took = started.elapsed();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(failed(&report), ["connect"], "{report:#}");
    let detail = check(&report, "connect")["detail"].as_str().unwrap();
    assert!(
        detail.contains(r#"role "no_such_role" does not exist"#) && detail.contains("drill.user"),
        "{detail}"
    );
    assert!(took < Duration::from_secs(60), "failed after {took:?}");
    let left: Vec<_> = std::fs::read_dir(rig.dir.path().join("drill"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// SIGTERM to a `pgagent drill` run by hand while its checks run: it stops its throwaway
/// server and removes the scratch copy before it exits, as a stop of `pgagent run` does.
#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_to_a_hand_run_drill_stops_its_server_and_removes_the_copy() {
    let rig = Rig::fs();
    let (pg, _) = streamed(&rig, 1);
    let mut env = drill_env(&rig, &pg);
    // A check that lasts: the server is up and checked when the signal comes.
    env.push((
        "PGAGENT_DRILL_CHECK_SQL",
        "SELECT 1 FROM pg_sleep(300)".into(),
    ));
    let drill_dir = rig.dir.path().join("drill");
    let mut agent = pgagent_tests::AgentProcess::spawn(&["drill"], &env);
    let mut postmaster = None;
    let up = pgagent_tests::wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        let Some(scratch) = std::fs::read_dir(&drill_dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
        else {
            return false;
        };
        let log = std::fs::read_to_string(scratch.path().join("postgres.log")).unwrap_or_default();
        postmaster = std::fs::read_to_string(scratch.path().join("mnt/postmaster.pid"))
            .ok()
            .and_then(|p| p.lines().next()?.trim().parse::<u32>().ok());
        postmaster.is_some() && log.contains("ready to accept connections")
    });
    assert!(
        up,
        "the drill's server did not start\n{}",
        agent.output_text()
    );
    std::thread::sleep(Duration::from_secs(2)); // the checks are running
    let started = std::time::Instant::now();
    let status = agent.terminate();
    println!(
        "drill stopped {:.1} s after SIGTERM",
        started.elapsed().as_secs_f64()
    );
    let pid: u32 = postmaster.unwrap();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let gone =
        pgagent_tests::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            !proc_dir.exists()
        });
    if !gone {
        // Not left behind for the next test.
        let _ = pgagent_tests::util::send_signal(pid, "KILL");
    }
    let left: Vec<_> = std::fs::read_dir(&drill_dir).unwrap().collect();
    assert!(
        gone,
        "the drill's server outlived it\n{}",
        agent.output_text()
    );
    assert!(left.is_empty(), "the scratch copy stayed: {left:?}");
    assert_eq!(status.code(), Some(1), "{}", agent.output_text());
    assert!(
        agent.stderr_text().contains("interrupted"),
        "{}",
        agent.output_text()
    );
}
