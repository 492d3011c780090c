//! The stores a writing command (`backup`, `snapshot`) writes to: each opened and claimed
//! for the server's cluster. A store that cannot be reached is left out of that one command
//! (the caller says so); a store of another cluster, or one the configuration cannot open,
//! stops the command before anything is written.
//!
//! The stores of an encrypted cluster share one master key ([`super::adopt`]): they are
//! claimed one after the other, a store that holds the cluster first, and a new one is
//! first given the cluster of the first store claimed, so that it opens to the same key.
//! Plaintext stores are claimed all at once.

use std::sync::Arc;

use futures::future::join_all;
use pgagent_storage::cluster::{read_cluster, ClusterInfo};
use pgagent_storage::ObjectStore;

use super::Bucket;
use crate::config::{Config, StoreSpec};
use crate::server::ServerInfo;

/// Opens and claims each of `specs` for the server's cluster (each with the claim's own
/// retries, [`super::CLAIM_RETRY`]); returns each store with its bucket or why it cannot
/// be written now, in the order of `specs`.
///
/// Errors: a store of another cluster, or one that is not new and holds no cluster
/// ([`crate::exit::Refused`], exit 3), or one whose encryption does not match the
/// configuration (exit 2): a configuration to fix, so nothing is written anywhere.
pub async fn claim_every(
    cfg: &Config,
    specs: &[StoreSpec],
    server: &ServerInfo,
) -> anyhow::Result<Vec<(StoreSpec, anyhow::Result<Bucket>)>> {
    let claims = if cfg.passphrase.is_some() {
        let mut opened = Vec::with_capacity(specs.len());
        for spec in specs {
            opened.push(Some(super::open(&cfg.with_store(spec)).await));
        }
        let readable: Vec<_> = opened
            .iter()
            .map(|o| o.as_ref().and_then(|o| o.as_ref().ok().cloned()))
            .collect();
        let mut holder: Option<(Arc<dyn ObjectStore>, ClusterInfo)> = None;
        let mut claims: Vec<Option<anyhow::Result<Bucket>>> = specs.iter().map(|_| None).collect();
        let held = super::adopt::holders(&readable).await;
        for i in super::adopt::claim_order(&held) {
            let claimed = match opened[i].take().expect("each store once") {
                Ok(store) => claim_one(cfg, &specs[i], server, store, holder.as_ref()).await,
                Err(e) => Err(e.into()),
            };
            if holder.is_none() {
                if let Ok(b) = &claimed {
                    if let Ok(Some(info)) = read_cluster(b.store.as_ref()).await {
                        holder = Some((b.store.clone(), info));
                    }
                }
            }
            claims[i] = Some(claimed);
        }
        claims
            .into_iter()
            .map(|c| c.expect("every store claimed once"))
            .collect()
    } else {
        join_all(specs.iter().map(|spec| async move {
            let store = super::open(&cfg.with_store(spec)).await?;
            claim_one(cfg, spec, server, store, None).await
        }))
        .await
    };
    let mut out = Vec::with_capacity(specs.len());
    for (spec, claimed) in specs.iter().zip(claims) {
        match claimed {
            Err(e) if crate::exit::code_for(&e) != crate::exit::FAILURE => {
                return Err(e.context(format!("store {}", spec.name)));
            }
            claimed => out.push((spec.clone(), claimed)),
        }
    }
    Ok(out)
}

/// Claims `spec`'s store (`store`); a new one is first given `holder`'s cluster (an
/// encrypted cluster's store claimed before it).
async fn claim_one(
    cfg: &Config,
    spec: &StoreSpec,
    server: &ServerInfo,
    store: Arc<dyn ObjectStore>,
    holder: Option<&(Arc<dyn ObjectStore>, ClusterInfo)>,
) -> anyhow::Result<Bucket> {
    let one = cfg.with_store(spec);
    if let Some((source, cluster)) = holder {
        super::adopt::join_new(source.as_ref(), cluster, store.as_ref(), &spec.name).await?;
    }
    let cipher = super::claim_store(store.as_ref(), server, &one).await?;
    anyhow::Ok(Bucket { store, cipher })
}
