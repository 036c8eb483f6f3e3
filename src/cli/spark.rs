//! `labctl submit spark`, `labctl spark kill`: the export from TimescaleDB to the Delta Lake on
//! Azurite, submitted to the Spark master's REST server in cluster mode.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    assets,
    config::Config,
    docker::Runtime,
    lab::Lab,
    lake::{DEV_ACCOUNT, DEV_KEY},
    render::render_template,
    schema::{MACHINE_SENSORS, SENSOR_AGGREGATES},
    spark::{self, Submission},
    stack::{AZURITE, AZURITE_PORT, DATABASE, DATABASE_PORT, SPARK_MASTER, SPARK_MASTER_PORT, SPARK_WORKER},
};

pub const JOB_FILE: &str = "spark-jobs/timescale_to_deltalake.py";
pub const TEMPLATE: &str = "templates/spark/export.json.tera";
/// Where job files live in the Spark containers.
const JOB_DIR: &str = "/opt/labctl/jobs";
/// The spark user of the image (uid and gid): the config, which holds the database password,
/// is readable by it alone.
const SPARK_UID: u64 = 185;
const RESULT_PREFIX: &str = "LABCTL_RESULT ";

#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// Start of the range (ISO-8601, UTC), e.g. 2026-11-17 or 2026-11-17T06:00:00. Default:
    /// after the newest reading already in the lake.
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// End of the range (exclusive; default: now).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Export sensor_aggregates too (to its own Delta table).
    #[arg(long)]
    pub with_aggregates: bool,
    /// Parallel JDBC reads (partitions of the time range).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub partitions: u32,
    /// Return after submitting instead of waiting for the result.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the driver to finish.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Render and check the config; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum SparkCommand {
    /// Kill a running driver (submission id from `labctl submit spark --no-wait`).
    Kill { id: String },
    /// Status of a submission.
    Status { id: String },
}

/// Accepts `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS[.fff]` and RFC 3339 with a zone; returns RFC 3339 UTC.
pub fn parse_instant(flag: &str, s: &str) -> Result<String> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
    let t = if let Ok(d) = chrono::DateTime::parse_from_rfc3339(s) {
        d.with_timezone(&Utc)
    } else if let Ok(n) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        Utc.from_utc_datetime(&n)
    } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
    } else {
        bail!("{flag} {s:?} is not a time: use e.g. 2026-11-17, 2026-11-17T06:00:00 or 2026-11-17T06:00:00Z");
    };
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

pub fn render_config(lab: &Lab, args: &SubmitArgs, password: &str) -> Result<String> {
    let from = args.from.as_deref().map(|s| parse_instant("--from", s)).transpose()?;
    let to = args.to.as_deref().map(|s| parse_instant("--to", s)).transpose()?;
    if let (Some(f), Some(t)) = (&from, &to) {
        if f >= t {
            bail!("the range is empty or reversed: --from {f} is not before --to {t}");
        }
    }
    if !(1..=64).contains(&args.partitions) {
        bail!("--partitions must be between 1 and 64");
    }
    let mut tables = vec![serde_json::json!({"name": MACHINE_SENSORS.name, "time_column": MACHINE_SENSORS.time_column, "delta_path": MACHINE_SENSORS.name})];
    if args.with_aggregates {
        tables.push(serde_json::json!({"name": SENSOR_AGGREGATES.name, "time_column": SENSOR_AGGREGATES.time_column, "delta_path": SENSOR_AGGREGATES.name}));
    }
    let json_or_null = |v: &Option<String>| v.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default()).unwrap_or_else(|| "null".into());
    let mut ctx = tera::Context::new();
    ctx.insert("jdbc_url", &format!("jdbc:postgresql://{DATABASE}:{DATABASE_PORT}/{}", lab.config.database.name));
    ctx.insert("db_user", &lab.config.database.user);
    ctx.insert("db_password", password);
    ctx.insert("tables", &tables);
    ctx.insert("from", &json_or_null(&from));
    ctx.insert("to", &json_or_null(&to));
    ctx.insert("partitions", &args.partitions);
    ctx.insert("lake_account", DEV_ACCOUNT);
    ctx.insert("lake_key", DEV_KEY);
    ctx.insert("lake_endpoint", &format!("http://{AZURITE}:{AZURITE_PORT}/{DEV_ACCOUNT}"));
    ctx.insert("lake_container", &lab.config.lake.container);
    let text = render_template(TEMPLATE, &ctx)?;
    serde_json::from_str::<serde_json::Value>(&text).with_context(|| format!("{TEMPLATE} did not render valid JSON"))?;
    Ok(text)
}

/// Executors from the workers' free cores: in cluster mode the driver takes one core.
fn sizing(master: &spark::MasterState) -> Result<Vec<(String, String)>> {
    let alive: Vec<_> = master.workers.iter().filter(|w| w.state == "ALIVE").collect();
    let cores: u32 = alive.iter().map(|w| w.cores).sum();
    if cores < 2 {
        bail!("the Spark cluster has {cores} core(s) but the export needs 2 (one for the driver, one for an executor); add workers or cores");
    }
    let executors = cores - 1;
    let memory_mb: u64 = alive.iter().map(|w| w.memory).sum();
    let per_executor = ((memory_mb.saturating_sub(512)) / executors as u64).clamp(512, 1024);
    Ok(vec![
        ("spark.driver.cores".into(), "1".into()),
        ("spark.driver.memory".into(), "512m".into()),
        ("spark.executor.cores".into(), "1".into()),
        ("spark.cores.max".into(), executors.to_string()),
        ("spark.executor.memory".into(), format!("{per_executor}m")),
    ])
}

pub async fn submit(config: Config, args: SubmitArgs) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let config_json = render_config(&lab, &args, &lab.state.db_password)?;
    if args.dry_run {
        eprintln!("config renders and validates; nothing submitted");
        return Ok(ExitCode::SUCCESS);
    }
    let job = assets::text(JOB_FILE).ok_or_else(|| anyhow!("{JOB_FILE} is not embedded in this build"))?;
    let client = lab.spark(Duration::from_secs(10))?;
    let master = client.master().await.context("the Spark master is not up; start it with `labctl up`")?;
    let mut props = sizing(&master)?;
    props.extend([
        ("spark.jars".to_string(), "file:/usr/share/java/postgresql.jar".to_string()),
        ("spark.pyspark.python".into(), "/opt/spark-venv/bin/python".into()),
        ("spark.driver.extraJavaOptions".into(), "-Duser.timezone=UTC".into()),
        ("spark.executor.extraJavaOptions".into(), "-Duser.timezone=UTC".into()),
        ("spark.sql.session.timeZone".into(), "UTC".into()),
    ]);

    // The job and its config go into every Spark container; the driver runs on any worker.
    let rt = Runtime::connect().await?;
    let containers: Vec<_> = rt
        .list_containers(&lab.stack.project)
        .await?
        .into_iter()
        .filter(|c| (c.service == SPARK_WORKER || c.service == SPARK_MASTER) && c.running())
        .collect();
    if !containers.iter().any(|c| c.service == SPARK_WORKER) {
        bail!("no Spark worker is running; `labctl up` starts them");
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3f");
    let config_path = format!("{JOB_DIR}/export-{stamp}.json");
    let job_path = format!("{JOB_DIR}/timescale_to_deltalake.py");
    for c in &containers {
        rt.upload_file_owned(&c.name, &job_path, job.as_bytes(), 0o644, SPARK_UID).await?;
        rt.upload_file_owned(&c.name, &config_path, config_json.as_bytes(), 0o600, SPARK_UID).await?;
    }
    let submission = Submission {
        app_name: format!("{}: timescale to delta", lab.stack.project),
        py_file: job_path,
        args: vec![format!("@{config_path}")],
        master_url: format!("spark://{SPARK_MASTER}:{SPARK_MASTER_PORT}"),
        properties: props,
    };
    let t0 = Instant::now();
    let id = client.create(&submission).await?;
    if args.no_wait {
        if args.json {
            println!("{}", serde_json::json!({"submission_id": id}));
        } else {
            eprintln!("submitted {id}; follow it with `labctl spark status {id}`");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.enable_steady_tick(Duration::from_millis(120));
    let status = loop {
        let s = client.status(&id).await?;
        pb.set_message(format!("{id}: {}", s.driver_state.as_deref().unwrap_or("?")));
        if s.finished() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(args.timeout) {
            pb.finish_and_clear();
            let _ = client.kill(&id).await;
            bail!("the export did not finish within {} s and was killed ({id})", args.timeout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let output = driver_output(&rt, &containers, &id).await;
    let state = status.driver_state.clone().unwrap_or_default();
    if state != "FINISHED" {
        let tail = output.as_deref().map(|o| last_lines(o, 15)).unwrap_or_else(|| "(driver output not found)".into());
        bail!("the export {id} ended {state} after {secs:.1} s:\n{tail}");
    }
    let result = output
        .as_deref()
        .and_then(|o| o.lines().rev().find_map(|l| l.strip_prefix(RESULT_PREFIX)))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or(serde_json::Value::Null);
    if args.json {
        println!("{}", serde_json::json!({"submission_id": id, "state": state, "seconds": secs, "result": result}));
    } else {
        eprintln!("export {id} FINISHED in {secs:.1} s: {result}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The driver's stdout (PythonRunner merges Python's stderr into it), from whichever worker ran it.
async fn driver_output(rt: &Runtime, containers: &[crate::docker::ContainerInfo], id: &str) -> Option<String> {
    for c in containers.iter().filter(|c| c.service == SPARK_WORKER) {
        if let Ok(bytes) = rt.read_file(&c.name, &format!("/var/lib/spark/work/{id}/stdout")).await {
            return Some(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    None
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn command(config: Config, cmd: SparkCommand) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let client = lab.spark(Duration::from_secs(10))?;
    match cmd {
        SparkCommand::Kill { id } => {
            let r = client.kill(&id).await?;
            if !r.success {
                bail!("Spark did not kill {id}: {}", r.message.unwrap_or_default());
            }
            eprintln!("killed {id}");
        }
        SparkCommand::Status { id } => {
            let r = client.status(&id).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants() {
        assert_eq!(parse_instant("--from", "2026-11-17").unwrap(), "2026-11-17T00:00:00.000Z");
        assert_eq!(parse_instant("--from", "2026-11-17T06:30:00").unwrap(), "2026-11-17T06:30:00.000Z");
        assert_eq!(parse_instant("--from", "2026-11-17T06:30:00+01:00").unwrap(), "2026-11-17T05:30:00.000Z");
        assert!(parse_instant("--from", "yesterday").unwrap_err().to_string().contains("--from"));
        assert!(parse_instant("--to", "2026-13-01").is_err());
    }
}
