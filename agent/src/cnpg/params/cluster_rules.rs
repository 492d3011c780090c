//! The checks of a whole Cluster (`Operator.ValidateClusterCreate` and
//! `ValidateClusterChange` of CNPG-I): this plugin's entry, the recovery source it restores
//! from, and the rules between the two.

use crate::cnpg::cluster::Cluster;
use crate::config::params::same_store;

use super::{PluginParams, ValidationError, SECRET};

/// The path of the parameters of `spec.plugins[i]`.
pub fn plugin_path(i: usize) -> Vec<String> {
    ["spec", "plugins", &i.to_string(), "parameters"]
        .map(String::from)
        .to_vec()
}

/// The path of the parameters of `spec.externalClusters[i].plugin`.
pub fn source_path(i: usize) -> Vec<String> {
    [
        "spec",
        "externalClusters",
        &i.to_string(),
        "plugin",
        "parameters",
    ]
    .map(String::from)
    .to_vec()
}

/// Everything wrong with this plugin's parts of `cluster`; empty: accepted.
///
/// Checks this plugin's entry in `spec.plugins` (when enabled) and, when the cluster is
/// bootstrapped from an `externalClusters` entry of this plugin, that entry's parameters
/// ([`PluginParams::parse`] for both), then, for a cluster with both:
/// - at most one Secret: the sidecar takes one Secret with `envFrom` (a limit of this
///   version), so the two entries name the same `secret`, or only one names one;
/// - two stores: the cluster's own `store.url` must not be the store it restores from, whose
///   prefix holds the cluster it came from (a store holds one cluster; DESIGN.md "Store
///   layout"). The restored cluster keeps the source's system identifier, so the sidecar's
///   own check of `cluster.json` could not tell the two apart.
pub fn validate_cluster(cluster: &Cluster) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let own = cluster.plugin().and_then(|(i, p)| {
        PluginParams::parse(&p.parameters, &plugin_path(i))
            .map_err(|e| errors.extend(e))
            .ok()
    });
    let source = cluster.recovery_source().and_then(|(i, e)| {
        let parameters = &e.plugin.as_ref()?.parameters;
        PluginParams::parse(parameters, &source_path(i))
            .map(|p| (i, p))
            .map_err(|e| errors.extend(e))
            .ok()
    });
    let (Some(own), Some((i, source))) = (own, source) else {
        return errors;
    };
    if let (Some(a), Some(b)) = (own.secret(), source.secret()) {
        if a != b {
            errors.push(ValidationError::at_key(
                &source_path(i),
                SECRET,
                b,
                format!(
                    "the recovery source names the Secret {b:?} and the cluster's own {} entry \
                     names {a:?}: the sidecar takes one Secret in this version; put the \
                     credentials of both stores in one Secret and name it in both entries (or \
                     in one of them)",
                    crate::cnpg::PLUGIN_NAME
                ),
            ));
        }
    }
    if same_store(own.config(), source.config()) {
        errors.push(ValidationError::at_key(
            &plugin_path(cluster.plugin().map_or(0, |(i, _)| i)),
            "store.url",
            own.store_url(),
            format!(
                "this is the store the cluster is restored from ({}): its prefix holds the \
                 source cluster, and a store holds one cluster; give this cluster a store of \
                 its own (a new prefix)",
                source.store_url()
            ),
        ));
    }
    errors
}

/// Everything wrong with `new`, a change of `old`; empty: accepted.
///
/// A change is checked as a new cluster is ([`validate_cluster`]). Changing `store.url` is
/// allowed: the pods are rolled out with the new store, whose first base backup starts its
/// recoverability, and the sidecar refuses a store that holds another system
/// (`cluster.json`), so a wrong URL cannot mix two clusters.
pub fn validate_change(_old: &Cluster, new: &Cluster) -> Vec<ValidationError> {
    validate_cluster(new)
}
