//! One module per command (besides `run`, which is [`crate::daemon`], and `fetch`, which is
//! [`crate::fetch`]).

pub mod backup;
pub mod doctor;
pub mod list;
pub mod preseed;
pub mod prune;
pub mod restore;
pub mod snapshot;
pub mod status;
pub mod verify;
