//! The topic browser: the newest messages of a partition, or of one machine (whose key puts all
//! its readings in one partition), paged back by offset and filtered by sensor.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::clients::kafka::{
    partition_for_key,
    records::{Record, TopicReader},
    PartitionOffsets,
};

/// Messages read back per round when a filter skips most of them.
const CHUNK: i64 = 500;
/// The most messages one page reads when a filter matches rarely; the answer then says where to
/// go on from.
const SCAN_BUDGET: i64 = 20_000;
pub const MAX_LIMIT: usize = 200;

/// What a page asks for. `machine` chooses the partition when `partition` is not given.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MessageQuery {
    pub partition: Option<i32>,
    pub machine: Option<String>,
    pub sensor: Option<String>,
    /// Newest first, starting below this offset (default: the partition's end).
    pub before: Option<i64>,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Message {
    #[serde(flatten)]
    pub record: Record,
    /// The value parsed, when it is JSON (the page pretty-prints it).
    pub json: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct MessagePage {
    pub topic: String,
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    /// Newest first.
    pub messages: Vec<Message>,
    /// Where the next older page starts (`before=`), None at the partition's start.
    pub older: Option<i64>,
    /// Messages read to find these (more than returned when a filter skips some).
    pub scanned: i64,
}

/// A query the page's user got wrong: shown as it is, with a 400.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(pub String);

/// Which partition a query reads, checked against the topic's partitions.
pub fn choose_partition(q: &MessageQuery, partitions: &[PartitionOffsets]) -> Result<i32> {
    let n = partitions.len() as i32;
    let p = match (q.partition, &q.machine) {
        (Some(p), _) => p,
        (None, Some(m)) if !m.is_empty() => partition_for_key(m.as_bytes(), n.max(1)),
        _ => 0,
    };
    if !partitions.iter().any(|o| o.partition == p) {
        return Err(BadQuery(format!(
            "no partition {p}: the topic has partitions 0 to {} (pick one from the list)",
            n - 1
        ))
        .into());
    }
    Ok(p)
}

/// Whether a message passes the machine and sensor filters.
pub fn matches(r: &Record, json: Option<&serde_json::Value>, q: &MessageQuery) -> bool {
    let machine_ok = match q.machine.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => r.key.as_deref() == Some(m),
        None => true,
    };
    let sensor_ok = match q.sensor.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => json.and_then(|j| j.get("sensor_type")).and_then(|v| v.as_str()) == Some(s),
        None => true,
    };
    machine_ok && sensor_ok
}

/// The page a query asks for, read through the console's long-lived reader (on a blocking
/// thread: the reader's calls block).
pub async fn messages(
    reader: Arc<TopicReader>,
    q: MessageQuery,
    timeout: Duration,
) -> Result<MessagePage> {
    tokio::task::spawn_blocking(move || read_page(&reader, &q, timeout)).await?
}

fn read_page(reader: &TopicReader, q: &MessageQuery, timeout: Duration) -> Result<MessagePage> {
    let offsets = reader.offsets(timeout)?;
    let partition = choose_partition(q, &offsets)?;
    let PartitionOffsets { low, high, .. } =
        offsets.iter().find(|o| o.partition == partition).cloned().expect("chosen from the list");
    let before = q.before.unwrap_or(high);
    if before < low || before > high {
        bail!(BadQuery(format!(
            "offset {before} is outside partition {partition}, which holds offsets {low} to {}",
            high - 1
        )));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIMIT);
    let mut found: Vec<Message> = Vec::new();
    let mut until = before;
    while until > low && found.len() < limit && before - until < SCAN_BUDGET {
        let from = (until - CHUNK).max(low);
        let chunk = reader.records(partition, from, until, timeout)?;
        for record in chunk.into_iter().rev() {
            let json = record.value.as_deref().and_then(|v| serde_json::from_str(v).ok());
            if matches(&record, json.as_ref(), q) && found.len() < limit {
                until = record.offset;
                found.push(Message { record, json });
            }
        }
        if found.len() < limit {
            until = from;
        }
    }
    Ok(MessagePage {
        topic: reader.topic().to_string(),
        partition,
        low,
        high,
        messages: found,
        older: (until > low).then_some(until),
        scanned: before - until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(n: i32) -> Vec<PartitionOffsets> {
        (0..n).map(|p| PartitionOffsets { partition: p, low: 0, high: 10 }).collect()
    }

    #[test]
    fn a_machine_reads_the_partition_its_key_goes_to() {
        let q = MessageQuery { machine: Some("CNC-1".into()), ..Default::default() };
        assert_eq!(choose_partition(&q, &parts(3)).unwrap(), partition_for_key(b"CNC-1", 3));
        let q = MessageQuery { partition: Some(2), ..Default::default() };
        assert_eq!(choose_partition(&q, &parts(3)).unwrap(), 2);
    }

    #[test]
    fn an_unknown_partition_is_a_clear_message() {
        let q = MessageQuery { partition: Some(7), ..Default::default() };
        let e = choose_partition(&q, &parts(3)).unwrap_err();
        assert!(e.downcast_ref::<BadQuery>().is_some());
        assert_eq!(
            e.to_string(),
            "no partition 7: the topic has partitions 0 to 2 (pick one from the list)"
        );
    }

    #[test]
    fn filters_compare_key_and_sensor() {
        let r = Record {
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            key: Some("CNC-1".into()),
            value: None,
        };
        let j = serde_json::json!({"sensor_type": "pressure"});
        let q = |m: Option<&str>, s: Option<&str>| MessageQuery {
            machine: m.map(Into::into),
            sensor: s.map(Into::into),
            ..Default::default()
        };
        assert!(matches(&r, Some(&j), &q(Some("CNC-1"), Some("pressure"))));
        assert!(matches(&r, Some(&j), &q(None, None)));
        assert!(!matches(&r, Some(&j), &q(Some("CNC-2"), None)));
        assert!(!matches(&r, Some(&j), &q(None, Some("temperature"))));
        assert!(!matches(&r, None, &q(None, Some("pressure"))), "not JSON: no sensor");
    }
}
