//! The sidecar container's resources, from the `resources.*` parameters over defaults.

use super::{quantity, ValidationError};

/// The resources given for the sidecar container, as written (each a valid Kubernetes
/// quantity, no request above its limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `resources.requests.cpu`.
    pub requests_cpu: Option<String>,
    /// `resources.requests.memory`.
    pub requests_memory: Option<String>,
    /// `resources.limits.cpu`.
    pub limits_cpu: Option<String>,
    /// `resources.limits.memory`.
    pub limits_memory: Option<String>,
}

/// Default CPU request of the sidecar.
pub const DEFAULT_REQUESTS_CPU: &str = "50m";
/// Default memory request of the sidecar.
pub const DEFAULT_REQUESTS_MEMORY: &str = "64Mi";
/// Default memory limit of the sidecar (no default CPU limit).
pub const DEFAULT_LIMITS_MEMORY: &str = "256Mi";

impl Resources {
    /// The container's `resources` (a Kubernetes `ResourceRequirements`):
    /// `{"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}`,
    /// the given values over the defaults. A default never contradicts a given value: a
    /// default limit below a given request is raised to it, and a default request above a
    /// given limit is lowered to it, as the API server would refuse a request above its limit.
    pub fn to_json(&self) -> serde_json::Value {
        let (req_cpu, lim_cpu) = effective(
            self.requests_cpu.as_deref(),
            self.limits_cpu.as_deref(),
            Some(DEFAULT_REQUESTS_CPU),
            None,
        );
        let (req_mem, lim_mem) = effective(
            self.requests_memory.as_deref(),
            self.limits_memory.as_deref(),
            Some(DEFAULT_REQUESTS_MEMORY),
            Some(DEFAULT_LIMITS_MEMORY),
        );
        let map = |cpu: Option<&str>, memory: Option<&str>| {
            let mut m = serde_json::Map::new();
            for (k, v) in [("cpu", cpu), ("memory", memory)] {
                if let Some(v) = v {
                    m.insert(k.into(), v.into());
                }
            }
            m
        };
        let mut out = serde_json::Map::new();
        for (k, m) in [
            ("requests", map(req_cpu, req_mem)),
            ("limits", map(lim_cpu, lim_mem)),
        ] {
            if !m.is_empty() {
                out.insert(k.into(), m.into());
            }
        }
        out.into()
    }
}

/// The request and limit to use from the given ones and the defaults (see [`Resources::to_json`]).
fn effective<'a>(
    request: Option<&'a str>,
    limit: Option<&'a str>,
    default_request: Option<&'a str>,
    default_limit: Option<&'a str>,
) -> (Option<&'a str>, Option<&'a str>) {
    let q = |s: &str| quantity::parse(s).unwrap_or(0.0);
    match (request, limit) {
        (Some(r), Some(l)) => (Some(r), Some(l)),
        (Some(r), None) => (
            Some(r),
            default_limit.map(|d| if q(r) > q(d) { r } else { d }),
        ),
        (None, Some(l)) => (
            default_request.map(|d| if q(d) > q(l) { l } else { d }),
            Some(l),
        ),
        (None, None) => (default_request, default_limit),
    }
}

/// Refuses a given request above its given limit: the API server would refuse the pod.
pub(super) fn check_requests_within_limits(
    r: &Resources,
    path: &[String],
    errors: &mut Vec<ValidationError>,
) {
    let pairs = [
        ("cpu", &r.requests_cpu, &r.limits_cpu),
        ("memory", &r.requests_memory, &r.limits_memory),
    ];
    for (what, request, limit) in pairs {
        let (Some(req), Some(lim)) = (request, limit) else {
            continue;
        };
        let (Ok(rq), Ok(lq)) = (quantity::parse(req), quantity::parse(lim)) else {
            continue;
        };
        if rq > lq {
            errors.push(ValidationError::at_key(
                path,
                &format!("resources.requests.{what}"),
                req,
                format!("the {what} request {req} is above its limit {lim}"),
            ));
        }
    }
}
