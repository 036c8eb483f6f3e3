//! A submit whose run request may be in flight when it dies: the run request is either answered
//! or its job looked for, and a marker in the state folder lets the next submit find the job a
//! killed one started, so no job is started twice.

use std::{collections::HashSet, time::Duration};

use anyhow::{bail, Context, Result};

use super::{job::RUNNER_ENTRY_CLASS, runner::explain_submit_error};
use crate::ops::lab::pid_alive;
use crate::{
    clients::flink::{self, RequestError},
    progress::Progress,
    stack::state::submit_marker_path,
    wait::{poll_until, Check, Every, Waited},
};

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

fn classify_run_error(e: &RequestError) -> RunFailure {
    match e {
        RequestError::Refused(se) if se.status < 500 => RunFailure::Refused,
        RequestError::NotSent { .. } => RunFailure::NotSent,
        RequestError::Refused(_) | RequestError::NoAnswer { .. } => RunFailure::Unknown,
    }
}

/// An error and its causes on one line, as anyhow's `{:#}` shows them.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// After a run request that failed without a clear answer: the job it started anyway, if any.
/// Matches by job name (or, for a script without a name, any job that was not there before).
async fn find_started_job(
    client: &flink::Client,
    name: &str,
    before: &HashSet<String>,
    within: Duration,
) -> Result<Option<String>> {
    let waited = poll_until(
        Every::millis(1000).within(within),
        || async {
            let jobs = client.jobs().await.unwrap_or_default();
            Ok(
                match jobs
                    .iter()
                    .find(|j| !before.contains(&j.jid) && (name.is_empty() || j.name == name))
                {
                    Some(j) => Check::Ready(j.jid.clone()),
                    None => Check::NotYet("not listed".into()),
                },
            )
        },
        |_| {},
    )
    .await?;
    Ok(match waited {
        Waited::Ready(id) => Some(id),
        Waited::TimedOut { .. } => None,
    })
}

/// One run request of the SQL runner jar.
pub(super) struct RunRequest<'a> {
    pub jar: &'a str,
    pub argv: &'a [String],
    pub restore: Option<&'a flink::Restore>,
    /// The name the job will have ("" for a script that sets none).
    pub lookup_name: &'a str,
    /// The jobs Flink listed before the request.
    pub before: &'a HashSet<String>,
    /// How long to look for a job an unclear answer may have started.
    pub within: Duration,
    pub verbose: bool,
}

/// Runs the SQL runner jar. When the request fails without a clear answer (client-side
/// timeout, broken connection, server error), Flink may still have started the job: it is looked
/// for by name among the jobs that were not there `before`, for up to `within`, and taken as the
/// submitted job if found.
pub(super) async fn run_or_find(
    client: &flink::Client,
    req: &RunRequest<'_>,
    progress: &dyn Progress,
) -> Result<String> {
    let RunRequest { jar, argv, restore, lookup_name, before, within, verbose } = *req;
    let e = match client.run_jar(jar, RUNNER_ENTRY_CLASS, argv, None, restore).await {
        Ok(id) => return Ok(id),
        Err(e) => e,
    };
    match classify_run_error(&e) {
        RunFailure::Refused | RunFailure::NotSent => Err(explain_submit_error(e, verbose)),
        RunFailure::Unknown => {
            let why = with_sources(&e);
            progress.note(&format!("the run request failed without a clear answer ({why}); Flink may have started the job anyway: looking for it for up to {within:?}"));
            match find_started_job(client, lookup_name, before, within).await? {
                Some(id) => {
                    progress.note(&format!("found job {id}: Flink started it after all"));
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
pub(super) struct MarkerGuard(std::path::PathBuf);

impl Drop for MarkerGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn write_marker(
    project: &str,
    name: &str,
    before: &HashSet<String>,
    progress: &dyn Progress,
) -> Option<MarkerGuard> {
    let path = submit_marker_path(project);
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
            progress.note(&format!(
                "warning: cannot write {} ({e:#}); a submit interrupted now could be repeated",
                path.display()
            ));
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

/// Before a submit: what an earlier one left in flight. Refuses while another submit of this
/// lab runs; after one that was killed with its run request out, waits (up to `within`) until
/// the job that request starts shows, so the normal checks below see it (and refuse, or replace
/// it with --replace) instead of starting a second copy.
pub(super) async fn settle_interrupted_submit(
    client: &flink::Client,
    project: &str,
    within: Duration,
    progress: &dyn Progress,
) -> Result<()> {
    let path = submit_marker_path(project);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    if let Ok(m) = serde_json::from_str::<SubmitMarker>(&text) {
        let age_ms = chrono::Utc::now().timestamp_millis() - m.sent_ms;
        if m.pid != std::process::id() && pid_alive(m.pid) && age_ms < 3_600_000 {
            bail!("another `labctl submit flink` (pid {}) is submitting to this lab; wait for it to end", m.pid);
        }
        if !m.name.is_empty() {
            progress.note(&format!(
                "an earlier `labctl submit flink` (pid {}) ended while its run request was in flight; looking for the job `{}` it may have started (up to {within:?})",
                m.pid, m.name
            ));
            let waited = poll_until(
                Every::millis(500).within(within),
                || async {
                    let jobs = client.jobs().await.unwrap_or_default();
                    Ok(match interrupted_job(&m, &jobs) {
                        Some(j) => Check::Ready(format!("{} ({})", j.jid, j.state)),
                        None => Check::NotYet("not listed".into()),
                    })
                },
                |_| {},
            )
            .await?;
            progress.note(&match waited {
                Waited::Ready(job) => format!("found job {job}, started by the interrupted submit"),
                Waited::TimedOut { .. } => {
                    "no job appeared: the interrupted request started none".into()
                }
            });
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clients::flink::SubmitError, progress::Quiet};

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
        let req = |within| RunRequest {
            jar: "jar",
            argv: &[],
            restore: None,
            lookup_name: "lab: sensor aggregation",
            before: &before,
            within,
            verbose: false,
        };
        let id = run_or_find(&client, &req(Duration::from_secs(3)), &Quiet).await.unwrap();
        assert_eq!(id, "new2");

        let client = flink::Client::new(fake_flink(false).await, Duration::from_secs(5)).unwrap();
        let e = run_or_find(&client, &req(Duration::from_secs(2)), &Quiet).await.unwrap_err();
        assert!(format!("{e:#}").contains("no job `lab: sensor aggregation` appeared"), "{e:#}");
    }

    #[test]
    fn refused_and_unclear_run_failures() {
        let refused: RequestError =
            SubmitError { cause: "x".into(), full: "x".into(), status: 400 }.into();
        assert_eq!(classify_run_error(&refused), RunFailure::Refused);
        let server: RequestError =
            SubmitError { cause: "x".into(), full: "x".into(), status: 500 }.into();
        assert_eq!(classify_run_error(&server), RunFailure::Unknown);
        let cut = RequestError::NoAnswer {
            what: "jar run".into(),
            base: "http://127.0.0.1:1".into(),
            source: anyhow::anyhow!("body cut off"),
        };
        assert_eq!(classify_run_error(&cut), RunFailure::Unknown);
    }
}
