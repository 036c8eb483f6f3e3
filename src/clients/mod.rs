//! One client per protocol labctl speaks, each a leaf over the model and the stack's data:
//! the Docker Engine API (the only module naming bollard), Kafka, PostgreSQL, Flink REST,
//! Spark's standalone REST submission and Azure Blob storage for the lake.

pub mod db;
pub mod docker;
pub mod flink;
pub mod kafka;
pub mod lake;
pub mod spark;
