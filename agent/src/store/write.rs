//! The stores a writing command (`backup`, `snapshot`) writes to: each opened and claimed
//! for the server's cluster, all at once. A store that cannot be reached is left out of
//! that one command (the caller says so); a store of another cluster, or one the
//! configuration cannot open, stops the command before anything is written.

use futures::future::join_all;

use super::Bucket;
use crate::config::{Config, StoreSpec};
use crate::server::ServerInfo;

/// Opens and claims each of `specs` for the server's cluster (each with the claim's own
/// retries, [`super::CLAIM_RETRY`]); returns each store with its bucket or why it cannot
/// be written now, in the order of `specs`.
///
/// Errors: a store of another cluster ([`crate::exit::Refused`], exit 3), or one whose
/// encryption does not match the configuration (exit 2): a configuration to fix, so
/// nothing is written anywhere.
pub async fn claim_every(
    cfg: &Config,
    specs: &[StoreSpec],
    server: &ServerInfo,
) -> anyhow::Result<Vec<(StoreSpec, anyhow::Result<Bucket>)>> {
    let claims = join_all(specs.iter().map(|spec| async move {
        let one = cfg.with_store(spec);
        let store = super::open(&one).await?;
        let cipher = super::claim_store(store.as_ref(), server, &one).await?;
        anyhow::Ok(Bucket { store, cipher })
    }))
    .await;
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
