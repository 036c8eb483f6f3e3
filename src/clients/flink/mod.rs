//! Flink's REST API, typed: what labctl reads and calls on the JobManager.

pub mod metrics;

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Overview {
    pub taskmanagers: u32,
    pub slots_total: u32,
    pub slots_available: u32,
    pub jobs_running: u32,
    pub jobs_finished: u32,
    pub jobs_cancelled: u32,
    pub jobs_failed: u32,
    pub flink_version: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskManager {
    pub id: String,
    pub path: String,
    pub slots_number: u32,
    pub free_slots: u32,
}

#[derive(Debug, Deserialize)]
struct TaskManagers {
    taskmanagers: Vec<TaskManager>,
}

/// Mutual TLS towards a JobManager: the only CA labctl trusts for it, and labctl's own
/// certificate with its key (PEM).
#[derive(Debug, Clone)]
pub struct MutualTls {
    pub ca: String,
    pub identity: String,
}

impl Client {
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Self> {
        Self::with_tls(base, timeout, None)
    }

    pub fn with_tls(
        base: impl Into<String>,
        timeout: Duration,
        tls: Option<&MutualTls>,
    ) -> Result<Self> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(t) = tls {
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(
                    reqwest::Certificate::from_pem(t.ca.as_bytes())
                        .context("the CA certificate of Flink's REST API")?,
                )
                .identity(
                    reqwest::Identity::from_pem(t.identity.as_bytes())
                        .context("labctl's client certificate for Flink's REST API")?,
                );
        }
        let http = builder.build().context("building an HTTP client")?;
        Ok(Self { base: base.into().trim_end_matches('/').to_string(), http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("Flink REST {url} did not answer"))?;
        let resp = resp.error_for_status().with_context(|| format!("Flink REST {url}"))?;
        resp.json().await.with_context(|| format!("Flink REST {url}: unexpected answer"))
    }

    pub async fn overview(&self) -> Result<Overview> {
        self.get("/overview").await
    }

    pub async fn taskmanagers(&self) -> Result<Vec<TaskManager>> {
        Ok(self.get::<TaskManagers>("/taskmanagers").await?.taskmanagers)
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct JarFile {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub uploaded: i64,
}

#[derive(Debug, Deserialize)]
struct Jars {
    #[serde(default)]
    files: Vec<JarFile>,
}

/// A job's state as Flink's REST API names it (its `JobStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Initializing,
    Created,
    Running,
    Failing,
    Failed,
    Cancelling,
    Canceled,
    Finished,
    Restarting,
    Suspended,
    Reconciling,
    /// A state this version of labctl does not know.
    #[serde(other)]
    Unknown,
}

impl JobState {
    /// Ended for good (Flink's "globally terminal"): nothing of it runs or will run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Canceled | Self::Finished)
    }

    /// Holds, or is about to hold, task slots and its source's position: a second copy of the
    /// job beside it would read the topic twice.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Created
                | Self::Initializing
                | Self::Running
                | Self::Restarting
                | Self::Reconciling
                | Self::Failing
                | Self::Cancelling
        )
    }

    /// It ran and failed; Flink is restarting it or about to.
    pub fn is_failing(self) -> bool {
        matches!(self, Self::Restarting | Self::Failing)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initializing => "INITIALIZING",
            Self::Created => "CREATED",
            Self::Running => "RUNNING",
            Self::Failing => "FAILING",
            Self::Failed => "FAILED",
            Self::Cancelling => "CANCELLING",
            Self::Canceled => "CANCELED",
            Self::Finished => "FINISHED",
            Self::Restarting => "RESTARTING",
            Self::Suspended => "SUSPENDED",
            Self::Reconciling => "RECONCILING",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A task's state (Flink's `ExecutionState`), as a job's vertices report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Created,
    Scheduled,
    Deploying,
    Initializing,
    Running,
    Finished,
    Canceling,
    Canceled,
    Failed,
    Reconciling,
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.pad(s.as_ref().and_then(|v| v.as_str()).unwrap_or("UNKNOWN"))
    }
}

state_from_name!(JobState, TaskState);

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct JobOverview {
    pub jid: String,
    pub name: String,
    pub state: JobState,
    #[serde(rename = "start-time")]
    pub start_time: i64,
    #[serde(default)]
    pub duration: i64,
}

#[derive(Debug, Deserialize)]
struct JobsOverview {
    jobs: Vec<JobOverview>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Vertex {
    pub id: String,
    pub name: String,
    pub parallelism: u32,
    pub status: TaskState,
    #[serde(default)]
    pub metrics: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct JobDetails {
    pub jid: String,
    pub name: String,
    pub state: JobState,
    #[serde(rename = "start-time")]
    pub start_time: i64,
    #[serde(default)]
    pub vertices: Vec<Vertex>,
}

/// Error body of Flink's REST API.
#[derive(Debug, Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

/// Why a request that changes the cluster (upload, run, stop) failed, as callers tell the
/// cases apart: whether Flink may have acted on it depends on which one it is.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Flink answered and refused the request.
    #[error(transparent)]
    Refused(#[from] SubmitError),
    /// The request never reached Flink (no connection): nothing happened.
    #[error("Flink REST ({what}) did not answer at {base}")]
    NotSent {
        what: String,
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// Sent, but no usable answer (a timeout, a broken connection, a body that is not the
    /// expected one): Flink may have acted on it.
    #[error("Flink REST ({what}) at {base} gave no usable answer")]
    NoAnswer {
        what: String,
        base: String,
        #[source]
        source: anyhow::Error,
    },
}

/// A job submission that Flink refused; `cause` is the part a user can act on.
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct SubmitError {
    pub cause: String,
    pub full: String,
    /// The HTTP status of the answer: 4xx means Flink refused the request itself; a 5xx (e.g. a
    /// timeout inside the JobManager) leaves open whether the job was started.
    pub status: u16,
}

/// Where a submitted job restores its state from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restore {
    /// A savepoint or retained checkpoint directory (or its `_metadata` file).
    pub path: String,
    /// Let the job start when some saved state belongs to no operator of the new job.
    pub allow_non_restored_state: bool,
}

/// The state of a savepoint operation (`GET /jobs/{id}/savepoints/{trigger}`).
#[derive(Debug, Clone, PartialEq)]
pub enum SavepointStatus {
    InProgress,
    Completed(String),
    Failed(String),
}

/// The message after "The main method caused an error:", else the last "Caused by:", else
/// the first line: what a user needs from an 8 KB stack trace.
pub fn useful_cause(text: &str) -> String {
    const MAIN: &str = "The main method caused an error:";
    if let Some(i) = text.find(MAIN) {
        let rest = text[i + MAIN.len()..].trim_start();
        let line = rest.lines().next().unwrap_or(rest).trim();
        if !line.is_empty() {
            return line.to_string();
        }
    }
    if let Some(i) = text.rfind("Caused by:") {
        let rest = &text[i + "Caused by:".len()..];
        return rest.lines().next().unwrap_or(rest).trim().to_string();
    }
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or(text).trim().to_string()
}

impl Client {
    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> std::result::Result<T, RequestError> {
        let no_answer = |source: anyhow::Error| RequestError::NoAnswer {
            what: what.to_string(),
            base: self.base.clone(),
            source,
        };
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => {
                return Err(RequestError::NotSent {
                    what: what.to_string(),
                    base: self.base.clone(),
                    source: e,
                })
            }
            Err(e) => return Err(no_answer(e.into())),
        };
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let errors =
                serde_json::from_str::<Errors>(&body).map(|e| e.errors.join("\n")).unwrap_or(body);
            return Err(SubmitError {
                cause: useful_cause(&errors),
                full: errors,
                status: status.as_u16(),
            }
            .into());
        }
        serde_json::from_str(&body).map_err(|e| {
            no_answer(anyhow::Error::new(e).context(format!("unexpected answer: {body}")))
        })
    }

    pub async fn jars(&self) -> Result<Vec<JarFile>> {
        Ok(self.get::<Jars>("/jars").await?.files)
    }

    pub async fn upload_jar(&self, name: &str, bytes: Vec<u8>) -> Result<String> {
        #[derive(Deserialize)]
        struct Uploaded {
            filename: String,
        }
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_string())
            .mime_str("application/x-java-archive")?;
        let form = reqwest::multipart::Form::new().part("jarfile", part);
        let req = self
            .http
            .post(format!("{}/jars/upload", self.base))
            .multipart(form)
            .timeout(Duration::from_secs(180));
        let up: Uploaded = self.send_json(req, "jar upload").await?;
        // The answer names the stored file; its last path component is the jar id.
        Ok(up.filename.rsplit('/').next().unwrap_or(&up.filename).to_string())
    }

    /// Runs a jar's main class; Flink answers once the job is submitted (or refuses it).
    /// With `restore`, the job starts from that savepoint or retained checkpoint.
    pub async fn run_jar(
        &self,
        jar_id: &str,
        entry_class: &str,
        args: &[String],
        parallelism: Option<u32>,
        restore: Option<&Restore>,
    ) -> std::result::Result<String, RequestError> {
        #[derive(Deserialize)]
        struct Run {
            jobid: String,
        }
        let mut body = serde_json::json!({ "entryClass": entry_class, "programArgsList": args });
        if let Some(p) = parallelism {
            body["parallelism"] = p.into();
        }
        if let Some(r) = restore {
            body["savepointPath"] = r.path.clone().into();
            body["allowNonRestoredState"] = r.allow_non_restored_state.into();
        }
        // The job's main runs inside the JobManager (planning, first-time class loading): on a
        // fresh or busy cluster that takes well over the usual request timeout.
        let req = self
            .http
            .post(format!("{}/jars/{jar_id}/run", self.base))
            .json(&body)
            .timeout(Duration::from_secs(180));
        let run: Run = self.send_json(req, "jar run").await?;
        Ok(run.jobid)
    }

    pub async fn jobs(&self) -> Result<Vec<JobOverview>> {
        Ok(self.get::<JobsOverview>("/jobs/overview").await?.jobs)
    }

    pub async fn job(&self, id: &str) -> Result<JobDetails> {
        self.get(&format!("/jobs/{id}")).await
    }

    /// The newest failure of a job, reduced to its useful cause (full text second).
    pub async fn last_exception(&self, id: &str) -> Result<Option<(String, String)>> {
        let v: serde_json::Value = self.get(&format!("/jobs/{id}/exceptions")).await?;
        let entries = v["exceptionHistory"]["entries"].as_array().cloned().unwrap_or_default();
        Ok(entries
            .first()
            .and_then(|e| e["stacktrace"].as_str())
            .map(|s| (useful_cause(s), s.to_string())))
    }

    pub async fn cancel(&self, id: &str) -> Result<()> {
        let url = format!("{}/jobs/{id}?mode=cancel", self.base);
        let resp =
            self.http.patch(&url).send().await.with_context(|| format!("cancelling job {id}"))?;
        resp.error_for_status().with_context(|| format!("cancelling job {id}"))?;
        Ok(())
    }

    /// Aggregated metric of a job's vertices, e.g. `numLateRecordsDropped`.
    pub async fn vertex_metric(&self, job: &str, vertex: &str, metric: &str) -> Result<f64> {
        let v: serde_json::Value = self
            .get(&format!(
                "/jobs/{job}/vertices/{vertex}/subtasks/metrics?get={}&agg=sum",
                url_escape(metric)
            ))
            .await?;
        Ok(v.as_array().and_then(|a| a.first()).and_then(|m| m["sum"].as_f64()).unwrap_or(0.0))
    }

    /// Names of a vertex's metrics (they carry operator prefixes that differ per plan).
    pub async fn vertex_metric_names(&self, job: &str, vertex: &str) -> Result<Vec<String>> {
        let v: serde_json::Value =
            self.get(&format!("/jobs/{job}/vertices/{vertex}/subtasks/metrics")).await?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    /// Records dropped as late by any operator of the job (Flink's `numLateRecordsDropped`).
    /// Non-zero means readings were silently lost: event time ran ahead of some partition.
    pub async fn late_records_dropped(&self, job: &str) -> Result<f64> {
        let details = self.job(job).await?;
        let mut total = 0.0;
        for v in &details.vertices {
            for name in self.vertex_metric_names(job, &v.id).await? {
                if name.ends_with("numLateRecordsDropped") {
                    total += self.vertex_metric(job, &v.id, &name).await?;
                }
            }
        }
        Ok(total)
    }

    /// Records the job's sources emitted and its sinks took in since the job (re)started.
    /// Vertex-level counters do not work here: chaining puts source and sink in one vertex.
    pub async fn records_in_out(&self, job: &str) -> Result<(f64, f64)> {
        let details = self.job(job).await?;
        let (mut input, mut output) = (0.0, 0.0);
        for v in &details.vertices {
            let names = self.vertex_metric_names(job, &v.id).await?;
            let wanted: Vec<&String> = names
                .iter()
                .filter(|n| {
                    (n.starts_with("Source__") && n.ends_with(".numRecordsOut"))
                        || (n.contains("Sink") && n.ends_with(".numRecordsIn"))
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let list = wanted.iter().map(|n| url_escape(n)).collect::<Vec<_>>().join(",");
            let vals: serde_json::Value = self
                .get(&format!("/jobs/{job}/vertices/{}/subtasks/metrics?get={list}&agg=sum", v.id))
                .await?;
            for m in vals.as_array().into_iter().flatten() {
                let (id, sum) = (m["id"].as_str().unwrap_or(""), m["sum"].as_f64().unwrap_or(0.0));
                if id.starts_with("Source__") {
                    input += sum;
                } else {
                    output += sum;
                }
            }
        }
        Ok((input, output))
    }

    /// The JobManager's class path (`/jobmanager/environment`): the jars in its `lib/`.
    pub async fn jobmanager_classpath(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Environment {
            #[serde(default)]
            classpath: Vec<String>,
        }
        Ok(self.get::<Environment>("/jobmanager/environment").await?.classpath)
    }

    pub async fn checkpoints(&self, job: &str) -> Result<serde_json::Value> {
        self.get(&format!("/jobs/{job}/checkpoints")).await
    }

    /// What a job restored from when it started (`latest.restored` of its checkpoint
    /// statistics): (path, is_savepoint), or None for a job that started without state.
    pub async fn restored_from(&self, job: &str) -> Result<Option<(String, bool)>> {
        let cp = self.checkpoints(job).await?;
        let r = &cp["latest"]["restored"];
        Ok(r["external_path"]
            .as_str()
            .map(|p| (p.to_string(), r["is_savepoint"].as_bool().unwrap_or(false))))
    }

    /// Stops a job with a savepoint into `target_dir` (`POST /jobs/{id}/stop`, no drain: event
    /// time is not advanced to the end, so open windows stay open in the savepoint). Returns the
    /// trigger id to poll with [`Client::savepoint_status`].
    pub async fn stop_with_savepoint(&self, job: &str, target_dir: &str) -> Result<String> {
        #[derive(Deserialize)]
        struct Trigger {
            #[serde(rename = "request-id")]
            request_id: String,
        }
        let body = serde_json::json!({ "targetDirectory": target_dir, "drain": false });
        let req = self.http.post(format!("{}/jobs/{job}/stop", self.base)).json(&body);
        let t: Trigger = self.send_json(req, "stop with savepoint").await?;
        Ok(t.request_id)
    }

    pub async fn savepoint_status(&self, job: &str, trigger: &str) -> Result<SavepointStatus> {
        let v: serde_json::Value = self.get(&format!("/jobs/{job}/savepoints/{trigger}")).await?;
        if v["status"]["id"].as_str() != Some("COMPLETED") {
            return Ok(SavepointStatus::InProgress);
        }
        let op = &v["operation"];
        Ok(match op["location"].as_str() {
            Some(loc) => SavepointStatus::Completed(loc.to_string()),
            None => {
                let cause = &op["failure-cause"];
                let text = cause["stack-trace"]
                    .as_str()
                    .or(cause["serialized-throwable"].as_str())
                    .unwrap_or("");
                let text = if text.is_empty() { cause.to_string() } else { useful_cause(text) };
                SavepointStatus::Failed(text)
            }
        })
    }
}

/// Metric names carry brackets (`GlobalWindowAggregate[8].…`), which must be escaped in a query.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_escaped() {
        assert_eq!(
            url_escape("GlobalWindowAggregate[8].numLateRecordsDropped"),
            "GlobalWindowAggregate%5B8%5D.numLateRecordsDropped"
        );
    }

    #[test]
    fn useful_cause_picks_the_actionable_line() {
        let t = "org.apache.flink.client.program.ProgramInvocationException: The main method caused an error: SQL validation failed. Column 'avg_val' not found\n\tat org...\nCaused by: x";
        assert_eq!(useful_cause(t), "SQL validation failed. Column 'avg_val' not found");
        assert_eq!(useful_cause("java.lang.Exception: a\nCaused by: b\nCaused by: java.net.ConnectException: refused\n\tat x"), "java.net.ConnectException: refused");
    }
}
