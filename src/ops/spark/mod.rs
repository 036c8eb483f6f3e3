//! The export from TimescaleDB to the Delta Lake: its config rendered and checked, the job and
//! config staged in the lake (`staging`), the submission sized to the workers (`sizing`) and
//! sent to the Spark master's REST server in cluster mode, then followed to its end.

pub mod history;
mod sizing;
mod staging;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub use sizing::Sizing;
pub use staging::Staging;
use staging::{STAGED_CONFIG, STAGED_JOB, STAGED_RESULT};

use crate::{
    clients::{
        docker::Runtime,
        spark::{self, DriverState, Submission},
    },
    model::{
        schema::{MACHINE_SENSORS, SENSOR_AGGREGATES},
        topology::{self, DbRole},
    },
    ops::{lab::Lab, render::render_template},
    progress::Progress,
    stack::{assets, endpoints, SPARK_WORKER},
    wait::{poll_until, Check, Every, Waited},
};

/// What to export: the range of UTC days compared (`None`: open), whether the aggregates go
/// too, and how many JDBC reads run in parallel.
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    pub from: Option<String>,
    pub to: Option<String>,
    pub with_aggregates: bool,
    pub partitions: u32,
}

pub const JOB_FILE: &str = "spark-jobs/timescale_to_deltalake.py";

pub const TEMPLATE: &str = "templates/spark/export.json.tera";

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
    /// The driver loads every class from the jars instead of mapping the image's class-data
    /// archive: the benchmark's baseline for the archive.
    pub without_driver_archive: bool,
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
pub(super) fn cluster_lake_endpoint(lab: &Lab) -> String {
    endpoints::cluster_lake_endpoint(&lab.config)
}

/// The secrets a rendered export config carries.
pub struct JobSecrets {
    pub db_password: String,
    pub lake_key: String,
}

impl JobSecrets {
    /// The lab's own (from its state: the database's read-only role), or an external service's
    /// (from the environment).
    pub fn of(lab: &Lab) -> Result<Self> {
        Ok(Self {
            db_password: lab.db_credentials(DbRole::Reader)?.password,
            lake_key: endpoints::lake_key(&lab.config)?,
        })
    }

    /// For showing a config (`labctl render spark`) without any secret in it.
    pub fn placeholders() -> Self {
        let p = "<filled in by labctl submit spark>".to_string();
        Self { db_password: p.clone(), lake_key: p }
    }
}

/// The job's config as JSON, checked: `result_url` is where the job writes its result (a SAS URL
/// from `Staging`); None leaves it out.
pub fn render_config(
    lab: &Lab,
    args: &ExportRequest,
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
    ctx.insert("db_user", &endpoints::database_user_for(&lab.config, DbRole::Reader));
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
/// `driver_archive`: the driver maps the Spark image's class-data archive (false only for the
/// benchmark's baseline).
pub async fn start_export(
    lab: &Lab,
    staging: Staging,
    config_json: &str,
    driver_archive: bool,
) -> Result<Started> {
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
    let mut props = sizing.properties(driver_archive);
    props.extend([
        ("spark.jars".to_string(), endpoints::spark_jdbc_jar(&lab.config)),
        ("spark.pyspark.python".into(), endpoints::spark_python(&lab.config)),
        ("spark.sql.session.timeZone".into(), "UTC".into()),
        // The driver's web UI: not published by the lab, and its start costs CPU.
        ("spark.ui.enabled".into(), "false".into()),
    ]);
    match staging.sweep_leftovers(!master.activedrivers.is_empty()).await {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!("removed staged files of earlier exports: {}", removed.join(", "))
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot sweep earlier exports' staged files: {e:#}"),
    }
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

/// Renders, stages and submits one job, then follows it to its end; the outcome is an error
/// unless the driver FINISHED.
pub async fn run(
    lab: &Lab,
    req: &ExportRequest,
    over: &Overrides,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<(Started, Outcome)> {
    let staging = Staging::new(lab, timeout)?;
    let config = render_config(lab, req, &JobSecrets::of(lab)?, over, Some(staging.result_url()))?;
    let started = start_export(lab, staging, &config, !over.without_driver_archive).await?;
    let outcome = wait_export(&started, timeout, progress).await?;
    outcome.require_finished()?;
    Ok((started, outcome))
}

/// Polls a submission to its end (killing it after `timeout`), collects its result and removes
/// its staged files.
pub async fn wait_export(
    started: &Started,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let outcome = poll_export(started, timeout, progress).await;
    started.staging.remove().await;
    if let Ok(o) = &outcome {
        // The history is for people and the console; an export that ran is not failed for it.
        if let Err(e) =
            history::record(&started.project, &history::ExportRecord::of(o, chrono::Utc::now()))
        {
            tracing::warn!("cannot record the export in labctl's history: {e:#}");
        }
    }
    outcome
}

async fn poll_export(
    started: &Started,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let id = &started.id;
    // The deadline counts from the submission, not from the first look.
    let left = timeout.saturating_sub(started.submitted.elapsed());
    let waited = poll_until(
        Every::millis(200).within(left),
        || async {
            let s = started.client.status(id).await?;
            let state = s.driver_state.map_or("?", DriverState::as_str);
            progress.set(&format!("{id}: {state}"));
            Ok(if s.finished() { Check::Ready(s) } else { Check::NotYet(state.to_string()) })
        },
        |_| {},
    )
    .await?;
    let status = match waited {
        Waited::Ready(s) => s,
        Waited::TimedOut { .. } => {
            let _ = started.client.kill(id).await;
            bail!("the export did not finish within {} s and was killed ({id})", timeout.as_secs());
        }
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
            "the export {id} FINISHED but wrote no result to {}{tail}",
            started.staging.describe(STAGED_RESULT)
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
}
