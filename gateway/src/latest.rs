//! The latest table, shared with the relays: see [`herald_upstream::latest`].

pub use herald_upstream::latest::{LatestTable, Merged};
