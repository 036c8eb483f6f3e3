//! `labctl bench`: arguments to the benchmarks of `ops::bench`, their measurements to one
//! table (and `--json-out`).
//!
//! `labctl bench` alone runs all of them on the running lab and prints one table; each
//! subcommand runs one.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context, Result};

use super::console::Relaunch;
use crate::{
    model::config::Config,
    ops::{
        bench::{console, flink, ingest, spark, status, Measurement},
        lab::Lab,
    },
    progress::Lines,
};

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Days of history each producer writes (7 = 1,088,640 messages).
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// The Python baseline script.
    #[arg(long, default_value = "../shared/bench/seed_style_producer.py", value_name = "FILE")]
    pub baseline: PathBuf,
    /// Runs of each producer, (a) and (b) alternating; the table shows medians. One run of 7
    /// days takes about 3 s here, so single runs vary by ±20% on a busy machine.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

impl IngestArgs {
    fn settings(&self) -> ingest::Settings {
        ingest::Settings { days: self.days, baseline: self.baseline.clone(), runs: self.runs }
    }
}

#[derive(Debug, clap::Args)]
pub struct FlinkArgs {
    /// Days of history in the benchmark's own topic (7 = 1,088,640 readings).
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// Closed windows to measure the live latency on, after the backfill (about one minute of
    /// live readings each, plus up to a minute to reach the first whole window; 0 = skip).
    #[arg(long, default_value_t = 3)]
    pub live_windows: u32,
    /// Runs of each case (COPY baseline, read-only baseline, the lab's job), alternating; the
    /// table shows medians. One case of 7 days takes 10-100 s here.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub runs: u32,
    /// A Flink option for both Flink cases, after the job's own (repeatable), e.g.
    /// `--set execution.checkpointing.interval='30 s'`: to measure a setting first.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = flink::parse_override)]
    pub overrides: Vec<(String, String)>,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

impl FlinkArgs {
    fn settings(&self) -> flink::Settings {
        flink::Settings {
            days: self.days,
            live_windows: self.live_windows,
            runs: self.runs,
            overrides: self.overrides.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SparkArgs {
    /// Days of history in the scratch table (7 = 1,088,640 readings).
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// Parallel JDBC reads (as `labctl submit spark --partitions`).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub partitions: u32,
    /// Runs of each (baseline, export, the export with a driver without the class-data archive,
    /// the same export again with nothing to change), alternating; the median of each is
    /// reported.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub runs: u32,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

impl SparkArgs {
    fn settings(&self) -> spark::Settings {
        spark::Settings { days: self.days, partitions: self.partitions, runs: self.runs }
    }
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Reports per variant; the median and the worst are shown.
    #[arg(long, default_value_t = 15)]
    pub runs: usize,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<std::path::PathBuf>,
}

impl StatusArgs {
    fn settings(&self) -> status::Settings {
        status::Settings { runs: self.runs }
    }
}

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Requests per endpoint (and `status` reports), interleaved; medians and worst shown.
    #[arg(long, default_value_t = 15)]
    pub runs: usize,
    /// Seconds of each CPU sample (idle, then with one page watching).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    pub cpu_secs: f64,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

impl ConsoleArgs {
    fn settings(&self) -> console::Settings {
        console::Settings { runs: self.runs, cpu_secs: self.cpu_secs }
    }
}

/// `labctl console` as this invocation would start it (same config and project).
fn console_command(relaunch: &Relaunch) -> Result<tokio::process::Command> {
    let mut cmd = relaunch.command()?;
    cmd.arg("console");
    Ok(cmd)
}

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
    Ingest(IngestArgs),
    /// The Flink job's backfill throughput into both tables vs Flink merely reading the topic.
    Flink(FlinkArgs),
    /// The Spark export of a scratch 7-day table to Delta vs the same submission only reading.
    Spark(SparkArgs),
    /// `status` latency: every service asked at once vs one after another.
    Status(StatusArgs),
    /// `labctl console`: its data endpoints vs the `status` report, its CPU idle and watched,
    /// its memory.
    Console(ConsoleArgs),
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

pub async fn run(config: Config, relaunch: Relaunch, args: Args) -> Result<ExitCode> {
    let (rows, json_out) = match args.command {
        Some(BenchCommand::RawProducer { bootstrap, topic, days }) => {
            tokio::task::spawn_blocking(move || ingest::raw_producer(&bootstrap, &topic, days))
                .await??;
            return Ok(ExitCode::SUCCESS);
        }
        Some(BenchCommand::Ingest(a)) => {
            let out = a.json_out.clone();
            (ingest::run(&Lab::existing(config)?, &a.settings(), &Lines).await?, out)
        }
        Some(BenchCommand::Flink(a)) => {
            let out = a.json_out.clone();
            (flink::run(&Lab::existing(config)?, &a.settings(), &Lines).await?, out)
        }
        Some(BenchCommand::Spark(a)) => {
            let out = a.json_out.clone();
            (spark::run(&Lab::existing(config)?, &a.settings(), &Lines).await?, out)
        }
        Some(BenchCommand::Status(a)) => {
            let out = a.json_out.clone();
            (status::run(&Lab::existing(config)?, &a.settings()).await?, out)
        }
        Some(BenchCommand::Console(a)) => {
            let out = a.json_out.clone();
            let cmd = console_command(&relaunch)?;
            (console::run(&Lab::existing(config)?, &a.settings(), cmd).await?, out)
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
                    &ingest::Settings { days: all.days, baseline: all.baseline.clone(), runs: 3 },
                    &Lines,
                )
                .await,
            );
            eprintln!("== status");
            keep("status", status::run(&lab, &status::Settings { runs: 15 }).await);
            eprintln!("== console");
            let settings = console::Settings { runs: 15, cpu_secs: 30.0 };
            let measured = match console_command(&relaunch) {
                Ok(cmd) => console::run(&lab, &settings, cmd).await,
                Err(e) => Err(e),
            };
            keep("console", measured);
            eprintln!("== flink");
            keep(
                "flink",
                flink::run(
                    &lab,
                    &flink::Settings {
                        days: all.days,
                        live_windows: 3,
                        runs: 3,
                        overrides: vec![],
                    },
                    &Lines,
                )
                .await,
            );
            eprintln!("== spark");
            keep(
                "spark",
                spark::run(
                    &lab,
                    &spark::Settings { days: all.days, partitions: 4, runs: 1 },
                    &Lines,
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
