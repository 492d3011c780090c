//! The store's keys as objects: the key files under `keys/` ([`keys`]: create, unlock,
//! add, list, remove) and the decision, made once per command, of which cipher it works
//! with, claiming a new store ([`access`]). Above the primitives of [`crate::crypto`], the
//! envelope and `cluster.json`, which it reads and writes.

pub mod access;
pub mod keys;
