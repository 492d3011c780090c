//! The first step of the pipeline: the server connected to, and every configured store
//! opened and claimed for its cluster (an encrypted cluster's new stores given its master
//! key first), with the primary store chosen.

use std::sync::Arc;

use pgagent_storage::crypto::ObjectCipher;
use pgagent_storage::ObjectStore;

use super::upstream::Upstream;
use crate::config::{Config, StoreSpec};

/// One store the pipeline writes: its configuration and the store opened.
#[derive(Debug, Clone)]
pub struct StoreOut {
    /// As configured.
    pub spec: StoreSpec,
    /// Opened, requests counted.
    pub store: Arc<dyn ObjectStore>,
}

/// The server connected to and the stores claimed for its cluster: the first step.
pub struct Connected {
    pub(super) upstream: Upstream,
    /// Every configured store, in restore order.
    pub(super) stores: Vec<StoreOut>,
    /// The required store the resume point is decided with, and copies come from.
    pub(super) primary: usize,
    pub(super) cipher: Option<ObjectCipher>,
}

/// Connects to the server (`postgres.conninfo`, application name `pgagent` unless set),
/// opens every configured store and claims each for the server's cluster, in restore order;
/// a new store of an encrypted cluster is first given the cluster of the first store
/// ([`crate::store::adopt::join_new`]), so that every store opens to one master key.
///
/// Errors: the connection's (explained, naming the fix); a store's; a store that holds
/// another cluster ([`crate::exit::Refused`]); encrypted stores that do not share one
/// master key.
pub async fn connect(cfg: &Config) -> anyhow::Result<Connected> {
    let upstream = Upstream::connect(cfg).await?;
    let server = &upstream.server;
    tracing::info!(
        system_identifier = server.system_id,
        timeline = %server.timeline,
        position = %server.xlogpos,
        segment_size = server.seg.bytes(),
        "connected to {}",
        upstream.conn.redacted()
    );
    let mut opened = Vec::with_capacity(cfg.stores.len());
    for spec in &cfg.stores {
        let store = crate::store::open_spec(spec, crate::store::requests().clone()).await?;
        opened.push(StoreOut {
            spec: spec.clone(),
            store,
        });
    }
    // The store claimed first: one that holds the cluster already, so that an encrypted
    // cluster's new stores are given its master key, never the other way round.
    let all: Vec<_> = opened.iter().map(|s| Some(s.store.clone())).collect();
    let held = crate::store::adopt::holders(&all).await;
    let order = crate::store::adopt::claim_order(&held);
    let mut first: Option<(
        usize,
        Option<ObjectCipher>,
        pgagent_storage::cluster::ClusterInfo,
    )> = None;
    for i in order {
        let StoreOut { spec, store } = &opened[i];
        if let Some((h, Some(_), cluster)) = &first {
            let source = opened[*h].store.as_ref();
            crate::store::adopt::join_new(source, cluster, store.as_ref(), &spec.name).await?;
        }
        let claimed = crate::store::claim_store(store.as_ref(), server, cfg).await?;
        match &first {
            None => {
                let cluster = pgagent_storage::cluster::read_cluster(store.as_ref())
                    .await?
                    .ok_or_else(|| {
                        anyhow::anyhow!("store {}: no cluster.json after its claim", spec.name)
                    })?;
                first = Some((i, claimed, cluster));
            }
            Some((h, c, _)) => {
                same_master_key(c.as_ref(), claimed.as_ref(), spec, &opened[*h].spec)?
            }
        }
    }
    let stores = opened;
    let cipher = first.and_then(|(_, c, _)| c);
    // Streaming resumes as the first required store that held the cluster says (a new
    // store, even configured first, holds no WAL to resume from).
    let required = |i: &usize| stores[*i].spec.is_required();
    let primary = (0..stores.len())
        .filter(|i| held[*i])
        .find(required)
        .or_else(|| (0..stores.len()).find(required))
        .expect("configuration has a required store");
    Ok(Connected {
        upstream,
        stores,
        primary,
        cipher,
    })
}

/// The stores of one cluster hold the same sealed bytes, so they share one master key (a
/// lagging store is filled by copying objects as they are).
///
/// Errors: `spec`'s store opens to another key, or is plaintext where the first is not.
fn same_master_key(
    first: Option<&ObjectCipher>,
    this: Option<&ObjectCipher>,
    spec: &StoreSpec,
    first_spec: &StoreSpec,
) -> anyhow::Result<()> {
    let check = |c: Option<&ObjectCipher>| match c {
        Some(c) => format!("master key {}…", &c.key_check()[..12]),
        None => "no encryption".to_string(),
    };
    let (theirs, ours) = (check(this), check(first));
    if theirs == ours {
        return Ok(());
    }
    Err(crate::exit::Refused(format!(
        "store {:?} holds this cluster with {theirs}, store {:?} with {ours}: the stores of \
         one cluster share one master key, so that a lagging store can be filled with copies \
         of the others' objects; point it at a store that holds the cluster's master key",
        spec.name, first_spec.name
    ))
    .into())
}
