//! `labctl submit spark`, `labctl spark kill|status`: arguments to an `ops::spark` export,
//! its outcome to a line or JSON.

use std::{process::ExitCode, time::Duration};

use anyhow::{bail, Result};

use crate::{
    model::config::Config,
    ops::{
        lab::Lab,
        spark::{
            render_config, start_export, wait_export, ExportRequest, JobSecrets, Overrides, Staging,
        },
        verify::repair::{self, RepairRecord},
    },
};

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
    /// Do not first rewrite late windows (closed windows that disagree with their raw rows)
    /// from the raw rows.
    #[arg(long)]
    pub no_repair: bool,
}

impl SubmitArgs {
    pub fn request(&self) -> ExportRequest {
        ExportRequest {
            from: self.from.clone(),
            to: self.to.clone(),
            with_aggregates: self.with_aggregates,
            partitions: self.partitions,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum SparkCommand {
    /// Kill a running driver (submission id from `labctl submit spark --no-wait`).
    Kill { id: String },
    /// Status of a submission.
    Status { id: String },
}

pub async fn submit(config: Config, args: SubmitArgs) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let staging = Staging::new(&lab, Duration::from_secs(args.timeout))?;
    let config_json = render_config(
        &lab,
        &args.request(),
        &JobSecrets::of(&lab)?,
        &Overrides::default(),
        Some(staging.result_url()),
    )?;
    if args.dry_run {
        eprintln!("config renders and validates; nothing submitted");
        return Ok(ExitCode::SUCCESS);
    }
    let repaired = if args.no_repair { None } else { repair_late_windows(&lab, &args).await? };
    let started = start_export(&lab, staging, &config_json, true).await?;
    let id = started.id.clone();
    if args.no_wait {
        if args.json {
            println!("{}", serde_json::json!({"submission_id": id, "repaired": repaired}));
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
            serde_json::json!({"submission_id": id, "state": state, "seconds": secs, "sizing": started.sizing, "result": result, "repaired": repaired})
        );
    } else {
        eprintln!("export {id} FINISHED in {secs:.1} s ({}): {result}", started.sizing.describe());
    }
    Ok(ExitCode::SUCCESS)
}

/// Late readings are in `machine_sensors` but not in their window: rewrite those windows before
/// the export copies the tables. Only an export of the aggregates depends on it, so for the
/// others a failure is a warning.
async fn repair_late_windows(lab: &Lab, args: &SubmitArgs) -> Result<Option<RepairRecord>> {
    match repair::repair(lab, Duration::from_secs(30), repair::Trigger::Export).await {
        Ok(r) => {
            if r.windows() > 0 && !args.json {
                eprintln!("{}", crate::cli::verify::repaired_line(&r));
            }
            Ok(Some(r))
        }
        Err(e) if args.with_aggregates => Err(e.context(
            "late windows could not be repaired before exporting the aggregates (`--no-repair` exports them as they are)",
        )),
        Err(e) => {
            tracing::warn!("late windows not repaired before the export: {e:#}");
            Ok(None)
        }
    }
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
