//! Spark standalone master: its JSON status page and the REST submission server.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Client {
    ui: String,
    rest: String,
    http: reqwest::Client,
    /// The key REST requests' tokens are signed with, when the server checks them.
    token_key: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub struct MasterState {
    pub url: String,
    pub status: String,
    #[serde(default)]
    pub workers: Vec<Worker>,
    #[serde(default)]
    pub cores: u32,
    #[serde(default)]
    pub coresused: u32,
    #[serde(default)]
    pub activedrivers: Vec<serde_json::Value>,
    #[serde(default)]
    pub completeddrivers: Vec<serde_json::Value>,
}

/// A worker's state as the master reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerState {
    Alive,
    Dead,
    Decommissioned,
    #[serde(other)]
    Unknown,
}

/// A driver's state as the REST submission server reports it (Spark's `DriverState`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DriverState {
    Submitted,
    Running,
    Relaunching,
    Finished,
    Killed,
    Failed,
    Error,
    #[default]
    #[serde(other)]
    Unknown,
}

impl DriverState {
    /// The driver has ended and will not run again: its outcome can be read.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Killed | Self::Failed | Self::Error)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "SUBMITTED",
            Self::Running => "RUNNING",
            Self::Relaunching => "RELAUNCHING",
            Self::Finished => "FINISHED",
            Self::Killed => "KILLED",
            Self::Failed => "FAILED",
            Self::Error => "ERROR",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for DriverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

state_from_name!(WorkerState, DriverState);

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub struct Worker {
    pub id: String,
    pub host: String,
    pub state: WorkerState,
    pub cores: u32,
    pub coresused: u32,
    pub memory: u64,
    pub memoryused: u64,
}

impl Client {
    pub fn new(ui: impl Into<String>, rest: impl Into<String>, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building an HTTP client")?;
        Ok(Self { ui: ui.into(), rest: rest.into(), http, token_key: None })
    }

    /// Signs every REST request with a token of this key (base64url, as the master's
    /// JWSFilter has it).
    pub fn with_token_key(mut self, key: &str) -> Result<Self> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key.trim_end_matches('='))
            .context("the key of Spark's REST tokens is not base64url")?;
        anyhow::ensure!(
            bytes.len() >= 32,
            "the key of Spark's REST tokens is shorter than 256 bits"
        );
        self.token_key = Some(bytes);
        Ok(self)
    }

    /// A request to the REST server, with a fresh token when the server wants one.
    fn rest_request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token_key {
            Some(key) => req.bearer_auth(token(key, unix_now())),
            None => req,
        }
    }

    /// The master's status page as JSON (`/json/`; `/json` redirects).
    pub async fn master(&self) -> Result<MasterState> {
        let url = format!("{}/json/", self.ui.trim_end_matches('/'));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("Spark master {url} did not answer"))?;
        resp.error_for_status()?
            .json()
            .await
            .with_context(|| format!("Spark master {url}: unexpected answer"))
    }

    pub fn alive_workers(state: &MasterState) -> usize {
        state.workers.iter().filter(|w| w.state == WorkerState::Alive).count()
    }

    /// The REST submission server answers (any HTTP answer counts; GET on its root is a 400).
    pub async fn rest_answers(&self) -> Result<()> {
        let url = format!("{}/v1/submissions/status/none", self.rest.trim_end_matches('/'));
        let resp = self
            .rest_request(reqwest::Method::GET, &url)
            .send()
            .await
            .with_context(|| format!("Spark REST server {url} did not answer"))?;
        refused(resp.status())?;
        Ok(())
    }
}

/// An HS256 JWS (what Spark's JWSFilter checks) that expires in five minutes: a token seen on
/// the way is of no use for long.
pub fn token(key: &[u8], now: u64) -> String {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
    use hmac::Mac;
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64.encode(format!(r#"{{"iss":"labctl","iat":{now},"exp":{}}}"#, now + 300));
    let signed = format!("{header}.{claims}");
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    format!("{signed}.{}", B64.encode(mac.finalize().into_bytes()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The REST server's filter turned the request away: retrying will not help.
fn refused(status: reqwest::StatusCode) -> Result<()> {
    if matches!(status.as_u16(), 401 | 403) {
        anyhow::bail!("Spark's REST server refused labctl's request (HTTP {status}): its token key is not the one in the lab's state file (spark.rest_tokens); `labctl up` gives the master the state file's key");
    }
    Ok(())
}

/// Answer of the REST submission server.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmissionStatus {
    #[serde(default)]
    pub submission_id: String,
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub driver_state: Option<DriverState>,
    #[serde(default)]
    pub worker_host_port: Option<String>,
    #[serde(default)]
    pub worker_id: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl SubmissionStatus {
    pub fn finished(&self) -> bool {
        self.driver_state.is_some_and(DriverState::is_final)
    }
}

/// A PythonRunner submission in cluster mode.
#[derive(Debug, Clone)]
pub struct Submission {
    pub app_name: String,
    /// URL of the .py file as the worker that runs the driver reaches it (`file:`, `http(s):`):
    /// the worker fetches it into the driver's work dir first.
    pub app_resource: String,
    /// The application's own arguments.
    pub args: Vec<String>,
    pub master_url: String,
    pub properties: Vec<(String, String)>,
}

impl Client {
    async fn rest_json(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<SubmissionStatus> {
        let resp = req.send().await.with_context(|| {
            format!("Spark REST server ({what}) did not answer at {}", self.rest)
        })?;
        let status = resp.status();
        refused(status)?;
        let body = resp.text().await.unwrap_or_default();
        let parsed: SubmissionStatus = serde_json::from_str(&body)
            .with_context(|| format!("Spark REST server ({what}): HTTP {status}: {body}"))?;
        Ok(parsed)
    }

    pub async fn create(&self, s: &Submission) -> Result<String> {
        let mut props = serde_json::Map::new();
        props.insert("spark.master".into(), s.master_url.clone().into());
        props.insert("spark.submit.deployMode".into(), "cluster".into());
        props.insert("spark.app.name".into(), s.app_name.clone().into());
        for (k, v) in &s.properties {
            props.insert(k.clone(), v.clone().into());
        }
        // PythonRunner's arguments: the .py file, the --py-files list (none), then the app's.
        // The worker replaces an argument that is exactly {{USER_JAR}} with the local path it
        // fetched the app resource to.
        let mut app_args = vec!["{{USER_JAR}}".to_string(), String::new()];
        app_args.extend(s.args.iter().cloned());
        let body = serde_json::json!({
            "action": "CreateSubmissionRequest",
            "clientSparkVersion": "4.0.5",
            "mainClass": "org.apache.spark.deploy.PythonRunner",
            "appResource": s.app_resource,
            "appArgs": app_args,
            "environmentVariables": { "PYTHONUNBUFFERED": "1" },
            "sparkProperties": props,
        });
        let url = format!("{}/v1/submissions/create", self.rest.trim_end_matches('/'));
        let r = self
            .rest_json(self.rest_request(reqwest::Method::POST, &url).json(&body), "create")
            .await?;
        if !r.success || r.submission_id.is_empty() {
            anyhow::bail!("Spark refused the submission: {}", r.message.unwrap_or_default());
        }
        Ok(r.submission_id)
    }

    pub async fn status(&self, id: &str) -> Result<SubmissionStatus> {
        let url = format!("{}/v1/submissions/status/{id}", self.rest.trim_end_matches('/'));
        self.rest_json(self.rest_request(reqwest::Method::GET, &url), "status").await
    }

    pub async fn kill(&self, id: &str) -> Result<SubmissionStatus> {
        let url = format!("{}/v1/submissions/kill/{id}", self.rest.trim_end_matches('/'));
        self.rest_json(self.rest_request(reqwest::Method::POST, &url), "kill").await
    }
}

#[cfg(test)]
mod token_tests {
    /// Python's hmac and base64 give the same token for the same key and clock (the header is
    /// the one Spark's JWSFilter documents).
    #[test]
    fn a_token_is_an_hs256_jws_that_expires_in_five_minutes() {
        assert_eq!(
            super::token(&[1u8; 32], 1_700_000_000),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJsYWJjdGwiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMDMwMH0.TtQTyHsz-P2sH9MghLE4NVAcGnu-rsjuTt68JOc7_4k"
        );
    }
}
