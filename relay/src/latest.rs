//! The latest table, shared with the gateway: see [`herald_upstream::latest`].

pub use herald_upstream::latest::{LatestTable, Merged};
