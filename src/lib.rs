//! labctl as a library. The binary (`src/main.rs`) is a thin shell over `cli`; the integration
//! tests use the same clients to check the lab through each service's protocol.
//!
//! Layers point down only: `cli` (arguments in, reports out) → `ops` (the runtime: reconcile,
//! submit, export, ingest, status, verify) → `clients` (one per protocol, typed requests and
//! errors) → `stack` (the lab's services as data) → `model` (the config, parsed once; pure).
//! `wait` (the one polling primitive) and `progress` (how long work reports) sit below all
//! of them.

pub mod cli;
pub mod clients;
pub mod model;
pub mod ops;
pub mod progress;
pub mod stack;
pub mod wait;

#[cfg(test)]
mod layers;
