//! `labctl demo`: the whole lab in one command, as a new user runs it first: stack up, ingest
//! (backfill, then live), the Flink job, wait until the backfill is aggregated, the Spark
//! export, and a summary of what landed where, with the time each step took.
//!
//! The steps run as `labctl <step> --json` child processes of this very binary: the demo does
//! exactly what a user typing the commands would, and each step's own progress and errors
//! reach the terminal unchanged.

use std::{
    path::PathBuf,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::spinner;
use crate::{
    model::config::Config,
    ops::{
        demo::{self, Summary, VerifyFigures},
        flink::job::Target,
        lab::Lab,
    },
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
    let multi = indicatif::MultiProgress::new();
    let pb = spinner(&multi, "aggregating");
    demo::wait_aggregated(&lab, Duration::from_secs(args.timeout), &pb).await?;
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

    let mut summary = demo::summarize(&lab, job_id, export.as_ref(), steps, started).await?;
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

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
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
