//! `labctl verify`: proves, hop by hop, that the pipeline lost and doubled nothing. Each hop is
//! read by its own reader, none of them the jobs' code: the topic with a Kafka client of its own,
//! the hypertables with SQL, the Delta table from its log and Parquet files. Everything is
//! counted per machine, sensor and UTC day and compared as sets of reading keys
//! (machine, sensor, timestamp), so a lost reading cannot hide behind a doubled one.
//!
//! What is in flight, and therefore not a mismatch, is bounded by what each consumer has
//! acknowledged:
//! - topic -> `machine_sensors`: readings at offsets below the Flink group's committed offsets
//!   must be in the table (Flink commits an offset only after the checkpoint that flushed its
//!   rows); readings above it may or may not be there yet. Every row must come from the topic.
//! - `machine_sensors` -> `sensor_aggregates`: only closed windows are checked, those ending a
//!   window or more before the newest window written (event time is global, so the watermark
//!   has passed them, and the two sinks have flushed them: the newest windows' rows of all
//!   machines may still be on their way); each is recomputed from the raw rows.
//! - `machine_sensors` -> the lake: rows stamped more than [`LAKE_IN_FLIGHT_SECS`] before the
//!   newest export's comparison must be in the table's current version; younger rows may have
//!   reached the database after it (the next export compares whole days and takes them). The
//!   lake must hold no row twice and none the database does not have.

pub mod judge;
pub mod repair;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::{StreamExt, TryStreamExt};

use crate::{model::schema, ops::lab::Lab};

pub use judge::{judge, Hop};

/// Rows stamped this close before an export's comparison may reach the database after it
/// (Flink writes a reading within a checkpoint interval of reading it, 10 s, plus its lag).
pub const LAKE_IN_FLIGHT_SECS: i64 = 60;

/// One machine, sensor and UTC day.
pub type CellKey = (String, String, NaiveDate);

/// Reading timestamps (microseconds since the epoch) per cell.
type Keys = HashMap<CellKey, Vec<i64>>;

/// What every reader counted for one cell.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Cell {
    pub machine_id: String,
    pub sensor_type: String,
    pub day: String,
    /// Distinct readings in the topic (rejected messages not counted).
    pub topic: u64,
    /// Of them, at offsets the Flink group has committed: these must be in `machine_sensors`.
    pub topic_settled: u64,
    /// Rows of `machine_sensors`.
    pub raw: u64,
    /// Settled readings of the topic that `machine_sensors` does not have.
    pub lost: u64,
    /// Rows of `machine_sensors` that no message of the topic holds.
    pub not_in_topic: u64,
    /// Raw rows in closed windows, and the sum of `reading_count` of those windows.
    pub window_rows: u64,
    pub window_count: u64,
    /// Closed windows in `sensor_aggregates`; of them, those whose count, min, max or avg differ
    /// from their raw rows; minutes with raw rows but no window; windows without raw rows.
    pub windows: u64,
    pub windows_wrong: u64,
    pub windows_missing: u64,
    pub windows_extra: u64,
    /// Rows in the Delta table's current version (None: no table).
    pub lake: Option<u64>,
    /// Raw rows the newest export had to take (stamped before its bound).
    pub lake_due: u64,
    /// Due rows the lake does not have; lake rows the database does not have; lake rows that
    /// repeat a reading.
    pub lake_missing: u64,
    pub lake_extra: u64,
    pub lake_duplicates: u64,
}

/// Facts about the run that are not per cell.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Facts {
    pub topic: String,
    pub group: String,
    /// Per partition: start and end offsets read, and the group's committed offset.
    pub partitions: Vec<PartitionRead>,
    /// Messages past the group's committed offsets: what Flink may not have written yet.
    pub in_flight_messages: u64,
    /// Messages the job rejected (in `rejected_readings`) that were found in the topic.
    pub rejected: u64,
    /// Messages that are neither a reading this reader can place nor a rejected one; those
    /// below the committed offsets are lost by the job.
    pub unaccounted_settled: u64,
    pub unaccounted_in_flight: u64,
    /// Retention removed the start of some partition: rows older than the topic's remaining
    /// messages cannot be matched.
    pub topic_trimmed: bool,
    /// Closed windows end at or before this instant (None: no window written yet).
    pub windows_closed_until: Option<DateTime<Utc>>,
    pub lake_table: String,
    pub lake_version: Option<u64>,
    /// The newest export's comparison instant, and the bound below which rows are due.
    pub lake_as_of: Option<DateTime<Utc>>,
    pub lake_due_before: Option<DateTime<Utc>>,
    /// Raw rows stamped after the bound that the lake does not have yet.
    pub lake_pending: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionRead {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    pub committed: Option<i64>,
}

/// The whole verification: cells, facts, and the judgement per hop.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub ok: bool,
    pub hops: Vec<Hop>,
    pub facts: Facts,
    pub cells: Vec<Cell>,
    /// What `verify --repair` rewrote before reading (absent without --repair).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<repair::RepairRecord>,
}

/// A reading as the topic holds it (the fields Flink keys its rows on).
#[derive(serde::Deserialize)]
struct Message<'a> {
    machine_id: std::borrow::Cow<'a, str>,
    sensor_type: std::borrow::Cow<'a, str>,
    timestamp: std::borrow::Cow<'a, str>,
}

/// The timestamp Flink gives a message's `timestamp` text: `TO_TIMESTAMP(REPLACE(ts, 'T', ' '))`
/// in UTC, to the millisecond. None for text the job would reject.
pub fn message_micros(ts: &str) -> Option<i64> {
    let t =
        chrono::NaiveDateTime::parse_from_str(&ts.replacen('T', " ", 1), "%Y-%m-%d %H:%M:%S%.f")
            .ok()?;
    Some(t.and_utc().timestamp_millis() * 1000)
}

fn day_of(us: i64) -> Option<NaiveDate> {
    DateTime::from_timestamp_micros(us).map(|t| t.date_naive())
}

/// Number of elements of sorted, deduplicated `a` missing from sorted, deduplicated `b`.
pub fn missing_from(a: &[i64], b: &[i64]) -> u64 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() {
        if j >= b.len() || a[i] < b[j] {
            n += 1;
            i += 1;
        } else if a[i] == b[j] {
            i += 1;
            j += 1;
        } else {
            j += 1;
        }
    }
    n
}

fn sorted_dedup(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v.dedup();
    v
}

/// What the topic reader keeps.
#[derive(Default)]
struct TopicRead {
    all: Keys,
    settled: Keys,
    rejected: u64,
    unaccounted_settled: u64,
    unaccounted_in_flight: u64,
}

/// Runs every reader against the lab and judges the hops. Readers run in the order that keeps
/// each comparison one-sided: the group's offsets first (what must be stored), then the lake
/// (which can only lag the database), then the database, then the topic's ends (which bound
/// everything stored).
pub async fn run(lab: &Lab, timeout: Duration) -> Result<Report> {
    let topic = lab.config.broker.topic.clone();
    let group = crate::ops::flink::job::Target::lab(&lab.config).group_id;
    let broker = lab.broker()?;
    let committed: HashMap<i32, Option<i64>> = broker
        .committed(&group, &topic, timeout)
        .await
        .context("reading the Flink group's committed offsets")?
        .into_iter()
        .collect();

    let lake_table = schema::MACHINE_SENSORS.name.to_string();
    let lake = read_lake(lab, &lake_table, timeout).await?;

    let db = lab.database()?.connect(timeout).await?;
    let raw = read_raw(&db).await?;
    let rejected = read_rejected(&db).await?;
    let windows =
        read_windows(&db, crate::ops::flink::job::JobSettings::for_lab(&lab.config).window_secs)
            .await?;

    let ends = broker.offsets(&topic, timeout).await?;
    let committed_at = committed.clone();
    let read = broker
        .scan(
            &topic,
            ends.clone(),
            timeout,
            TopicRead::default(),
            move |read, partition, offset, payload| {
                let settled =
                    committed_at.get(&partition).copied().flatten().is_some_and(|c| offset < c);
                if rejected.contains(&(partition, offset)) {
                    read.rejected += 1;
                    return;
                }
                let key =
                    payload.and_then(|p| serde_json::from_slice::<Message>(p).ok()).and_then(|m| {
                        let us = message_micros(&m.timestamp)?;
                        Some((
                            (m.machine_id.into_owned(), m.sensor_type.into_owned(), day_of(us)?),
                            us,
                        ))
                    });
                match key {
                    Some((cell, us)) => {
                        if settled {
                            read.settled.entry(cell.clone()).or_default().push(us);
                        }
                        read.all.entry(cell).or_default().push(us);
                    }
                    None if settled => read.unaccounted_settled += 1,
                    None => read.unaccounted_in_flight += 1,
                }
            },
        )
        .await
        .with_context(|| format!("reading topic {topic}"))?;
    let TopicRead {
        all,
        settled,
        rejected: rejected_seen,
        unaccounted_settled,
        unaccounted_in_flight,
    } = read;

    let partitions: Vec<PartitionRead> = ends
        .iter()
        .map(|p| PartitionRead {
            partition: p.partition,
            low: p.low,
            high: p.high,
            committed: committed.get(&p.partition).copied().flatten(),
        })
        .collect();
    let in_flight_messages = partitions
        .iter()
        .map(|p| (p.high - p.committed.unwrap_or(p.low).clamp(p.low, p.high)).max(0) as u64)
        .sum();
    let mut context = Facts {
        topic,
        group,
        in_flight_messages,
        rejected: rejected_seen,
        unaccounted_settled,
        unaccounted_in_flight,
        topic_trimmed: partitions.iter().any(|p| p.low > 0),
        partitions,
        windows_closed_until: windows.closed_until,
        lake_table,
        lake_version: lake.as_ref().map(|l| l.version),
        lake_as_of: lake.as_ref().and_then(|l| l.as_of),
        lake_due_before: lake
            .as_ref()
            .and_then(|l| l.as_of)
            .map(|t| t - chrono::Duration::seconds(LAKE_IN_FLIGHT_SECS)),
        lake_pending: 0,
    };
    let cells = combine(all, settled, raw, windows.cells, lake.map(|l| l.keys), &mut context);
    let hops = judge(&cells, &context);
    Ok(Report { ok: hops.iter().all(|h| h.ok), hops, facts: context, cells, repaired: None })
}

/// Merges every reader's keys into cells.
fn combine(
    all: Keys,
    settled: Keys,
    raw: Keys,
    windows: HashMap<CellKey, WindowCounts>,
    lake: Option<Keys>,
    context: &mut Facts,
) -> Vec<Cell> {
    let mut names: HashSet<CellKey> = HashSet::new();
    names.extend(all.keys().cloned());
    names.extend(raw.keys().cloned());
    names.extend(windows.keys().cloned());
    if let Some(l) = &lake {
        names.extend(l.keys().cloned());
    }
    let due_before = context.lake_due_before.map(|t| t.timestamp_micros());
    let mut cells: BTreeMap<(NaiveDate, String, String), Cell> = BTreeMap::new();
    for key in names {
        let (machine, sensor, day) = key.clone();
        let topic_all = sorted_dedup(all.get(&key).cloned().unwrap_or_default());
        let topic_settled = sorted_dedup(settled.get(&key).cloned().unwrap_or_default());
        let raw_keys = sorted_dedup(raw.get(&key).cloned().unwrap_or_default());
        let w = windows.get(&key).cloned().unwrap_or_default();
        let mut cell = Cell {
            machine_id: machine.clone(),
            sensor_type: sensor.clone(),
            day: day.format("%Y-%m-%d").to_string(),
            topic: topic_all.len() as u64,
            topic_settled: topic_settled.len() as u64,
            raw: raw_keys.len() as u64,
            lost: missing_from(&topic_settled, &raw_keys),
            not_in_topic: missing_from(&raw_keys, &topic_all),
            window_rows: w.raw_rows,
            window_count: w.count,
            windows: w.windows,
            windows_wrong: w.wrong,
            windows_missing: w.missing,
            windows_extra: w.extra,
            ..Cell::default()
        };
        if let Some(lake) = &lake {
            let mut lake_keys = lake.get(&key).cloned().unwrap_or_default();
            lake_keys.sort_unstable();
            let rows = lake_keys.len() as u64;
            let lake_keys = sorted_dedup(lake_keys);
            let due: Vec<i64> = match due_before {
                Some(b) => raw_keys.iter().copied().filter(|&t| t < b).collect(),
                None => Vec::new(),
            };
            let young: Vec<i64> = raw_keys
                .iter()
                .copied()
                .filter(|&t| due_before.is_some_and(|b| t >= b) || due_before.is_none())
                .collect();
            context.lake_pending += missing_from(&young, &lake_keys);
            cell.lake = Some(rows);
            cell.lake_due = due.len() as u64;
            cell.lake_missing = missing_from(&due, &lake_keys);
            cell.lake_extra = missing_from(&lake_keys, &raw_keys);
            cell.lake_duplicates = rows - lake_keys.len() as u64;
        }
        cells.insert((day, machine, sensor), cell);
    }
    cells.into_values().collect()
}

/// The raw rows' keys.
async fn read_raw(db: &tokio_postgres::Client) -> Result<Keys> {
    let t = schema::MACHINE_SENSORS;
    let sql = format!(
        "SELECT machine_id, sensor_type, (extract(epoch FROM {tc}) * 1000000)::bigint FROM {name}",
        tc = schema::pg_ident(t.time_column),
        name = t.name
    );
    let mut keys = Keys::new();
    let rows = db
        .query_raw(&sql, no_params())
        .await
        .with_context(|| format!("reading the keys of {}", t.name))?;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) =
        rows.try_next().await.with_context(|| format!("reading the keys of {}", t.name))?
    {
        let us: i64 = row.get(2);
        let Some(day) = day_of(us) else { continue };
        keys.entry((row.get(0), row.get(1), day)).or_default().push(us);
    }
    Ok(keys)
}

fn no_params() -> std::iter::Empty<&'static (dyn tokio_postgres::types::ToSql + Sync)> {
    std::iter::empty()
}

/// (partition, offset) of every message the job rejected.
async fn read_rejected(db: &tokio_postgres::Client) -> Result<HashSet<(i32, i64)>> {
    let t = schema::REJECTED_READINGS;
    let rows = db
        .query(&format!("SELECT topic_partition, topic_offset FROM {}", t.name), &[])
        .await
        .with_context(|| format!("reading {}", t.name))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[derive(Debug, Clone, Default)]
struct WindowCounts {
    raw_rows: u64,
    count: u64,
    windows: u64,
    wrong: u64,
    missing: u64,
    extra: u64,
}

struct Windows {
    closed_until: Option<DateTime<Utc>>,
    cells: HashMap<CellKey, WindowCounts>,
}

/// Every closed window recomputed from the raw rows, in one statement (one snapshot), counted
/// per machine, sensor and UTC day of the window's start.
async fn read_windows(db: &tokio_postgres::Client, window_secs: u32) -> Result<Windows> {
    let agg = schema::SENSOR_AGGREGATES.name;
    let w = window_secs;
    let sql = format!(
        r#"{closed},
a AS (SELECT machine_id, sensor_type, window_start AS w, reading_count AS n, min_value AS lo, max_value AS hi, avg_value AS av
        FROM {agg}, bound WHERE window_end <= bound.b)
SELECT coalesce(r.machine_id, a.machine_id), coalesce(r.sensor_type, a.sensor_type),
       to_char(coalesce(r.w, a.w) AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
       coalesce(sum(r.n), 0)::bigint, coalesce(sum(a.n), 0)::bigint, count(a.w),
       count(*) FILTER (WHERE r.w IS NOT NULL AND a.w IS NOT NULL AND (r.n <> a.n OR r.lo <> a.lo OR r.hi <> a.hi
                        OR abs(r.av - a.av) > 1e-9 * greatest(1, abs(r.av)))),
       count(*) FILTER (WHERE a.w IS NULL), count(*) FILTER (WHERE r.w IS NULL),
       (SELECT b FROM bound)
  FROM r FULL JOIN a ON a.machine_id = r.machine_id AND a.sensor_type = r.sensor_type AND a.w = r.w
 GROUP BY 1, 2, 3"#,
        closed = closed_windows_sql(w),
    );
    let rows =
        db.query(&sql, &[]).await.context("recomputing the closed windows from the raw rows")?;
    let closed_until = match rows.first() {
        Some(r) => r.get(9),
        None => db
            .query_one(&format!("SELECT max(window_end) - interval '{w} seconds' FROM {agg}"), &[])
            .await
            .context("reading the newest window")?
            .get(0),
    };
    let n = |r: &tokio_postgres::Row, i: usize| r.get::<_, i64>(i).max(0) as u64;
    let mut cells = HashMap::new();
    for r in &rows {
        let day: String = r.get(2);
        let Ok(day) = NaiveDate::parse_from_str(&day, "%Y-%m-%d") else { continue };
        cells.insert(
            (r.get(0), r.get(1), day),
            WindowCounts {
                raw_rows: n(r, 3),
                count: n(r, 4),
                windows: n(r, 5),
                wrong: n(r, 6),
                missing: n(r, 7),
                extra: n(r, 8),
            },
        );
    }
    Ok(Windows { closed_until, cells })
}

/// `bound` (windows ending at or before it are closed: one window before the newest written)
/// and `r`, each closed minute recomputed from the raw rows, as the start of a WITH clause.
/// `window_secs` is a number from the job's settings; Flink's TUMBLE windows start at multiples
/// of it since the epoch.
fn closed_windows_sql(window_secs: u32) -> String {
    let (raw, agg) = (schema::MACHINE_SENSORS.name, schema::SENSOR_AGGREGATES.name);
    let w = window_secs;
    format!(
        r#"WITH bound AS (SELECT max(window_end) - interval '{w} seconds' AS b FROM {agg}),
r AS (SELECT machine_id, sensor_type, to_timestamp(floor(extract(epoch FROM "timestamp") / {w}) * {w}) AS w,
             count(*) AS n, min(value) AS lo, max(value) AS hi, avg(value) AS av
        FROM {raw}, bound WHERE "timestamp" < bound.b GROUP BY 1, 2, 3)"#
    )
}

struct LakeRead {
    version: u64,
    as_of: Option<DateTime<Utc>>,
    keys: Keys,
}

/// Files of the lake's current version fetched at once.
const LAKE_FETCH_CONCURRENCY: usize = 4;

/// The Delta table's current version, read from its log and Parquet files; None when there is
/// no table yet.
async fn read_lake(lab: &Lab, table: &str, timeout: Duration) -> Result<Option<LakeRead>> {
    let blob = lab.blob(timeout)?;
    let container = lab.config.lake.container.clone();
    let Some(commits) = blob
        .delta_log(&container, table)
        .await
        .with_context(|| format!("reading the Delta log of {container}/{table}"))?
    else {
        return Ok(None);
    };
    let version = commits.len() as u64 - 1;
    let as_of = crate::clients::lake::export_as_of(commits.iter().map(String::as_str), table);
    let files = crate::clients::lake::live_files(commits.iter().map(String::as_str))?;
    let mut keys = Keys::new();
    let mut reads = futures_util::stream::iter(
        files.iter().map(|f| blob.reading_keys(&container, table, &f.path)),
    )
    .buffer_unordered(LAKE_FETCH_CONCURRENCY);
    while let Some(rows) = reads.next().await {
        for (m, s, us) in rows? {
            let Some(day) = day_of(us) else { continue };
            keys.entry((m, s, day)).or_default().push(us);
        }
    }
    Ok(Some(LakeRead { version, as_of, keys }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_time_is_flinks_to_the_millisecond() {
        assert_eq!(message_micros("1970-01-01T00:00:01"), Some(1_000_000));
        assert_eq!(message_micros("1970-01-01T00:00:01.2345"), Some(1_234_000));
        assert_eq!(message_micros("1970-01-01 00:00:01"), Some(1_000_000));
        assert_eq!(message_micros("yesterday"), None);
        assert_eq!(message_micros("2026-13-01T00:00:00"), None);
    }

    #[test]
    fn missing_counts_set_difference() {
        assert_eq!(missing_from(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(missing_from(&[1, 2, 3], &[2]), 2);
        assert_eq!(missing_from(&[], &[2]), 0);
        assert_eq!(missing_from(&[5, 9], &[1, 2, 3, 4]), 2);
        assert_eq!(missing_from(&[1, 4, 9], &[0, 4, 10]), 2);
    }
}
