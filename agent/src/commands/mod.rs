//! One module per command (besides `fetch`, which is [`crate::fetch`], and the restore-mode
//! fetch server). `run` starts [`crate::daemon`].

pub mod backup;
pub mod cnpg;
pub mod doctor;
pub mod drill;
pub mod key;
pub mod list;
pub mod preseed;
pub mod prune;
pub mod restore;
pub mod run;
pub mod signals;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod verify;
