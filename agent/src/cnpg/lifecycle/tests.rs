//! Golden tests of the lifecycle patches on a pod and a job shaped as CloudNativePG makes
//! them (`testdata/`), and the rules around them.
//!
//! The expected patches are `testdata/*.patch.json`. After an intended change of the pod
//! layout, rewrite them with
//! `PGAGENT_BLESS=1 cargo test -p pgagent --lib cnpg::lifecycle` and review the diff.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;

const CLUSTER: &[u8] = include_bytes!("testdata/cluster.json");
const POD: &str = include_str!("testdata/instance-pod.json");
const JOB: &str = include_str!("testdata/recovery-job.json");

fn sidecar() -> Sidecar {
    Sidecar {
        image: "ghcr.io/pgagent/pgagent:0.1.0".into(),
    }
}

fn cluster() -> Cluster {
    Cluster::from_json(CLUSTER).unwrap()
}

fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// `object` with `patch` (bytes of a JSON patch) applied.
fn apply(object: &Value, patch: &[u8]) -> Value {
    let patch: json_patch::Patch = serde_json::from_slice(patch).unwrap();
    let mut out = object.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

/// Compares `patch` with the golden file `name`, or writes it with `PGAGENT_BLESS=1`.
fn golden(name: &str, patch: &[u8]) {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "src/cnpg/lifecycle/testdata",
        name,
    ]
    .iter()
    .collect();
    let got: Value = serde_json::from_slice(patch).unwrap();
    if std::env::var_os("PGAGENT_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (PGAGENT_BLESS=1 writes it)", path.display()));
    assert!(
        got == value(&want),
        "{name} differs (PGAGENT_BLESS=1 rewrites it); got:\n{}",
        serde_json::to_string_pretty(&got).unwrap()
    );
}

/// Patching what the patch produced changes nothing, and running the hook again on its
/// own output gives the same object.
fn assert_idempotent(object: &Value, patch: &[u8]) -> Value {
    let once = apply(object, patch);
    let again = super::patch(&cluster(), &once, &sidecar()).unwrap();
    assert_eq!(again, b"[]", "{}", String::from_utf8_lossy(&again));
    assert_eq!(apply(&once, &again), once);
    once
}

fn env_of(container: &Value) -> Vec<(&str, &Value)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect()
}

#[test]
fn instance_pod_gets_the_sidecar() {
    let pod = value(POD);
    let patch = pod_patch(&cluster(), &pod, &sidecar()).unwrap();
    golden("instance-pod.patch.json", &patch);
    let pod = assert_idempotent(&pod, &patch);
    let spec = &pod["spec"];
    let init = spec["initContainers"].as_array().unwrap();
    assert_eq!(
        init[0]["name"], "bootstrap-controller",
        "CloudNativePG's runs first"
    );
    let s = &init[1];
    assert_eq!(s["name"], SIDECAR_NAME);
    assert_eq!(s["restartPolicy"], "Always");
    assert_eq!(s["args"], json!(["cnpg", "instance"]));
    assert_eq!(s["image"], "ghcr.io/pgagent/pgagent:0.1.0");
    assert_eq!(s["imagePullPolicy"], "IfNotPresent");
    assert_eq!(s["envFrom"], json!([{"secretRef": {"name": "pgagent-s3"}}]));
    assert_eq!(s["startupProbe"]["exec"]["command"], json!(HEALTHCHECK));
    assert_eq!(s["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        s["resources"],
        json!({"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}})
    );
    let env = env_of(s);
    let names: Vec<&str> = env.iter().map(|(n, _)| *n).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "one entry per name: {names:?}");
    for (name, want) in [
        (
            "PGAGENT_STORE_URL",
            "s3://backups/pg1?endpoint=https://minio.db.svc:9000&region=us-east-1&path_style=true",
        ),
        ("PGAGENT_WAL_PARTIAL_INTERVAL", "2s"),
        ("PGAGENT_STAGING_DIR", STAGING_DIR),
        ("PGAGENT_POSTGRES_CONNINFO", CONNINFO),
        ("PGAGENT_METRICS_LISTEN", METRICS_LISTEN),
        // The fixture's `backup.schedule` parameter wins over the layout's empty default.
        ("PGAGENT_BACKUP_SCHEDULE", "0 2 * * *"),
        ("PGDATA", "/var/lib/postgresql/data/pgdata"),
        ("POD_NAME", "pg1-1"),
        ("CLUSTER_NAME", "pg1"),
    ] {
        let got = env
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| &e["value"]);
        assert_eq!(got, Some(&json!(want)), "{name}");
    }
    assert!(!names.contains(&"PGAGENT_SECRET") && !names.iter().any(|n| n.contains("RESOURCES")));
    let tz = env.iter().find(|(n, _)| *n == "TZ").unwrap().1;
    assert!(tz.get("valueFrom").is_some(), "copied as it is");
    let mounts = |c: &Value| -> Vec<(String, String)> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().into(),
                    m["mountPath"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let postgres = &spec["containers"][0];
    assert_eq!(
        mounts(s),
        mounts(postgres),
        "the postgres container's mounts, plugins included"
    );
    assert!(mounts(s).contains(&("plugins".into(), "/plugins".into())));
    assert!(mounts(s).contains(&("scratch-data".into(), "/controller".into())));
    assert!(spec["volumes"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "plugins", "emptyDir": {}})));
}

#[test]
fn recovery_job_gets_the_restore_sidecar_reading_the_source() {
    let job = value(JOB);
    let patch = job_patch(&cluster(), &job, &sidecar()).unwrap();
    golden("recovery-job.patch.json", &patch);
    let job = assert_idempotent(&job, &patch);
    let spec = &job["spec"]["template"]["spec"];
    let s = &spec["initContainers"][1];
    assert_eq!(s["args"], json!(["cnpg", "restore"]));
    let env = env_of(s);
    let get = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| e["value"].clone())
    };
    assert_eq!(
        get("PGAGENT_STORE_URL"),
        Some(json!("s3://backups/origin?endpoint=https://minio.db.svc:9000&region=us-east-1&path_style=true"))
    );
    assert_eq!(get("PGAGENT_FETCH_PREFETCH"), Some(json!("32")));
    assert_eq!(
        get("PGAGENT_WAL_PARTIAL_INTERVAL"),
        None,
        "the cluster's own settings are not the source's"
    );
    assert_eq!(get("POD_NAME"), Some(json!("pg1-1-full-recovery")));
    assert_eq!(
        s["resources"]["requests"]["memory"], "128Mi",
        "the cluster's own resources"
    );
    let main = &spec["containers"][0];
    assert_eq!(main["name"], FULL_RECOVERY_ROLE);
    assert!(main["volumeMounts"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "plugins", "mountPath": "/plugins"})));
}

#[test]
fn other_jobs_and_clusters_without_the_plugin_are_left_alone() {
    let c = cluster();
    for role in [
        "initdb",
        "join",
        "import",
        "pgbasebackup",
        "snapshot-recovery",
    ] {
        let mut job = value(JOB);
        job["spec"]["template"]["metadata"]["labels"][JOB_ROLE_LABEL] = json!(role);
        assert_eq!(patch(&c, &job, &sidecar()).unwrap(), b"[]", "{role}");
    }
    let mut other_source = c.clone();
    other_source.spec.external_clusters[1]
        .plugin
        .as_mut()
        .unwrap()
        .name = "barman-cloud.cloudnative-pg.io".into();
    assert_eq!(
        job_patch(&other_source, &value(JOB), &sidecar()).unwrap(),
        b"[]"
    );
    let mut disabled = c.clone();
    disabled.spec.plugins[1].enabled = Some(false);
    assert_eq!(
        pod_patch(&disabled, &value(POD), &sidecar()).unwrap(),
        b"[]"
    );
    let mut absent = c;
    absent.spec.plugins.remove(1);
    assert_eq!(pod_patch(&absent, &value(POD), &sidecar()).unwrap(), b"[]");
    // Restored by this plugin without it in spec.plugins: the source's resources, secret.
    let patched = apply(
        &value(JOB),
        &job_patch(&absent, &value(JOB), &sidecar()).unwrap(),
    );
    let s = &patched["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(s["resources"]["requests"]["memory"], "64Mi");
    assert_eq!(s["envFrom"][0]["secretRef"]["name"], "pgagent-s3");
}

/// A sidecar injected by an older version (another image, a setting since removed) is
/// brought up to date in place; fields the API server filled in are kept.
#[test]
fn an_outdated_sidecar_is_updated_in_place() {
    let c = cluster();
    let current = apply(
        &value(POD),
        &pod_patch(&c, &value(POD), &sidecar()).unwrap(),
    );
    let mut old = current.clone();
    let s = &mut old["spec"]["initContainers"][1];
    s["image"] = json!("ghcr.io/pgagent/pgagent:0.0.9");
    s["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "PGAGENT_WAL_CONFIRM", "value": "staging"}));
    s["terminationMessagePath"] = json!("/dev/termination-log");
    let updated = apply(&old, &pod_patch(&c, &old, &sidecar()).unwrap());
    let mut want = current;
    want["spec"]["initContainers"][1]["terminationMessagePath"] = json!("/dev/termination-log");
    assert_eq!(updated, want);
}

/// The parameters' variables win over the layout's and over the postgres container's.
#[test]
fn parameters_win_over_the_layout_and_the_postgres_env() {
    let mut c = cluster();
    c.spec.plugins[1].parameters.insert(
        "postgres.conninfo".into(),
        "host=/controller/run user=pgagent".into(),
    );
    let mut pod = value(POD);
    pod["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "PGAGENT_STORE_URL", "value": "s3://wrong/place"}));
    let patched = apply(&pod, &pod_patch(&c, &pod, &sidecar()).unwrap());
    let s = &patched["spec"]["initContainers"][1];
    let env = env_of(s);
    let values = |name: &str| -> Vec<&Value> {
        env.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, e)| &e["value"])
            .collect()
    };
    assert_eq!(
        values("PGAGENT_POSTGRES_CONNINFO"),
        [&json!("host=/controller/run user=pgagent")]
    );
    assert_eq!(values("PGAGENT_STORE_URL").len(), 1);
    assert_ne!(values("PGAGENT_STORE_URL")[0], &json!("s3://wrong/place"));
}

#[test]
fn refusals_are_errors() {
    let c = cluster();
    let mut pod = value(POD);
    pod["spec"]["containers"][0]["name"] = json!("main");
    let e = pod_patch(&c, &pod, &sidecar()).unwrap_err();
    assert!(
        matches!(e, LifecycleError::NoMainContainer(ref n) if n == "postgres"),
        "{e}"
    );
    let e = pod_patch(&c, &json!({"kind": "Pod", "metadata": {}}), &sidecar()).unwrap_err();
    assert!(matches!(e, LifecycleError::InvalidObject(_)), "{e}");
    let mut bad = c.clone();
    bad.spec.plugins[1]
        .parameters
        .insert("store.access_key_id".into(), "AKIA".into());
    let e = pod_patch(&bad, &value(POD), &sidecar()).unwrap_err();
    assert!(
        e.to_string()
            .contains("spec.plugins.1.parameters.store.access_key_id"),
        "{e}"
    );
    let e = patch(&c, &json!({"kind": "Service"}), &sidecar()).unwrap_err();
    assert!(
        matches!(e, LifecycleError::UnsupportedKind(ref k) if k == "Service"),
        "{e}"
    );
}

#[test]
fn capabilities_hook_pod_create_and_evaluate_and_job_create() {
    let hooks = capabilities();
    assert_eq!(hooks.len(), 2);
    assert_eq!((hooks[0].group, hooks[0].kind), ("", "Pod"));
    assert_eq!(
        hooks[0].operations,
        [OperationType::Create, OperationType::Evaluate]
    );
    assert_eq!((hooks[1].group, hooks[1].kind), ("batch", "Job"));
    assert_eq!(hooks[1].operations, [OperationType::Create]);
}
