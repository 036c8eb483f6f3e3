//! What the lab is, before anything runs: the user's config (defaults, `labctl.toml`,
//! `LABCTL_*`), parsed and validated once into values the other layers trust; the addresses,
//! topology (managed or external parts) and Kafka security derived from it; the data's names
//! (topic, tables, columns) and the machine fleet the generator simulates. No I/O beyond
//! reading the config file and environment.

pub mod address;
pub mod config;
pub mod duration;
pub mod fleet;
pub mod schema;
pub mod security;
pub mod topology;
