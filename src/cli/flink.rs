//! `labctl submit flink`, `labctl flink jobs|cancel`: arguments to a request for
//! `ops::flink`, its report to a line or JSON.

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};

use crate::{
    model::config::Config,
    ops::{
        flink::{self, Script, SubmitRequest, Submitted},
        lab::Lab,
    },
    progress::Lines,
};

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Render and check the job locally; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace this lab's running job: stop it with a savepoint and start the new job from that
    /// savepoint (if the savepoint fails: cancel it and start from its newest retained checkpoint).
    #[arg(long)]
    pub replace: bool,
    /// Start without saved state: no savepoint on --replace, and no restore from the latest
    /// retained checkpoint or savepoint when the lab's job is not running.
    #[arg(long)]
    pub fresh: bool,
    /// Start even when saved state belongs to no operator of the new job (e.g. after changing
    /// the job's SQL); that state is dropped. Without it such a restore is refused.
    #[arg(long)]
    pub allow_non_restored_state: bool,
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

pub async fn submit(config: Config, args: SubmitArgs) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let script = args.file.clone().map_or(Script::Lab, Script::File);
    let prepared = flink::prepare(&lab, &script)?;
    if args.dry_run {
        eprintln!(
            "rendered {} statements ({} INSERT); nothing submitted",
            prepared.statements.len(),
            prepared.inserts()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let req = SubmitRequest {
        replace: args.replace,
        fresh: args.fresh,
        allow_non_restored_state: args.allow_non_restored_state,
        timeout: Duration::from_secs(args.timeout),
        verbose: args.verbose,
    };
    let done = flink::submit(&lab, &prepared, &req, &Lines).await?;
    if args.json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        eprintln!("{}", summary(&done));
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(s: &Submitted) -> String {
    let from = match &s.restored_from {
        Some(r) => format!("\n  restored from {} {}", r.kind, r.path),
        None if !s.replaced.is_empty() => {
            "\n  started WITHOUT the replaced job's state".to_string()
        }
        None => String::new(),
    };
    format!(
        "job `{}` RUNNING after {:.1} s\n  id  {}\n  ui  {}{from}",
        s.name, s.submit_to_running_secs, s.job_id, s.url
    )
}

pub async fn command(config: Config, cmd: FlinkCommand) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    match cmd {
        FlinkCommand::Jobs { json } => {
            let jobs = lab
                .flink(Duration::from_secs(10))?
                .jobs()
                .await
                .context("the Flink cluster is not reachable; check `labctl status`")?;
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
            for id in flink::cancel(&lab, id).await? {
                eprintln!("cancelled {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
