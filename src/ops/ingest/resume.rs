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
use crate::{
    clients::kafka::partition_for_key,
    model::fleet::{Fleet, SENSORS},
};

#[derive(Deserialize)]
struct Tail {
    machine_id: String,
    sensor_type: String,
    timestamp: String,
}

/// How far ahead of this host's clock a reading may be and still count as where a machine
/// stands: a record stamped years ahead (a foreign producer, a wrong clock) would otherwise
/// make the generator wait for that day. The streaming job rejects such readings too.
const MAX_AHEAD_SECS: i64 = 3600;

/// The newest (timestamp, sensor) per machine seen so far, ignoring readings past the bound.
struct Newest {
    latest_allowed: i64,
    by_machine: HashMap<String, (i64, usize)>,
}

impl Newest {
    fn new(latest_allowed: i64) -> Self {
        Self { latest_allowed, by_machine: HashMap::new() }
    }

    fn has(&self, machine: &str) -> bool {
        self.by_machine.contains_key(machine)
    }

    /// One record's payload; foreign, malformed or too-far-ahead records are skipped. Returns
    /// the reading's time when it counted.
    fn see(&mut self, payload: &[u8]) -> Option<i64> {
        let tail = serde_json::from_slice::<Tail>(payload).ok()?;
        let secs = parse_timestamp(&tail.timestamp)?;
        let s = SENSORS.iter().position(|s| s.name() == tail.sensor_type)?;
        if secs > self.latest_allowed {
            return None;
        }
        let e = self.by_machine.entry(tail.machine_id).or_insert((secs, s));
        if (secs, s) > *e {
            *e = (secs, s);
        }
        Some(secs)
    }
}

/// Reads offsets `from..end` of one partition into `newest`; returns the oldest and newest
/// reading time seen there.
fn read_range<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
    deadline: Instant,
    newest: &mut Newest,
) -> Result<Option<(i64, i64)>> {
    let mut span: Option<(i64, i64)> = None;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl).context("assigning a partition to read the topic's tail")?;
    let mut next = from;
    while next < end {
        if Instant::now() > deadline {
            consumer.unassign().ok();
            return Err(anyhow!("timed out reading the tail of {topic}/{partition}"));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            // The range may end in offsets no record is delivered for (transaction markers).
            let reached = consumer.position().ok().and_then(|tpl| {
                tpl.find_partition(topic, partition).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o >= end),
                    _ => None,
                })
            });
            if reached == Some(true) {
                break;
            }
            continue;
        };
        let msg = msg.context("reading the topic's tail")?;
        if msg.partition() != partition || msg.offset() < from {
            continue;
        }
        // Compacted or transaction-marker offsets leave gaps: go by the offset read.
        next = msg.offset() + 1;
        if msg.offset() < end {
            if let Some(t) = msg.payload().and_then(|p| newest.see(p)) {
                span = Some(span.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
            }
        }
    }
    consumer.unassign().ok();
    Ok(span)
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
    let partitions = t.partitions().len() as i32;
    // Producing is lockstep across machines, so the newest entry of every machine usually lies
    // within the last few ticks' worth of messages of its partition; when foreign records
    // follow it, the search goes further back, four times as far each round, until every
    // machine the partitioner puts there is found or the partition's start is reached.
    let first_window = (fleet.messages_per_tick() as i64) * 4 + 16;
    let latest_allowed = chrono::Utc::now().timestamp() + MAX_AHEAD_SECS;
    let mut newest = Newest::new(latest_allowed);
    let deadline = Instant::now() + timeout * 3;
    let mut ranges = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(|e| anyhow!("offsets of {topic}/{}: {e}", p.id()))?;
        // Every partition's tail first: a topic whose partition count changed since keeps a
        // machine's readings where they were written.
        let from = (high - first_window).max(low);
        let span = if high > from {
            read_range(consumer, topic, p.id(), from, high, deadline, &mut newest)?
        } else {
            None
        };
        ranges.push((p.id(), low, from, span));
    }
    for (partition, low, mut end, mut span) in ranges {
        let expected: Vec<&str> = fleet
            .machines
            .iter()
            .filter(|m| partition_for_key(m.id.as_bytes(), partitions) == partition)
            .map(|m| m.id.as_str())
            .collect();
        let mut window = first_window * 4;
        // Producing is lockstep: once the search has passed readings a few ticks older than the
        // partition's newest, a machine still missing has not produced lately (a fleet that
        // grew): it starts afresh instead of the whole partition being read.
        let passed = |span: Option<(i64, i64)>| {
            span.is_some_and(|(oldest, newest)| newest - oldest > 4 * interval_s)
        };
        while end > low && !expected.iter().all(|m| newest.has(m)) && !passed(span) {
            let from = (end - window).max(low);
            if let Some((lo, hi)) =
                read_range(consumer, topic, partition, from, end, deadline, &mut newest)?
            {
                span = Some(span.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
            }
            end = from;
            window *= 4;
        }
    }
    let newest = newest.by_machine;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(machine: &str, sensor: &str, ts: &str) -> Vec<u8> {
        format!(r#"{{"machine_id":"{machine}","sensor_type":"{sensor}","timestamp":"{ts}"}}"#)
            .into_bytes()
    }

    #[test]
    fn the_newest_reading_wins_and_far_future_ones_are_ignored() {
        let now = parse_timestamp("2026-12-02T12:00:00").unwrap();
        let mut n = Newest::new(now + MAX_AHEAD_SECS);
        n.see(&reading("CNC-1", "pressure", "2026-12-02T11:59:55"));
        n.see(&reading("CNC-1", "temperature", "2026-12-02T11:59:50"));
        n.see(&reading("CNC-1", "vibration", "2099-01-01T00:00:00"));
        n.see(b"not json");
        n.see(&reading("CNC-1", "humidity", "2026-12-02T11:59:59"));
        let pressure = SENSORS.iter().position(|s| s.name() == "pressure").unwrap();
        assert_eq!(n.by_machine["CNC-1"], (now - 5, pressure));
        assert!(!n.has("LATHE-1"));
        // Within the bound (a clock a little ahead) still counts.
        n.see(&reading("LATHE-1", "pressure", "2026-12-02T12:10:00"));
        assert_eq!(n.by_machine["LATHE-1"].0, now + 600);
    }
}
