//! `labctl logs SERVICE`: a service's container logs, all replicas, optionally followed.

use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::{clients::docker::Runtime, model::config::Config, ops::lab::Lab};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service name (see `labctl status`).
    service: String,
    /// Keep printing new lines.
    #[arg(long, short)]
    follow: bool,
    /// Only the last N lines of each container.
    #[arg(long, short = 'n', value_name = "N")]
    tail: Option<usize>,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    lab.stack.require(&args.service)?;
    let rt = Runtime::connect().await?;
    let mut containers: Vec<_> = rt
        .list_containers(&lab.stack.project)
        .await?
        .into_iter()
        .filter(|c| c.service == args.service)
        .collect();
    if containers.is_empty() {
        bail!(
            "service `{}` of lab `{}` has no container; start it with `labctl up`",
            args.service,
            lab.stack.project
        );
    }
    containers.sort_by_key(|c| c.replica);
    let prefixed = containers.len() > 1;
    let mut tasks = tokio::task::JoinSet::new();
    for c in containers {
        let rt = rt.clone();
        let prefix = prefixed.then(|| format!("{}-{}", c.service, c.replica));
        let (follow, tail) = (args.follow, args.tail);
        let fut = async move { rt.stream_logs(&c.name, prefix.as_deref(), follow, tail).await };
        if args.follow {
            tasks.spawn(fut);
        } else {
            fut.await?; // one after the other, so the output is not interleaved
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(ExitCode::SUCCESS)
}
