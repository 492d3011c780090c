//! The store a URL names: the one place that knows every backend.

use std::sync::Arc;

use crate::config::{StoreOptions, StoreUrl};
use crate::error::StoreError;
use crate::fs::FsStore;
use crate::object_store::ObjectStore;
use crate::s3::S3Store;

/// Opens the store at `url`: `file://` gives an [`FsStore`] (the directory is created if
/// missing), `s3://` an [`S3Store`] (credentials from `opts`, else the standard AWS chain).
/// Nothing is read from or written to the store.
///
/// Errors: [`StoreError::InvalidUrl`], [`StoreError::Config`], and for `file://` the I/O
/// error of creating the directory.
pub async fn open(url: &str, opts: &StoreOptions) -> Result<Arc<dyn ObjectStore>, StoreError> {
    opts.validate()?;
    match StoreUrl::parse(url)? {
        StoreUrl::File { root } => Ok(Arc::new(FsStore::open(root).await?)),
        StoreUrl::S3(loc) => Ok(Arc::new(S3Store::open(loc, opts).await?)),
    }
}
