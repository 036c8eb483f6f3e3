//! The streaming job on the lab's Flink session cluster: rendered from its template (`job`),
//! submitted through the SQL-runner jar (`runner`) without ever starting it twice
//! (`in_flight`), restored from its newest retained checkpoint or savepoint (`snapshots`), and
//! replaced with a savepoint. `submit` returns a report; the command line prints it.

pub mod explain;
mod in_flight;
pub mod job;
mod runner;
pub mod snapshots;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde::Serialize;

pub use runner::find_or_explain_runner;
use snapshots::{retained_snapshots, Snapshot};

use self::{
    in_flight::{run_or_find, settle_interrupted_submit, write_marker, RunRequest},
    job::JobSettings,
    runner::{ensure_runner, warn_about_connectors},
};
use crate::{
    clients::flink::{self, JobState, SavepointStatus, TaskState},
    model::{
        config::Config,
        schema,
        topology::{DbRole, Part},
    },
    ops::lab::Lab,
    progress::Progress,
    stack::{self, endpoints::DbCredentials, state::State},
    wait::{poll_until, Check, Every},
};

/// The lab's job as SQL, writing as the database's writer role; without the lab's state (never
/// started) the password is a placeholder.
pub fn render(config: &Config, lab_state: Option<&State>) -> Result<String> {
    let creds = match lab_state {
        Some(s) => stack::endpoints::database_credentials(config, s, DbRole::Writer)?,
        None => DbCredentials {
            user: stack::endpoints::database_user_for(config, DbRole::Writer),
            password: "<filled in by labctl submit flink>".into(),
        },
    };
    job::render(config, &creds, &JobSettings::for_lab(config))
}

/// What to submit: the lab's own job, or a user's SQL script.
#[derive(Debug, Clone)]
pub enum Script {
    Lab,
    File(std::path::PathBuf),
}

/// A script split into statements and checked locally.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub statements: Vec<String>,
    pub lab_job: bool,
}

impl Prepared {
    pub fn inserts(&self) -> usize {
        self.statements.iter().filter(|s| job::kind(s) == "INSERT").count()
    }
}

/// Renders (or reads) and checks a script: statement kinds, one job, sink tables that exist.
pub fn prepare(lab: &Lab, script: &Script) -> Result<Prepared> {
    let text = match script {
        Script::File(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        Script::Lab => render(&lab.config, Some(&lab.state))?,
    };
    let statements = job::split_statements(&text);
    let prepared = Prepared { statements, lab_job: matches!(script, Script::Lab) };
    if prepared.lab_job {
        validate(&prepared.statements)?;
    } else if prepared.inserts() == 0 {
        bail!("the script has no INSERT statement, so it would start no job");
    }
    Ok(prepared)
}

/// Local checks of the lab's job: statement kinds, one job, sink tables exist in the schema.
fn validate(statements: &[String]) -> Result<()> {
    let inserts: Vec<_> = statements.iter().filter(|s| job::kind(s) == "INSERT").collect();
    if inserts.is_empty() {
        bail!("the rendered job has no INSERT statement, so it would start no job");
    }
    for s in &inserts {
        let target = s.split_whitespace().nth(2).unwrap_or("");
        if !schema::ALL_TABLES.iter().any(|t| t.name == target) {
            bail!("the job writes to `{target}`, which is not a table of init-db.sql");
        }
    }
    Ok(())
}

/// The value of `SET 'pipeline.name' = '…'` in a script: the name its job will have.
fn pipeline_name(statements: &[String]) -> Option<String> {
    statements.iter().filter(|s| job::kind(s) == "SET").find_map(|s| {
        let (k, v) = s["SET".len()..].split_once('=')?;
        let unquote = |x: &str| x.trim().trim_matches(|c| c == '\'' || c == '`').replace("''", "'");
        (unquote(k) == "pipeline.name").then(|| unquote(v))
    })
}

/// How to submit.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// Replace a running copy of the lab's job (with a savepoint unless `fresh`).
    pub replace: bool,
    /// Start without saved state.
    pub fresh: bool,
    /// Let the job start when saved state belongs to no operator of the new job (that state is
    /// dropped). Off by default: a job that silently loses its window state is worse than one
    /// that refuses to start and says why.
    pub allow_non_restored_state: bool,
    /// How long the job and all its tasks may take to be RUNNING.
    pub timeout: Duration,
    /// Flink's full error text in errors, not just the cause.
    pub verbose: bool,
}

/// Where the new job's state came from.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredFrom {
    pub kind: &'static str,
    pub path: String,
}

/// A job that runs: what `labctl submit flink --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    pub job_id: String,
    pub name: String,
    pub url: String,
    pub submit_to_running_secs: f64,
    pub replaced: Vec<String>,
    pub savepoint: Option<String>,
    pub restored_from: Option<RestoredFrom>,
    pub allow_non_restored_state: bool,
    pub state_note: Option<String>,
}

/// The lab's dependencies of a job, checked before anything is changed: the cluster answers,
/// no earlier submit is in flight, the slots are there, the topic exists, the database answers.
async fn preflight(
    lab: &Lab,
    client: &flink::Client,
    settings: &JobSettings,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<()> {
    client.overview().await.with_context(|| {
        match crate::model::topology::context_for(&lab.config, Part::Flink) {
            Some(ext) => format!("the {ext} does not answer"),
            None => "the Flink cluster is not up; start it with `labctl up`".into(),
        }
    })?;
    settle_interrupted_submit(client, &lab.config.project, Duration::from_secs(60), progress)
        .await?;
    wait_for_slots(
        client,
        lab,
        settings.parallelism,
        timeout.max(Duration::from_secs(90)),
        progress,
    )
    .await?;
    // The topic must exist: a Kafka source on a missing topic waits silently forever.
    let topic = &lab.config.broker.topic;
    match lab.broker()?.partitions(topic, Duration::from_secs(5)).await {
        Ok(Some(_)) => {}
        Ok(None) => bail!("topic `{topic}` does not exist; `labctl up` creates it"),
        Err(e) => bail!("the broker is not reachable ({e:#}); check `labctl status`"),
    }
    lab.database()?
        .probe(Duration::from_secs(5))
        .await
        .context("the database is not reachable; check `labctl status`")?;
    Ok(())
}

/// What the new job starts from, after the running copy it replaces is stopped.
#[derive(Default)]
struct Handover {
    restore: Option<Snapshot>,
    savepoint: Option<String>,
    replaced: Vec<String>,
    state_note: Option<String>,
}

/// Stops the running copies of the lab's job: the first with a savepoint the new job restores
/// from (unless `fresh`). When the savepoint fails the job is cancelled, and the new job
/// restores from its newest retained checkpoint instead (kept on cancel), so the windows in
/// flight are not lost and nothing is read twice from the group's committed offsets.
async fn replace_running(
    lab: &Lab,
    client: &flink::Client,
    running: &[flink::JobOverview],
    fresh: bool,
    progress: &dyn Progress,
) -> Result<Handover> {
    let mut h = Handover::default();
    for (i, j) in running.iter().enumerate() {
        h.replaced.push(j.jid.clone());
        if i == 0 && !fresh {
            let target_dir = job::lab_savepoint_uri(&lab.config);
            progress.note(&format!("stopping {} with a savepoint into {target_dir} …", j.jid));
            match stop_with_savepoint(client, &j.jid, &target_dir, Duration::from_secs(120)).await {
                Ok(path) => {
                    progress.note(&format!(
                        "stopped {} with savepoint {path}; the new job restores from it",
                        j.jid
                    ));
                    h.restore =
                        Some(Snapshot { kind: "savepoint", path: path.clone(), modified: 0.0 });
                    h.savepoint = Some(path);
                    continue;
                }
                Err(e) => {
                    progress.note(&format!(
                        "the savepoint of {} failed ({e:#}); cancelling it instead, the new job restores from its newest retained checkpoint",
                        j.jid
                    ));
                    client.cancel(&j.jid).await?;
                    wait_terminal(client, &j.jid, Duration::from_secs(60)).await?;
                    progress.note(&format!("cancelled {}", j.jid));
                    match retained_snapshots(lab).await.map(|l| l.into_iter().next()) {
                        Ok(Some(r)) => {
                            progress.note(&format!(
                                "restoring from the retained {} {}",
                                r.kind, r.path
                            ));
                            h.restore = Some(r);
                        }
                        found => {
                            let why = match found {
                                Err(e) => format!("cannot list retained checkpoints ({e:#})"),
                                Ok(_) => "no retained checkpoint".to_string(),
                            };
                            let note = format!("the savepoint of {} failed and there is {why}: its state is NOT carried over, the new job starts from the consumer group's committed offsets", j.jid);
                            progress.note(&note);
                            h.state_note = Some(note);
                        }
                    }
                    continue;
                }
            }
        }
        client.cancel(&j.jid).await?;
        wait_terminal(client, &j.jid, Duration::from_secs(60)).await?;
        progress.note(&format!("cancelled {}", j.jid));
    }
    if fresh {
        h.state_note = Some("--fresh: the replaced job's state is not carried over".into());
    }
    Ok(h)
}

/// Submits a prepared script and waits until the job and all its tasks run. The lab's job is
/// never started beside a running copy of itself: that is refused, or replaced on request.
pub async fn submit(
    lab: &Lab,
    prepared: &Prepared,
    req: &SubmitRequest,
    progress: &dyn Progress,
) -> Result<Submitted> {
    // Two submits at once take turns: the second sees the first's job and refuses (or replaces
    // it with --replace) instead of starting a second copy.
    let _lock = crate::ops::lab::lock_lab(&lab.config.project, "submit flink", progress).await?;
    submit_holding_lock(lab, prepared, req, progress).await
}

/// `submit` for a caller that holds the lab's lock already (`up`).
pub(crate) async fn submit_holding_lock(
    lab: &Lab,
    prepared: &Prepared,
    req: &SubmitRequest,
    progress: &dyn Progress,
) -> Result<Submitted> {
    let client = lab.flink(Duration::from_secs(10))?;
    let settings = JobSettings::for_lab(&lab.config);
    preflight(lab, &client, &settings, req.timeout, progress).await?;

    let statements = &prepared.statements;
    let lab_job = prepared.lab_job;
    let empty = job::empty_partitions(&lab.config);
    if lab_job && !empty.is_empty() {
        let list = empty.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
        progress.note(&format!(
            "warning: no machine of the lab's fleet is keyed to partition {list} of {}, so a partition without records stops holding back event time after {} s; after a longer pause (the broker down, the generator stopped) readings can reach their windows late (`labctl verify` finds them, `--repair` fixes them); a fleet or broker.partitions that fills every partition avoids it",
            lab.config.broker.partitions, settings.idle_timeout_secs
        ));
    }
    // A custom script names its job with SET 'pipeline.name'; only the lab's own job is checked
    // for a running copy, but the name also finds a job after an unclear answer.
    let name = if lab_job { job::job_name(&lab.config.project) } else { String::new() };
    let lookup_name =
        if lab_job { name.clone() } else { pipeline_name(statements).unwrap_or_default() };
    let running: Vec<_> = client
        .jobs()
        .await?
        .into_iter()
        .filter(|j| lab_job && j.name == name && j.state.is_active())
        .collect();

    let mut h = Handover::default();
    if !running.is_empty() {
        if !req.replace {
            let ids: Vec<_> = running.iter().map(|j| format!("{} ({})", j.jid, j.state)).collect();
            bail!("the job `{name}` is already running: {}; use --replace to stop it with a savepoint and resubmit it", ids.join(", "));
        }
        h = replace_running(lab, &client, &running, req.fresh, progress).await?;
    } else if lab_job && !req.fresh {
        match retained_snapshots(lab).await {
            Ok(list) => h.restore = list.into_iter().next(),
            Err(e) => progress.note(&format!(
                "warning: cannot list retained checkpoints ({e:#}); starting without saved state"
            )),
        }
        if let Some(r) = &h.restore {
            progress.note(&format!("the job `{name}` is not running; restoring it from the latest retained {} {} (--fresh starts without it)", r.kind, r.path));
        }
    }
    if h.restore.is_some() && req.allow_non_restored_state {
        progress.note("(--allow-non-restored-state: saved state of operators the new job does not have is dropped)");
    }

    if Part::Flink.is_external(&lab.config) {
        warn_about_connectors(&client, progress).await;
    }
    let jar = ensure_runner(lab, &client, progress).await?;
    let argv: Vec<String> = statements.iter().map(|s| B64.encode(s.as_bytes())).collect();
    let before: HashSet<String> = client.jobs().await?.into_iter().map(|j| j.jid).collect();
    let restore_req = h.restore.as_ref().map(|r| flink::Restore {
        path: r.path.clone(),
        allow_non_restored_state: req.allow_non_restored_state,
    });
    progress.note(&format!(
        "submitting the job{} to {}",
        if lookup_name.is_empty() { String::new() } else { format!(" `{lookup_name}`") },
        client.base()
    ));
    let marker = write_marker(&lab.config.project, &lookup_name, &before, progress);
    let t0 = Instant::now();
    let run = RunRequest {
        jar: &jar,
        argv: &argv,
        restore: restore_req.as_ref(),
        lookup_name: &lookup_name,
        before: &before,
        within: Duration::from_secs(60),
        verbose: req.verbose,
    };
    let job_id = run_or_find(&client, &run, progress).await?;
    // Flink lists the job now: a later submit sees it without the marker.
    drop(marker);
    progress.note(&format!("submitted job {job_id}; waiting for it and all its tasks to run"));
    if let Err(e) = wait_running(&client, &job_id, req.timeout).await {
        return Err(failed_start(&client, &job_id, e, &h, req.verbose).await);
    }
    if lab_job {
        if let Err(e) = State::remember_flink_job(&lab.config.project, true) {
            progress.note(&format!("warning: the state file does not record the running job ({e:#}): `labctl up` will not bring it back if it is lost"));
        }
    }
    Ok(Submitted {
        url: format!("{}/#/job/running/{job_id}/overview", client.base()),
        job_id,
        name,
        submit_to_running_secs: t0.elapsed().as_secs_f64(),
        replaced: h.replaced,
        savepoint: h.savepoint,
        allow_non_restored_state: h.restore.is_some() && req.allow_non_restored_state,
        restored_from: h.restore.map(|r| RestoredFrom { kind: r.kind, path: r.path }),
        state_note: h.state_note,
    })
}

/// A job that did not reach RUNNING is cancelled, so nothing half-submitted stays behind; the
/// error says why (Flink's own cause) and what of the old job's state is kept.
async fn failed_start(
    client: &flink::Client,
    job_id: &str,
    e: anyhow::Error,
    h: &Handover,
    verbose: bool,
) -> anyhow::Error {
    let cause = client.last_exception(job_id).await.ok().flatten();
    cancel_quietly(client, job_id).await;
    let unmapped = cause.as_ref().is_some_and(|(_, full)| full.contains("allowNonRestoredState"));
    let hint = match (&h.restore, &h.savepoint) {
        (Some(r), _) if unmapped => format!("\nthe saved state in {} has operators the new job lacks (its SQL changed): add --allow-non-restored-state to drop that state, or --fresh to start without saved state", r.path),
        (Some(r), Some(_)) => format!("\nthe replaced job was stopped; its savepoint {} is kept: fix the job and run `labctl submit flink` to restore from it, or add --fresh", r.path),
        (Some(r), None) => format!("\nit was restoring from {} {}; `labctl submit flink --fresh` starts without that state", r.kind, r.path),
        _ => String::new(),
    };
    match cause {
        Some((c, full)) if verbose => {
            anyhow!("{e:#}\n{full}{hint}").context(format!("job failed: {c}"))
        }
        Some((c, _)) => {
            anyhow!("job {job_id} failed and was cancelled: {c}\n(full text: --verbose){hint}")
        }
        None => anyhow!("{e:#}{hint}").context(format!("job {job_id} was cancelled")),
    }
}

/// Waits until the cluster offers `need` slots, when the lab is sized for that many:
/// after a JobManager restart the TaskManagers take about a minute to register again.
async fn wait_for_slots(
    client: &flink::Client,
    lab: &Lab,
    need: u32,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<()> {
    let taskmanagers = lab.stack.service(stack::FLINK_TM).map_or(0, |s| s.replicas);
    // An external cluster's size is its own business: wait for it like for a restarting one.
    let configured = if Part::Flink.is_external(&lab.config) {
        need
    } else {
        taskmanagers * lab.config.flink.slots_per_taskmanager
    };
    let mut said = false;
    poll_until(
        Every::millis(1000).within(timeout),
        || async {
            let o = client
                .overview()
                .await
                .with_context(|| "the Flink cluster is not up; start it with `labctl up`")?;
            if o.slots_total >= need {
                return Ok(Check::Ready(()));
            }
            if configured < need {
                bail!(
                    "the job needs {need} slots (one per topic partition) but the cluster has {}; add TaskManagers (`labctl scale flink-taskmanager N`)",
                    o.slots_total
                );
            }
            Ok(Check::NotYet(o.slots_total.to_string()))
        },
        |slots| {
            if !said {
                progress.note(&format!(
                    "waiting for TaskManagers: {slots} of {need} slots registered (after a JobManager restart they register again within about a minute)"
                ));
                said = true;
            }
        },
    )
    .await?
    .or_else(|slots, _| {
        anyhow!("only {slots} of {need} task slots registered after {timeout:?}; check `labctl status` and `labctl logs flink-taskmanager`")
    })
}

/// Stops a job with a savepoint into the lab job's savepoint folder; returns the savepoint path
/// once the savepoint is complete and the job has ended.
async fn stop_with_savepoint(
    client: &flink::Client,
    id: &str,
    target_dir: &str,
    timeout: Duration,
) -> Result<String> {
    let trigger = client.stop_with_savepoint(id, target_dir).await?;
    let path = poll_until(
        Every::millis(300).within(timeout),
        || async {
            Ok(match client.savepoint_status(id, &trigger).await? {
                SavepointStatus::Completed(path) => Check::Ready(path),
                SavepointStatus::Failed(cause) => bail!("{cause}"),
                SavepointStatus::InProgress => Check::NotYet("in progress".into()),
            })
        },
        |_| {},
    )
    .await?
    .or_else(|_, _| anyhow!("the savepoint did not complete within {timeout:?}"))?;
    wait_terminal(client, id, Duration::from_secs(60)).await?;
    Ok(path)
}

/// Cancels a job and waits (bounded) until it has ended; for clean-up paths, errors ignored.
async fn cancel_quietly(client: &flink::Client, id: &str) {
    let _ = client.cancel(id).await;
    let _ = wait_terminal(client, id, Duration::from_secs(30)).await;
}

/// Waits until a job and every one of its tasks is RUNNING; an error as soon as it ends or
/// fails, or when `timeout` passes (naming the tasks still waiting).
pub async fn wait_running(client: &flink::Client, id: &str, timeout: Duration) -> Result<()> {
    poll_until(
        Every::millis(300).within(timeout),
        || async {
            let j = client.job(id).await?;
            let all =
                !j.vertices.is_empty() && j.vertices.iter().all(|v| v.status == TaskState::Running);
            if j.state == JobState::Running && all {
                return Ok(Check::Ready(()));
            }
            if j.state.is_terminal() {
                bail!("job {id} ended as {}", j.state);
            }
            if j.state.is_failing() {
                bail!("job {id} is {} (it failed after starting)", j.state);
            }
            let pending: Vec<_> = j
                .vertices
                .iter()
                .filter(|v| v.status != TaskState::Running)
                .map(|v| format!("{} {}", v.status, v.name))
                .collect();
            Ok(Check::NotYet(format!("state {}; waiting: {}", j.state, pending.join("; "))))
        },
        |_| {},
    )
    .await?
    .or_else(|last, _| anyhow!("job {id} not RUNNING within {timeout:?} ({last})"))
}

/// Waits until a job has ended.
pub(crate) async fn wait_terminal(
    client: &flink::Client,
    id: &str,
    timeout: Duration,
) -> Result<()> {
    poll_until(
        Every::millis(300).within(timeout),
        || async {
            let j = client.job(id).await?;
            Ok(if j.state.is_active() {
                Check::NotYet(j.state.to_string())
            } else {
                Check::Ready(())
            })
        },
        |_| {},
    )
    .await?
    .or_else(|_, _| anyhow!("job {id} did not stop within {timeout:?}"))
}

/// Cancels the given job, or every running copy of the lab's job; returns the ids cancelled
/// once each has ended.
pub async fn cancel(lab: &Lab, id: Option<String>) -> Result<Vec<String>> {
    let client = lab.flink(Duration::from_secs(10))?;
    let ids = match id {
        Some(id) => vec![id],
        None => {
            let name = job::job_name(&lab.config.project);
            let ids: Vec<_> = client
                .jobs()
                .await?
                .into_iter()
                .filter(|j| j.name == name && j.state.is_active())
                .map(|j| j.jid)
                .collect();
            if ids.is_empty() {
                bail!("no running job `{name}` to cancel");
            }
            ids
        }
    };
    for id in &ids {
        client.cancel(id).await?;
        wait_terminal(&client, id, Duration::from_secs(60)).await?;
    }
    let name = job::job_name(&lab.config.project);
    let lab_job_left = client.jobs().await?.iter().any(|j| j.name == name && j.state.is_active());
    if !lab_job_left {
        State::remember_flink_job(&lab.config.project, false)?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_name_of_a_script() {
        let st = job::split_statements("SET 'parallelism.default' = '1';\nSET 'pipeline.name' = 'it''s mine';\nINSERT INTO x SELECT 1;");
        assert_eq!(pipeline_name(&st).as_deref(), Some("it's mine"));
        assert_eq!(pipeline_name(&job::split_statements("INSERT INTO x SELECT 1")), None);
    }
}
