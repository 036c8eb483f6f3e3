//! `labctl submit flink`, `labctl flink jobs|cancel`: the streaming job on the lab's Flink
//! session cluster, through the SQL-runner jar and Flink's REST API.

use std::{
    collections::HashSet,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};

use crate::model::topology;
use crate::{
    clients::{
        docker::Runtime,
        flink::{self, SavepointStatus, SubmitError, TaskState},
    },
    model::{config::Config, schema, topology::Part},
    ops::{
        flink_job::{self, JobSettings, RUNNER_ENTRY_CLASS, RUNNER_JAR_NAME},
        lab::Lab,
    },
    stack::FLINK_JM,
};

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Render and check the job locally; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace this lab's running job: stop it with a savepoint and start the new job from that
    /// savepoint (cancels it instead, without carrying its state over, if the savepoint fails).
    #[arg(long)]
    pub replace: bool,
    /// Start without saved state: no savepoint on --replace, and no restore from the latest
    /// retained checkpoint or savepoint when the lab's job is not running.
    #[arg(long)]
    pub fresh: bool,
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

const ACTIVE: &[&str] =
    &["CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING", "FAILING", "CANCELLING"];

/// The lab's job as SQL; without the lab's state (never started) the password is a placeholder.
pub fn render(config: &Config, lab_state: Option<&crate::stack::state::State>) -> Result<String> {
    let password = match lab_state {
        Some(s) => crate::stack::endpoints::database_password(config, s)?,
        None => "<filled in by labctl submit flink>".into(),
    };
    flink_job::render(config, &password, &JobSettings::for_lab(config))
}

/// Local checks: statement kinds, one job, sink tables exist in the schema.
fn validate(statements: &[String]) -> Result<()> {
    let inserts: Vec<_> = statements.iter().filter(|s| flink_job::kind(s) == "INSERT").collect();
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

/// A retained checkpoint or savepoint of the lab's job in the flink-data volume.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// "checkpoint" or "savepoint".
    pub kind: &'static str,
    /// Its directory as Flink names it (`file:///var/lib/flink/…/chk-N`).
    pub path: String,
    /// Modification time of its `_metadata`, seconds since the epoch.
    pub modified: f64,
}

/// Parses `find -printf '%T@ %h\n'` lines of `_metadata` files into snapshots, newest first.
/// A checkpoint directory without `_metadata` was never completed and is not listed by find.
fn parse_snapshots(listing: &str) -> Vec<Snapshot> {
    let mut out: Vec<Snapshot> = listing
        .lines()
        .filter_map(|l| {
            let (t, dir) = l.trim().split_once(' ')?;
            let base = dir.rsplit('/').next()?;
            let kind = if base.starts_with("chk-") {
                "checkpoint"
            } else if base.starts_with("savepoint-") {
                "savepoint"
            } else {
                return None;
            };
            Some(Snapshot { kind, path: format!("file://{dir}"), modified: t.parse().ok()? })
        })
        .collect();
    out.sort_by(|a, b| b.modified.total_cmp(&a.modified));
    out
}

/// Runs a command in a container and returns its standard output.
async fn exec_output(rt: &Runtime, container: &str, cmd: &[&str]) -> Result<String> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures_util::StreamExt;
    let exec = rt
        .docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("running {} in {container}", cmd.join(" ")))?;
    let mut stdout = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        rt.docker.start_exec(&exec.id, None).await?
    {
        while let Some(chunk) = output.next().await {
            if let bollard::container::LogOutput::StdOut { message } = chunk? {
                stdout.push_str(&String::from_utf8_lossy(&message));
            }
        }
    }
    Ok(stdout)
}

/// The lab job's retained checkpoints and savepoints in the flink-data volume, newest first,
/// listed inside the JobManager container (which mounts the volume).
pub async fn retained_snapshots(lab: &Lab) -> Result<Vec<Snapshot>> {
    if Part::Flink.is_external(&lab.config) {
        return rest_snapshots(lab).await;
    }
    let rt = Runtime::connect().await?;
    let jm = lab.stack.container_name(FLINK_JM, 1);
    let script = format!(
        "find {} {} -mindepth 2 -maxdepth 3 -name _metadata -printf '%T@ %h\\n' 2>/dev/null; true",
        flink_job::lab_checkpoint_dir(),
        flink_job::lab_savepoint_dir()
    );
    let listing = exec_output(&rt, &jm, &["bash", "-c", &script])
        .await
        .context("listing the retained checkpoints and savepoints")?;
    Ok(parse_snapshots(&listing))
}

/// On a cluster labctl cannot look into: the newest completed checkpoint or savepoint Flink
/// still reports for an ended job of the lab's name (`/jobs/{id}/checkpoints`). After a
/// JobManager restart without HA that history is gone; the job then starts without state.
async fn rest_snapshots(lab: &Lab) -> Result<Vec<Snapshot>> {
    let client = lab.flink(Duration::from_secs(10))?;
    let name = flink_job::job_name(&lab.config.project);
    let mut ended: Vec<_> = client
        .jobs()
        .await?
        .into_iter()
        .filter(|j| j.name == name && !ACTIVE.contains(&j.state.as_str()))
        .collect();
    ended.sort_by_key(|j| std::cmp::Reverse(j.start_time));
    let mut out = Vec::new();
    for j in ended {
        let Ok(cp) = client.checkpoints(&j.jid).await else { continue };
        for (kind, key) in [("savepoint", "savepoint"), ("checkpoint", "completed")] {
            let c = &cp["latest"][key];
            if let (Some(path), Some(t)) =
                (c["external_path"].as_str(), c["latest_ack_timestamp"].as_f64())
            {
                out.push(Snapshot { kind, path: path.to_string(), modified: t / 1000.0 });
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out.sort_by(|a, b| b.modified.total_cmp(&a.modified));
    Ok(out)
}

/// The value of `SET 'pipeline.name' = '…'` in a script: the name its job will have.
fn pipeline_name(statements: &[String]) -> Option<String> {
    statements.iter().filter(|s| flink_job::kind(s) == "SET").find_map(|s| {
        let (k, v) = s["SET".len()..].split_once('=')?;
        let unquote = |x: &str| x.trim().trim_matches(|c| c == '\'' || c == '`').replace("''", "'");
        (unquote(k) == "pipeline.name").then(|| unquote(v))
    })
}

/// How a failed run request leaves the cluster.
#[derive(Debug, PartialEq)]
enum RunFailure {
    /// Flink answered and refused the job: nothing was started.
    Refused,
    /// The request never reached Flink (connection refused): nothing was started.
    NotSent,
    /// A timeout, a broken connection or a server error: the job may have started anyway.
    Unknown,
}

fn classify_run_error(e: &anyhow::Error) -> RunFailure {
    if let Some(se) = e.downcast_ref::<SubmitError>() {
        return if se.status < 500 { RunFailure::Refused } else { RunFailure::Unknown };
    }
    match e.downcast_ref::<reqwest::Error>() {
        Some(re) if re.is_connect() => RunFailure::NotSent,
        _ => RunFailure::Unknown,
    }
}

/// After a run request that failed without a clear answer: the job it started anyway, if any.
/// Matches by job name (or, for a script without a name, any job that was not there before).
async fn find_started_job(
    client: &flink::Client,
    name: &str,
    before: &HashSet<String>,
    within: Duration,
) -> Option<String> {
    let start = Instant::now();
    loop {
        if let Ok(jobs) = client.jobs().await {
            if let Some(j) = jobs
                .iter()
                .find(|j| !before.contains(&j.jid) && (name.is_empty() || j.name == name))
            {
                return Some(j.jid.clone());
            }
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the SQL runner jar. When the request fails without a clear answer (client-side
/// timeout, broken connection, server error), Flink may still have started the job: it is looked
/// for by name among the jobs that were not there `before`, for up to `within`, and taken as the
/// submitted job if found.
#[allow(clippy::too_many_arguments)]
async fn run_or_find(
    client: &flink::Client,
    jar: &str,
    argv: &[String],
    restore: Option<&flink::Restore>,
    lookup_name: &str,
    before: &HashSet<String>,
    within: Duration,
    verbose: bool,
) -> Result<String> {
    let e = match client.run_jar(jar, RUNNER_ENTRY_CLASS, argv, None, restore).await {
        Ok(id) => return Ok(id),
        Err(e) => e,
    };
    match classify_run_error(&e) {
        RunFailure::Refused | RunFailure::NotSent => Err(explain_submit_error(e, verbose)),
        RunFailure::Unknown => {
            eprintln!("the run request failed without a clear answer ({e:#}); Flink may have started the job anyway: looking for it for up to {within:?}");
            match find_started_job(client, lookup_name, before, within).await {
                Some(id) => {
                    eprintln!("found job {id}: Flink started it after all");
                    Ok(id)
                }
                None => {
                    let which = if lookup_name.is_empty() {
                        String::new()
                    } else {
                        format!("`{lookup_name}` ")
                    };
                    Err(explain_submit_error(e, verbose).context(format!(
                        "no job {which}appeared within {within:?}, so none was started"
                    )))
                }
            }
        }
    }
}

/// Left in the state folder while a submit's run request may be in flight. A submit killed at
/// that moment (SIGKILL, a closed terminal) never sees the answer, but Flink carries on and
/// starts the job a moment later; without the marker the next submit would find no job yet
/// and start a second one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SubmitMarker {
    pid: u32,
    /// When the run request went out, ms since the epoch.
    sent_ms: i64,
    /// The name the job will have ("" for a script that sets none).
    name: String,
    /// The jobs Flink listed before the request: the request's job is none of them.
    before: Vec<String>,
}

/// Removes the marker when the submit ends, however it ends short of being killed.
struct MarkerGuard(std::path::PathBuf);

impl Drop for MarkerGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_marker(project: &str, name: &str, before: &HashSet<String>) -> Option<MarkerGuard> {
    let path = crate::stack::state::submit_marker_path(project);
    let m = SubmitMarker {
        pid: std::process::id(),
        sent_ms: chrono::Utc::now().timestamp_millis(),
        name: name.to_string(),
        before: before.iter().cloned().collect(),
    };
    let written = serde_json::to_vec(&m)
        .map_err(anyhow::Error::from)
        .and_then(|b| std::fs::write(&path, b).map_err(anyhow::Error::from));
    match written {
        Ok(()) => Some(MarkerGuard(path)),
        Err(e) => {
            eprintln!(
                "warning: cannot write {} ({e:#}); a submit interrupted now could be repeated",
                path.display()
            );
            None
        }
    }
}

/// The job an interrupted submit's request started: its name, and not listed before it.
fn interrupted_job<'a>(
    m: &SubmitMarker,
    jobs: &'a [flink::JobOverview],
) -> Option<&'a flink::JobOverview> {
    jobs.iter().find(|j| j.name == m.name && !m.before.contains(&j.jid))
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Before a submit: what an earlier one left in flight. Refuses while another submit of this
/// lab runs; after one that was killed with its run request out, waits (up to `within`) until
/// the job that request starts shows, so the normal checks below see it (and refuse, or replace
/// it with --replace) instead of starting a second copy.
async fn settle_interrupted_submit(
    client: &flink::Client,
    project: &str,
    within: Duration,
) -> Result<()> {
    let path = crate::stack::state::submit_marker_path(project);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    if let Ok(m) = serde_json::from_str::<SubmitMarker>(&text) {
        let age_ms = chrono::Utc::now().timestamp_millis() - m.sent_ms;
        if m.pid != std::process::id() && pid_alive(m.pid) && age_ms < 3_600_000 {
            bail!("another `labctl submit flink` (pid {}) is submitting to this lab; wait for it to end", m.pid);
        }
        if !m.name.is_empty() {
            eprintln!(
                "an earlier `labctl submit flink` (pid {}) ended while its run request was in flight; looking for the job `{}` it may have started (up to {within:?})",
                m.pid, m.name
            );
            let start = Instant::now();
            loop {
                if let Ok(jobs) = client.jobs().await {
                    if let Some(j) = interrupted_job(&m, &jobs) {
                        eprintln!(
                            "found job {} ({}), started by the interrupted submit",
                            j.jid, j.state
                        );
                        break;
                    }
                }
                if start.elapsed() > within {
                    eprintln!("no job appeared: the interrupted request started none");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(())
}

/// Waits until the cluster offers `need` slots, when the lab is sized for that many:
/// after a JobManager restart the TaskManagers take about a minute to register again.
async fn wait_for_slots(
    client: &flink::Client,
    lab: &Lab,
    need: u32,
    timeout: Duration,
) -> Result<()> {
    let taskmanagers = lab.stack.service(crate::stack::FLINK_TM).map_or(0, |s| s.replicas);
    // An external cluster's size is its own business: wait for it like for a restarting one.
    let configured = if Part::Flink.is_external(&lab.config) {
        need
    } else {
        taskmanagers * lab.config.flink.slots_per_taskmanager
    };
    let start = Instant::now();
    let mut said = false;
    loop {
        let o = client
            .overview()
            .await
            .with_context(|| "the Flink cluster is not up; start it with `labctl up`")?;
        if o.slots_total >= need {
            return Ok(());
        }
        if configured < need {
            bail!(
                "the job needs {need} slots (one per topic partition) but the cluster has {}; add TaskManagers (`labctl scale flink-taskmanager N`)",
                o.slots_total
            );
        }
        if start.elapsed() > timeout {
            bail!("only {} of {need} task slots registered after {timeout:?}; check `labctl status` and `labctl logs flink-taskmanager`", o.slots_total);
        }
        if !said {
            eprintln!(
                "waiting for TaskManagers: {} of {need} slots registered (after a JobManager restart they register again within about a minute)",
                o.slots_total
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
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
    let start = Instant::now();
    loop {
        match client.savepoint_status(id, &trigger).await? {
            SavepointStatus::Completed(path) => {
                wait_terminal(client, id, Duration::from_secs(60)).await?;
                return Ok(path);
            }
            SavepointStatus::Failed(cause) => bail!("{cause}"),
            SavepointStatus::InProgress => {}
        }
        if start.elapsed() > timeout {
            bail!("the savepoint did not complete within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Cancels a job and waits (bounded) until it has ended; for clean-up paths, errors ignored.
async fn cancel_quietly(client: &flink::Client, id: &str) {
    let _ = client.cancel(id).await;
    let _ = wait_terminal(client, id, Duration::from_secs(30)).await;
}

pub async fn submit(config: Config, args: SubmitArgs) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let script = match &args.file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => render(&lab.config, Some(&lab.state))?,
    };
    let statements = flink_job::split_statements(&script);
    if args.file.is_none() {
        validate(&statements)?;
    } else if !statements.iter().any(|s| flink_job::kind(s) == "INSERT") {
        bail!("the script has no INSERT statement, so it would start no job");
    }
    if args.dry_run {
        eprintln!(
            "rendered {} statements ({} INSERT); nothing submitted",
            statements.len(),
            statements.iter().filter(|s| flink_job::kind(s) == "INSERT").count()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let client = lab.flink(Duration::from_secs(10))?;
    client.overview().await.with_context(|| {
        match topology::context_for(&lab.config, Part::Flink) {
            Some(ext) => format!("the {ext} does not answer"),
            None => "the Flink cluster is not up; start it with `labctl up`".into(),
        }
    })?;
    settle_interrupted_submit(&client, &lab.config.project, Duration::from_secs(60)).await?;
    let settings = JobSettings::for_lab(&lab.config);
    wait_for_slots(&client, &lab, settings.parallelism, Duration::from_secs(args.timeout.max(90)))
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

    let lab_job = args.file.is_none();
    let name = match &args.file {
        // A custom script names its job with SET 'pipeline.name'; only the lab's own job is
        // checked for a running copy, but the name also finds a job after an unclear answer.
        Some(_) => String::new(),
        None => flink_job::job_name(&lab.config.project),
    };
    let lookup_name =
        if lab_job { name.clone() } else { pipeline_name(&statements).unwrap_or_default() };
    let jobs = client.jobs().await?;
    let running: Vec<_> = jobs
        .iter()
        .filter(|j| lab_job && j.name == name && ACTIVE.contains(&j.state.as_str()))
        .cloned()
        .collect();

    // What the new job starts from: a savepoint of the job it replaces, the latest retained
    // checkpoint or savepoint of a job that is gone, or nothing.
    let mut restore: Option<Snapshot> = None;
    let mut savepoint: Option<String> = None;
    let mut replaced = Vec::new();
    let mut state_note: Option<String> = None;
    if !running.is_empty() {
        if !args.replace {
            let ids: Vec<_> = running.iter().map(|j| format!("{} ({})", j.jid, j.state)).collect();
            bail!("the job `{name}` is already running: {}; use --replace to stop it with a savepoint and resubmit it", ids.join(", "));
        }
        for (i, j) in running.iter().enumerate() {
            replaced.push(j.jid.clone());
            if i == 0 && !args.fresh {
                let target_dir = flink_job::lab_savepoint_uri(&lab.config);
                eprintln!("stopping {} with a savepoint into {target_dir} …", j.jid);
                match stop_with_savepoint(&client, &j.jid, &target_dir, Duration::from_secs(120))
                    .await
                {
                    Ok(path) => {
                        eprintln!(
                            "stopped {} with savepoint {path}; the new job restores from it",
                            j.jid
                        );
                        restore =
                            Some(Snapshot { kind: "savepoint", path: path.clone(), modified: 0.0 });
                        savepoint = Some(path);
                        continue;
                    }
                    Err(e) => {
                        let note = format!(
                            "the savepoint of {} failed ({e:#}); cancelling it instead: its state is NOT carried over, the new job starts fresh from the consumer group's committed offsets",
                            j.jid
                        );
                        eprintln!("{note}");
                        state_note = Some(note);
                    }
                }
            }
            client.cancel(&j.jid).await?;
            wait_terminal(&client, &j.jid, Duration::from_secs(60)).await?;
            eprintln!("cancelled {}", j.jid);
        }
        if args.fresh {
            state_note = Some("--fresh: the replaced job's state is not carried over".into());
        }
    } else if lab_job && !args.fresh {
        match retained_snapshots(&lab).await {
            Ok(list) => restore = list.into_iter().next(),
            Err(e) => eprintln!(
                "warning: cannot list retained checkpoints ({e:#}); starting without saved state"
            ),
        }
        if let Some(r) = &restore {
            eprintln!("the job `{name}` is not running; restoring it from the latest retained {} {} (--fresh starts without it)", r.kind, r.path);
        }
    }
    if restore.is_some() {
        eprintln!("(non-restored state allowed: saved state of operators the new job does not have is dropped, so a changed job still starts)");
    }

    if Part::Flink.is_external(&lab.config) {
        warn_about_connectors(&client).await;
    }
    let jar = ensure_runner(&lab, &client).await?;
    let argv: Vec<String> = statements.iter().map(|s| B64.encode(s.as_bytes())).collect();
    let before: HashSet<String> = client.jobs().await?.into_iter().map(|j| j.jid).collect();
    let restore_req = restore
        .as_ref()
        .map(|r| flink::Restore { path: r.path.clone(), allow_non_restored_state: true });
    eprintln!(
        "submitting the job{} to {}",
        if lookup_name.is_empty() { String::new() } else { format!(" `{lookup_name}`") },
        client.base()
    );
    let marker = write_marker(&lab.config.project, &lookup_name, &before);
    let t0 = Instant::now();
    let job_id = run_or_find(
        &client,
        &jar,
        &argv,
        restore_req.as_ref(),
        &lookup_name,
        &before,
        Duration::from_secs(60),
        args.verbose,
    )
    .await?;
    // Flink lists the job now: a later submit sees it without the marker.
    drop(marker);
    eprintln!("submitted job {job_id}; waiting for it and all its tasks to run");
    if let Err(e) = wait_running(&client, &job_id, Duration::from_secs(args.timeout)).await {
        // Leave nothing half-submitted behind.
        let cause = client.last_exception(&job_id).await.ok().flatten();
        cancel_quietly(&client, &job_id).await;
        let hint = match (&restore, &savepoint) {
            (Some(r), Some(_)) => format!("\nthe replaced job was stopped; its savepoint {} is kept: fix the job and run `labctl submit flink` to restore from it, or add --fresh", r.path),
            (Some(r), None) => format!("\nit was restoring from {} {}; `labctl submit flink --fresh` starts without that state", r.kind, r.path),
            _ => String::new(),
        };
        return Err(match cause {
            Some((c, full)) if args.verbose => {
                anyhow::anyhow!("{e:#}\n{full}{hint}").context(format!("job failed: {c}"))
            }
            Some((c, _)) => anyhow::anyhow!(
                "job {job_id} failed and was cancelled: {c}\n(full text: --verbose){hint}"
            ),
            None => anyhow::anyhow!("{e:#}{hint}").context(format!("job {job_id} was cancelled")),
        });
    }
    let secs = t0.elapsed().as_secs_f64();
    let url = format!("{}/#/job/running/{job_id}/overview", client.base());
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "job_id": job_id,
                "name": name,
                "url": url,
                "submit_to_running_secs": secs,
                "replaced": replaced,
                "savepoint": savepoint,
                "restored_from": restore.as_ref().map(|r| serde_json::json!({ "kind": r.kind, "path": r.path })),
                "allow_non_restored_state": restore.is_some(),
                "state_note": state_note,
            })
        );
    } else {
        let from = match &restore {
            Some(r) => format!("\n  restored from {} {}", r.kind, r.path),
            None if !replaced.is_empty() => {
                "\n  started WITHOUT the replaced job's state".to_string()
            }
            None => String::new(),
        };
        eprintln!("job `{name}` RUNNING after {secs:.1} s\n  id  {job_id}\n  ui  {url}{from}");
    }
    Ok(ExitCode::SUCCESS)
}

fn explain_submit_error(e: anyhow::Error, verbose: bool) -> anyhow::Error {
    if let Some(hint) = e
        .downcast_ref::<SubmitError>()
        .and_then(|se| missing_connector(&format!("{}\n{}", se.cause, se.full)))
    {
        return anyhow::anyhow!("Flink refused the job: {hint}");
    }
    match e.downcast::<SubmitError>() {
        Ok(se) if verbose => {
            anyhow::anyhow!("Flink refused the job: {}\n--- full error ---\n{}", se.cause, se.full)
        }
        Ok(se) => anyhow::anyhow!("Flink refused the job: {}\n(full text: --verbose)", se.cause),
        Err(e) => e,
    }
}

pub(crate) async fn find_or_explain_runner(client: &flink::Client) -> Result<String> {
    let jars = client.jars().await?;
    match jars.iter().find(|j| j.name == RUNNER_JAR_NAME) {
        Some(j) => Ok(j.id.clone()),
        None => bail!(
            "the Flink cluster has no {RUNNER_JAR_NAME}; the lab's Flink image provides it: recreate the JobManager with `labctl up`"
        ),
    }
}

/// The SQL runner's jar id on the cluster. The lab's own JobManager lists it from the start;
/// an external cluster gets it uploaded, taken from the lab's Flink image (built if missing),
/// so the runner always matches the job labctl renders.
async fn ensure_runner(lab: &Lab, client: &flink::Client) -> Result<String> {
    if !Part::Flink.is_external(&lab.config) {
        return find_or_explain_runner(client).await;
    }
    let name = external_runner_name();
    if let Some(j) = client.jars().await?.into_iter().find(|j| j.name == name) {
        return Ok(j.id);
    }
    let rt = Runtime::connect()
        .await
        .context("the SQL runner jar comes from the lab's Flink image, which needs Docker here")?;
    let pb = indicatif::ProgressBar::new_spinner();
    pb.enable_steady_tick(Duration::from_millis(120));
    let (image, _) = rt.ensure_image(&crate::stack::FLINK_IMAGE, false, &pb).await?;
    pb.finish_and_clear();
    let bytes = rt.file_from_image(&image, RUNNER_JAR_PATH).await?;
    eprintln!("uploading {name} ({} KiB, from {image}) to {}", bytes.len() / 1024, client.base());
    client.upload_jar(&name, bytes).await.context("uploading the SQL runner jar")
}

/// The runner's name on a cluster labctl does not run, versioned by the Flink image's input
/// hash (which covers the runner's sources): a cluster that holds an older runner, e.g. one
/// without a UDF the job now calls, gets this one instead of running the job with the old.
fn external_runner_name() -> String {
    format!(
        "labctl-sql-runner-{}.jar",
        crate::clients::docker::images::input_hash(&crate::stack::FLINK_IMAGE)
    )
}

/// Connector jars the lab's job needs on a cluster: (what, file name prefixes that provide it).
const CONNECTORS: &[(&str, &[&str])] = &[
    ("the Kafka connector", &["flink-connector-kafka", "flink-sql-connector-kafka"]),
    ("the Kafka client", &["kafka-clients", "flink-sql-connector-kafka"]),
    ("the JDBC connector", &["flink-connector-jdbc"]),
    ("the PostgreSQL JDBC driver", &["postgresql-", "flink-connector-jdbc-postgres"]),
];

/// What of `CONNECTORS` a class path lacks, judged by jar file names.
fn missing_jars(classpath: &[String]) -> Vec<&'static str> {
    let names: Vec<&str> = classpath.iter().map(|p| p.rsplit('/').next().unwrap_or(p)).collect();
    CONNECTORS
        .iter()
        .filter(|(_, prefixes)| !names.iter().any(|n| prefixes.iter().any(|p| n.starts_with(p))))
        .map(|(what, _)| *what)
        .collect()
}

/// Warns before submitting to an external cluster whose JobManager shows no jar for a
/// connector the job needs. Only a warning: a jar of another name may still provide it, and the
/// planner's answer (see `missing_connector`) is the final word.
async fn warn_about_connectors(client: &flink::Client) {
    match client.jobmanager_classpath().await {
        Ok(cp) => {
            let missing = missing_jars(&cp);
            if !missing.is_empty() {
                eprintln!(
                    "warning: the Flink cluster's class path shows no jar for {}; the job needs them in the lib/ of its JobManager and TaskManagers (Flink 2.x builds of flink-connector-kafka, kafka-clients, flink-connector-jdbc-core, flink-connector-jdbc-postgres and the PostgreSQL driver)",
                    missing.join(", ")
                );
            }
        }
        Err(e) => tracing::debug!("no class path from the JobManager: {e:#}"),
    }
}

/// The SQL runner in the lab's Flink image.
const RUNNER_JAR_PATH: &str = "/opt/flink/usrlib/labctl-sql-runner.jar";

/// A job that fails because the cluster lacks a connector fails while planning, with this text.
fn missing_connector(cause: &str) -> Option<&'static str> {
    if !cause.contains("Could not find any factory for identifier") {
        return None;
    }
    Some(if cause.contains("'kafka'") {
        "the Flink cluster has no Kafka connector: put flink-connector-kafka and kafka-clients jars (for its Flink 2.x version) into its lib/ and restart it"
    } else if cause.contains("'jdbc'") {
        "the Flink cluster has no JDBC connector: put flink-connector-jdbc-core, flink-connector-jdbc-postgres and the PostgreSQL driver jars into its lib/ and restart it"
    } else {
        "the Flink cluster lacks a connector the job uses; add its jar to the cluster's lib/"
    })
}

pub(crate) async fn wait_running(
    client: &flink::Client,
    id: &str,
    timeout: Duration,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let j = client.job(id).await?;
        let all =
            !j.vertices.is_empty() && j.vertices.iter().all(|v| v.status == TaskState::Running);
        match j.state.as_str() {
            "RUNNING" if all => return Ok(()),
            "FAILED" | "CANCELED" | "FINISHED" => bail!("job {id} ended as {}", j.state),
            "RESTARTING" | "FAILING" => bail!("job {id} is {} (it failed after starting)", j.state),
            _ => {}
        }
        if start.elapsed() > timeout {
            let pending: Vec<_> = j
                .vertices
                .iter()
                .filter(|v| v.status != TaskState::Running)
                .map(|v| format!("{} {}", v.status, v.name))
                .collect();
            bail!(
                "job {id} not RUNNING within {timeout:?} (state {}; waiting: {})",
                j.state,
                pending.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn wait_terminal(client: &flink::Client, id: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let j = client.job(id).await?;
        if !ACTIVE.contains(&j.state.as_str()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("job {id} did not stop within {timeout:?}")
}

pub async fn command(config: Config, cmd: FlinkCommand) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let client = lab.flink(Duration::from_secs(10))?;
    match cmd {
        FlinkCommand::Jobs { json } => {
            let jobs = client
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
            let ids = match id {
                Some(id) => vec![id],
                None => {
                    let name = flink_job::job_name(&lab.config.project);
                    let ids: Vec<_> = client
                        .jobs()
                        .await?
                        .into_iter()
                        .filter(|j| j.name == name && ACTIVE.contains(&j.state.as_str()))
                        .map(|j| j.jid)
                        .collect();
                    if ids.is_empty() {
                        bail!("no running job `{name}` to cancel");
                    }
                    ids
                }
            };
            for id in ids {
                client.cancel(&id).await?;
                wait_terminal(&client, &id, Duration::from_secs(60)).await?;
                eprintln!("cancelled {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_complete_snapshot_first() {
        let listing = "1700000010.5 /var/lib/flink/checkpoints/sensor-aggregation/aaa/chk-7\n\
                       1700000030.25 /var/lib/flink/savepoints/sensor-aggregation/savepoint-aaa-1\n\
                       1700000020.0 /var/lib/flink/checkpoints/sensor-aggregation/bbb/chk-3\n\
                       1700000040.0 /var/lib/flink/checkpoints/sensor-aggregation/bbb/shared\n";
        let s = parse_snapshots(listing);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            Snapshot {
                kind: "savepoint",
                path: "file:///var/lib/flink/savepoints/sensor-aggregation/savepoint-aaa-1".into(),
                modified: 1700000030.25
            }
        );
        assert_eq!(s[1].path, "file:///var/lib/flink/checkpoints/sensor-aggregation/bbb/chk-3");
        assert_eq!(s[1].kind, "checkpoint");
        assert!(parse_snapshots("").is_empty());
    }

    #[test]
    fn the_job_of_an_interrupted_submit_is_the_new_one() {
        let job = |jid: &str, name: &str, state: &str| flink::JobOverview {
            jid: jid.into(),
            name: name.into(),
            state: state.into(),
            start_time: 1,
            duration: 0,
        };
        let m = SubmitMarker {
            pid: 1,
            sent_ms: 0,
            name: "lab: sensor aggregation".into(),
            before: vec!["old".into()],
        };
        // A job of the same name cancelled just before the request is not the request's job.
        let jobs =
            vec![job("old", "lab: sensor aggregation", "CANCELED"), job("x", "other", "RUNNING")];
        assert!(interrupted_job(&m, &jobs).is_none());
        let mut jobs = jobs;
        jobs.push(job("new", "lab: sensor aggregation", "INITIALIZING"));
        assert_eq!(interrupted_job(&m, &jobs).map(|j| j.jid.as_str()), Some("new"));
    }

    #[test]
    fn connector_jars_by_name() {
        let lab_image: Vec<String> = [
            "flink-dist-2.2.1.jar",
            "flink-connector-jdbc-core-4.0.0-2.0.jar",
            "flink-connector-jdbc-postgres-4.0.0-2.0.jar",
            "flink-connector-kafka-5.0.0-2.2.jar",
            "kafka-clients-4.2.0.jar",
            "postgresql-42.7.14.jar",
        ]
        .iter()
        .map(|j| format!("/opt/flink/lib/{j}"))
        .collect();
        assert!(missing_jars(&lab_image).is_empty());
        assert_eq!(
            missing_jars(&lab_image[..1]),
            [
                "the Kafka connector",
                "the Kafka client",
                "the JDBC connector",
                "the PostgreSQL JDBC driver"
            ]
        );
        let fat = vec!["/x/flink-sql-connector-kafka-5.0.0-2.2.jar".to_string()];
        assert_eq!(missing_jars(&fat), ["the JDBC connector", "the PostgreSQL JDBC driver"]);
    }

    #[test]
    fn a_missing_connector_is_named() {
        let kafka = "org.apache.flink.table.api.ValidationException: Could not find any factory for identifier 'kafka' that implements 'org.apache.flink.table.factories.DynamicTableFactory' in the classpath.";
        assert!(missing_connector(kafka).unwrap().contains("Kafka connector"));
        assert!(missing_connector(&kafka.replace("'kafka'", "'jdbc'"))
            .unwrap()
            .contains("JDBC connector"));
        assert!(missing_connector("Column 'avg_val' not found").is_none());
    }

    #[test]
    fn pipeline_name_of_a_script() {
        let st = flink_job::split_statements("SET 'parallelism.default' = '1';\nSET 'pipeline.name' = 'it''s mine';\nINSERT INTO x SELECT 1;");
        assert_eq!(pipeline_name(&st).as_deref(), Some("it's mine"));
        assert_eq!(pipeline_name(&flink_job::split_statements("INSERT INTO x SELECT 1")), None);
    }

    /// A fake JobManager: the run request's connection is dropped without an answer (as after a
    /// client-side timeout), while the job list shows the job the request started anyway.
    async fn fake_flink(job_listed: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    if req.starts_with("POST /jars/") {
                        return; // dropped: no answer
                    }
                    let jobs = if job_listed {
                        r#"{"jobs":[{"jid":"old1","name":"lab: sensor aggregation","state":"CANCELED","start-time":1},{"jid":"new2","name":"lab: sensor aggregation","state":"CREATED","start-time":2},{"jid":"other","name":"x","state":"RUNNING","start-time":3}]}"#
                    } else {
                        r#"{"jobs":[{"jid":"old1","name":"lab: sensor aggregation","state":"CANCELED","start-time":1}]}"#
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jobs}", jobs.len());
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_job_started_despite_a_failed_run_request_is_found() {
        let client = flink::Client::new(fake_flink(true).await, Duration::from_secs(5)).unwrap();
        let before = HashSet::from(["old1".to_string()]);
        let id = run_or_find(
            &client,
            "jar",
            &[],
            None,
            "lab: sensor aggregation",
            &before,
            Duration::from_secs(3),
            false,
        )
        .await
        .unwrap();
        assert_eq!(id, "new2");

        let client = flink::Client::new(fake_flink(false).await, Duration::from_secs(5)).unwrap();
        let e = run_or_find(
            &client,
            "jar",
            &[],
            None,
            "lab: sensor aggregation",
            &before,
            Duration::from_secs(2),
            false,
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("no job `lab: sensor aggregation` appeared"), "{e:#}");
    }

    #[test]
    fn refused_and_unclear_run_failures() {
        let refused: anyhow::Error =
            SubmitError { cause: "x".into(), full: "x".into(), status: 400 }.into();
        assert_eq!(classify_run_error(&refused), RunFailure::Refused);
        let server: anyhow::Error =
            SubmitError { cause: "x".into(), full: "x".into(), status: 500 }.into();
        assert_eq!(classify_run_error(&server), RunFailure::Unknown);
        assert_eq!(classify_run_error(&anyhow::anyhow!("body cut off")), RunFailure::Unknown);
    }
}
