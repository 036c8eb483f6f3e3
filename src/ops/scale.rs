//! Resizing a running lab's Flink TaskManagers or Spark workers. Replicas start and stop
//! through the same code as `up` (`reconcile::ensure_replicas`, `remove_surplus`); the new
//! size is written to the lab's state first, so a later plain `up` keeps it (the config's
//! `flink.taskmanagers` / `spark.workers` only size a lab that was never scaled). Done when the
//! cluster itself reports the new size: Flink `/overview` TaskManagers and slots, the Spark
//! master's ALIVE workers and cores.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::reconcile::{ensure_replicas, remove_surplus};
use crate::{
    clients::{docker::Runtime, flink::JobState, spark},
    model::{
        config::{Config, MAX_REPLICAS},
        topology::{ensure_managed, Part},
    },
    ops::{
        flink::job,
        lab::{lock_lab, Lab},
    },
    progress::{Progress, Tasks, TasksNote},
    stack::{
        self, state::State, ServiceId, FLINK_JM, FLINK_TM, SCALABLE, SPARK_MASTER, SPARK_WORKER,
    },
    wait::{poll_until, Check, Every, Waited},
};

/// The cluster's size as it reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Size {
    Flink { taskmanagers: u32, slots_total: u32, slots_available: u32 },
    Spark { workers_alive: u32, cores: u32, cores_used: u32 },
}

/// A resize that is done: what `labctl scale --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Scaled {
    pub project: String,
    pub service: String,
    pub from: u32,
    pub replicas: u32,
    pub containers_started: usize,
    pub containers_removed: Vec<String>,
    pub size: Size,
    /// What the resize does to running jobs, said before it happened.
    pub notes: Vec<String>,
    pub seconds: f64,
    /// The lab's job's parallelism (Flink only), which a resize does not change.
    #[serde(skip)]
    pub flink_parallelism: u32,
}

impl Size {
    pub fn describe(&self) -> String {
        match self {
            Size::Flink { taskmanagers, slots_total, slots_available } => {
                format!(
                    "{taskmanagers} TaskManager(s), {slots_total} slots ({slots_available} free)"
                )
            }
            Size::Spark { workers_alive, cores, cores_used } => {
                format!("{workers_alive} worker(s) ALIVE, {cores} cores ({cores_used} used)")
            }
        }
    }
}

/// Rejects what cannot be scaled, before anything is looked at.
pub fn check(service: &str, n: u32) -> Result<ServiceId> {
    let Some(id) = ServiceId::parse(service).filter(|id| SCALABLE.contains(id)) else {
        let names: Vec<&str> = SCALABLE.iter().map(|s| s.as_str()).collect();
        bail!("`{service}` cannot be scaled; the scalable services are: {}", names.join(", "));
    };
    if !(1..=MAX_REPLICAS).contains(&n) {
        bail!("cannot scale {service} to {n}: use 1 to {MAX_REPLICAS} replicas (`labctl down` stops the whole lab)");
    }
    Ok(id)
}

/// Resizes `service` to `n` replicas and waits until its cluster reports that size.
pub async fn scale(
    config: Config,
    service: &str,
    n: u32,
    timeout: Option<Duration>,
    tasks: &dyn Tasks,
) -> Result<Scaled> {
    let service = check(service, n)?;
    if let Some(part) = Part::of_service(service) {
        ensure_managed(
            &config,
            part,
            &format!("`labctl scale {service}`"),
            "resize it where it runs",
        )?;
    }
    let started = Instant::now();
    let _lock = lock_lab(&config.project, "scale", &TasksNote(tasks)).await?;
    let mut state = State::require(&config)?;
    let from = stack::replicas(&config, &state, service);
    let rt = Runtime::connect().await?;
    let existing = rt.list_containers(&config.project).await?;
    let head = if service == FLINK_TM { FLINK_JM } else { SPARK_MASTER };
    if !existing.iter().any(|c| c.service == head && c.running()) {
        bail!(
            "lab `{}` is not running ({head} is not up); start it with `labctl up`",
            config.project
        );
    }
    let timeout = timeout.unwrap_or(Duration::from_secs(config.ready_timeout_secs));

    // What scaling down does to a running lab job, said before it happens.
    let mut notes = Vec::new();
    if service == FLINK_TM && n < from {
        notes.extend(flink_scale_down_notes(&Lab::new(config.clone(), state.clone()), n).await);
    }
    if service == SPARK_WORKER && n < from {
        let lab = Lab::new(config.clone(), state.clone());
        if let Ok(m) = lab.spark(Duration::from_secs(3))?.master().await {
            if !m.activedrivers.is_empty() {
                notes.push(format!(
                    "{} export driver(s) running: a driver or executors on a removed worker are lost (the export fails; run `labctl submit spark` again)",
                    m.activedrivers.len()
                ));
            }
        }
    }
    for n in &notes {
        tasks.note(&format!("note: {n}"));
    }

    // Remember first: if anything below fails, `labctl up` repairs towards the new size.
    state.replicas.insert(service.to_string(), n);
    state.save(&config.project)?;
    let lab = Lab::new(config, state);
    let svc = lab.stack.require(service.as_str())?.clone();

    let task = tasks.task(service.as_str());
    task.set(&format!("{from} -> {n}"));
    let (tag, _) = rt.ensure_image(&svc.image, false, task.as_ref()).await?;
    let mine: Vec<_> = existing.iter().filter(|c| c.service == service).cloned().collect();
    let removed = remove_surplus(&rt, &lab, &mine).await?;
    let started_n = ensure_replicas(&rt, &lab, &svc, &tag, &mine).await?;

    let size = wait_for_size(&lab, service, n, timeout, task.as_ref()).await?;
    let secs = started.elapsed().as_secs_f64();
    task.done(&format!("{from} -> {n} in {secs:.1} s: {}", size.describe()));
    Ok(Scaled {
        project: lab.stack.project.clone(),
        service: service.to_string(),
        from,
        replicas: n,
        containers_started: started_n,
        containers_removed: removed,
        size,
        notes,
        seconds: secs,
        flink_parallelism: job::JobSettings::for_lab(&lab.config).parallelism,
    })
}

/// When the lab's job runs: it loses the tasks on removed TaskManagers and restarts on the
/// remaining slots through its restart strategy, or cannot when fewer slots than its
/// parallelism remain.
async fn flink_scale_down_notes(lab: &Lab, n: u32) -> Vec<String> {
    let Ok(client) = lab.flink(Duration::from_secs(3)) else { return vec![] };
    let Ok(jobs) = client.jobs().await else { return vec![] };
    let name = job::job_name(&lab.stack.project);
    let Some(j) = jobs.iter().find(|j| j.name == name && j.state == JobState::Running) else {
        return vec![];
    };
    let parallelism = client
        .job(&j.jid)
        .await
        .map(|d| d.vertices.iter().map(|v| v.parallelism).max().unwrap_or(0))
        .unwrap_or(0);
    let slots = n * lab.config.flink.slots_per_taskmanager;
    let attempts = job::JobSettings::for_lab(&lab.config).restart_attempts;
    let mut notes = vec![format!(
        "the lab's job {} is running: if any of its tasks run on a removed TaskManager, they fail and the job restarts on the remaining slots through its restart strategy (exponential delay, up to {attempts} attempts in a row), from its last checkpoint",
        &j.jid
    )];
    if parallelism > slots {
        notes.push(format!(
            "the job's parallelism is {parallelism} but only {slots} slots remain: it cannot be scheduled and fails after its restart attempts; scale back up or resubmit"
        ));
    }
    notes
}

/// Polls the cluster until it reports exactly `n` TaskManagers (and their slots) or `n` ALIVE
/// workers; a removed member counts until the cluster notices it is gone.
async fn wait_for_size(
    lab: &Lab,
    service: ServiceId,
    n: u32,
    timeout: Duration,
    task: &dyn Progress,
) -> Result<Size> {
    let slots = n * lab.config.flink.slots_per_taskmanager;
    let look = || async {
        let seen = match service {
            FLINK_TM => lab.flink(Duration::from_secs(3))?.overview().await.map(|o| {
                let done = o.taskmanagers == n && o.slots_total == slots;
                (
                    done,
                    format!(
                        "{} of {n} TaskManagers, {} of {slots} slots",
                        o.taskmanagers, o.slots_total
                    ),
                    Size::Flink {
                        taskmanagers: o.taskmanagers,
                        slots_total: o.slots_total,
                        slots_available: o.slots_available,
                    },
                )
            }),
            _ => lab.spark(Duration::from_secs(3))?.master().await.map(|m| {
                let alive = spark::Client::alive_workers(&m) as u32;
                (
                    alive == n,
                    format!("{alive} of {n} workers ALIVE, {} cores", m.cores),
                    Size::Spark { workers_alive: alive, cores: m.cores, cores_used: m.coresused },
                )
            }),
        };
        Ok(match seen {
            Ok((true, _, size)) => Check::Ready(size),
            Ok((false, msg, _)) => Check::NotYet(msg),
            Err(e) => Check::NotYet(format!("{e:#}")),
        })
    };
    match poll_until(Every::millis(500).within(timeout), look, |why| {
        task.set(&format!("waiting: {why}"))
    })
    .await?
    {
        Waited::Ready(size) => Ok(size),
        Waited::TimedOut { last, .. } => {
            task.failed(&format!("not at the new size after {timeout:?}: {last}"));
            Err(anyhow!("{last}")).with_context(|| format!("{service} did not reach {n} replicas within {timeout:?}; see `labctl logs {service}` and `labctl status`"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replicated_services_within_bounds() {
        let err = check("broker", 2).unwrap_err().to_string();
        assert!(
            err.contains("`broker` cannot be scaled")
                && err.contains("flink-taskmanager, spark-worker"),
            "{err}"
        );
        assert!(check("flink-taskmanager", 0).unwrap_err().to_string().contains("1 to 8"));
        assert!(check("spark-worker", 9).is_err());
        assert!(check("flink-taskmanager", 1).is_ok() && check("spark-worker", 8).is_ok());
    }
}
