//! Golden test of the CNPG-I wire interface: every method path the `.proto` files declare is
//! one CNPG calls, and every path CNPG calls is declared, in the package CNPG puts it in.

use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn the_protos_declare_exactly_cnpgs_method_paths() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    assert_eq!(files.len(), 9, "one file per CNPG-I proto: {files:?}");
    let set = protox::compile(&files, [&dir]).unwrap();
    let declared: BTreeSet<String> = set
        .file
        .iter()
        .flat_map(|f| {
            let package = f.package().to_string();
            f.service.iter().flat_map(move |s| {
                let package = package.clone();
                s.method
                    .iter()
                    .map(move |m| format!("/{package}.{}/{}", s.name(), m.name()))
            })
        })
        .collect();
    let golden: BTreeSet<String> = pgagent_cnpgi::METHOD_PATHS
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        golden.len(),
        pgagent_cnpgi::METHOD_PATHS.len(),
        "no path twice"
    );
    let missing: Vec<_> = golden.difference(&declared).collect();
    let extra: Vec<_> = declared.difference(&golden).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
}

#[test]
fn the_packages_that_hold_two_files_are_cnpgs() {
    // restore_job.proto is in cnpgi.wal.v1 and postgres.proto in cnpgi.identity.v1.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let set = protox::compile(["restore_job.proto", "postgres.proto"], [&dir]).unwrap();
    let packages: Vec<(&str, &str)> = set.file.iter().map(|f| (f.name(), f.package())).collect();
    assert!(
        packages.contains(&("restore_job.proto", "cnpgi.wal.v1")),
        "{packages:?}"
    );
    assert!(
        packages.contains(&("postgres.proto", "cnpgi.identity.v1")),
        "{packages:?}"
    );
}

#[test]
fn the_generated_servers_answer_on_cnpgs_service_names() {
    use pgagent_cnpgi::*;
    let names: BTreeSet<&str> = [
        identity::identity_server::SERVICE_NAME,
        identity::postgres_server::SERVICE_NAME,
        wal::wal_server::SERVICE_NAME,
        wal::restore_job_hooks_server::SERVICE_NAME,
        backup::backup_server::SERVICE_NAME,
        operator::operator_server::SERVICE_NAME,
        lifecycle::operator_lifecycle_server::SERVICE_NAME,
        reconciler::reconciler_hooks_server::SERVICE_NAME,
        metrics::metrics_server::SERVICE_NAME,
    ]
    .into_iter()
    .collect();
    let from_paths: BTreeSet<&str> = METHOD_PATHS
        .iter()
        .map(|p| p[1..].split('/').next().unwrap())
        .collect();
    assert_eq!(names, from_paths);
}
