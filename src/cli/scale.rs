//! `labctl scale SERVICE N`: arguments to an `ops::scale` request, the new size to a line or
//! JSON.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use indicatif::MultiProgress;

use crate::{model::config::Config, ops::scale, stack::FLINK_TM};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The new size is remembered in the lab's state (~/.local/state/labctl/<project>.json): a later \
                        plain `labctl up` keeps it. The config's flink.taskmanagers / spark.workers give the size of a lab \
                        that was never scaled; `labctl down --volumes` forgets the remembered size. The next `submit flink` \
                        still runs with parallelism = topic partitions (one reader per partition); the next `submit spark` \
                        sizes its executors from the workers' free cores."
)]
pub struct Args {
    /// flink-taskmanager or spark-worker.
    #[arg(value_name = "SERVICE")]
    service: String,
    /// Number of replicas, 1 to 8.
    #[arg(value_name = "N")]
    replicas: u32,
    /// Seconds to wait until the cluster reports the new size (default: ready_timeout_secs).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Print the resulting sizes as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let service = args.service.as_str();
    let multi = MultiProgress::new();
    let timeout = args.timeout.map(Duration::from_secs);
    let s = scale::scale(config, service, args.replicas, timeout, &multi).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        eprintln!(
            "{service} scaled {} -> {} (remembered: a plain `labctl up` keeps it): {}",
            s.from,
            s.replicas,
            s.size.describe()
        );
        if service == FLINK_TM {
            eprintln!(
                "  the next `labctl submit flink` runs with parallelism {} (= topic partitions: one reader per partition), whatever the slots",
                s.flink_parallelism
            );
        } else {
            eprintln!(
                "  the next `labctl submit spark` sizes its executors from the workers' free cores"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
