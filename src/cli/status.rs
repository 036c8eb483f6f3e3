//! `labctl status`: every service's containers and readiness, checked in parallel, each check
//! with a short timeout so a dead service shows as down instead of hanging the command.

use std::{process::ExitCode, time::{Duration, Instant}};

use anyhow::Result;
use serde::Serialize;

use crate::{
    config::Config,
    docker::Runtime,
    lab::Lab,
    stack::Probe,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Include the database password and connection string.
    #[arg(long)]
    show_secrets: bool,
    /// Seconds each check may take.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    timeout: f64,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    /// running / partial / stopped / missing
    pub state: String,
    pub containers: Vec<ContainerStatus>,
    pub ready: bool,
    pub detail: String,
    pub url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    pub status: String,
}

/// A Flink job as `status` shows it.
#[derive(Debug, Serialize)]
pub struct FlinkJobStatus {
    pub id: String,
    pub name: String,
    pub state: String,
    pub uptime_secs: i64,
    /// Records read by the sources and written by the sinks (Flink's vertex metrics).
    pub records_in: i64,
    pub records_out: i64,
    pub last_checkpoint_age_secs: Option<i64>,
    pub restarts: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub project: String,
    pub healthy: bool,
    pub services: Vec<ServiceStatus>,
    /// Jobs on the Flink cluster (empty when it is down).
    pub flink_jobs: Vec<FlinkJobStatus>,
    /// Spark drivers known to the master (active and completed), newest first.
    pub spark_drivers: Vec<serde_json::Value>,
    /// Delta tables in the lake's container.
    pub lake: Vec<crate::lake::DeltaSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<serde_json::Value>,
    pub elapsed_ms: u128,
}

pub async fn collect(lab: &Lab, rt: &Runtime, timeout: Duration) -> Result<Vec<ServiceStatus>> {
    let containers = rt.list_containers(&lab.stack.project).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, svc) in lab.stack.services.iter().enumerate() {
        let (lab, svc) = (lab.clone(), svc.clone());
        tasks.spawn(async move {
            let r = tokio::time::timeout(timeout, lab.probe(&svc.probe, timeout)).await;
            let r = r.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")));
            (i, r.map_err(|e| format!("{e:#}")))
        });
    }
    let mut probes = vec![Err(String::new()); lab.stack.services.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, res) = r?;
        probes[i] = res;
    }
    let mut out = Vec::new();
    for (svc, probe) in lab.stack.services.iter().zip(probes) {
        let mine: Vec<_> = containers.iter().filter(|c| c.service == svc.name).collect();
        let running = mine.iter().filter(|c| c.running()).count();
        let state = match (running, mine.len()) {
            (_, 0) => "missing",
            (r, n) if r == n && n as u32 >= svc.replicas => "running",
            (0, _) => "stopped",
            _ => "partial",
        };
        // A service checked through another is ready when its containers run and that check passes.
        let (ready, detail) = match (&svc.probe, probe) {
            (Probe::CoveredBy { .. }, Ok(d)) => (state == "running", if state == "running" { d } else { format!("{running}/{} running", svc.replicas) }),
            (_, Ok(d)) => (state == "running", d),
            (_, Err(e)) => (false, e),
        };
        out.push(ServiceStatus {
            service: svc.name.to_string(),
            state: state.to_string(),
            containers: mine
                .iter()
                .map(|c| ContainerStatus { name: c.name.clone(), state: c.state.clone(), status: c.status.clone() })
                .collect(),
            ready,
            detail,
            url: svc.ports.iter().find(|p| p.url_path.is_some()).map(|p| format!("http://{}:{}", lab.stack.bind_address, p.host)),
        });
    }
    Ok(out)
}

/// Active and recently ended jobs with their throughput counters and checkpoint age.
pub async fn flink_jobs(lab: &Lab, timeout: Duration) -> Vec<FlinkJobStatus> {
    let Ok(client) = lab.flink(timeout) else { return vec![] };
    let Ok(jobs) = client.jobs().await else { return vec![] };
    let now = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    for j in jobs.into_iter().filter(|j| j.state != "CANCELED" && j.state != "FINISHED") {
        let (records_in, records_out) = client.records_in_out(&j.jid).await.unwrap_or((0.0, 0.0));
        let cp = client.checkpoints(&j.jid).await.ok();
        let last = cp.as_ref().and_then(|c| c["latest"]["completed"]["latest_ack_timestamp"].as_i64()).filter(|t| *t > 0);
        out.push(FlinkJobStatus {
            id: j.jid.clone(),
            name: j.name.clone(),
            state: j.state.clone(),
            uptime_secs: (now - j.start_time).max(0) / 1000,
            records_in: records_in as i64,
            records_out: records_out as i64,
            last_checkpoint_age_secs: last.map(|t| (now - t).max(0) / 1000),
            restarts: cp.as_ref().and_then(|c| c["counts"]["restored"].as_i64()),
        });
    }
    out
}

async fn spark_drivers(lab: &Lab, timeout: Duration) -> Vec<serde_json::Value> {
    let Ok(client) = lab.spark(timeout) else { return vec![] };
    let Ok(m) = client.master().await else { return vec![] };
    let pick = |d: &serde_json::Value| serde_json::json!({"id": d["id"], "state": d["state"], "starttime": d["starttime"]});
    let mut all: Vec<_> = m.activedrivers.iter().chain(m.completeddrivers.iter()).map(pick).collect();
    all.sort_by_key(|d| std::cmp::Reverse(d["starttime"].as_i64().unwrap_or(0)));
    all.truncate(5);
    all
}

async fn lake_tables(lab: &Lab, timeout: Duration) -> Vec<crate::lake::DeltaSummary> {
    let Ok(blob) = lab.blob(timeout) else { return vec![] };
    let mut out = Vec::new();
    for t in crate::schema::TABLES {
        if let Ok(s) = blob.delta_summary(&lab.config.lake.container, t.name).await {
            if s.version.is_some() {
                out.push(s);
            }
        }
    }
    out
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let lab = Lab::existing(config)?;
    let rt = Runtime::connect().await?;
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 60.0));
    let (services, flink_jobs, spark_drivers, lake) = tokio::join!(
        collect(&lab, &rt, timeout),
        async { tokio::time::timeout(timeout, flink_jobs(&lab, timeout)).await.unwrap_or_default() },
        async { tokio::time::timeout(timeout, spark_drivers(&lab, timeout)).await.unwrap_or_default() },
        async { tokio::time::timeout(timeout, lake_tables(&lab, timeout)).await.unwrap_or_default() },
    );
    let services = services?;
    let healthy = services.iter().all(|s| s.ready);
    let secrets = args.show_secrets.then(|| {
        let p = &lab.state.ports;
        serde_json::json!({
            "db_password": lab.state.db_password,
            "db_url": format!("postgresql://{}:{}@{}:{}/{}", lab.config.database.user, lab.state.db_password, lab.stack.bind_address, p.database, lab.config.database.name),
        })
    });
    let report = Report {
        project: lab.stack.project.clone(),
        healthy,
        services,
        flink_jobs,
        spark_drivers,
        lake,
        secrets,
        elapsed_ms: started.elapsed().as_millis(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

fn print_table(r: &Report) {
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let paint = |ok: bool, s: &str| match (color, ok) {
        (false, _) => s.to_string(),
        (true, true) => format!("\x1b[32m{s}\x1b[0m"),
        (true, false) => format!("\x1b[31m{s}\x1b[0m"),
    };
    println!("lab `{}`: {}", r.project, paint(r.healthy, if r.healthy { "all services ready" } else { "NOT all services ready" }));
    println!("{:<18} {:<8} {:<6} {:<24} {}", "SERVICE", "STATE", "READY", "URL", "DETAIL");
    for s in &r.services {
        let n = s.containers.len();
        let state = if n > 1 { format!("{} x{n}", s.state) } else { s.state.clone() };
        println!(
            "{:<18} {:<8} {:<6} {:<24} {}",
            s.service,
            state,
            paint(s.ready, if s.ready { "yes" } else { "no" }),
            s.url.clone().unwrap_or_default(),
            s.detail
        );
    }
    if !r.flink_jobs.is_empty() {
        println!("{:<34} {:<11} {:>8} {:>12} {:>12} {:>10}  NAME", "FLINK JOB", "STATE", "UPTIME", "RECORDS IN", "RECORDS OUT", "CHECKPOINT");
        for j in &r.flink_jobs {
            let cp = j.last_checkpoint_age_secs.map(|a| format!("{a}s ago")).unwrap_or_else(|| "none".into());
            println!("{:<34} {:<11} {:>7}s {:>12} {:>12} {:>10}  {}", j.id, j.state, j.uptime_secs, j.records_in, j.records_out, cp, j.name);
        }
    }
    for d in &r.spark_drivers {
        println!("spark driver {:<28} {}", d["id"].as_str().unwrap_or(""), d["state"].as_str().unwrap_or(""));
    }
    for t in &r.lake {
        println!(
            "lake table {:<20} version {:<5} {} partition(s), {} data file(s)",
            t.table,
            t.version.map(|v| v.to_string()).unwrap_or_default(),
            t.partitions,
            t.data_files
        );
    }
    if let Some(sec) = &r.secrets {
        println!("database password: {}", sec["db_password"].as_str().unwrap_or(""));
        println!("database url:      {}", sec["db_url"].as_str().unwrap_or(""));
    }
    println!("({} ms)", r.elapsed_ms);
}
