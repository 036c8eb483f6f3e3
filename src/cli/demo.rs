//! `labctl demo`: the whole lab in one command, as a new user runs it first: stack up, ingest
//! (backfill, then live), the Flink job, wait until the backfill is aggregated, the Spark
//! export, and a summary of what landed where, with the time each step took.
//!
//! The steps run as `labctl <step> --json` child processes of this very binary: the demo does
//! exactly what a user typing the commands would, and each step's own progress and errors
//! reach the terminal unchanged.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{finish, spinner};
use crate::{
    clients::docker::Runtime,
    model::{config::Config, schema},
    ops::{flink::job::Target, lab::Lab},
    stack::INGEST,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the summary as one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the backfill to be aggregated by Flink.
    #[arg(long, default_value_t = 1200, value_name = "SECS")]
    timeout: u64,
    /// Stop after the Flink step; no Spark export.
    #[arg(long)]
    no_export: bool,
}

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
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
}

/// `labctl verify`'s verdict, hop by hop.
#[derive(Debug, Serialize)]
pub struct VerifyFigures {
    pub ok: bool,
    pub hops: Vec<(String, bool, String)>,
}

/// Runs `labctl <args> --json` with the same config and project; its stderr (progress, errors)
/// goes to ours, its stdout is the step's JSON result.
async fn step(globals: &[String], args: &[&str]) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("finding the labctl binary")?;
    let out = tokio::process::Command::new(exe)
        .args(globals)
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running labctl {}", args.join(" ")))?;
    if !out.status.success() {
        // A step killed by a signal prints nothing itself: say so, with what it wrote on stdout.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tail = last_lines(&stdout, 5);
        bail!(
            "`labctl {}` failed ({}; its error is above{}); fix that and run `labctl demo` again: finished steps are kept",
            args.join(" "),
            out.status,
            if tail.is_empty() { String::new() } else { format!("; its output ended with: {tail}") }
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last =
        text.lines().rev().find(|l| l.trim_start().starts_with('{')).map(str::trim).unwrap_or("");
    // `up --json` pretty-prints: fall back to the whole output.
    serde_json::from_str(last)
        .or_else(|_| serde_json::from_str(&text))
        .with_context(|| format!("`labctl {}` printed no JSON result:\n{text}", args.join(" ")))
}

pub async fn run(config: Config, config_file: Option<PathBuf>, args: Args) -> Result<ExitCode> {
    if !config.ingest.enabled {
        bail!("the demo needs the generator, but ingest.enabled = false in the config; enable it (or set LABCTL_INGEST_ENABLED=true)");
    }
    let started = Instant::now();
    let mut globals = vec!["--project".to_string(), config.project.clone()];
    if let Some(f) = config_file {
        globals.extend(["--config".to_string(), f.display().to_string()]);
    }
    let mut steps: Vec<(String, f64)> = Vec::new();
    let mut timed = |name: &str, t: Instant| {
        let secs = t.elapsed().as_secs_f64();
        eprintln!("== {name}: {secs:.1} s");
        steps.push((name.to_string(), secs));
    };

    eprintln!(
        "== 1/5 stack: build what is missing, start everything, wait until each service works"
    );
    let t = Instant::now();
    step(&globals, &["up"]).await?;
    timed("up", t);

    let lab = Lab::existing(config)?;
    let flink = lab.flink(Duration::from_secs(10))?;
    let target = Target::lab(&lab.config);
    eprintln!("== 2/5 Flink: the streaming job");
    let t = Instant::now();
    let running =
        flink.jobs().await?.into_iter().find(|j| {
            j.name == target.job_name && j.state == crate::clients::flink::JobState::Running
        });
    let job_id = match running {
        Some(j) => {
            eprintln!("the lab's job {} is already running; kept", j.jid);
            j.jid
        }
        None => {
            let r = step(&globals, &["submit", "flink"]).await?;
            r["job_id"].as_str().context("`submit flink` reported no job id")?.to_string()
        }
    };
    timed("submit flink", t);

    eprintln!("== 3/5 wait until the backfill is in both tables");
    let t = Instant::now();
    wait_aggregated(&lab, Duration::from_secs(args.timeout)).await?;
    timed("backfill aggregated", t);

    let mut export = None;
    if !args.no_export {
        eprintln!("== 4/5 Spark: export TimescaleDB to the Delta Lake");
        let t = Instant::now();
        export = Some(step(&globals, &["submit", "spark"]).await?);
        timed("submit spark", t);
    }
    let mut verified = None;
    if export.is_some() {
        eprintln!("== 5/5 verify: topic, hypertables and lake compared reading by reading");
        let t = Instant::now();
        let report = crate::ops::verify::run(&lab, Duration::from_secs(30)).await?;
        timed("verify", t);
        verified = Some(VerifyFigures {
            ok: report.ok,
            hops: report
                .hops
                .iter()
                .map(|h| (h.name.to_string(), h.ok, h.summary.clone()))
                .collect(),
        });
        if !report.ok {
            print!("{}", super::verify::render(&report, true, false));
        }
    }

    let mut summary = summarize(&lab, job_id, export.as_ref(), steps, started).await?;
    summary.verify = verified;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if summary.verify.as_ref().is_some_and(|v| !v.ok) {
        eprintln!("error: `labctl verify` found readings lost or doubled (see above); `labctl verify` shows it again");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Done when the generator is live (its backfill delivered), every reading that was in the
/// topic then is a raw row, and the window of the minute the backfill ended is written.
async fn wait_aggregated(lab: &Lab, timeout: Duration) -> Result<()> {
    let rt = Runtime::connect().await?;
    let db = lab.database()?.connect(Duration::from_secs(10)).await?;
    let broker = lab.broker()?;
    let ingest = lab.stack.container_name(INGEST, 1);
    let multi = indicatif::MultiProgress::new();
    let pb = spinner(&multi, "aggregating");
    let start = Instant::now();
    let mut backfilled: Option<i64> = None;
    let mut minute_end: Option<chrono::DateTime<chrono::Utc>> = None;
    loop {
        if start.elapsed() > timeout {
            bail!("the backfill was not aggregated within {timeout:?}; see `labctl status` and `labctl logs flink-taskmanager` (raise --timeout on a slow machine)");
        }
        let raw: i64 = db.query_one("SELECT count(*) FROM machine_sensors", &[]).await?.get(0);
        if backfilled.is_none() {
            // The generator logs `ingest: live` once its backfill is delivered.
            let logs = rt.tail_logs(&ingest, 200).await.unwrap_or_default();
            if logs.contains("ingest: live") {
                let n: i64 = broker
                    .offsets(&lab.config.broker.topic, Duration::from_secs(10))
                    .await?
                    .iter()
                    .map(|p| p.high)
                    .sum();
                backfilled = Some(n);
            }
        }
        match backfilled {
            None => pb.set_message(format!(
                "generator backfilling; {} raw rows so far",
                super::status::count(raw)
            )),
            Some(n) if raw < n => pb.set_message(format!(
                "{} of {} backfilled readings are raw rows",
                super::status::count(raw),
                super::status::count(n)
            )),
            Some(_) => {
                let end = *minute_end.get_or_insert_with(|| {
                    let now = chrono::Utc::now();
                    now - chrono::Duration::seconds(now.timestamp() % 60)
                });
                let newest: Option<chrono::DateTime<chrono::Utc>> = db
                    .query_one("SELECT max(window_end) FROM sensor_aggregates", &[])
                    .await?
                    .get(0);
                if newest.is_some_and(|w| w >= end) {
                    finish(
                        &pb,
                        format!(
                            "{} raw rows; windows up to {}",
                            super::status::count(raw),
                            end.format("%H:%M UTC")
                        ),
                    );
                    return Ok(());
                }
                pb.set_message(format!(
                    "raw rows complete; waiting for the window ending {} (watermark)",
                    end.format("%H:%M")
                ));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

async fn summarize(
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
    for (name, key) in [("flink_ui", "flink_ui"), ("spark_ui", "spark_ui")] {
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

fn print_summary(s: &Summary) {
    use super::status::count;
    println!("\nlab `{}` is running end to end ({:.0} s)", s.project, s.total_secs);
    println!(
        "  readings produced      {:>12}  (topic end offsets; the generator goes on live)",
        count(s.readings_produced)
    );
    println!("  machine_sensors rows   {:>12}", count(s.machine_sensors_rows));
    println!(
        "  sensor_aggregates rows {:>12}  (1-minute windows; {} readings aggregated)",
        count(s.sensor_aggregates_rows),
        count(s.readings_in_windows)
    );
    println!("  Flink job              {}", s.flink_job_id);
    if let Some(d) = &s.delta {
        println!(
            "  Delta table {}: version {}, {} rows",
            d.table,
            d.version.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            d.rows.map(|r| count(r as i64)).unwrap_or_else(|| "?".into())
        );
        for (day, rows) in &d.rows_per_day {
            println!("    {day}  {:>10}", count(*rows as i64));
        }
    }
    if let Some(v) = &s.verify {
        println!(
            "  verify                 {}",
            if v.ok { "every hop agrees" } else { "HOPS DISAGREE" }
        );
        for (name, ok, summary) in &v.hops {
            println!("    {} {name}: {summary}", if *ok { "ok" } else { "✗ " });
        }
    }
    for (name, url) in &s.urls {
        println!("  {name:<22} {url}");
    }
    println!("  steps:");
    for (name, secs) in &s.steps {
        println!("    {name:<22} {secs:>7.1} s");
    }
    println!("next: `labctl status`, `labctl plot`, `labctl logs ingest -f`; `labctl down` stops it (data stays)");
}
