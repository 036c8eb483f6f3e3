//! The lab's services by name. Containers, volumes' owners, `logs`, `scale` and `status` know
//! a service by the string; inside labctl it is this enum, so a misspelt service is a compile
//! error rather than a lookup that finds nothing.

use serde::{Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceId {
    /// KRaft node 1 (`broker`, as in a single-node lab), 2 and 3.
    Broker,
    Broker2,
    Broker3,
    Database,
    FlinkJobManager,
    FlinkTaskManager,
    SparkMaster,
    SparkWorker,
    Azurite,
    /// The generator.
    Ingest,
}

impl ServiceId {
    pub const ALL: [ServiceId; 10] = [
        ServiceId::Broker,
        ServiceId::Broker2,
        ServiceId::Broker3,
        ServiceId::Database,
        ServiceId::FlinkJobManager,
        ServiceId::FlinkTaskManager,
        ServiceId::SparkMaster,
        ServiceId::SparkWorker,
        ServiceId::Azurite,
        ServiceId::Ingest,
    ];

    /// The service's name: its containers are `<project>-<name>-<replica>`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceId::Broker => "broker",
            ServiceId::Broker2 => "broker-2",
            ServiceId::Broker3 => "broker-3",
            ServiceId::Database => "timescaledb",
            ServiceId::FlinkJobManager => "flink-jobmanager",
            ServiceId::FlinkTaskManager => "flink-taskmanager",
            ServiceId::SparkMaster => "spark-master",
            ServiceId::SparkWorker => "spark-worker",
            ServiceId::Azurite => "azurite",
            ServiceId::Ingest => "ingest",
        }
    }

    /// The service a name (a container label, a user's argument) stands for.
    pub fn parse(name: &str) -> Option<ServiceId> {
        ServiceId::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ServiceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl AsRef<str> for ServiceId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// A name read from Docker (a container's service label) compared with a service.
impl PartialEq<ServiceId> for String {
    fn eq(&self, other: &ServiceId) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<ServiceId> for &str {
    fn eq(&self, other: &ServiceId) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<&str> for ServiceId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for s in ServiceId::ALL {
            assert_eq!(ServiceId::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(ServiceId::parse("kafka"), None);
    }
}
