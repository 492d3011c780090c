//! Dependencies point down only, in every crate (DESIGN.md, "Module map"): checked here, so
//! that an import running back up, or a new circle of modules, fails CI instead of waiting
//! for a review.
//!
//! Each crate's layers are written once, below, top first, in the words of its `lib.rs`
//! doc; [`pgagent_tests::layers`] reads the crate's sources and names every import that
//! runs back up and every circle of modules.

use pgagent_tests::layers::{assert_layered, problems, Layers};

/// `agent/`: what `agent/src/lib.rs` draws.
const AGENT: Layers = &[
    ("main_entry and the command line", &["", "cli"]),
    ("commands", &["commands"]),
    ("daemon", &["daemon"]),
    (
        "services",
        &[
            "pipeline", "fetch", "backup", "restore", "drill", "zfs", "cnpg",
        ],
    ),
    (
        "shared modules",
        &[
            "server",
            "store",
            "retrying_store",
            "metrics",
            "statusfile",
            "alerts",
            "staging",
            "pg_manifest",
            "tracker",
        ],
    ),
    ("config", &["config", "exit"]),
    (
        "leaves",
        &["retry", "schedule", "progress", "child", "logging", "times"],
    ),
];

#[test]
fn agent_imports_point_down_and_close_no_circle() {
    assert_layered("agent", AGENT);
}

/// `protocol/`: what `protocol/src/lib.rs` says: the I/O client over the pure wire code.
const PROTOCOL: Layers = &[
    ("the crate root", &[""]),
    (
        "the I/O client (startup, TLS, replication, SQL, base-backup stream)",
        &["client"],
    ),
    (
        "the pure wire code (messages, LSN, segments, timelines, history, pages)",
        &["wire"],
    ),
    ("errors", &["error"]),
];

#[test]
fn protocol_imports_point_down_and_close_no_circle() {
    assert_layered("protocol", PROTOCOL);
}

/// `storage/`: what `storage/src/lib.rs` says: opening a store over the backends, the keys
/// and the claim over the formats they write, everything over the store trait.
const STORAGE: Layers = &[
    ("the crate root", &[""]),
    ("the conformance suite", &["conformance"]),
    ("opening a store by URL", &["open"]),
    ("key files and the claim", &["keyring"]),
    (
        "what is stored (formats, records, the agreement)",
        &[
            "agreement",
            "cluster",
            "immutable",
            "envelope",
            "deltas",
            "manifest",
            "snapshot",
            "drill",
            "pin",
        ],
    ),
    (
        "backends and layers",
        &[
            "s3", "fs", "prefixed", "read_set", "requests", "layer", "config",
        ],
    ),
    (
        "primitives",
        &["crypto", "layout", "lock", "object_store", "error"],
    ),
];

#[test]
fn storage_imports_point_down_and_close_no_circle() {
    assert_layered("storage", STORAGE);
}

// ---- the checker, checked on a crate made up for it ----

/// A crate of three layers (`a` over `b` over `c`) in a temporary directory.
fn made_up_crate(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("b")).expect("mkdir");
    std::fs::write(
        src.join("lib.rs"),
        "pub mod a;\n#[cfg(test)]\nmod b;\npub mod c;\npub fn root() {}\n",
    )
    .expect("write");
    for (name, text) in files {
        std::fs::write(src.join(name), text).expect("write");
    }
    dir
}

const MADE_UP: Layers = &[("top", &["", "a"]), ("middle", &["b"]), ("bottom", &["c"])];

fn made_up_problems(files: &[(&str, &str)]) -> Vec<String> {
    let dir = made_up_crate(files);
    problems(&dir.path().join("src"), "x", MADE_UP)
}

#[test]
fn downward_imports_and_names_in_comments_or_strings_pass() {
    let found = made_up_problems(&[
        ("a.rs", "use crate::{b::B, c};\nfn f() { crate::c::g(); }\n"),
        (
            "b/mod.rs",
            "//! Not [`crate::a`].\nmod inner;\npub struct B;\nconst S: &str = \"crate::a::x\";\n\
             const R: &str = r#\"use crate::a;\"#;\nfn f<'a>(x: &'a str) -> char { '{' }\n",
        ),
        (
            "b/inner.rs",
            "use super::B;\npub(super) fn h() { super::super::c::g(); }\n",
        ),
        (
            "c.rs",
            "pub fn g() {}\n/* use crate::a; /* nested */ use crate::b; */\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn an_import_from_a_layer_above_is_named_with_its_file_and_line() {
    let found = made_up_problems(&[
        ("a.rs", "use crate::b;\n"),
        ("b/mod.rs", "mod inner;\n"),
        (
            "b/inner.rs",
            "fn f() {}\n#[cfg(test)]\nmod tests {\n    use super::super::super::a::X;\n}\n",
        ),
        ("c.rs", "pub fn g() { crate::{root, a::h}(); }\n"),
    ]);
    let all = found.join("\n");
    assert!(
        all.contains("x/src/b/inner.rs:4: `super::super::super::a`: b (middle) imports a (top), a layer above it"),
        "{all}"
    );
    assert!(
        all.contains("x/src/c.rs:1: `crate::root`: c (bottom) imports the crate root"),
        "{all}"
    );
    assert!(
        all.contains("x/src/c.rs:1: `crate::a`: c (bottom) imports a (top)"),
        "{all}"
    );
    assert_eq!(found.len(), 4, "{all}");
}

#[test]
fn a_circle_within_a_layer_and_modules_missing_from_the_table_fail() {
    let dir = made_up_crate(&[
        ("a.rs", "use crate::c::C;\n"),
        ("b/mod.rs", "\n"),
        ("c.rs", "pub struct C;\nfn f() { let _ = crate::a::A; }\n"),
    ]);
    let flat: Layers = &[("all", &["", "a", "b", "c", "gone"])];
    let found = problems(&dir.path().join("src"), "x", flat).join("\n");
    assert!(
        found.contains("circle of modules a, c, tied by:"),
        "{found}"
    );
    assert!(found.contains("x/src/c.rs:2: `crate::a`"), "{found}");
    assert!(found.contains("the table names \"gone\""), "{found}");
    let partial: Layers = &[("all", &["", "a", "c"])];
    let found = problems(&dir.path().join("src"), "x", partial).join("\n");
    assert!(
        found.contains("module \"b\" of x/ is in no layer"),
        "{found}"
    );
}
