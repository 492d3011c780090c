//! One module per command (besides `run`, which is the `pipeline`).

pub mod backup;
pub mod list;
pub mod prune;
pub mod restore;
pub mod status;
pub mod verify;
