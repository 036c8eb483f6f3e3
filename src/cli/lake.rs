//! `labctl lake`: housekeeping of the Delta tables on the lake, run as a Spark submission like
//! the export (Delta's own VACUUM, through the same staging and result path).

use std::{process::ExitCode, time::Duration};

use anyhow::Result;

use crate::{
    model::config::Config,
    ops::{
        lab::Lab,
        spark::{self, ExportRequest, Overrides},
    },
};

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
    let req =
        ExportRequest { with_aggregates: a.with_aggregates, partitions: 1, ..Default::default() };
    let over = Overrides { vacuum: Some(a.retain_hours), ..Overrides::default() };
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message("vacuum");
    pb.enable_steady_tick(Duration::from_millis(120));
    let ran = spark::run(&lab, &req, &over, Duration::from_secs(a.timeout), &pb).await;
    pb.finish_and_clear();
    let (started, outcome) = ran?;
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
