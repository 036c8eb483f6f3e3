//! labctl as a library: the binary (`src/main.rs`) is a thin shell over `cli`, and the
//! integration tests use the same clients to check the lab through each service's protocol.

pub mod assets;
pub mod cli;
pub mod config;
pub mod db;
pub mod docker;
pub mod endpoints;
pub mod flink;
pub mod generator;
pub mod kafka;
pub mod lab;
pub mod lake;
pub mod plot;
pub mod render;
pub mod schema;
pub mod spark;
pub mod stack;
pub mod state;
pub mod status;
pub mod verify;
