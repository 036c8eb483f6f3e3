//! `labctl submit spark`, `labctl spark kill`: the export from TimescaleDB to the Delta Lake on
//! Azurite, submitted to the Spark master's REST server in cluster mode.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::model::topology;
use crate::stack::endpoints;
use crate::{
    clients::{
        docker::Runtime,
        lake::BlobClient,
        spark::{self, DriverState, Submission},
    },
    model::{
        config::Config,
        schema::{MACHINE_SENSORS, SENSOR_AGGREGATES},
    },
    ops::{lab::Lab, render::render_template},
    stack::{assets, SPARK_WORKER},
};

pub const JOB_FILE: &str = "spark-jobs/timescale_to_deltalake.py";
pub const TEMPLATE: &str = "templates/spark/export.json.tera";
/// Folder of the lake container where submissions stage their files, one subfolder each. The
/// `_` keeps it out of every Delta table path (`valid_delta_path` refuses such segments).
const STAGING_ROOT: &str = "_labctl/spark";
/// Staged file names. The job's name is the one the driver's work dir gets (Spark's DriverRunner
/// names a downloaded app resource after the URL path's last segment).
const STAGED_JOB: &str = "timescale_to_deltalake.py";
const STAGED_CONFIG: &str = "config.json";
const STAGED_RESULT: &str = "result.json";
/// How much longer than the submit timeout the SAS URLs stay valid: the driver may queue and
/// start late, and writes its result at the very end.
const SAS_MARGIN: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// Compare and export only from this UTC day on (ISO-8601, UTC, e.g. 2026-11-17; a time
    /// is widened to its day's midnight). Default: every day. Exactly the days where the lake
    /// differs from the database are rewritten.
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Compare and export only the days before this instant (exclusive, widened to the next
    /// midnight). Default: every day, today included.
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

/// What one export submission works on, where it differs from `labctl submit spark`: the
/// benchmark exports a scratch table of its own to a scratch Delta path, and its baseline only
/// reads. The default is the lab's tables, written.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// A table shaped like machine_sensors (same time column) to export instead of it.
    pub table: Option<String>,
    /// The Delta table's path below the lake container (default: the table's name).
    pub delta_path: Option<String>,
    /// Read the range over JDBC into the tasks and count it; write and commit nothing.
    pub read_only: bool,
    /// Vacuum the tables instead of exporting: Some(None) keeps Delta's default retention (7
    /// days), Some(Some(h)) keeps h hours.
    pub vacuum: Option<Option<f64>>,
}

/// A PostgreSQL table name labctl may hand to the job: lower-case identifier, at most 63 bytes.
fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

/// A Delta path below the container: `/`-separated segments of letters, digits, `_ . - =`, each
/// starting with a letter or digit (so no `..`, no hidden `_delta_log`-like segment, no empty one).
fn valid_delta_path(path: &str) -> bool {
    path.len() <= 200
        && path.split('/').all(|seg| {
            seg.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '='))
        })
}

/// One entry of the config's `tables`: what to read, where to write, and the numeric columns
/// whose per-day sums (with the row count and the sum of the time column) tell whether a day in
/// the lake equals the database.
fn table_entry(
    table: &crate::model::schema::Table,
    name: &str,
    delta_path: &str,
) -> serde_json::Value {
    use crate::model::schema::ColumnType;
    let sums: Vec<&str> = table
        .columns
        .iter()
        .filter(|c| matches!(c.ty, ColumnType::Double | ColumnType::BigInt | ColumnType::Int))
        .map(|c| c.name)
        .collect();
    serde_json::json!({"name": name, "time_column": table.time_column, "delta_path": delta_path, "checksum_columns": sums})
}

/// The lake's endpoint as the Spark cluster reaches it (not as labctl does): the job's Delta
/// writes and the staged files' SAS URLs use it.
fn cluster_lake_endpoint(lab: &Lab) -> String {
    endpoints::cluster_lake_endpoint(&lab.config)
}

/// The secrets a rendered export config carries.
pub struct JobSecrets {
    pub db_password: String,
    pub lake_key: String,
}

impl JobSecrets {
    /// The lab's own (from its state), or an external service's (from the environment).
    pub fn of(lab: &Lab) -> Result<Self> {
        Ok(Self { db_password: lab.db_password()?, lake_key: endpoints::lake_key(&lab.config)? })
    }

    /// For showing a config (`labctl render spark`) without any secret in it.
    pub fn placeholders() -> Self {
        let p = "<filled in by labctl submit spark>".to_string();
        Self { db_password: p.clone(), lake_key: p }
    }
}

/// `result_url`: where the job writes its result (a SAS URL from `Staging`); None leaves it out.
pub fn render_config(
    lab: &Lab,
    args: &SubmitArgs,
    secrets: &JobSecrets,
    result_url: Option<&str>,
) -> Result<String> {
    render_config_with(lab, args, secrets, &Overrides::default(), result_url)
}

pub fn render_config_with(
    lab: &Lab,
    args: &SubmitArgs,
    secrets: &JobSecrets,
    over: &Overrides,
    result_url: Option<&str>,
) -> Result<String> {
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
    if let Some(t) = &over.table {
        if !valid_table_name(t) {
            bail!("table {t:?} is not a plain lower-case PostgreSQL identifier");
        }
    }
    if let Some(p) = &over.delta_path {
        if !valid_delta_path(p) {
            bail!("Delta path {p:?}: use /-separated segments of letters, digits, _ . - =, each starting with a letter or digit");
        }
        if crate::model::schema::TABLES.iter().any(|t| t.name == p.as_str())
            && over.table.as_deref() != Some(p.as_str())
        {
            bail!("Delta path {p:?} is the lab's own table; an override needs a path of its own");
        }
    }
    if (over.table.is_some() || over.delta_path.is_some()) && args.with_aggregates {
        bail!("a table or Delta path override exports one table; --with-aggregates does not go with it");
    }
    // The job writes through WASB, which needs the account's host name: refused here, before
    // anything is staged, when the cluster's endpoint is path-style.
    endpoints::wasb_authority(&lab.config)?;
    let name = over.table.as_deref().unwrap_or(MACHINE_SENSORS.name);
    let delta_path = over.delta_path.as_deref().unwrap_or(name);
    let mut tables = vec![table_entry(&MACHINE_SENSORS, name, delta_path)];
    if args.with_aggregates {
        tables.push(table_entry(
            &SENSOR_AGGREGATES,
            SENSOR_AGGREGATES.name,
            SENSOR_AGGREGATES.name,
        ));
    }
    let json_or_null = |v: &Option<String>| {
        v.as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .unwrap_or_else(|| "null".into())
    };
    let mut ctx = tera::Context::new();
    ctx.insert("jdbc_url", &endpoints::cluster_jdbc_url(&lab.config));
    ctx.insert("db_user", &topology::database_user(&lab.config));
    ctx.insert("db_password", &secrets.db_password);
    ctx.insert("tables", &tables);
    ctx.insert("from", &json_or_null(&from));
    ctx.insert("to", &json_or_null(&to));
    ctx.insert("partitions", &args.partitions);
    ctx.insert("read_only", &over.read_only);
    let vacuum = match over.vacuum {
        None => serde_json::Value::Null,
        Some(hours) => {
            if let Some(h) = hours {
                if !(h.is_finite() && h >= 0.0) {
                    bail!("--retain-hours must be a number of hours >= 0");
                }
            }
            serde_json::json!({ "retain_hours": hours })
        }
    };
    ctx.insert("vacuum", &vacuum.to_string());
    ctx.insert("lake_account", &topology::lake_account(&lab.config));
    ctx.insert("lake_key", &secrets.lake_key);
    ctx.insert("lake_endpoint", &cluster_lake_endpoint(lab));
    ctx.insert("lake_container", &lab.config.lake.container);
    ctx.insert("result_url", &result_url);
    let text = render_template(TEMPLATE, &ctx)?;
    serde_json::from_str::<serde_json::Value>(&text)
        .with_context(|| format!("{TEMPLATE} did not render valid JSON"))?;
    Ok(text)
}

/// How an export submission is sized, from the workers' free cores and memory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizing {
    /// Executors started for the job; 0 when the driver runs the tasks itself.
    pub executors: u32,
    pub executor_cores: u32,
    pub executor_memory_mb: u64,
    pub driver_cores: u32,
    pub driver_memory_mb: u64,
    /// Tasks that run at once.
    pub task_slots: u32,
}

/// JVM options of the driver and executors: UTC, and the serial collector: for a job of seconds
/// on a few cores G1's concurrent threads cost more than they save (measured on 2 cores, 7-day
/// export with the tasks in the driver: ~27 instead of ~34 CPU seconds, 18 instead of 23 s).
/// The client compiler alone (-XX:TieredStopAtLevel=1) saved CPU too but made the JDBC read
/// slower; not used.
/// `/dev/urandom` for SecureRandom: a fresh container's entropy pool must not stall the JVM.
const JVM_OPTIONS: &str =
    "-Duser.timezone=UTC -XX:+UseSerialGC -Djava.security.egd=file:/dev/urandom";

impl Sizing {
    /// From the workers' free cores (all cores when fewer than 2 are free: the submission then
    /// queues). In cluster mode the driver takes a core of a worker. With one worker the driver
    /// gets all of its cores and runs the tasks itself (Spark's local mode inside the driver,
    /// one task thread per core): on a 2-core worker that is 2 task slots instead of 1 executor
    /// core, and no executor JVM to start. With several workers the driver takes one core and
    /// executors of one core each take the rest.
    pub fn from_master(master: &spark::MasterState) -> Result<Self> {
        let alive: Vec<_> = master
            .workers
            .iter()
            .filter(|w| w.state == crate::clients::spark::WorkerState::Alive)
            .collect();
        let total: u32 = alive.iter().map(|w| w.cores).sum();
        if total < 2 {
            bail!("the Spark cluster has {total} core(s) but the export needs 2; add workers or cores");
        }
        let free: u32 = alive.iter().map(|w| w.cores.saturating_sub(w.coresused)).sum();
        let (cores, memory_mb): (u32, u64) = if free >= 2 {
            (free, alive.iter().map(|w| w.memory.saturating_sub(w.memoryused)).sum())
        } else {
            (total, alive.iter().map(|w| w.memory).sum())
        };
        if alive.len() == 1 {
            let driver_memory_mb = memory_mb.saturating_sub(512).clamp(512, 1536);
            return Ok(Self {
                executors: 0,
                executor_cores: 0,
                executor_memory_mb: 0,
                driver_cores: cores,
                driver_memory_mb,
                task_slots: cores,
            });
        }
        let executors = cores - 1;
        let per_executor = ((memory_mb.saturating_sub(512)) / executors as u64).clamp(512, 1024);
        Ok(Self {
            executors,
            executor_cores: 1,
            executor_memory_mb: per_executor,
            driver_cores: 1,
            driver_memory_mb: 512,
            task_slots: executors,
        })
    }

    pub fn properties(&self) -> Vec<(String, String)> {
        let mut p = vec![
            ("spark.driver.cores".to_string(), self.driver_cores.to_string()),
            ("spark.driver.memory".into(), format!("{}m", self.driver_memory_mb)),
            ("spark.driver.extraJavaOptions".into(), JVM_OPTIONS.into()),
        ];
        if self.executors == 0 {
            // read by the job: run the tasks in the driver with this many threads
            p.push(("spark.labctl.driverTaskThreads".into(), self.task_slots.to_string()));
        } else {
            p.extend([
                ("spark.executor.cores".to_string(), self.executor_cores.to_string()),
                ("spark.cores.max".into(), (self.executors * self.executor_cores).to_string()),
                ("spark.executor.memory".into(), format!("{}m", self.executor_memory_mb)),
                ("spark.executor.extraJavaOptions".into(), JVM_OPTIONS.into()),
            ]);
        }
        p
    }

    /// e.g. "tasks in the driver: 2 cores (2 task slots), 1536 MiB" or
    /// "3 executors x 1 core, 1024 MiB; driver 1 core, 512 MiB"
    pub fn describe(&self) -> String {
        if self.executors == 0 {
            return format!(
                "no executors, tasks in the driver: {} cores ({} task slots), {} MiB",
                self.driver_cores, self.task_slots, self.driver_memory_mb
            );
        }
        format!(
            "{} executor{} x {} core{}, {} MiB; driver {} core, {} MiB",
            self.executors,
            if self.executors == 1 { "" } else { "s" },
            self.executor_cores,
            if self.executor_cores == 1 { "" } else { "s" },
            self.executor_memory_mb,
            self.driver_cores,
            self.driver_memory_mb
        )
    }
}

/// Where one submission's files live in the lake while it runs: `_labctl/spark/<stamp>/` in the
/// lake container, reached by the Spark cluster through SAS URLs (no shared disk, no copy into
/// containers, no account key on the cluster for them), so an external cluster works as well.
pub struct Staging {
    blob: BlobClient,
    container: String,
    /// `_labctl/spark/<stamp>/`
    prefix: String,
    /// The lake's endpoint as the cluster sees it: the host of the SAS URLs.
    endpoint: String,
    ttl: Duration,
    result_url: String,
}

impl Staging {
    /// A new staging folder for a submission waited for at most `timeout`. Touches no storage.
    pub fn new(lab: &Lab, timeout: Duration) -> Result<Self> {
        let blob = lab.blob(Duration::from_secs(30))?;
        // Milliseconds and the process id: two labctl processes submitting at once do not share one.
        let stamp =
            format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"), std::process::id());
        let mut staging = Self {
            blob,
            container: lab.config.lake.container.clone(),
            prefix: format!("{STAGING_ROOT}/{stamp}/"),
            endpoint: cluster_lake_endpoint(lab),
            ttl: timeout + SAS_MARGIN,
            result_url: String::new(),
        };
        // create (first write) and write (replace): the job writes the result once, at its end.
        staging.result_url = staging.url(STAGED_RESULT, "cw")?;
        Ok(staging)
    }

    /// The SAS URL the job PUTs its result to (`result_url` in its config).
    pub fn result_url(&self) -> &str {
        &self.result_url
    }

    fn blob_name(&self, file: &str) -> String {
        format!("{}{file}", self.prefix)
    }

    fn url(&self, file: &str, permissions: &str) -> Result<String> {
        self.blob.sas_url(
            &self.endpoint,
            &self.container,
            &self.blob_name(file),
            permissions,
            self.ttl,
        )
    }

    async fn put(&self, file: &str, bytes: &[u8], content_type: &str) -> Result<()> {
        self.blob
            .put_blob(&self.container, &self.blob_name(file), bytes, content_type)
            .await
            .with_context(|| {
                format!("staging {file} in the lake ({}/{})", self.container, self.prefix)
            })
    }

    /// The job's result.json; None when it wrote none.
    async fn result(&self) -> Result<Option<serde_json::Value>> {
        let name = self.blob_name(STAGED_RESULT);
        let Some(bytes) = self.blob.get_blob_if_exists(&self.container, &name).await? else {
            return Ok(None);
        };
        let v = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}/{name} is not JSON", self.container))?;
        Ok(Some(v))
    }

    /// Removes the whole folder; a failure is a warning (the job deletes its config itself, so
    /// what may stay behind is the job file and the result, no secret).
    async fn remove(&self) {
        if let Err(e) = self.blob.delete_prefix(&self.container, &self.prefix).await {
            eprintln!(
                "warning: cannot remove the export's staged files {}/{}: {e:#}",
                self.container, self.prefix
            );
        }
    }
}

/// A submitted export: enough to wait for it and find its output.
pub struct Started {
    pub id: String,
    pub sizing: Sizing,
    /// When the submission was sent.
    pub submitted: Instant,
    client: spark::Client,
    staging: Staging,
    /// The lab's compose project, to read the driver's output from its workers for detail.
    project: String,
}

/// How a waited-for export ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    /// FINISHED, FAILED, KILLED or ERROR.
    pub state: DriverState,
    /// Submit to the end state, as seen by polling the REST server every 200 ms.
    pub seconds: f64,
    /// The job's result.json: its summary, or `{"error", "traceback_tail"}` when it failed
    /// (Null when it wrote none).
    pub result: serde_json::Value,
    /// The driver's stdout, read from the lab's worker containers only when the export did not
    /// end well and the workers are the lab's own (None otherwise).
    pub output: Option<String>,
}

/// Stages the job and its config (rendered with `staging.result_url()`) in the lake and
/// submits it; the cluster fetches both through SAS URLs.
pub async fn start_export(lab: &Lab, staging: Staging, config_json: &str) -> Result<Started> {
    let job = assets::text(JOB_FILE)
        .ok_or_else(|| anyhow!("{JOB_FILE} is not embedded in this build"))?;
    let client = lab.spark(Duration::from_secs(10))?;
    let master = client.master().await.with_context(|| {
        match topology::context_for(&lab.config, topology::Part::Spark) {
            Some(ext) => format!("the {ext} does not answer"),
            None => "the Spark master is not up; start it with `labctl up`".into(),
        }
    })?;
    if spark::Client::alive_workers(&master) == 0 {
        bail!("no Spark worker is alive; `labctl up` starts them");
    }
    let sizing = Sizing::from_master(&master)?;
    let mut props = sizing.properties();
    props.extend([
        ("spark.jars".to_string(), endpoints::spark_jdbc_jar(&lab.config)),
        ("spark.pyspark.python".into(), endpoints::spark_python(&lab.config)),
        ("spark.sql.session.timeZone".into(), "UTC".into()),
        // The driver's web UI: not published by the lab, and its start costs CPU.
        ("spark.ui.enabled".into(), "false".into()),
    ]);
    let submission = async {
        staging.put(STAGED_JOB, job.as_bytes(), "text/x-python").await?;
        // Read, then deleted by the job as soon as it has it (it holds the database password).
        // With --no-wait nobody else removes the folder: that deletion is what keeps the secret
        // from staying in the lake.
        staging.put(STAGED_CONFIG, config_json.as_bytes(), "application/json").await?;
        let submission = Submission {
            app_name: format!("{}: timescale to delta", lab.stack.project),
            app_resource: staging.url(STAGED_JOB, "r")?,
            args: vec![format!("@{}", staging.url(STAGED_CONFIG, "rd")?)],
            master_url: endpoints::spark_master_url(&lab.config),
            properties: props,
        };
        let submitted = Instant::now();
        client.create(&submission).await.map(|id| (id, submitted))
    }
    .await;
    match submission {
        Ok((id, submitted)) => Ok(Started {
            id,
            sizing,
            submitted,
            client,
            staging,
            project: lab.stack.project.clone(),
        }),
        Err(e) => {
            staging.remove().await;
            Err(e)
        }
    }
}

/// Polls a submission to its end (killing it after `timeout`), collects its result and removes
/// its staged files.
pub async fn wait_export(
    started: &Started,
    timeout: Duration,
    pb: &indicatif::ProgressBar,
) -> Result<Outcome> {
    let outcome = poll_export(started, timeout, pb).await;
    started.staging.remove().await;
    outcome
}

async fn poll_export(
    started: &Started,
    timeout: Duration,
    pb: &indicatif::ProgressBar,
) -> Result<Outcome> {
    let id = &started.id;
    let status = loop {
        let s = started.client.status(id).await?;
        pb.set_message(format!("{id}: {}", s.driver_state.map_or("?", DriverState::as_str)));
        if s.finished() {
            break s;
        }
        if started.submitted.elapsed() > timeout {
            let _ = started.client.kill(id).await;
            bail!("the export did not finish within {} s and was killed ({id})", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = started.submitted.elapsed().as_secs_f64();
    let state = status.driver_state.unwrap_or(DriverState::Unknown);
    let result = started.staging.result().await?;
    let output = match (&result, state) {
        (Some(_), DriverState::Finished) => None,
        _ => driver_output(&started.project, id).await,
    };
    if state == DriverState::Finished && result.is_none() {
        let tail =
            output.as_deref().map(|o| format!(":\n{}", last_lines(o, 15))).unwrap_or_default();
        bail!(
            "the export {id} FINISHED but wrote no result to {}/{}{STAGED_RESULT}{tail}",
            started.staging.container,
            started.staging.prefix
        );
    }
    Ok(Outcome {
        id: id.clone(),
        state,
        seconds,
        result: result.unwrap_or(serde_json::Value::Null),
        output,
    })
}

impl Outcome {
    /// An error unless the export FINISHED: with the job's own error and traceback from its
    /// result, else the driver output's last lines when they could be read.
    pub fn require_finished(&self) -> Result<()> {
        if self.state != DriverState::Finished {
            let detail = match self.result["error"].as_str() {
                Some(err) => {
                    format!("{err}\n{}", self.result["traceback_tail"].as_str().unwrap_or(""))
                }
                None => {
                    self.output.as_deref().map(|o| last_lines(o, 15)).unwrap_or_else(|| {
                        "(no result from the job, driver output not found)".into()
                    })
                }
            };
            bail!(
                "the export {} ended {} after {:.1} s:\n{}",
                self.id,
                self.state,
                self.seconds,
                detail.trim_end()
            );
        }
        Ok(())
    }
}

pub async fn submit(config: Config, args: SubmitArgs) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let staging = Staging::new(&lab, Duration::from_secs(args.timeout))?;
    let config_json =
        render_config(&lab, &args, &JobSecrets::of(&lab)?, Some(staging.result_url()))?;
    if args.dry_run {
        eprintln!("config renders and validates; nothing submitted");
        return Ok(ExitCode::SUCCESS);
    }
    let started = start_export(&lab, staging, &config_json).await?;
    let id = started.id.clone();
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
    let outcome = wait_export(&started, Duration::from_secs(args.timeout), &pb).await;
    pb.finish_and_clear();
    let outcome = outcome?;
    outcome.require_finished()?;
    let (state, secs, result) = (&outcome.state, outcome.seconds, &outcome.result);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"submission_id": id, "state": state, "seconds": secs, "sizing": started.sizing, "result": result})
        );
    } else {
        eprintln!("export {id} FINISHED in {secs:.1} s ({}): {result}", started.sizing.describe());
    }
    Ok(ExitCode::SUCCESS)
}

/// The driver's stdout (PythonRunner merges Python's stderr into it), from whichever of the lab's
/// workers ran it; None when Docker or the lab's workers are not there (an external cluster).
async fn driver_output(project: &str, id: &str) -> Option<String> {
    let rt = Runtime::connect().await.ok()?;
    let containers = rt.list_containers(project).await.ok()?;
    for c in containers.iter().filter(|c| c.service == SPARK_WORKER) {
        if let Ok(bytes) = rt.read_file(&c.name, &format!("/var/lib/spark/work/{id}/stdout")).await
        {
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
        assert_eq!(
            parse_instant("--from", "2026-11-17T06:30:00").unwrap(),
            "2026-11-17T06:30:00.000Z"
        );
        assert_eq!(
            parse_instant("--from", "2026-11-17T06:30:00+01:00").unwrap(),
            "2026-11-17T05:30:00.000Z"
        );
        assert!(parse_instant("--from", "yesterday").unwrap_err().to_string().contains("--from"));
        assert!(parse_instant("--to", "2026-13-01").is_err());
    }

    #[test]
    fn override_names() {
        assert!(valid_table_name("bench_spark_185055"));
        for bad in ["", "Machine", "1abc", "a-b", "a.b", "a\"b", &"x".repeat(64)] {
            assert!(!valid_table_name(bad), "{bad:?}");
        }
        assert!(valid_delta_path("bench-spark-1/export-0"));
        assert!(valid_delta_path("a/year=2026"));
        for bad in ["", "/a", "a/", "a//b", "../a", "a/../b", "a/_delta_log", "a b", "a/.x"] {
            assert!(!valid_delta_path(bad), "{bad:?}");
        }
    }

    fn master(workers: &[(u32, u32, u64)]) -> spark::MasterState {
        spark::MasterState {
            url: String::new(),
            status: "ALIVE".into(),
            workers: workers
                .iter()
                .enumerate()
                .map(|(i, &(cores, coresused, memory))| spark::Worker {
                    id: format!("w{i}"),
                    host: String::new(),
                    state: "ALIVE".into(),
                    cores,
                    coresused,
                    memory,
                    memoryused: 0,
                })
                .collect(),
            cores: 0,
            coresused: 0,
            activedrivers: vec![],
            completeddrivers: vec![],
        }
    }

    #[test]
    fn sizing() {
        // One 2-core worker: the driver gets both cores and runs the tasks itself.
        let s = Sizing::from_master(&master(&[(2, 0, 2048)])).unwrap();
        assert_eq!(
            (s.executors, s.driver_cores, s.task_slots, s.driver_memory_mb),
            (0, 2, 2, 1536)
        );
        let props = s.properties();
        assert!(props.contains(&("spark.labctl.driverTaskThreads".into(), "2".into())));
        assert!(!props.iter().any(|(k, _)| k == "spark.cores.max"));
        // Two workers: the driver takes one core, executors of one core the rest.
        let s = Sizing::from_master(&master(&[(2, 0, 2048), (2, 0, 2048)])).unwrap();
        assert_eq!((s.executors, s.driver_cores, s.task_slots), (3, 1, 3));
        assert!(s.properties().contains(&("spark.cores.max".into(), "3".into())));
        // Busy cores are not counted while 2 are free ...
        let s = Sizing::from_master(&master(&[(2, 1, 2048), (2, 0, 2048)])).unwrap();
        assert_eq!(s.executors, 2);
        // ... and when fewer are free, the submission is sized for the cluster and queues.
        let s = Sizing::from_master(&master(&[(2, 2, 2048)])).unwrap();
        assert_eq!(s.task_slots, 2);
        assert!(Sizing::from_master(&master(&[(1, 0, 2048)])).is_err());
    }
}
