//! `labctl bench`: the lab's benchmarks, each against a named baseline measured in the same run.
//!
//! `labctl bench` alone runs all of them on the running lab and prints one table; each
//! subcommand runs one. Every benchmark returns [`Measurement`]s, so the combined table and its
//! JSON (`--json-out`) have one shape and runs can be compared.

mod flink;
mod ingest;
mod spark;
mod status;

use std::{
    collections::HashMap,
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use serde::Serialize;

use crate::{
    clients::docker::{Runtime, LABEL_PROJECT},
    model::{config::Config, fleet::Fleet},
    ops::{
        ingest::{generate, producer::Sender, Position},
        lab::Lab,
    },
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    all: AllArgs,
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    /// Days of history each benchmark works on (7 = 1,088,640 readings).
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// The Python baseline script of the ingest benchmark.
    #[arg(long, default_value = "../shared/bench/seed_style_producer.py", value_name = "FILE")]
    baseline: PathBuf,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// Generator vs raw broker ceiling vs the original lab's Python producer.
    Ingest(ingest::Args),
    /// The Flink job's backfill throughput into both tables vs Flink merely reading the topic.
    Flink(flink::Args),
    /// The Spark export of a scratch 7-day table to Delta vs the same submission only reading.
    Spark(spark::Args),
    /// `status` latency: every service asked at once vs one after another.
    Status(status::Args),
    /// Inside a bench container: produce pre-encoded messages as fast as the broker takes them.
    #[command(hide = true)]
    RawProducer {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        days: f64,
    },
}

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

pub fn print_table(rows: &[Measurement]) {
    println!(
        "{:<8} {:<38} {:>12} {:<10} {:<26} {:>7}  NOTES",
        "BENCH", "MEASUREMENT", "VALUE", "UNIT", "BASELINE", "RATIO"
    );
    for r in rows {
        let value = if r.value.abs() >= 100.0 {
            format!("{:.0}", r.value)
        } else {
            format!("{:.2}", r.value)
        };
        println!(
            "{:<8} {:<38} {:>12} {:<10} {:<26} {:>7}  {}",
            r.bench,
            r.name,
            value,
            r.unit,
            r.baseline.as_deref().unwrap_or("-"),
            r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default(),
            r.notes
        );
    }
}

fn write_json(path: Option<&PathBuf>, rows: &[Measurement]) -> Result<()> {
    if let Some(path) = path {
        let doc = serde_json::json!({
            "labctl": env!("CARGO_PKG_VERSION"),
            "at": chrono::Utc::now().to_rfc3339(),
            "measurements": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let (rows, json_out) = match args.command {
        Some(BenchCommand::RawProducer { bootstrap, topic, days }) => {
            tokio::task::spawn_blocking(move || ingest::raw_producer(&bootstrap, &topic, days))
                .await??;
            return Ok(ExitCode::SUCCESS);
        }
        Some(BenchCommand::Ingest(a)) => {
            let out = a.json_out.clone();
            (ingest::run(&Lab::existing(config)?, &a).await?, out)
        }
        Some(BenchCommand::Flink(a)) => {
            let out = a.json_out.clone();
            (flink::run(&Lab::existing(config)?, &a).await?, out)
        }
        Some(BenchCommand::Spark(a)) => {
            let out = a.json_out.clone();
            (spark::run(&Lab::existing(config)?, &a).await?, out)
        }
        Some(BenchCommand::Status(a)) => {
            let out = a.json_out.clone();
            (status::run(&Lab::existing(config)?, &a).await?, out)
        }
        None => {
            let all = args.all;
            let lab = Lab::existing(config)?;
            let mut rows = Vec::new();
            let mut failed = Vec::new();
            // One benchmark failing does not throw away the others' figures.
            let mut keep = |name: &'static str, r: Result<Vec<Measurement>>| match r {
                Ok(v) => rows.extend(v),
                Err(e) => {
                    eprintln!("bench {name} failed: {e:#}");
                    failed.push(name);
                }
            };
            eprintln!("== ingest");
            keep(
                "ingest",
                ingest::run(
                    &lab,
                    &ingest::Args {
                        days: all.days,
                        baseline: all.baseline.clone(),
                        runs: 3,
                        json_out: None,
                    },
                )
                .await,
            );
            eprintln!("== status");
            keep("status", status::run(&lab, &status::Args { runs: 15, json_out: None }).await);
            eprintln!("== flink");
            keep(
                "flink",
                flink::run(&lab, &flink::Args { days: all.days, live_windows: 3, json_out: None })
                    .await,
            );
            eprintln!("== spark");
            keep(
                "spark",
                spark::run(
                    &lab,
                    &spark::Args { days: all.days, partitions: 4, runs: 1, json_out: None },
                )
                .await,
            );
            if !failed.is_empty() {
                print_table(&rows);
                write_json(all.json_out.as_ref(), &rows)?;
                bail!(
                    "benchmark(s) failed: {} (see above); the table holds the others",
                    failed.join(", ")
                );
            }
            (rows, all.json_out)
        }
    };
    print_table(&rows);
    write_json(json_out.as_ref(), &rows)?;
    Ok(ExitCode::SUCCESS)
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
    let cname = format!("{}-bench-{name}", lab.stack.project);
    let _ = rt
        .docker
        .remove_container(
            &cname,
            Some(RemoveContainerOptions { force: true, ..Default::default() }),
        )
        .await;
    let config = ContainerConfig {
        image: Some(image.to_string()),
        entrypoint,
        cmd: Some(cmd),
        labels: Some(HashMap::from([(LABEL_PROJECT.to_string(), lab.stack.project.clone())])),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some(lab.stack.network.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    rt.docker
        .create_container(
            Some(CreateContainerOptions { name: cname.as_str(), platform: None }),
            config,
        )
        .await
        .with_context(|| format!("creating {cname}"))?;
    for (path, content) in files {
        rt.upload_file(&cname, path, content, 0o644).await?;
    }
    rt.start(&cname).await?;
    let mut wait = rt.docker.wait_container(&cname, None::<WaitContainerOptions<String>>);
    while let Some(r) = wait.next().await {
        if let Err(e) = r {
            tracing::debug!("wait {cname}: {e}");
        }
    }
    let logs = rt.tail_logs(&cname, 200).await?;
    let _ = rt
        .docker
        .remove_container(
            &cname,
            Some(RemoveContainerOptions { force: true, ..Default::default() }),
        )
        .await;
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

/// Produces `days` of the default fleet into `topic` from this process; returns the count.
pub(crate) async fn fill_topic(lab: &Lab, topic: &str, days: f64) -> Result<u64> {
    let base = lab.broker()?.client_config();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> Result<u64> {
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
        Ok(c.delivered.load(Ordering::Relaxed))
    })
    .await?
}
