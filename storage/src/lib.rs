//! The bucket side of pgagent.
//!
//! - [`ObjectStore`]: the few operations pgagent needs from a bucket, with two backends:
//!   [`fs::FsStore`] (`file:///path`, the embedded default) and [`s3::S3Store`]
//!   (`s3://bucket/prefix?endpoint=…`, any S3-compatible service). [`open`](crate::open::open)
//!   picks one from a store URL.
//! - [`envelope`]: the self-verifying object format (zstd + blake3, optionally encrypted).
//! - [`crypto`]: client-side encryption: the master key, the keys derived from it, the
//!   passphrase wrap; [`keyring`]: the key files under `keys/`, and which cipher a command
//!   works with ([`keyring::access::claim`] for writers, with [`agreement`] on a new store).
//! - [`layout`]: where each kind of object lives in the store; [`deltas`]: how the segment
//!   being filled is stored as deltas, and how they are put back together.
//! - [`immutable::put_immutable`]: the write path for WAL and chunks, which never overwrites
//!   different content.
//! - [`cluster`]: `cluster.json`, which keeps two clusters from mixing in one prefix.
//! - [`conformance`]: the behaviour every backend must show, runnable against any store.
//! - [`layer`]: the one way to wrap a store ([`Layer`] around every call, [`Layered`]);
//!   [`requests`]: [`CountedStore`], the layer that counts the requests a store sends.
//!
//! Dependencies point down only (checked by `tests/tests/architecture.rs`):
//!
//! ```text
//! conformance                       the suite every backend passes
//! open                              a store by URL: the one place that knows every backend
//! keyring                           key files, and the claim of a new store
//! agreement cluster immutable envelope deltas manifest snapshot drill pin
//!                                   what is stored, and how writers agree on cluster.json
//! s3 fs prefixed read_set requests layer config
//!                                   backends, views and layers, store URLs and options
//! crypto layout object_store error lock
//!                                   primitives: keys and ciphers, key names, the trait,
//!                                   Object Lock policies
//! ```

pub mod agreement;
pub mod cluster;
pub mod config;
pub mod conformance;
pub mod crypto;
pub mod deltas;
pub mod drill;
pub mod envelope;
pub mod error;
pub mod fs;
pub mod immutable;
pub mod keyring;
pub mod layer;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod object_store;
pub mod open;
pub mod pin;
pub mod prefixed;
pub mod read_set;
pub mod requests;
pub mod s3;
pub mod snapshot;

pub use crate::config::{S3Location, StoreOptions, StoreUrl};
pub use crate::error::{ErrorKind, Op, StoreError};
pub use crate::immutable::{put_immutable, ImmutablePut};
pub use crate::layer::{Call, Layer, Layered, Reply};
pub use crate::layout::{validate_key, validate_prefix};
pub use crate::lock::{LockClaim, LockMode, LockPolicy, Retention};
pub use crate::object_store::{list_window, ObjectMeta, ObjectStore, PutOutcome};
pub use crate::open::open;
pub use crate::prefixed::PrefixedStore;
pub use crate::read_set::{ReadSet, Served};
pub use crate::requests::{CountedStore, RequestCounts, RequestOp, RequestTotals};
