//! Kafka-protocol access to the lab's broker from the host: readiness, topic creation, offsets.

pub mod quorum;
pub mod resolve;

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    topic_partition_list::{Offset, TopicPartitionList},
    types::RDKafkaErrorCode,
    ClientConfig,
};

use crate::stack::{host_address, Stack};

/// How labctl on the host reaches the broker.
#[derive(Clone)]
pub struct Broker {
    /// Bootstrap list as passed to librdkafka.
    pub bootstrap: String,
    /// security.protocol and SASL settings of an external broker (empty: plaintext).
    pub security: Vec<(String, String)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// Without the SASL password: the client is logged at debug level.
impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let security: Vec<_> = self.security.iter().map(|(k, v)| (k.as_str(), if k.contains("password") { "***" } else { v.as_str() })).collect();
        f.debug_struct("Broker").field("bootstrap", &self.bootstrap).field("security", &security).finish()
    }
}

impl Broker {
    /// The lab's own broker, through its host listener (advertised as the published port).
    pub fn for_stack(stack: &Stack) -> Result<Self> {
        let port = stack.published_port("broker").context("the stack has no broker port")?;
        Ok(Self { bootstrap: format!("{}:{port}", host_address(&stack.bind_address)), security: vec![] })
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            // Fail fast when the broker is down instead of retrying for minutes.
            .set("socket.timeout.ms", "5000")
            .set("reconnect.backoff.max.ms", "2000")
            .set("log_level", "3");
        for (k, v) in &self.security {
            c.set(k, v);
        }
        c
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        self.client_config()
            .set("group.id", "labctl-inspect")
            .set("enable.auto.commit", "false")
            .create()
            .context("creating a Kafka client")
    }

    /// Number of brokers in the cluster metadata; errors when the broker does not answer.
    pub async fn ping(&self, timeout: Duration) -> Result<usize> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let c = me.consumer()?;
            let md = c.fetch_metadata(None, timeout).map_err(|e| anyhow!("broker {} did not answer: {e}", me.bootstrap))?;
            Ok(md.brokers().len())
        })
        .await?
    }

    /// Partition count of `topic`, or None if it does not exist.
    pub async fn partitions(&self, topic: &str, timeout: Duration) -> Result<Option<usize>> {
        let me = self.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || Ok(partition_ids(&me.consumer()?, &topic, timeout)?.map(|p| p.len()))).await?
    }

    /// Creates the topic if missing; an existing topic with another partition count is an error
    /// the user must resolve (partitions cannot shrink, and growing would move keys).
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<bool> {
        let timeout = Duration::from_secs(10);
        if let Some(n) = self.partitions(topic, timeout).await? {
            if n as i32 != partitions {
                bail!("topic `{topic}` exists with {n} partitions but the config asks for {partitions}; set broker.partitions = {n} or remove the lab's data with `labctl down --volumes`");
            }
            return Ok(false);
        }
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().context("creating a Kafka admin client")?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let res = admin
            .create_topics([&new], &AdminOptions::new().operation_timeout(Some(timeout)))
            .await
            .with_context(|| format!("creating topic {topic}"))?;
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => bail!("creating topic {t} failed: {code}"),
            }
        }
        // Metadata can lag the creation; clients started right after must find the partitions.
        let start = std::time::Instant::now();
        while self.partitions(topic, timeout).await? != Some(partitions as usize) {
            if start.elapsed() > timeout {
                bail!("topic {topic} was created but its {partitions} partitions do not show in the metadata");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(true)
    }

    /// Low and high watermarks of every partition of `topic`.
    pub async fn offsets(&self, topic: &str, timeout: Duration) -> Result<Vec<PartitionOffsets>> {
        Ok(self.activity(topic, None, timeout).await?.partitions.into_iter().map(|p| p.offsets).collect())
    }

    /// Offsets of every partition of `topic` now and at `since` (by message timestamp): what
    /// `status` needs for the ingest rate. When the broker does not answer the lookup by time,
    /// `at_since` stays None instead of failing the whole.
    pub async fn activity(&self, topic: &str, since: Option<chrono::DateTime<chrono::Utc>>, timeout: Duration) -> Result<TopicActivity> {
        let ids = {
            let (me, topic) = (self.clone(), topic.to_string());
            tokio::task::spawn_blocking(move || partition_ids(&me.consumer()?, &topic, timeout)).await??
        }
        .ok_or_else(|| anyhow!("no topic {topic} on the broker"))?;
        // Each lookup is a round trip of its own; run them side by side, each on its own client.
        let lookup = |what: Lookup| {
            let (me, topic, ids) = (self.clone(), topic.to_string(), ids.clone());
            tokio::task::spawn_blocking(move || -> Result<Vec<Option<i64>>> {
                let t = std::time::Instant::now();
                let c = me.consumer()?;
                let _timing = Timing(t, format!("{what:?} offsets of {topic}"));
                let at = |o: Offset| {
                    let mut tpl = TopicPartitionList::new();
                    for id in &ids {
                        tpl.add_partition_offset(&topic, *id, o).ok();
                    }
                    tpl
                };
                let found = match what {
                    // ListOffsets with timestamp -2 / -1 answers every partition's start / end at once.
                    Lookup::Low => pick(&c.offsets_for_times(at(Offset::Beginning), timeout)?, &topic, &ids),
                    Lookup::End => pick(&c.offsets_for_times(at(Offset::End), timeout)?, &topic, &ids),
                    Lookup::Since(ms) => pick(&c.offsets_for_times(at(Offset::Offset(ms)), timeout)?, &topic, &ids),
                };
                Ok(found.into_iter().map(|o| if let Offset::Offset(o) = o { Some(o) } else { None }).collect())
            })
        };
        let none = || vec![None; ids.len()];
        let (low, end, at_since) = tokio::join!(
            lookup(Lookup::Low),
            lookup(Lookup::End),
            async { if let Some(t) = since { lookup(Lookup::Since(t.timestamp_millis())).await } else { Ok(Ok(none())) } },
        );
        let (low, end) = (low??, end??);
        let optional = |r: Result<Result<Vec<Option<i64>>>, tokio::task::JoinError>, what: &str| match r {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!("{what} of {topic}: {e:#}");
                none()
            }
            Err(e) => {
                tracing::debug!("{what} of {topic}: {e}");
                none()
            }
        };
        let at_since = optional(at_since, "offsets by time");
        let partitions = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let high = end[i].with_context(|| format!("no end offset for {topic}/{id}"))?;
                let low = low[i].unwrap_or(0);
                Ok(PartitionActivity {
                    offsets: PartitionOffsets { partition: *id, low, high },
                    messages: high - low,
                    // No message at or after `since`: the partition has nothing newer.
                    at_since: since.map(|_| at_since[i].unwrap_or(high)).filter(|_| at_since.iter().any(Option::is_some)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TopicActivity { partitions })
    }
}

impl Broker {
    /// The cluster as the broker's metadata describes it (brokers, and every partition's
    /// leader, replicas and in-sync replicas of `topic`), and the KRaft quorum: its leader is
    /// the active controller (see `quorum` for why the metadata's controller id is not used).
    /// The quorum is only asked over a plaintext listener; otherwise, or when it does not
    /// answer, `quorum` holds the reason.
    pub async fn cluster(&self, topic: &str, timeout: Duration) -> Result<ClusterFacts> {
        let metadata = {
            let (me, topic) = (self.clone(), topic.to_string());
            tokio::task::spawn_blocking(move || -> Result<_> {
                let c = me.consumer()?;
                let md = c.fetch_metadata(Some(&topic), timeout).map_err(|e| anyhow!("metadata for {topic}: {e}"))?;
                let mut brokers: Vec<BrokerNode> = md.brokers().iter().map(|b| BrokerNode { id: b.id(), host: b.host().to_string(), port: b.port() }).collect();
                brokers.sort_by_key(|b| b.id);
                let t = md.topics().iter().find(|t| t.name() == topic).filter(|t| t.error().is_none());
                let mut partitions: Vec<PartitionReplicas> = t
                    .map(|t| {
                        t.partitions()
                            .iter()
                            .map(|p| PartitionReplicas { partition: p.id(), leader: p.leader(), replicas: p.replicas().to_vec(), isr: p.isr().to_vec() })
                            .collect()
                    })
                    .unwrap_or_default();
                partitions.sort_by_key(|p| p.partition);
                Ok((brokers, partitions))
            })
        };
        let quorum = async {
            if !self.security.is_empty() {
                return Err("not asked: DescribeQuorum is only sent over a plaintext listener".to_string());
            }
            let address = self.bootstrap.split(',').next().unwrap_or_default().trim().to_string();
            quorum::describe(&address, timeout).await.map_err(|e| format!("{e:#}"))
        };
        let (metadata, quorum) = tokio::join!(metadata, quorum);
        let (brokers, partitions) = metadata??;
        Ok(ClusterFacts { brokers, partitions, quorum })
    }

    /// The offsets consumer group `group` has committed for every partition of `topic` (None
    /// where it has none), read with OffsetFetch. The client never subscribes, so it never
    /// joins the group, and it never commits (auto-commit and offset store off).
    pub async fn committed(&self, group: &str, topic: &str, timeout: Duration) -> Result<Vec<(i32, Option<i64>)>> {
        let (me, group, topic) = (self.clone(), group.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = me
                .client_config()
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .create()
                .context("creating a Kafka client")?;
            let ids = partition_ids(&c, &topic, timeout)?.ok_or_else(|| anyhow!("no topic {topic} on the broker"))?;
            let mut tpl = TopicPartitionList::new();
            for id in &ids {
                tpl.add_partition(&topic, *id);
            }
            let got = c.committed_offsets(tpl, timeout).map_err(|e| anyhow!("committed offsets of group {group}: {e}"))?;
            Ok(ids
                .iter()
                .map(|id| {
                    let o = got.find_partition(&topic, *id).map(|e| e.offset());
                    (*id, if let Some(Offset::Offset(o)) = o { Some(o) } else { None })
                })
                .collect())
        })
        .await?
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerNode {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionReplicas {
    pub partition: i32,
    /// -1: no leader, the partition is offline.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl PartitionReplicas {
    pub fn under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
}

#[derive(Debug, Clone)]
pub struct ClusterFacts {
    pub brokers: Vec<BrokerNode>,
    pub partitions: Vec<PartitionReplicas>,
    pub quorum: std::result::Result<quorum::Quorum, String>,
}

/// Logs how long a lookup took when dropped (RUST_LOG=labctl=debug).
struct Timing(std::time::Instant, String);

impl Drop for Timing {
    fn drop(&mut self) {
        tracing::debug!("{} took {} ms", self.1, self.0.elapsed().as_millis());
    }
}

#[derive(Debug, Clone, Copy)]
enum Lookup {
    Low,
    End,
    Since(i64),
}

/// The offsets of `ids` in a broker's answer, in the order of `ids`.
fn pick(tpl: &TopicPartitionList, topic: &str, ids: &[i32]) -> Vec<Offset> {
    ids.iter().map(|id| tpl.find_partition(topic, *id).map(|e| e.offset()).unwrap_or(Offset::Invalid)).collect()
}

/// Partition ids of `topic` from the broker's metadata, None if the topic does not exist.
fn partition_ids(c: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Option<Vec<i32>>> {
    let md = c.fetch_metadata(Some(topic), timeout).map_err(|e| anyhow!("metadata for {topic}: {e}"))?;
    Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| {
        if t.error().is_some() || t.partitions().is_empty() {
            return None;
        }
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Some(ids)
    }))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionActivity {
    #[serde(flatten)]
    pub offsets: PartitionOffsets,
    /// Messages the partition holds: end offset minus start offset (what retention has not
    /// deleted; a transaction's commit markers would count too, the lab writes none).
    pub messages: i64,
    /// First offset with a timestamp at or after the `since` instant asked for.
    pub at_since: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicActivity {
    pub partitions: Vec<PartitionActivity>,
}

impl TopicActivity {
    pub fn end_offsets(&self) -> i64 {
        self.partitions.iter().map(|p| p.offsets.high).sum()
    }
    /// Messages appended since the instant asked for, if the broker answered for every partition.
    pub fn appended_since(&self) -> Option<i64> {
        self.partitions.iter().map(|p| p.at_since.map(|o| p.offsets.high - o)).sum()
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;

    fn creates(security: &[(&str, &str)]) -> std::result::Result<(), String> {
        let b = Broker { bootstrap: "127.0.0.1:1".into(), security: security.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        b.consumer().map(|_| ()).map_err(|e| format!("{e:#}"))
    }

    /// What this build's librdkafka (no OpenSSL) can do; `endpoints::validate` allows just that.
    #[test]
    fn sasl_plain_works_and_tls_is_not_built_in() {
        creates(&[]).unwrap();
        creates(&[("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanism", "PLAIN"), ("sasl.username", "u"), ("sasl.password", "p")]).unwrap();
        assert!(creates(&[("security.protocol", "SSL")]).is_err());
        let scram = creates(&[("security.protocol", "SASL_PLAINTEXT"), ("sasl.mechanism", "SCRAM-SHA-256"), ("sasl.username", "u"), ("sasl.password", "p")]);
        assert!(scram.is_err_and(|e| e.contains("No provider for SASL mechanism")));
    }
}
