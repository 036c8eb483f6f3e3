//! `labctl down`: removes the lab's containers and network; data volumes only when asked.

use std::{io::IsTerminal, process::ExitCode};

use anyhow::{bail, Result};

use crate::{
    clients::docker::Runtime,
    model::config::Config,
    ops::lab::lock_lab,
    stack::{state::State, ServiceId, Stack},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also delete the data volumes (topic, tables, Delta table, checkpoints) and the state file.
    #[arg(long)]
    volumes: bool,
    /// Do not ask before deleting data.
    #[arg(long, short)]
    yes: bool,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let rt = Runtime::connect().await?;
    let project = config.project.clone();
    let _lock = lock_lab(&project, "down", &crate::progress::Lines).await?;
    if args.volumes && !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!("`down --volumes` deletes all of lab `{project}`'s data; add --yes to confirm when not at a terminal");
        }
        eprint!(
            "Delete all data of lab `{project}` (topic, tables, Delta table, checkpoints)? [y/N] "
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing deleted");
            return Ok(ExitCode::FAILURE);
        }
    }
    // Stop dependants before what they depend on, so e.g. TaskManagers do not log a storm of
    // reconnect errors while the JobManager goes away.
    let order: Vec<ServiceId> = match State::load(&project)? {
        Some(st) => Stack::new(&config, &st).start_order().iter().rev().map(|s| s.name).collect(),
        None => vec![],
    };
    let mut containers = rt.list_containers(&project).await?;
    containers.sort_by_key(|c| order.iter().position(|s| c.service == *s).unwrap_or(0));
    let mut tasks = tokio::task::JoinSet::new();
    for c in &containers {
        let (rt, name) = (rt.clone(), c.name.clone());
        tasks.spawn(async move { rt.remove_container(&name, 20).await.map(|_| name) });
    }
    while let Some(r) = tasks.join_next().await {
        eprintln!("removed {}", r??);
    }
    for n in rt.project_networks(&project).await? {
        rt.remove_network(&n).await?;
        eprintln!("removed network {n}");
    }
    if args.volumes {
        for v in rt.project_volumes(&project).await? {
            rt.remove_volume(&v).await?;
            eprintln!("removed volume {v}");
        }
        State::remove(&project)?;
    } else {
        let kept = rt.project_volumes(&project).await?;
        if !kept.is_empty() {
            eprintln!("kept {} data volume(s); `labctl down --volumes` deletes them", kept.len());
        }
        // The job went with the JobManager, on purpose: the next `up` leaves it stopped.
        let job_ran = State::load(&project)?.is_some_and(|st| st.flink_job);
        if job_ran && !crate::model::topology::Part::Flink.is_external(&config) {
            State::remember_flink_job(&project, false)?;
            eprintln!("the lab's Flink job stopped with it; `labctl submit flink` restores it from its newest retained checkpoint");
        }
    }
    let external = crate::model::topology::external_parts(&config);
    if !external.is_empty() {
        let keys: Vec<_> = external.iter().map(|p| p.key()).collect();
        eprintln!("left alone: the external services of {} (their data too)", keys.join(", "));
    }
    eprintln!("lab `{project}` is down");
    Ok(ExitCode::SUCCESS)
}
