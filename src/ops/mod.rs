//! The runtime behind the commands: a `Lab` handle with a client per service, and the
//! operations on it (reconcile, submit, export, ingest, status, verify, render, plot). Reports
//! come back as data; `cli` turns them into tables or JSON.

pub mod bench;
pub mod console;
pub mod demo;
pub mod flink;
pub mod ingest;
pub mod lab;
pub mod lost_state;
pub mod numbers;
pub mod plot;
pub mod reconcile;
pub mod render;
pub mod scale;
pub mod spark;
pub mod status;
pub mod verify;
pub mod windows;
