//! The Delta Lake's storage: Azure Blob (Azurite in the lab), spoken to with Shared Key
//! authentication. Just the calls labctl needs; no SDK.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2021-08-06";

#[derive(Debug, Clone)]
pub struct BlobClient {
    /// Path-style endpoint including the account, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    endpoint: String,
    account: String,
    key: Vec<u8>,
    http: reqwest::Client,
}

impl BlobClient {
    pub fn azurite(host: &str, port: u16, timeout: Duration) -> Result<Self> {
        Self::new(&format!("http://{host}:{port}/{DEV_ACCOUNT}"), DEV_ACCOUNT, DEV_KEY, timeout)
    }

    pub fn new(endpoint: &str, account: &str, key_b64: &str, timeout: Duration) -> Result<Self> {
        let key = B64.decode(key_b64).context("the storage account key is not valid base64")?;
        let http = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(Self { endpoint: endpoint.trim_end_matches('/').to_string(), account: account.to_string(), key, http })
    }

    /// Signs and sends one request. `path` is below the account (e.g. `/lake`), `query` unencoded.
    async fn send(&self, method: reqwest::Method, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Response> {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let url_path = format!("{}{}", url_path_of(&self.endpoint), path);
        // Content-Length is signed as empty when zero (API versions since 2015-02-21).
        // Canonicalized resource: "/account" + URI path, then the query parameters sorted.
        let mut resource = format!("/{}{}", self.account, url_path);
        let mut q: Vec<_> = query.iter().map(|(k, v)| (k.to_ascii_lowercase(), *v)).collect();
        q.sort();
        for (k, v) in &q {
            resource.push_str(&format!("\n{k}:{v}"));
        }
        let to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n{resource}"
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).context("HMAC key")?;
        mac.update(to_sign.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        let url = format!("{}{}", self.endpoint, path);
        let resp = self
            .http
            .request(method, &url)
            .query(query)
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header("Content-Length", "0")
            .header("Authorization", format!("SharedKey {}:{sig}", self.account))
            .send()
            .await
            .with_context(|| format!("blob storage at {} did not answer", self.endpoint))?;
        Ok(resp)
    }

    pub async fn list_containers(&self) -> Result<Vec<String>> {
        let resp = self.send(reqwest::Method::GET, "", &[("comp", "list")]).await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("listing blob containers failed: HTTP {status}: {}", first_line(&body));
        }
        Ok(xml_values(&body, "Name"))
    }

    /// Creates the container; an existing one is fine.
    pub async fn create_container(&self, name: &str) -> Result<bool> {
        let resp = self.send(reqwest::Method::PUT, &format!("/{name}"), &[("restype", "container")]).await?;
        let status = resp.status();
        if status.as_u16() == 409 {
            return Ok(false);
        }
        if !status.is_success() {
            bail!("creating blob container {name} failed: HTTP {status}: {}", first_line(&resp.text().await?));
        }
        Ok(true)
    }

    /// Blob names in a container under a prefix (first 5000).
    pub async fn list_blobs(&self, container: &str, prefix: &str) -> Result<Vec<String>> {
        let mut q = vec![("restype", "container"), ("comp", "list")];
        if !prefix.is_empty() {
            q.push(("prefix", prefix));
        }
        let resp = self.send(reqwest::Method::GET, &format!("/{container}"), &q).await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("listing blobs of {container} failed: HTTP {status}: {}", first_line(&body));
        }
        Ok(xml_values(&body, "Name"))
    }
}

/// What storage says about one Delta table (from blob names alone, no log parsing).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeltaSummary {
    pub table: String,
    /// Newest commit in `_delta_log`, None if the table does not exist yet.
    pub version: Option<u64>,
    /// `year=/month=/day=` folders holding data files.
    pub partitions: usize,
    pub data_files: usize,
}

impl BlobClient {
    pub async fn delta_summary(&self, container: &str, table: &str) -> Result<DeltaSummary> {
        let blobs = self.list_blobs(container, &format!("{table}/")).await?;
        let log_prefix = format!("{table}/_delta_log/");
        let version = blobs
            .iter()
            .filter_map(|b| b.strip_prefix(&log_prefix)?.strip_suffix(".json")?.parse::<u64>().ok())
            .max();
        let data: Vec<&String> = blobs.iter().filter(|b| !b.starts_with(&log_prefix) && b.ends_with(".parquet")).collect();
        let mut dirs: Vec<&str> = data.iter().filter_map(|b| b.rsplit_once('/').map(|(d, _)| d)).collect();
        dirs.sort_unstable();
        dirs.dedup();
        Ok(DeltaSummary { table: table.to_string(), version, partitions: dirs.len(), data_files: data.len() })
    }
}

fn url_path_of(endpoint: &str) -> String {
    let after_scheme = endpoint.split_once("://").map(|(_, r)| r).unwrap_or(endpoint);
    after_scheme.find('/').map(|i| after_scheme[i..].to_string()).unwrap_or_default()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Text of every `<tag>…</tag>`; enough for the flat listings the Blob API returns.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"));
        rest = &rest[j + close.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_names() {
        let xml = "<E><Containers><Container><Name>a</Name></Container><Container><Name>b&amp;c</Name></Container></Containers></E>";
        assert_eq!(xml_values(xml, "Name"), vec!["a", "b&c"]);
    }

    #[test]
    fn path_of_endpoint() {
        assert_eq!(url_path_of("http://127.0.0.1:10000/devstoreaccount1"), "/devstoreaccount1");
        assert_eq!(url_path_of("https://acct.blob.core.windows.net"), "");
    }
}
