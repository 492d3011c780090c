//! The sidecar injected into a pod spec (a Kubernetes `PodSpec` as JSON), as SPEC.md "Pod
//! layout" draws it. Every step finds what an earlier run added and leaves it as it is, so
//! injecting into an injected spec changes nothing.

use serde_json::{json, Map, Value};

use super::LifecycleError;

/// The sidecar container's name, in `spec.initContainers`.
pub const SIDECAR_NAME: &str = "pgagent";

/// The volume the plugins' unix sockets live in, shared by CloudNativePG's instance manager
/// and the plugins' sidecars: an `emptyDir` named `plugins` mounted at `/plugins`
/// (`DefaultPluginSocketDir` in CloudNativePG's `internal/configuration/configuration.go`;
/// the plugin adds the volume, as `InjectPluginVolumePodSpec` in plugin-barman-cloud's
/// `internal/cnpgi/operator/lifecycle.go` does).
pub const PLUGINS_VOLUME: &str = "plugins";
/// Where [`PLUGINS_VOLUME`] is mounted.
pub const PLUGINS_DIR: &str = "/plugins";

/// The sidecar's startup probe command: ready once the plugin socket answers.
pub const HEALTHCHECK: [&str; 3] = ["/usr/local/bin/pgagent", "cnpg", "healthcheck"];

/// Fields of the sidecar container this plugin sets; others (defaults the API server filled
/// in) are kept.
const OWNED_FIELDS: [&str; 11] = [
    "name",
    "image",
    "imagePullPolicy",
    "args",
    "restartPolicy",
    "env",
    "envFrom",
    "volumeMounts",
    "startupProbe",
    "securityContext",
    "resources",
];

/// What the sidecar is made of.
pub(super) struct SidecarSpec<'a> {
    /// `image`.
    pub image: &'a str,
    /// `imagePullPolicy`; `None`: the Kubernetes default.
    pub pull_policy: Option<&'a str>,
    /// `args`: `["cnpg", "instance"]` or `["cnpg", "restore"]`.
    pub args: [&'a str; 2],
    /// The sidecar's own variables, which the main container's do not override; one per name.
    pub env: Vec<(String, String)>,
    /// The Secret added with `envFrom.secretRef`.
    pub secret: Option<&'a str>,
    /// `resources`, a `ResourceRequirements`.
    pub resources: Value,
}

/// Injects the sidecar into `spec`, the pod spec whose main container is named `main`.
///
/// Errors: `spec` is not an object, or has no container named `main`.
pub(super) fn inject(
    spec: &mut Value,
    main: &str,
    sidecar: &SidecarSpec,
) -> Result<(), LifecycleError> {
    let spec = spec
        .as_object_mut()
        .ok_or_else(|| LifecycleError::InvalidObject("the pod spec is not an object".into()))?;
    ensure_plugins_volume(spec);
    let main_container = array(spec, "containers")
        .iter_mut()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(main))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| LifecycleError::NoMainContainer(main.to_string()))?;
    if !has_mount(main_container, |m| {
        mount_field(m, "name") == Some(PLUGINS_VOLUME)
    }) {
        array(main_container, "volumeMounts").push(plugins_mount());
    }
    let mut mounts = main_container
        .get("volumeMounts")
        .cloned()
        .unwrap_or_else(|| json!([]));
    if !mounts.as_array().is_some_and(|ms| {
        ms.iter()
            .any(|m| mount_field(m, "mountPath") == Some(PLUGINS_DIR))
    }) {
        if let Some(ms) = mounts.as_array_mut() {
            ms.push(plugins_mount());
        }
    }
    let env = sidecar_env(&sidecar.env, main_container.get("env"));
    let fields = container_fields(sidecar, env, mounts);
    let init = array(spec, "initContainers");
    match init
        .iter_mut()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME))
        .and_then(Value::as_object_mut)
    {
        Some(existing) => {
            for field in OWNED_FIELDS {
                existing.remove(field);
            }
            existing.extend(fields);
        }
        None => init.push(Value::Object(fields)),
    }
    Ok(())
}

/// The sidecar's fields (see [`OWNED_FIELDS`]).
fn container_fields(s: &SidecarSpec, env: Vec<Value>, mounts: Value) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("name".into(), SIDECAR_NAME.into());
    c.insert("image".into(), s.image.into());
    if let Some(policy) = s.pull_policy {
        c.insert("imagePullPolicy".into(), policy.into());
    }
    c.insert("args".into(), json!(s.args));
    // A native sidecar: an init container that keeps running beside the main containers
    // (Kubernetes 1.29+, "Sidecar containers").
    c.insert("restartPolicy".into(), "Always".into());
    c.insert("env".into(), env.into());
    if let Some(secret) = s.secret {
        c.insert("envFrom".into(), json!([{"secretRef": {"name": secret}}]));
    }
    c.insert("volumeMounts".into(), mounts);
    c.insert(
        "startupProbe".into(),
        json!({
            "exec": {"command": HEALTHCHECK},
            "periodSeconds": 1,
            "failureThreshold": 30,
            "timeoutSeconds": 5
        }),
    );
    c.insert(
        "securityContext".into(),
        json!({
            "allowPrivilegeEscalation": false,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }),
    );
    c.insert("resources".into(), s.resources.clone());
    c
}

/// The sidecar's own variables, then the main container's whose names they do not set
/// (their entries as they are, `valueFrom` included).
fn sidecar_env(own: &[(String, String)], main_env: Option<&Value>) -> Vec<Value> {
    let mut env: Vec<Value> = own
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let inherited = main_env.and_then(Value::as_array).into_iter().flatten();
    for var in inherited {
        let name = var.get("name").and_then(Value::as_str);
        if !own.iter().any(|(n, _)| Some(n.as_str()) == name) {
            env.push(var.clone());
        }
    }
    env
}

/// Adds the `plugins` volume unless the pod has one (CloudNativePG or another plugin may
/// have added it).
fn ensure_plugins_volume(spec: &mut Map<String, Value>) {
    let volumes = array(spec, "volumes");
    if !volumes
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(PLUGINS_VOLUME))
    {
        volumes.push(json!({"name": PLUGINS_VOLUME, "emptyDir": {}}));
    }
}

fn plugins_mount() -> Value {
    json!({"name": PLUGINS_VOLUME, "mountPath": PLUGINS_DIR})
}

fn mount_field<'a>(mount: &'a Value, field: &str) -> Option<&'a str> {
    mount.get(field).and_then(Value::as_str)
}

fn has_mount(container: &Map<String, Value>, pred: impl Fn(&Value) -> bool) -> bool {
    container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .is_some_and(|ms| ms.iter().any(pred))
}

/// The array `object[key]`, made an empty one when absent or not an array.
fn array<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = object.entry(key).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("made an array above")
}
