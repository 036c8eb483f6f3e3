//! Reading a window of one partition's records with their keys and timestamps: what a topic
//! browser shows. A bounded read by offset through a client that joins no group, commits
//! nothing and is kept open across reads: creating a Kafka client costs a connection, metadata
//! and threads, and destroying one up to a few hundred milliseconds, while a browser asks again
//! with every page.

use std::{sync::Mutex, time::Duration};

use anyhow::{anyhow, Context as _, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Timestamp,
    topic_partition_list::{Offset, TopicPartitionList},
    Message,
};

use super::{explain_consumer, partition_ids, Broker, ErrorCapture, PartitionOffsets};

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

/// One topic's reader. Its calls block (librdkafka's are synchronous): run them on a blocking
/// thread. One read at a time; a second caller waits for the first.
pub struct TopicReader {
    topic: String,
    consumer: Mutex<BaseConsumer<ErrorCapture>>,
}

impl Broker {
    /// A client for bounded reads: no group membership, no commit, the end of a partition
    /// reported (offsets below the end may be transaction markers, never delivered).
    pub(super) fn bounded_consumer(
        &self,
        group: &str,
        extra: &[(&str, &str)],
    ) -> Result<BaseConsumer<ErrorCapture>> {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        config
            .create_with_context(ErrorCapture::for_config(&config))
            .context("creating a Kafka client")
    }

    pub fn topic_reader(&self, topic: &str) -> Result<TopicReader> {
        Ok(TopicReader {
            topic: topic.to_string(),
            consumer: Mutex::new(self.bounded_consumer(
                "labctl-console",
                &[
                    // A window is ~500 records of a few hundred bytes; librdkafka would
                    // otherwise prefetch up to 64 MiB past it, kept in this long-lived process.
                    ("max.partition.fetch.bytes", "262144"),
                    ("queued.max.messages.kbytes", "4096"),
                    // A broker answers one connection's requests in order: a fetch left
                    // waiting at a partition's end (500 ms by default) held up the next
                    // page's offset lookup behind it by as much.
                    ("fetch.wait.max.ms", "10"),
                ],
            )?),
        })
    }
}

impl TopicReader {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BaseConsumer<ErrorCapture>> {
        // A panic in another read leaves the client as it was: go on with it.
        self.consumer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start and end offset of every partition, in partition order.
    pub fn offsets(&self, timeout: Duration) -> Result<Vec<PartitionOffsets>> {
        let c = self.lock();
        let topic = &self.topic;
        let ids = partition_ids(&c, topic, timeout)?
            .ok_or_else(|| anyhow!("no topic {topic} on the broker"))?;
        ids.into_iter()
            .map(|partition| {
                let (low, high) = c.fetch_watermarks(topic, partition, timeout).map_err(|e| {
                    explain_consumer(&c, anyhow!("offsets of {topic}/{partition}: {e}"))
                })?;
                Ok(PartitionOffsets { partition, low, high })
            })
            .collect()
    }

    /// The records of `partition` in `[from, until)`, oldest first. Stops early at the
    /// partition's end; errors when no record arrives for `timeout` (a broker gone mid-read)
    /// rather than returning a short read as complete.
    pub fn records(
        &self,
        partition: i32,
        from: i64,
        until: i64,
        timeout: Duration,
    ) -> Result<Vec<Record>> {
        if until <= from {
            return Ok(vec![]);
        }
        let c = self.lock();
        let topic = &self.topic;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
        c.assign(&tpl).with_context(|| format!("assigning {topic}/{partition}"))?;
        let read = read_window(&c, topic, partition, from, until, timeout);
        // Nothing fetched for this window is kept for the next read of another one.
        c.unassign().ok();
        read
    }
}

fn read_window(
    c: &BaseConsumer<ErrorCapture>,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut next = from;
    let started = std::time::Instant::now();
    while next < until {
        match c.poll(Duration::from_millis(100)) {
            None if started.elapsed() > timeout => {
                return Err(explain_consumer(
                    c,
                    anyhow!(
                        "reading {topic}/{partition} stopped at offset {next} for {} s",
                        timeout.as_secs_f64()
                    ),
                ))
            }
            None => {}
            // librdkafka versions its fetch queue by assignment: an end reported for an earlier
            // window of this client is dropped, not delivered here.
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                return Err(explain_consumer(
                    c,
                    anyhow!("reading {topic}/{partition} at offset {next}: {e}"),
                ))
            }
            Some(Ok(m)) => {
                if m.partition() == partition && m.offset() >= next && m.offset() < until {
                    out.push(Record {
                        partition,
                        offset: m.offset(),
                        timestamp_ms: match m.timestamp() {
                            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
                            Timestamp::NotAvailable => None,
                        },
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                    });
                }
                if m.partition() == partition {
                    // Offsets of a compacted or transactional partition may skip.
                    next = next.max(m.offset() + 1);
                }
            }
        }
    }
    Ok(out)
}
