//! Flink's REST API, typed: what labctl reads and calls on the JobManager.

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

impl Client {
    pub fn new(base: impl Into<String>, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(timeout).build().context("building an HTTP client")?;
        Ok(Self { base: base.into().trim_end_matches('/').to_string(), http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self.http.get(&url).send().await.with_context(|| format!("Flink REST {url} did not answer"))?;
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
