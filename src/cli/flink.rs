//! `labctl submit flink`, `labctl flink jobs|cancel`: the streaming job on the lab's Flink
//! session cluster, through the SQL-runner jar and Flink's REST API.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};

use crate::{
    config::Config,
    flink::{
        self,
        job::{self, JobSettings, RUNNER_ENTRY_CLASS, RUNNER_JAR_NAME},
        SubmitError,
    },
    lab::Lab,
    schema,
};

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Render and check the job locally; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Cancel the running job of this lab first, then submit.
    #[arg(long)]
    pub replace: bool,
    /// Seconds to wait for the job and all its tasks to be RUNNING.
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,
    /// Print Flink's full error text, not just the cause.
    #[arg(long)]
    pub verbose: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Submit this SQL script through the runner instead of the lab's job (SET, DDL, INSERTs).
    #[arg(long, value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum FlinkCommand {
    /// The cluster's jobs.
    Jobs {
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job (default: this lab's running streaming job).
    Cancel {
        /// Job id (see `labctl flink jobs`).
        id: Option<String>,
    },
}

const ACTIVE: &[&str] = &["CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING", "FAILING", "CANCELLING"];

pub fn render(config: &Config, lab_state: Option<&crate::state::State>) -> Result<String> {
    let fallback;
    let state = match lab_state {
        Some(s) => s,
        None => {
            fallback = crate::state::State { db_password: "<filled in by labctl submit flink>".into(), ports: config.ports.clone() };
            &fallback
        }
    };
    job::render(config, state, &JobSettings::for_lab(config))
}

/// Local checks: statement kinds, one job, sink tables exist in the schema.
fn validate(statements: &[String]) -> Result<()> {
    let inserts: Vec<_> = statements.iter().filter(|s| job::kind(s) == "INSERT").collect();
    if inserts.is_empty() {
        bail!("the rendered job has no INSERT statement, so it would start no job");
    }
    for s in &inserts {
        let target = s.split_whitespace().nth(2).unwrap_or("");
        if !schema::TABLES.iter().any(|t| t.name == target) {
            bail!("the job writes to `{target}`, which is not a table of init-db.sql");
        }
    }
    Ok(())
}

pub async fn submit(config: Config, args: SubmitArgs) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let script = match &args.file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        None => render(&lab.config, Some(&lab.state))?,
    };
    let statements = job::split_statements(&script);
    if args.file.is_none() {
        validate(&statements)?;
    } else if !statements.iter().any(|s| job::kind(s) == "INSERT") {
        bail!("the script has no INSERT statement, so it would start no job");
    }
    if args.dry_run {
        eprintln!("rendered {} statements ({} INSERT); nothing submitted", statements.len(), statements.iter().filter(|s| job::kind(s) == "INSERT").count());
        return Ok(ExitCode::SUCCESS);
    }
    let client = lab.flink(Duration::from_secs(10))?;
    let overview = client.overview().await.with_context(|| "the Flink cluster is not up; start it with `labctl up`")?;
    let settings = JobSettings::for_lab(&lab.config);
    if overview.slots_total < settings.parallelism {
        bail!(
            "the job needs {} slots (one per topic partition) but the cluster has {}; add TaskManagers (`labctl up --taskmanagers N`)",
            settings.parallelism,
            overview.slots_total
        );
    }
    // The topic must exist: a Kafka source on a missing topic waits silently forever.
    let topic = &lab.config.broker.topic;
    match lab.broker()?.partitions(topic, Duration::from_secs(5)).await {
        Ok(Some(_)) => {}
        Ok(None) => bail!("topic `{topic}` does not exist; `labctl up` creates it"),
        Err(e) => bail!("the broker is not reachable ({e:#}); check `labctl status`"),
    }
    lab.database()?.probe(Duration::from_secs(5)).await.context("the database is not reachable; check `labctl status`")?;

    let name = match &args.file {
        // A custom script names its job with SET 'pipeline.name'; only the lab's own job is unique.
        Some(_) => String::new(),
        None => job::job_name(&lab.config.project),
    };
    let running: Vec<_> = client
        .jobs()
        .await?
        .into_iter()
        .filter(|j| !name.is_empty() && j.name == name && ACTIVE.contains(&j.state.as_str()))
        .collect();
    if !running.is_empty() {
        if !args.replace {
            let ids: Vec<_> = running.iter().map(|j| format!("{} ({})", j.jid, j.state)).collect();
            bail!("the job `{name}` is already running: {}; use --replace to cancel and resubmit it", ids.join(", "));
        }
        for j in &running {
            client.cancel(&j.jid).await?;
            wait_terminal(&client, &j.jid, Duration::from_secs(60)).await?;
            eprintln!("cancelled {}", j.jid);
        }
    }

    let jar = find_or_explain_runner(&client).await?;
    let argv: Vec<String> = statements.iter().map(|s| B64.encode(s.as_bytes())).collect();
    let t0 = Instant::now();
    let job_id = match client.run_jar(&jar, RUNNER_ENTRY_CLASS, &argv, None).await {
        Ok(id) => id,
        Err(e) => return Err(explain_submit_error(e, args.verbose)),
    };
    eprintln!("submitted job {job_id}; waiting for it and all its tasks to run");
    match wait_running(&client, &job_id, Duration::from_secs(args.timeout)).await {
        Ok(()) => {}
        Err(e) => {
            // Leave nothing half-submitted behind.
            let _ = client.cancel(&job_id).await;
            let cause = client.last_exception(&job_id).await.ok().flatten();
            return Err(match cause {
                Some((c, full)) if args.verbose => anyhow::anyhow!("{e:#}\n{full}").context(format!("job failed: {c}")),
                Some((c, _)) => anyhow::anyhow!("job {job_id} failed and was cancelled: {c}\n(full text: --verbose)"),
                None => e.context(format!("job {job_id} was cancelled")),
            });
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let url = format!("{}/#/job/running/{job_id}/overview", client.base());
    if args.json {
        println!("{}", serde_json::json!({ "job_id": job_id, "name": name, "url": url, "submit_to_running_secs": secs }));
    } else {
        eprintln!("job `{name}` RUNNING after {secs:.1} s\n  id  {job_id}\n  ui  {url}");
    }
    Ok(ExitCode::SUCCESS)
}

fn explain_submit_error(e: anyhow::Error, verbose: bool) -> anyhow::Error {
    match e.downcast::<SubmitError>() {
        Ok(se) if verbose => anyhow::anyhow!("Flink refused the job: {}\n--- full error ---\n{}", se.cause, se.full),
        Ok(se) => anyhow::anyhow!("Flink refused the job: {}\n(full text: --verbose)", se.cause),
        Err(e) => e,
    }
}

pub(crate) async fn find_or_explain_runner(client: &flink::Client) -> Result<String> {
    let jars = client.jars().await?;
    match jars.iter().find(|j| j.name == RUNNER_JAR_NAME) {
        Some(j) => Ok(j.id.clone()),
        None => bail!(
            "the Flink cluster has no {RUNNER_JAR_NAME}; the lab's Flink image provides it: recreate the JobManager with `labctl up`"
        ),
    }
}

pub(crate) async fn wait_running(client: &flink::Client, id: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let j = client.job(id).await?;
        let all = !j.vertices.is_empty() && j.vertices.iter().all(|v| v.status == "RUNNING");
        match j.state.as_str() {
            "RUNNING" if all => return Ok(()),
            "FAILED" | "CANCELED" | "FINISHED" => bail!("job {id} ended as {}", j.state),
            "RESTARTING" | "FAILING" => bail!("job {id} is {} (it failed after starting)", j.state),
            _ => {}
        }
        if start.elapsed() > timeout {
            let pending: Vec<_> = j.vertices.iter().filter(|v| v.status != "RUNNING").map(|v| format!("{} {}", v.status, v.name)).collect();
            bail!("job {id} not RUNNING within {timeout:?} (state {}; waiting: {})", j.state, pending.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn wait_terminal(client: &flink::Client, id: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let j = client.job(id).await?;
        if !ACTIVE.contains(&j.state.as_str()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("job {id} did not stop within {timeout:?}")
}

pub async fn command(config: Config, cmd: FlinkCommand) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let client = lab.flink(Duration::from_secs(10))?;
    match cmd {
        FlinkCommand::Jobs { json } => {
            let jobs = client.jobs().await.context("the Flink cluster is not reachable; check `labctl status`")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                println!("{:<34} {:<11} {:>9}  NAME", "ID", "STATE", "UPTIME");
                for j in jobs {
                    println!("{:<34} {:<11} {:>8}s  {}", j.jid, j.state, j.duration / 1000, j.name);
                }
            }
        }
        FlinkCommand::Cancel { id } => {
            let ids = match id {
                Some(id) => vec![id],
                None => {
                    let name = job::job_name(&lab.config.project);
                    let ids: Vec<_> = client.jobs().await?.into_iter().filter(|j| j.name == name && ACTIVE.contains(&j.state.as_str())).map(|j| j.jid).collect();
                    if ids.is_empty() {
                        bail!("no running job `{name}` to cancel");
                    }
                    ids
                }
            };
            for id in ids {
                client.cancel(&id).await?;
                wait_terminal(&client, &id, Duration::from_secs(60)).await?;
                eprintln!("cancelled {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
