//! Reading a window of one partition's records with their keys and timestamps: what a topic
//! browser shows. A bounded read by offset; the client joins no group and commits nothing.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Timestamp,
    topic_partition_list::{Offset, TopicPartitionList},
    Message,
};

use super::{explain_consumer, Broker, ErrorCapture};

/// One record as the broker holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch (the producer's create time, or the broker's append time).
    pub timestamp_ms: Option<i64>,
    /// The key as text (lossy for keys that are not UTF-8).
    pub key: Option<String>,
    /// The value as text (lossy for values that are not UTF-8).
    pub value: Option<String>,
}

impl Broker {
    /// The records of `topic`/`partition` in `[from, until)`, oldest first. Stops early at the
    /// partition's end; errors when no record arrives for `timeout` (a broker gone mid-read)
    /// rather than returning a short read as complete.
    pub async fn records(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        until: i64,
        timeout: Duration,
    ) -> Result<Vec<Record>> {
        if until <= from {
            return Ok(vec![]);
        }
        let (me, topic) = (self.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let config = me
                .client_config()
                .set("group.id", "labctl-console")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "true")
                .clone();
            let c: BaseConsumer<ErrorCapture> = config
                .create_with_context(ErrorCapture::for_config(&config))
                .context("creating a Kafka client")?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(from))?;
            c.assign(&tpl).with_context(|| format!("assigning {topic}/{partition}"))?;
            let mut out = Vec::new();
            let mut next = from;
            let started = std::time::Instant::now();
            while next < until {
                match c.poll(Duration::from_millis(100)) {
                    None if started.elapsed() > timeout => {
                        return Err(explain_consumer(
                            &c,
                            anyhow!(
                                "reading {topic}/{partition} stopped at offset {next} for {} s",
                                timeout.as_secs_f64()
                            ),
                        ))
                    }
                    None => {}
                    Some(Err(KafkaError::PartitionEOF(_))) => break,
                    Some(Err(e)) => {
                        return Err(explain_consumer(
                            &c,
                            anyhow!("reading {topic}/{partition} at offset {next}: {e}"),
                        ))
                    }
                    Some(Ok(m)) => {
                        if m.offset() >= next && m.offset() < until {
                            out.push(Record {
                                partition,
                                offset: m.offset(),
                                timestamp_ms: match m.timestamp() {
                                    Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => {
                                        Some(t)
                                    }
                                    Timestamp::NotAvailable => None,
                                },
                                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                                value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                            });
                        }
                        // Offsets of a compacted or transactional partition may skip.
                        next = next.max(m.offset() + 1);
                    }
                }
            }
            c.unassign().ok();
            Ok(out)
        })
        .await?
    }
}
