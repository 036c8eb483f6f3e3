//! The parts of `labctl demo` that look at the lab rather than run a command: the wait until
//! the generator's backfill is aggregated, and the summary of what landed where.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    clients::docker::Runtime,
    model::{config::PortKey, schema},
    ops::{lab::Lab, numbers::count},
    progress::Progress,
    stack::INGEST,
    wait::{poll_until, Check, Every},
};

#[derive(Debug, Serialize)]
pub struct Summary {
    pub project: String,
    /// Readings in the topic (sum of end offsets) when the summary was taken.
    pub readings_produced: i64,
    pub machine_sensors_rows: i64,
    pub sensor_aggregates_rows: i64,
    /// Sum of `reading_count` over all windows: readings already aggregated.
    pub readings_in_windows: i64,
    pub flink_job_id: String,
    pub delta: Option<DeltaFigures>,
    /// The last step: every hop compared by `labctl verify` (None with --no-export).
    pub verify: Option<VerifyFigures>,
    pub urls: BTreeMap<&'static str, String>,
    /// Seconds per step, in order.
    pub steps: Vec<(String, f64)>,
    pub total_secs: f64,
}

#[derive(Debug, Serialize)]
pub struct DeltaFigures {
    pub table: String,
    pub version: Option<u64>,
    pub rows: Option<u64>,
    /// Rows per UTC day (`YYYY-MM-DD`) in the table's current version.
    pub rows_per_day: BTreeMap<String, u64>,
    /// Days the export compared with the database, and those it rewrote (they differed).
    pub days_compared: Option<u64>,
    pub days_rewritten: Option<u64>,
    /// The instant the export compared the database at.
    pub as_of: Option<DateTime<Utc>>,
}

/// `labctl verify`'s verdict, hop by hop.
#[derive(Debug, Serialize)]
pub struct VerifyFigures {
    pub ok: bool,
    pub hops: Vec<(String, bool, String)>,
}

/// What the wait has learnt so far; both are fixed once known.
#[derive(Default)]
struct Seen {
    /// The topic's end offsets summed when the generator went live: the backfill's size.
    backfilled: Option<i64>,
    /// The end of the minute in which the raw rows were first complete: its window closes the
    /// backfill.
    minute_end: Option<DateTime<Utc>>,
}

/// Done when the generator is live (its backfill delivered), every reading that was in the
/// topic then is a raw row, and the window of the minute the backfill ended is written.
pub async fn wait_aggregated(lab: &Lab, timeout: Duration, progress: &dyn Progress) -> Result<()> {
    let rt = Runtime::connect().await?;
    let db = lab.database()?.connect(Duration::from_secs(10)).await?;
    let broker = lab.broker()?;
    let ingest = lab.stack.container_name(INGEST, 1);
    let seen = Mutex::new(Seen::default());
    let look = || async {
        let raw: i64 = db.query_one("SELECT count(*) FROM machine_sensors", &[]).await?.get(0);
        let backfilled = seen.lock().map(|s| s.backfilled).unwrap_or_default();
        let backfilled = match backfilled {
            Some(n) => Some(n),
            // The generator logs `ingest: live` once its backfill is delivered.
            None if rt
                .tail_logs(&ingest, 200)
                .await
                .unwrap_or_default()
                .contains("ingest: live") =>
            {
                let n: i64 = broker
                    .offsets(&lab.config.broker.topic, Duration::from_secs(10))
                    .await?
                    .iter()
                    .map(|p| p.high)
                    .sum();
                if let Ok(mut s) = seen.lock() {
                    s.backfilled = Some(n);
                }
                Some(n)
            }
            None => None,
        };
        match backfilled {
            None => {
                return Ok(Check::NotYet(format!(
                    "generator backfilling; {} raw rows so far",
                    count(raw)
                )))
            }
            Some(n) if raw < n => {
                return Ok(Check::NotYet(format!(
                    "{} of {} backfilled readings are raw rows",
                    count(raw),
                    count(n)
                )))
            }
            Some(_) => {}
        };
        let end = {
            let mut s = seen.lock().map_err(|_| anyhow::anyhow!("demo wait state poisoned"))?;
            *s.minute_end.get_or_insert_with(|| {
                let now = Utc::now();
                now - chrono::Duration::seconds(now.timestamp() % 60)
            })
        };
        let newest: Option<DateTime<Utc>> =
            db.query_one("SELECT max(window_end) FROM sensor_aggregates", &[]).await?.get(0);
        Ok(if newest.is_some_and(|w| w >= end) {
            Check::Ready(format!(
                "{} raw rows; windows up to {}",
                count(raw),
                end.format("%H:%M UTC")
            ))
        } else {
            Check::NotYet(format!(
                "raw rows complete; waiting for the window ending {} (watermark)",
                end.format("%H:%M")
            ))
        })
    };
    let waited = poll_until(Every::millis(2000).within(timeout), look, |why| progress.set(why))
        .await
        .and_then(|w| {
            w.or_else(|last, after| {
                anyhow::anyhow!("the backfill was not aggregated within {after:.0?} ({last}); see `labctl status` and `labctl logs flink-taskmanager` (raise --timeout on a slow machine)")
            })
        });
    match waited {
        Ok(done) => {
            progress.done(&done);
            Ok(())
        }
        Err(e) => {
            progress.failed("not aggregated");
            Err(e)
        }
    }
}

/// What landed where: the topic's end offsets, both hypertables, and the Delta table when the
/// export ran (`export` is its `submit spark --json` result).
pub async fn summarize(
    lab: &Lab,
    flink_job_id: String,
    export: Option<&serde_json::Value>,
    steps: Vec<(String, f64)>,
    started: Instant,
) -> Result<Summary> {
    let db = lab.database()?.connect(Duration::from_secs(10)).await?;
    let readings_produced: i64 = lab
        .broker()?
        .offsets(&lab.config.broker.topic, Duration::from_secs(10))
        .await?
        .iter()
        .map(|p| p.high)
        .sum();
    let raw: i64 = db.query_one("SELECT count(*) FROM machine_sensors", &[]).await?.get(0);
    let row = db
        .query_one(
            "SELECT count(*), coalesce(sum(reading_count), 0)::bigint FROM sensor_aggregates",
            &[],
        )
        .await?;
    let delta = match export {
        None => None,
        Some(r) => {
            let table = schema::MACHINE_SENSORS.name;
            let blob = lab.blob(Duration::from_secs(10))?;
            let s = blob.delta_summary(&lab.config.lake.container, table).await?;
            let t = r["result"]["tables"]
                .as_array()
                .and_then(|a| a.iter().find(|t| t["name"] == table));
            Some(DeltaFigures {
                table: table.to_string(),
                version: s.version,
                rows: s.rows,
                rows_per_day: s.rows_per_day,
                days_compared: t.and_then(|t| t["days_compared"].as_u64()),
                days_rewritten: t.and_then(|t| t["days_rewritten"].as_u64()),
                as_of: s.export_as_of,
            })
        }
    };
    let mut urls = BTreeMap::new();
    for (name, key) in [("flink_ui", PortKey::FlinkUi), ("spark_ui", PortKey::SparkUi)] {
        if let Some(u) = lab.stack.url(key) {
            urls.insert(name, u);
        }
    }
    Ok(Summary {
        project: lab.stack.project.clone(),
        readings_produced,
        machine_sensors_rows: raw,
        sensor_aggregates_rows: row.get(0),
        readings_in_windows: row.get(1),
        flink_job_id,
        delta,
        verify: None,
        urls,
        steps,
        total_secs: started.elapsed().as_secs_f64(),
    })
}
