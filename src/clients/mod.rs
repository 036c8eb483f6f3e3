//! One client per protocol labctl speaks, each a leaf over the model and the stack's data:
//! the Docker Engine API (the only module naming bollard), Kafka, PostgreSQL, Flink REST,
//! Spark's standalone REST submission and Azure Blob storage for the lake.

/// States from their REST names (`"RUNNING"`); a name this version does not know is `Unknown`.
macro_rules! state_from_name {
    ($($t:ty),*) => {$(
        impl From<&str> for $t {
            fn from(name: &str) -> Self {
                serde_json::from_value(serde_json::Value::String(name.to_string()))
                    .unwrap_or(Self::Unknown)
            }
        }
    )*};
}

pub mod db;
pub mod docker;
pub mod flink;
pub mod kafka;
pub mod lake;
pub mod spark;
