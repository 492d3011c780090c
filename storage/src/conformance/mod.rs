//! The behaviour every [`ObjectStore`] backend must show, as a suite runnable against any
//! store: the fs backend in this crate's tests, S3-compatible servers from the integration
//! test harness.
//!
//! Each case is a public async function that panics with a message naming the store and the
//! broken contract. [`run_all`] runs them all in a fresh scratch prefix
//! (`conformance-<time>-<pid>/`) of the given store and deletes what it wrote when every case
//! passed, so it can share a bucket with other data.
//!
//! ```no_run
//! # async fn demo() {
//! let opts = pgagent_storage::StoreOptions { part_size: 8 << 20, ..Default::default() };
//! let store = pgagent_storage::open("file:///tmp/store", &opts).await.unwrap();
//! pgagent_storage::conformance::run_all(store).await;
//! # }
//! ```

mod integrity;
mod objects;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use integrity::{
    cluster_identity, immutable_puts, immutable_race_different, immutable_race_same, large_object,
};
pub use objects::{
    delete_idempotent, empty_object, get_missing, get_range, invalid_keys, list_after,
    list_prefixes, overwrite, put_get_round_trip, put_if_absent, special_keys,
};

use crate::object_store::ObjectStore;
use crate::prefixed::PrefixedStore;

/// Sizes of the suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// Keys written by [`list_prefixes`]. Default 30; above 1000 exercises S3 pagination
    /// (slow on some servers, so opt in).
    pub list_keys: usize,
    /// Size in bytes of the object of [`large_object`]. Default 40 MiB, which is five parts
    /// and a remainder with `part_size` = 8 MiB; 0 skips the case.
    pub large_object_bytes: usize,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            list_keys: 30,
            large_object_bytes: 40 << 20,
        }
    }
}

/// Runs every case with [`SuiteOptions::default`]. Panics on the first failure.
pub async fn run_all(store: Arc<dyn ObjectStore>) {
    run_all_with(store, &SuiteOptions::default()).await
}

/// Runs every case in a fresh scratch prefix of `store`, then deletes the scratch objects.
/// Panics on the first failure (leaving the scratch objects for inspection).
pub async fn run_all_with(store: Arc<dyn ObjectStore>, opts: &SuiteOptions) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let scratch_name = format!("conformance-{nanos}-{}", std::process::id());
    let scratch: Arc<dyn ObjectStore> = Arc::new(
        PrefixedStore::new(store.clone(), &scratch_name).expect("scratch prefix is a valid key"),
    );
    let s = scratch.as_ref();
    tracing::info!(store = %store.describe(), scratch = %scratch_name, "store conformance suite");

    put_get_round_trip(&sub(&scratch, "roundtrip")).await;
    overwrite(&sub(&scratch, "overwrite")).await;
    empty_object(&sub(&scratch, "empty")).await;
    get_missing(&sub(&scratch, "missing")).await;
    special_keys(&sub(&scratch, "special")).await;
    invalid_keys(s).await;
    put_if_absent(&sub(&scratch, "ifabsent")).await;
    get_range(&sub(&scratch, "range")).await;
    delete_idempotent(&sub(&scratch, "delete")).await;
    list_prefixes(&sub(&scratch, "list"), opts.list_keys).await;
    list_after(&sub(&scratch, "list-after")).await;
    immutable_puts(&sub(&scratch, "immutable")).await;
    immutable_race_same(&sub(&scratch, "race-same")).await;
    immutable_race_different(&sub(&scratch, "race-diff")).await;
    cluster_identity(&sub(&scratch, "cluster")).await;
    if opts.large_object_bytes > 0 {
        large_object(&sub(&scratch, "large"), opts.large_object_bytes).await;
    }

    let left = s.list("").await.expect("listing the scratch prefix");
    for m in &left {
        s.delete(&m.key).await.expect("deleting scratch objects");
    }
    assert!(
        s.list("").await.expect("listing").is_empty(),
        "{}: scratch objects remain after deleting them",
        s.describe()
    );
}

fn sub(store: &Arc<dyn ObjectStore>, name: &str) -> PrefixedStore {
    PrefixedStore::new(store.clone(), name).expect("valid case prefix")
}

/// A deterministic, incompressible-enough body of `len` bytes (xorshift64).
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    // splitmix64 of the seed, so distinct seeds give distinct streams (never zero).
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x = (x ^ (x >> 31)).max(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
