//! One module per command (besides `run`, which is the `pipeline`).

pub mod list;
pub mod status;
