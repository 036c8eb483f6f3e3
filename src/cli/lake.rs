//! `labctl lake`: housekeeping of the Delta tables on the lake, run as a Spark submission like
//! the export (Delta's own VACUUM, through the same staging and result path).

use std::{process::ExitCode, time::Duration};

use anyhow::Result;

use super::spark::{
    render_config_with, start_export, wait_export, JobSecrets, Overrides, Staging, SubmitArgs,
};
use crate::{model::config::Config, ops::lab::Lab};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Delete data files no version of the last N hours needs (Delta's VACUUM; default: Delta's
    /// 7 days, so a reader of an older version or an export running beside it loses nothing).
    Vacuum(VacuumArgs),
}

#[derive(Debug, clap::Args)]
pub struct VacuumArgs {
    /// History to keep, in hours. Less than 168 (Delta's default) breaks readers of older
    /// versions and exports running at the same time; Delta only allows it when asked.
    #[arg(long, value_name = "HOURS")]
    retain_hours: Option<f64>,
    /// Vacuum the sensor_aggregates table too.
    #[arg(long)]
    with_aggregates: bool,
    /// Seconds to wait for the driver to finish.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, cmd: Command) -> Result<ExitCode> {
    let Command::Vacuum(a) = cmd;
    let lab = Lab::existing(config)?;
    if a.retain_hours.is_some_and(|h| h < 168.0) {
        eprintln!("warning: keeping less than 7 days of history: a reader of an older version, or an export running now, may lose files");
    }
    let args = SubmitArgs {
        from: None,
        to: None,
        with_aggregates: a.with_aggregates,
        partitions: 1,
        no_wait: false,
        timeout: a.timeout,
        dry_run: false,
        json: a.json,
    };
    let over = Overrides { vacuum: Some(a.retain_hours), ..Overrides::default() };
    let staging = Staging::new(&lab, Duration::from_secs(a.timeout))?;
    let config_json =
        render_config_with(&lab, &args, &JobSecrets::of(&lab)?, &over, Some(staging.result_url()))?;
    let started = start_export(&lab, staging, &config_json).await?;
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message("vacuum");
    pb.enable_steady_tick(Duration::from_millis(120));
    let outcome = wait_export(&started, Duration::from_secs(a.timeout), &pb).await;
    pb.finish_and_clear();
    let outcome = outcome?;
    outcome.require_finished()?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"submission_id": started.id, "state": outcome.state, "seconds": outcome.seconds, "result": outcome.result})
        );
    } else {
        let msg = outcome.result["message"].as_str().unwrap_or("done");
        eprintln!("vacuum {} FINISHED in {:.1} s: {msg}", started.id, outcome.seconds);
    }
    Ok(ExitCode::SUCCESS)
}
