//! Unit tests of `[[stores]]`: parsing, inheritance, the shorthand, every validation error,
//! the one-store refusal and `--store` selections.

use std::time::Duration;

use bytesize::ByteSize;

use super::tests::load;
use super::*;

/// The README's example: a NAS near the database and R2 far away.
const NAS_AND_R2: &str = r#"
[wal]
partial_interval = "2s"

[store]
upload_concurrency = 6

[backup]
keep_backups = 5

[[stores]]
name = "nas"
url = "file:///mnt/nas/pgagent"
partial_interval = "1s"

[[stores]]
name = "r2"
url = "s3://backups/db1?endpoint=https://acc.r2.cloudflarestorage.com&region=auto"
role = "async"
partial_interval = "10s"
upload_concurrency = 4
keep_backups = 30
max_lag = { time = "10m", bytes = "4GiB" }
on_lag_exceeded = "hold"
"#;

fn config(toml: &str) -> Result<Config, ConfigError> {
    load(toml, &[], Overrides::default())?.validate()
}

/// The error of validating `toml`, as text.
fn error(toml: &str) -> String {
    config(toml).unwrap_err().to_string()
}

/// `[[stores]]` entries `a` (required, `file:///a`) and `b` (`file:///b`) with `b_extra`
/// added to `b`.
pub(super) fn two(b_extra: &str) -> String {
    format!(
        "[[stores]]\nname = \"a\"\nurl = \"file:///a\"\n\n[[stores]]\nname = \"b\"\nurl = \"file:///b\"\n{b_extra}\n"
    )
}

#[test]
fn stores_parse_with_their_roles_and_values() {
    let cfg = config(NAS_AND_R2).unwrap();
    let [nas, r2] = cfg.stores.as_slice() else {
        panic!("{:?}", cfg.stores)
    };
    assert_eq!(nas.name, "nas");
    assert_eq!(nas.role, StoreRole::Required);
    assert_eq!(
        nas.location,
        pgagent_storage::StoreUrl::File {
            root: "/mnt/nas/pgagent".into()
        }
    );
    assert_eq!(nas.partial_interval, Duration::from_secs(1));
    assert_eq!(r2.name, "r2");
    assert!(r2.url.starts_with("s3://backups/db1?"));
    assert_eq!(
        r2.role,
        StoreRole::Async {
            max_lag: Some(MaxLag {
                time: Some(Duration::from_secs(600)),
                bytes: Some(ByteSize::gib(4)),
            }),
            on_lag_exceeded: OnLagExceeded::Hold,
        }
    );
    assert_eq!(r2.partial_interval, Duration::from_secs(10));
    assert_eq!(r2.upload_concurrency, 4);
    assert_eq!(r2.keep_backups, 30);
    assert_eq!(r2.options().upload_concurrency, 4);
}

#[test]
fn keys_a_store_leaves_out_are_inherited() {
    let cfg = config(NAS_AND_R2).unwrap();
    let nas = &cfg.stores[0];
    assert_eq!(nas.upload_concurrency, 6, "store.upload_concurrency");
    assert_eq!(nas.keep_backups, 5, "backup.keep_backups");
    assert_eq!(nas.part_size, ByteSize::mib(32), "store.part_size default");

    // Credentials: the store's own, else [store]'s.
    let toml = format!(
        "[store]\naccess_key_id = \"global-id\"\nsecret_access_key = \"global-secret\"\n{}",
        two("access_key_id = \"b-id\"\nsecret_access_key = \"b-secret\"")
    );
    let cfg = config(&toml).unwrap();
    let (a, b) = (cfg.stores[0].options(), cfg.stores[1].options());
    assert_eq!(a.access_key_id.as_deref(), Some("global-id"));
    assert_eq!(a.secret_access_key.as_deref(), Some("global-secret"));
    assert_eq!(b.access_key_id.as_deref(), Some("b-id"));
    assert_eq!(b.secret_access_key.as_deref(), Some("b-secret"));
    assert!(
        !format!("{cfg:?}").contains("secret\""),
        "secrets stay out of Debug"
    );

    // An async store without a bound only alerts… and has no bound.
    let cfg = config(&two("role = \"async\"")).unwrap();
    assert_eq!(
        cfg.stores[1].role,
        StoreRole::Async {
            max_lag: None,
            on_lag_exceeded: OnLagExceeded::Alert
        }
    );
    assert_eq!(cfg.stores[1].partial_interval, Duration::from_secs(1));
}

#[test]
fn stores_are_in_restore_priority_order_then_as_written() {
    let names = |toml: &str| -> Vec<String> {
        config(toml)
            .unwrap()
            .stores
            .iter()
            .map(|s| s.name.clone())
            .collect()
    };
    let three = |pa: &str, pb: &str, pc: &str| {
        format!(
            "[[stores]]\nname = \"a\"\nurl = \"file:///a\"\n{pa}\n\
             [[stores]]\nname = \"b\"\nurl = \"file:///b\"\n{pb}\n\
             [[stores]]\nname = \"c\"\nurl = \"file:///c\"\n{pc}\n"
        )
    };
    assert_eq!(names(&three("", "", "")), ["a", "b", "c"]);
    let p = |n: i32| format!("restore_priority = {n}");
    assert_eq!(names(&three(&p(3), &p(1), &p(2))), ["b", "c", "a"]);
    assert_eq!(
        names(&three(&p(1), &p(1), &p(0))),
        ["c", "a", "b"],
        "ties as written"
    );
    assert_eq!(
        names(&three("", &p(9), "")),
        ["b", "a", "c"],
        "unset ones last"
    );
    assert_eq!(names(&three("", "", &p(-1))), ["c", "a", "b"]);
}

#[test]
fn the_shorthand_is_one_required_store_named_default() {
    let cfg = config("").unwrap();
    let [only] = cfg.stores.as_slice() else {
        panic!("{:?}", cfg.stores)
    };
    assert_eq!(only.name, SHORTHAND_STORE_NAME);
    assert_eq!(only.name, "default");
    assert_eq!(only.url, DEFAULT_STORE_URL);
    assert_eq!(only.role, StoreRole::Required);
    assert_eq!(only.upload_concurrency, 8);
    assert_eq!(only.keep_backups, 7);
    assert_eq!(only.partial_interval, Duration::from_secs(1));

    let toml = "[store]\nurl = \"file:///from/file\"\nupload_concurrency = 3\n\
                [wal]\npartial_interval = \"5s\"\n[backup]\nkeep_backups = 2\n";
    let cfg = config(toml).unwrap();
    let s = cfg.store();
    assert_eq!(
        (s.name.as_str(), s.url.as_str()),
        ("default", "file:///from/file")
    );
    assert_eq!(s.upload_concurrency, 3);
    assert_eq!(s.partial_interval, Duration::from_secs(5));
    assert_eq!(s.keep_backups, 2);

    let ov = Overrides {
        store_url: Some("file:///from/flag".into()),
        ..Default::default()
    };
    let cfg = load(toml, &[("STORE_URL", "file:///from/env")], ov)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(cfg.store().url, "file:///from/flag");

    // A URL that does not parse is a configuration error, named.
    let err = error("[store]\nurl = \"ftp://x/y\"\n");
    assert!(err.contains("store.url") && err.contains("ftp"), "{err}");
    let err = error("[store]\nurl = \" \"\n");
    assert!(err.contains("store.url is empty"), "{err}");
}

#[test]
fn store_url_and_stores_together_are_refused() {
    let both = |err: String| {
        assert!(
            err.contains("store.url") && err.contains("[[stores]]") && err.contains("both"),
            "{err}"
        );
    };
    // In the file, from the environment, from the flag; even when it is the default URL.
    both(error(&format!(
        "[store]\nurl = \"{DEFAULT_STORE_URL}\"\n{}",
        two("")
    )));
    both(
        load(
            &two(""),
            &[("STORE_URL", "file:///c")],
            Overrides::default(),
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string(),
    );
    let ov = Overrides {
        store_url: Some("file:///c".into()),
        ..Default::default()
    };
    both(
        load(&two(""), &[], ov)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string(),
    );
    // The other [store] keys are what stores inherit: no conflict.
    config(&format!("[store]\nupload_concurrency = 2\n{}", two(""))).unwrap();
}

#[test]
fn store_names_are_checked() {
    for bad in ["NAS", "-nas", "_nas", "n as", "nas.b", "é", &"a".repeat(33)] {
        let toml = format!("[[stores]]\nname = {bad:?}\nurl = \"file:///a\"\n");
        let err = error(&toml);
        assert!(
            err.contains("store name") && err.contains(bad),
            "{bad}: {err}"
        );
    }
    for good in ["nas", "r2", "0", "nas-1_b", &"a".repeat(32)] {
        config(&format!(
            "[[stores]]\nname = {good:?}\nurl = \"file:///a\"\n"
        ))
        .unwrap();
    }
    let err = error("[[stores]]\nurl = \"file:///a\"\n");
    assert!(err.contains("entry 1 has no name"), "{err}");

    let err = error(&two("").replace("name = \"b\"", "name = \"a\""));
    assert!(err.contains("two [[stores]] are named \"a\""), "{err}");

    // `nas-b` and `nas_b` would share PGAGENT_STORES_NAS_B_*.
    let err = error(
        &two("")
            .replace("name = \"a\"", "name = \"nas-b\"")
            .replace("name = \"b\"", "name = \"nas_b\""),
    );
    assert!(err.contains("PGAGENT_STORES_NAS_B_"), "{err}");
}

#[test]
fn urls_are_checked_and_never_shared() {
    let err = error("[[stores]]\nname = \"a\"\n");
    assert!(err.contains("store \"a\": url is missing"), "{err}");
    let err = error("[[stores]]\nname = \"a\"\nurl = \"s3://\"\n");
    assert!(err.contains("store \"a\": url:"), "{err}");

    // The same directory, or the same bucket and prefix, whatever else the URL says.
    let err = error(&two("").replace("file:///b", "file:///a/"));
    assert!(
        err.contains("stores \"a\" and \"b\" have the same url"),
        "{err}"
    );
    let s3 = |a: &str, b: &str| {
        format!(
            "[[stores]]\nname = \"a\"\nurl = \"{a}\"\n[[stores]]\nname = \"b\"\nurl = \"{b}\"\n"
        )
    };
    let err = error(&s3(
        "s3://bk/p?endpoint=http://h:9000&region=auto",
        "s3://bk/p/?endpoint=http://h:9000/&path_style=true",
    ));
    assert!(err.contains("same url"), "{err}");
    config(&s3(
        "s3://bk/p?endpoint=http://h:9000",
        "s3://bk/q?endpoint=http://h:9000",
    ))
    .unwrap();
    config(&s3(
        "s3://bk/p?endpoint=http://h:9000",
        "s3://bk/p?endpoint=http://other:9000",
    ))
    .unwrap();
}

#[test]
fn roles_and_lag_policies_are_checked() {
    let err = error(
        &two("role = \"async\"")
            .replace("name = \"a\"\nurl", "name = \"a\"\nrole = \"async\"\nurl"),
    );
    assert!(err.contains("no store with role = \"required\""), "{err}");
    assert!(err.contains("a, b"), "{err}");

    for key in ["max_lag = { time = \"1m\" }", "on_lag_exceeded = \"alert\""] {
        let err = error(&two(key));
        let name = key.split(' ').next().unwrap();
        assert!(
            err.contains("store \"b\"") && err.contains(&format!("{name} is for async stores")),
            "{err}"
        );
    }
    let err = error(&two("role = \"async\"\non_lag_exceeded = \"hold\""));
    assert!(
        err.contains("store \"b\"") && err.contains("needs max_lag"),
        "{err}"
    );
    let err = error(&two("role = \"async\"\nmax_lag = {}"));
    assert!(err.contains("max_lag names no bound"), "{err}");
    for zero in ["{ time = \"0s\" }", "{ bytes = \"0B\", time = \"1m\" }"] {
        let err = error(&two(&format!("role = \"async\"\nmax_lag = {zero}")));
        assert!(err.contains("max_lag must be more than 0"), "{zero}: {err}");
    }
    let err = error(&two(
        "role = \"async\"\nmax_lag = { time = \"1m\", rows = 3 }",
    ));
    assert!(err.contains("rows"), "{err}");
    let err = error(&two("role = \"sync\""));
    assert!(err.contains("sync"), "{err}");

    // Either bound alone is enough for hold; the table form works too.
    let cfg = config(&two(
        "role = \"async\"\nmax_lag = { bytes = \"1GiB\" }\non_lag_exceeded = \"hold\"",
    ))
    .unwrap();
    assert_eq!(
        cfg.stores[1].role,
        StoreRole::Async {
            max_lag: Some(MaxLag {
                time: None,
                bytes: Some(ByteSize::gib(1))
            }),
            on_lag_exceeded: OnLagExceeded::Hold
        }
    );
    let cfg = config(&two("role = \"async\"\n[stores.max_lag]\ntime = \"30s\"")).unwrap();
    let StoreRole::Async { max_lag, .. } = cfg.stores[1].role else {
        panic!()
    };
    assert_eq!(max_lag.unwrap().time, Some(Duration::from_secs(30)));
}

#[test]
fn per_store_values_are_checked_like_the_global_ones() {
    for (extra, want) in [
        (
            "upload_concurrency = 0",
            "store \"b\": upload_concurrency = 0 is out of range",
        ),
        (
            "upload_concurrency = 300",
            "upload_concurrency = 300 is out of range",
        ),
        (
            "partial_interval = \"10ms\"",
            "store \"b\": partial_interval must be at least 50ms",
        ),
        ("partial_interval = \"soon\"", "partial_interval"),
        ("restore_priority = \"first\"", "restore_priority"),
        ("colour = \"blue\"", "colour"),
    ] {
        let err = load(&two(extra), &[], Overrides::default())
            .and_then(RawConfig::validate)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{extra}: {err}");
    }
}

#[test]
fn one_store_is_used_and_several_are_refused_by_name() {
    let cfg = config("").unwrap();
    assert_eq!(cfg.one_store_for("backup").unwrap().name, "default");
    let cfg = config("[[stores]]\nname = \"nas\"\nurl = \"file:///a\"\n").unwrap();
    assert_eq!(cfg.one_store_for("backup").unwrap().name, "nas");
    assert_eq!(cfg.store().url, "file:///a");

    let cfg = config(NAS_AND_R2).unwrap();
    // backup, snapshot and prune use every store.
    for every in ["backup", "snapshot", "prune"] {
        assert_eq!(cfg.one_store_for(every).unwrap().name, "nas", "{every}");
    }
    let err = cfg.one_store_for("verify").unwrap_err().to_string();
    for part in [
        "several stores are configured (nas, r2)",
        "`pgagent verify`",
        "not yet use more than one",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
}

#[test]
#[should_panic(expected = "several stores are configured (nas, r2)")]
fn the_store_is_never_silently_the_first_of_several() {
    let cfg = config(NAS_AND_R2).unwrap();
    let _ = cfg.store();
}

#[test]
fn a_store_selection_names_known_stores() {
    let cfg = config(NAS_AND_R2).unwrap();
    let names = |sel: &[&str]| -> Vec<String> {
        cfg.select_stores(sel)
            .unwrap()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    };
    assert_eq!(names(&[]), ["nas", "r2"], "none: all, in restore order");
    assert_eq!(names(&["r2"]), ["r2"]);
    assert_eq!(names(&["r2", "nas", "r2"]), ["nas", "r2"]);
    let err = cfg.select_stores(&["b2"]).unwrap_err().to_string();
    assert!(
        err.contains("no store is named \"b2\"") && err.contains("nas, r2"),
        "{err}"
    );
}

/// The README's example of several stores is a valid configuration.
#[test]
fn the_readme_example_of_several_stores_is_valid() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split_once("### Several stores")
        .expect("README has the section")
        .1;
    let toml = section
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("an example")
        .0;
    let cfg = config(toml).unwrap();
    let names: Vec<&str> = cfg.stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["nas", "r2"]);
    assert!(cfg.stores[0].is_required() && !cfg.stores[1].is_required());
}

/// `schedule`: a store's own, else `backup.schedule` (the shorthand's too); from the file or
/// `PGAGENT_STORES_<NAME>_SCHEDULE`; one that does not parse names its store.
#[test]
fn a_store_schedule_is_its_own_or_backup_schedule() {
    let toml = format!(
        "[backup]\nschedule = \"0 3 * * *\"\n{}",
        two("schedule = \"0 4 1 * *\"")
    );
    let cfg = config(&toml).unwrap();
    assert_eq!(cfg.stores[0].schedule, "0 3 * * *", "inherited");
    assert_eq!(cfg.stores[1].schedule, "0 4 1 * *");
    let cfg = load(
        &toml,
        &[
            ("STORES_A_SCHEDULE", "0 2 * * 0"),
            ("STORES_B_SCHEDULE", ""),
        ],
        Overrides::default(),
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(cfg.stores[0].schedule, "0 2 * * 0");
    assert_eq!(cfg.stores[1].schedule, "", "an empty one takes no backups");
    let cfg = config("[backup]\nschedule = \"0 5 * * *\"\n").unwrap();
    assert_eq!(cfg.stores[0].schedule, "0 5 * * *");
    let e = error(&two("schedule = \"every week\""));
    assert!(e.contains("store \"b\": schedule = \"every week\""), "{e}");
}

/// `store.lock` and `lock_days` reach every store's options; a `[[stores]]` entry may set
/// its own; `store.as_of` is read as a UTC time and makes the options read-only.
#[test]
fn lock_and_as_of_reach_each_store() {
    use pgagent_storage::{LockMode, LockPolicy};
    let cfg = config(
        "[store]\nurl = \"s3://b/db1?region=eu-west-1\"\nlock = \"compliance\"\nlock_days = 30\n",
    )
    .unwrap();
    let lock = Some(LockPolicy {
        mode: LockMode::Compliance,
        days: 30,
    });
    assert_eq!(cfg.store().lock, lock);
    assert_eq!(cfg.store().options().lock, lock);
    assert_eq!(cfg.as_of(), None);

    // Each entry: the global setting, its own, and a default days from its own retention.
    let cfg = config(
        "[store]\nlock = \"governance\"\n\n[backup]\nschedule = \"0 3 * * *\"\nincremental = \"off\"\n\n\
         [[stores]]\nname = \"s3\"\nurl = \"s3://b/db1\"\n\n\
         [[stores]]\nname = \"garage\"\nurl = \"s3://g/db1?endpoint=http://127.0.0.1:3900\"\nlock = \"off\"\n\n\
         [[stores]]\nname = \"far\"\nurl = \"s3://f/db1\"\nkeep_backups = 14\n",
    )
    .unwrap();
    let by_name = |n: &str| cfg.stores.iter().find(|s| s.name == n).unwrap().lock;
    let governance = |days| {
        Some(LockPolicy {
            mode: LockMode::Governance,
            days,
        })
    };
    assert_eq!(by_name("s3"), governance(16));
    assert_eq!(by_name("garage"), None);
    assert_eq!(by_name("far"), governance(24));

    let cfg = config("[store]\nurl = \"s3://b/db1\"\nas_of = \"2026-12-06T09:00:00Z\"\n").unwrap();
    let at = humantime::parse_rfc3339("2026-12-06T09:00:00Z").unwrap();
    assert_eq!(cfg.as_of(), Some(at));
    assert_eq!(cfg.store().options().as_of, Some(at));

    let e = error("[store]\nurl = \"s3://b/db1\"\nas_of = \"yesterday\"\n");
    assert!(e.contains("store.as_of = \"yesterday\""), "{e}");
    let e = error("[store]\nurl = \"file:///s\"\nlock = \"compliance\"\nlock_days = 3\n");
    assert!(e.contains("file:// store has none"), "{e}");
    let e = error(
        "[[stores]]\nname = \"a\"\nurl = \"file:///s\"\nlock = \"governance\"\nlock_days = 3\n",
    );
    assert!(
        e.contains("store \"a\"") && e.contains("file:// store"),
        "{e}"
    );
}
