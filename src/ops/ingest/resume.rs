//! Where a restarted `ingest` continues: the newest (timestamp, sensor) of every machine,
//! read back from the end of each partition of the topic.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};
use serde::Deserialize;

use super::{encode::parse_timestamp, Position};
use crate::model::fleet::{Fleet, SENSORS};

#[derive(Deserialize)]
struct Tail {
    machine_id: String,
    sensor_type: String,
    timestamp: String,
}

/// Next position per machine of `fleet` (None where the topic holds nothing of it).
pub fn positions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    fleet: &Fleet,
    interval_s: i64,
    timeout: Duration,
) -> Result<Vec<Option<Position>>> {
    // A topic created a moment ago may show without partitions at first: look again briefly.
    let deadline = Instant::now() + timeout;
    let md = loop {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| anyhow!("metadata of {topic}: {e}"))?;
        let ready = md.topics().iter().any(|t| t.name() == topic && !t.partitions().is_empty());
        if ready {
            break md;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("topic {topic} does not exist (create it with `labctl up`)"));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let t = md.topics().iter().find(|t| t.name() == topic).expect("checked above");
    // Producing is lockstep across machines, so the newest entry of every machine lies within
    // the last few ticks' worth of messages of its partition.
    let window = (fleet.messages_per_tick() as i64) * 4 + 16;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(|e| anyhow!("offsets of {topic}/{}: {e}", p.id()))?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset((high - window).max(low)))?;
            ends.insert(p.id(), high);
        }
    }
    let mut newest: HashMap<String, (i64, usize)> = HashMap::new();
    if !ends.is_empty() {
        consumer.assign(&tpl).context("assigning partitions to read the topic's tail")?;
        let deadline = Instant::now() + timeout * 3;
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(anyhow!("timed out reading the tail of {topic}"));
            }
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else { continue };
            let msg = msg.context("reading the topic's tail")?;
            if msg.offset() + 1 >= ends.get(&msg.partition()).copied().unwrap_or(0) {
                ends.remove(&msg.partition());
            }
            // Foreign or malformed records are not ours to resume from; skip them.
            let Some(tail) = msg.payload().and_then(|p| serde_json::from_slice::<Tail>(p).ok())
            else {
                continue;
            };
            let (Some(secs), Some(s)) = (
                parse_timestamp(&tail.timestamp),
                SENSORS.iter().position(|s| s.name() == tail.sensor_type),
            ) else {
                continue;
            };
            let e = newest.entry(tail.machine_id).or_insert((secs, s));
            if (secs, s) > *e {
                *e = (secs, s);
            }
        }
        consumer.unassign().ok();
    }
    Ok(fleet
        .machines
        .iter()
        .map(|m| {
            newest.get(&m.id).map(|&(secs, s)| {
                let tick = secs.div_euclid(interval_s);
                if s + 1 < SENSORS.len() {
                    Position { tick, sensor: s + 1 }
                } else {
                    Position { tick: tick + 1, sensor: 0 }
                }
            })
        })
        .collect())
}
