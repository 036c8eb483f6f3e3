//! The lab's benchmarks, each against a named baseline measured in the same run: the generator
//! (`ingest`), the streaming job (`flink`), the export (`spark`), `status` and `console`. Every benchmark
//! returns [`Measurement`]s, so a combined table and its JSON have one shape and runs can be
//! compared.

pub mod console;
pub mod flink;
pub mod ingest;
pub mod spark;
pub mod status;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type};

use crate::{
    clients::docker::{OneOff, Runtime},
    model::{
        fleet::{Fleet, MachineRng, SENSORS},
        schema::{pg_ident, MACHINE_SENSORS},
    },
    ops::{
        ingest::{generate, producer::Sender, Position},
        lab::Lab,
    },
};

/// One line of a benchmark table: an absolute figure and, where it has one, its ratio against a
/// baseline measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Which benchmark (ingest, flink, spark, status, up).
    pub bench: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// The name of the row this one is compared with, if any.
    pub baseline: Option<String>,
    /// value / baseline's value for rates, baseline / value for durations: > 1 is better.
    pub ratio: Option<f64>,
    /// Counts, sizes and conditions a reader needs to judge the figure.
    pub notes: String,
}

impl Measurement {
    pub fn new(
        bench: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            bench,
            name: name.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            notes: String::new(),
        }
    }
    pub fn against(mut self, baseline: impl Into<String>, ratio: f64) -> Self {
        self.baseline = Some(baseline.into());
        self.ratio = Some(ratio);
        self
    }
    pub fn note(mut self, notes: impl Into<String>) -> Self {
        self.notes = notes.into();
        self
    }
}

pub(crate) fn fleet_and_starts(days: f64) -> (Fleet, Vec<Position>, i64) {
    let fleet = Fleet::default_fleet(20231010);
    let now_tick = chrono::Utc::now().timestamp() / 5;
    let first = now_tick - (days * 86_400.0 / 5.0) as i64;
    let starts = vec![Position { tick: first, sensor: 0 }; fleet.machines.len()];
    (fleet, starts, now_tick)
}

/// Runs a one-off container on the lab's network and returns the JSON lines it printed.
pub(crate) async fn run_container(
    rt: &Runtime,
    lab: &Lab,
    name: &str,
    image: &str,
    entrypoint: Option<Vec<String>>,
    cmd: Vec<String>,
    files: &[(&str, &[u8])],
) -> Result<Vec<String>> {
    let logs = rt
        .run_to_end(&OneOff {
            name: format!("{}-bench-{name}", lab.stack.project),
            project: &lab.stack.project,
            network: &lab.stack.network,
            image,
            entrypoint,
            cmd,
            files,
        })
        .await?;
    let lines: Vec<String> = logs
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| l.trim().to_string())
        .collect();
    if lines.is_empty() {
        bail!("{name} printed no result:\n{logs}");
    }
    Ok(lines)
}

/// Produces `days` of the default fleet into `topic` from this process; returns the count and
/// the tick after the last (every machine's last reading is at tick - 1).
pub(crate) async fn fill_topic(lab: &Lab, topic: &str, days: f64) -> Result<(u64, i64)> {
    let base = lab.broker()?.client_config();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> Result<(u64, i64)> {
        let (fleet, starts, end) = fleet_and_starts(days);
        let sender = Sender::new(&base, &topic)?;
        let stop = AtomicBool::new(false);
        generate(&fleet, 5, &starts, end, &stop, |_, k, p| sender.send(k, p, &stop));
        sender.flush(Duration::from_secs(600))?;
        let c = sender.counters();
        let failed = c.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} readings were not delivered to {topic}");
        }
        Ok((c.delivered.load(Ordering::Relaxed), end))
    })
    .await?
}

/// One reading as `fill_table` writes it: epoch seconds, the machine's index in the default
/// fleet, the sensor's index in `SENSORS`.
pub(crate) struct Reading {
    pub secs: i64,
    pub machine: usize,
    pub sensor: usize,
    pub value: f64,
}

/// Fills `table` with `days` of the default fleet's readings (the generator's own values) by
/// binary COPY, handing each reading to `each` too. Returns the row count.
pub(crate) async fn fill_table(
    db: &tokio_postgres::Client,
    table: &str,
    days: f64,
    mut each: impl FnMut(&Reading),
) -> Result<u64> {
    let (fleet, starts, end) = fleet_and_starts(days);
    let interval = 5i64;
    let cols: Vec<String> = MACHINE_SENSORS.columns.iter().map(|c| pg_ident(c.name)).collect();
    let sink = db
        .copy_in(&format!("COPY {} ({}) FROM STDIN BINARY", pg_ident(table), cols.join(", ")))
        .await?;
    let types = [Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::TEXT, Type::FLOAT8, Type::TEXT];
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    let mut rngs: Vec<_> = fleet.machines.iter().map(|m| MachineRng::new(fleet.seed, m)).collect();
    let from = starts.iter().map(|p| p.tick).min().unwrap_or(end);
    for tick in from..end {
        let secs = tick * interval;
        let ts = chrono::DateTime::from_timestamp(secs, 0).context("tick out of range")?;
        for (i, m) in fleet.machines.iter().enumerate() {
            let values = rngs[i].readings(m, tick, secs);
            for s in SENSORS {
                let (mid, kind, sensor, unit) = (m.id.as_str(), m.kind.name(), s.name(), s.unit());
                let value = values[s.index()];
                writer.as_mut().write(&[&ts, &mid, &kind, &sensor, &value, &unit]).await?;
                each(&Reading { secs, machine: i, sensor: s.index(), value });
            }
        }
    }
    Ok(writer.finish().await?)
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    if xs.is_empty() {
        f64::NAN
    } else if xs.len() % 2 == 1 {
        xs[xs.len() / 2]
    } else {
        (xs[xs.len() / 2 - 1] + xs[xs.len() / 2]) / 2.0
    }
}
