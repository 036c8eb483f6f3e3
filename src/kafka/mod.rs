//! Kafka-protocol access to the lab's broker from the host: readiness, topic creation, offsets.

pub mod resolve;

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    types::RDKafkaErrorCode,
    ClientConfig,
};

use crate::stack::{Stack, BROKER, BROKER_PORT};

/// How labctl on the host reaches the broker.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Bootstrap list as passed to librdkafka.
    pub bootstrap: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

impl Broker {
    /// The lab's own broker: advertised as `broker:9092`, reached through the published port.
    pub fn for_stack(stack: &Stack) -> Result<Self> {
        let port = stack.published_port("broker").context("the stack has no broker port")?;
        resolve::map_broker(BROKER, BROKER_PORT, &stack.bind_address, port);
        Ok(Self { bootstrap: format!("{BROKER}:{BROKER_PORT}") })
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            // Fail fast when the broker is down instead of retrying for minutes.
            .set("socket.timeout.ms", "5000")
            .set("reconnect.backoff.max.ms", "2000")
            .set("log_level", "3");
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
        tokio::task::spawn_blocking(move || {
            let c = me.consumer()?;
            let md = c.fetch_metadata(Some(&topic), timeout).map_err(|e| anyhow!("metadata for {topic}: {e}"))?;
            Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| {
                if t.error().is_some() || t.partitions().is_empty() {
                    None
                } else {
                    Some(t.partitions().len())
                }
            }))
        })
        .await?
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
        let me = self.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let c = me.consumer()?;
            let md = c.fetch_metadata(Some(&topic), timeout).map_err(|e| anyhow!("metadata for {topic}: {e}"))?;
            let t = md.topics().iter().find(|t| t.name() == topic).ok_or_else(|| anyhow!("no topic {topic}"))?;
            let mut out = Vec::new();
            for p in t.partitions() {
                let (low, high) = c
                    .fetch_watermarks(&topic, p.id(), timeout)
                    .map_err(|e| anyhow!("offsets of {topic}/{}: {e}", p.id()))?;
                out.push(PartitionOffsets { partition: p.id(), low, high });
            }
            out.sort_by_key(|p| p.partition);
            Ok(out)
        })
        .await?
    }
}
