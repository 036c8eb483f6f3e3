//! Spark standalone master: its JSON status page and the REST submission server.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Client {
    ui: String,
    rest: String,
    http: reqwest::Client,
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

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub struct Worker {
    pub id: String,
    pub host: String,
    pub state: String,
    pub cores: u32,
    pub coresused: u32,
    pub memory: u64,
    pub memoryused: u64,
}

impl Client {
    pub fn new(ui: impl Into<String>, rest: impl Into<String>, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(timeout).build().context("building an HTTP client")?;
        Ok(Self { ui: ui.into(), rest: rest.into(), http })
    }

    /// The master's status page as JSON (`/json/`; `/json` redirects).
    pub async fn master(&self) -> Result<MasterState> {
        let url = format!("{}/json/", self.ui.trim_end_matches('/'));
        let resp = self.http.get(&url).send().await.with_context(|| format!("Spark master {url} did not answer"))?;
        resp.error_for_status()?.json().await.with_context(|| format!("Spark master {url}: unexpected answer"))
    }

    pub fn alive_workers(state: &MasterState) -> usize {
        state.workers.iter().filter(|w| w.state == "ALIVE").count()
    }

    /// The REST submission server answers (any HTTP answer counts; GET on its root is a 400).
    pub async fn rest_answers(&self) -> Result<()> {
        let url = format!("{}/v1/submissions/status/none", self.rest.trim_end_matches('/'));
        self.http.get(&url).send().await.with_context(|| format!("Spark REST server {url} did not answer"))?;
        Ok(())
    }
}
