//! The Delta Lake's storage: Azure Blob (Azurite in the lab), spoken to with Shared Key
//! authentication. Just the calls labctl needs; no SDK.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::topology::{DEV_ACCOUNT, DEV_KEY};
const API_VERSION: &str = "2021-08-06";
/// Service SAS version: its string-to-sign (since 2020-12-06) has the encryption scope field.
const SAS_VERSION: &str = "2021-08-06";

/// A request body and its Content-Type (both signed).
struct Body<'a> {
    bytes: &'a [u8],
    content_type: &'a str,
}

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
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            account: account.to_string(),
            key,
            http,
        })
    }

    /// Signs (Shared Key) and sends one request. `path` is below the account (e.g. `/lake`),
    /// `query` unencoded; `ms_headers` are extra `x-ms-*` headers, which the signature covers.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        ms_headers: &[(&str, &str)],
        body: Option<Body<'_>>,
    ) -> Result<reqwest::Response> {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let url_path = format!("{}{}", url_path_of(&self.endpoint), path);
        let mut headers: Vec<(String, &str)> =
            ms_headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), *v)).collect();
        headers.extend([
            ("x-ms-date".to_string(), date.as_str()),
            ("x-ms-version".to_string(), API_VERSION),
        ]);
        let (length, content_type) =
            body.as_ref().map(|b| (b.bytes.len(), b.content_type)).unwrap_or((0, ""));
        let to_sign = shared_key_string_to_sign(
            method.as_str(),
            length,
            content_type,
            &headers,
            &self.account,
            &url_path,
            query,
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).context("HMAC key")?;
        mac.update(to_sign.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        let url = format!("{}{}", self.endpoint, path);
        let mut req = self.http.request(method, &url).query(query);
        for (k, v) in &headers {
            req = req.header(k.as_str(), *v);
        }
        req = match body {
            Some(b) => req.header("Content-Type", b.content_type).body(b.bytes.to_vec()),
            None => req.header("Content-Length", "0"),
        };
        req.header("Authorization", format!("SharedKey {}:{sig}", self.account))
            .send()
            .await
            .with_context(|| format!("blob storage at {} did not answer", self.endpoint))
    }

    /// Writes one block blob (replacing an existing one) in a single request.
    pub async fn put_blob(
        &self,
        container: &str,
        name: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<()> {
        let path = format!("/{container}/{}", encode_blob_path(name));
        let body = Body { bytes, content_type };
        let resp = self
            .send(reqwest::Method::PUT, &path, &[], &[("x-ms-blob-type", "BlockBlob")], Some(body))
            .await?;
        let status = resp.status();
        if !status.is_success() {
            bail!(
                "writing blob {container}/{name} failed: HTTP {status}: {}",
                first_line(&resp.text().await?)
            );
        }
        Ok(())
    }

    /// A URL of one blob with a service SAS in its query: whoever holds it may do `permissions`
    /// (letters of `racwd`, in that order) on that blob alone until `ttl` from now, without the
    /// account key. `endpoint` is the account's endpoint as the URL's user reaches it (another
    /// host than labctl's maybe); the signature does not cover the host.
    pub fn sas_url(
        &self,
        endpoint: &str,
        container: &str,
        blob: &str,
        permissions: &str,
        ttl: Duration,
    ) -> Result<String> {
        let expiry = chrono::Utc::now()
            + chrono::Duration::from_std(ttl).context("SAS lifetime out of range")?;
        let query = blob_sas_query(&self.account, &self.key, container, blob, permissions, expiry)?;
        Ok(format!(
            "{}/{container}/{}?{query}",
            endpoint.trim_end_matches('/'),
            encode_blob_path(blob)
        ))
    }

    pub async fn list_containers(&self) -> Result<Vec<String>> {
        let resp = self.send(reqwest::Method::GET, "", &[("comp", "list")], &[], None).await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("listing blob containers failed: HTTP {status}: {}", first_line(&body));
        }
        Ok(xml_values(&body, "Name"))
    }

    /// Creates the container; an existing one is fine.
    pub async fn create_container(&self, name: &str) -> Result<bool> {
        let resp = self
            .send(reqwest::Method::PUT, &format!("/{name}"), &[("restype", "container")], &[], None)
            .await?;
        let status = resp.status();
        if status.as_u16() == 409 {
            return Ok(false);
        }
        if !status.is_success() {
            bail!(
                "creating blob container {name} failed: HTTP {status}: {}",
                first_line(&resp.text().await?)
            );
        }
        Ok(true)
    }

    /// Blob names in a container under a prefix (all of them, page by page).
    pub async fn list_blobs(&self, container: &str, prefix: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let mut q = vec![("restype", "container"), ("comp", "list")];
            if !prefix.is_empty() {
                q.push(("prefix", prefix));
            }
            if !marker.is_empty() {
                q.push(("marker", marker.as_str()));
            }
            let resp =
                self.send(reqwest::Method::GET, &format!("/{container}"), &q, &[], None).await?;
            let status = resp.status();
            let body = resp.text().await?;
            if !status.is_success() {
                bail!("listing blobs of {container} failed: HTTP {status}: {}", first_line(&body));
            }
            names.extend(xml_values(&body, "Name"));
            match xml_values(&body, "NextMarker").into_iter().next() {
                Some(m) if !m.is_empty() => marker = m,
                _ => return Ok(names),
            }
        }
    }

    /// The content of one blob; a missing one is an error.
    pub async fn get_blob(&self, container: &str, name: &str) -> Result<bytes::Bytes> {
        self.get_blob_if_exists(container, name).await?.ok_or_else(|| {
            anyhow::anyhow!("reading blob {container}/{name} failed: no such blob (HTTP 404)")
        })
    }

    /// The content of one blob; None when there is no such blob.
    pub async fn get_blob_if_exists(
        &self,
        container: &str,
        name: &str,
    ) -> Result<Option<bytes::Bytes>> {
        let resp = self
            .send(
                reqwest::Method::GET,
                &format!("/{container}/{}", encode_blob_path(name)),
                &[],
                &[],
                None,
            )
            .await?;
        let status = resp.status();
        if status.as_u16() == 404 {
            return Ok(None);
        }
        if !status.is_success() {
            bail!(
                "reading blob {container}/{name} failed: HTTP {status}: {}",
                first_line(&resp.text().await?)
            );
        }
        Ok(Some(resp.bytes().await?))
    }

    /// Deletes one blob; a missing one is fine. Returns whether it existed.
    pub async fn delete_blob(&self, container: &str, name: &str) -> Result<bool> {
        let resp = self
            .send(
                reqwest::Method::DELETE,
                &format!("/{container}/{}", encode_blob_path(name)),
                &[],
                &[],
                None,
            )
            .await?;
        let status = resp.status();
        if status.as_u16() == 404 {
            return Ok(false);
        }
        if !status.is_success() {
            bail!(
                "deleting blob {container}/{name} failed: HTTP {status}: {}",
                first_line(&resp.text().await?)
            );
        }
        Ok(true)
    }

    /// Deletes every blob whose name starts with `prefix` (which must be a non-empty folder
    /// path ending in `/`, so a typo cannot empty the container). Returns how many went.
    pub async fn delete_prefix(&self, container: &str, prefix: &str) -> Result<usize> {
        if prefix.trim_matches('/').is_empty() || !prefix.ends_with('/') {
            bail!("refusing to delete under {prefix:?}: give a folder like `scratch/`");
        }
        let names = self.list_blobs(container, prefix).await?;
        let deleted: Vec<bool> =
            futures_util::stream::iter(names.iter().map(|n| self.delete_blob(container, n)))
                .buffer_unordered(8)
                .collect::<Vec<Result<bool>>>()
                .await
                .into_iter()
                .collect::<Result<_>>()?;
        Ok(deleted.into_iter().filter(|d| *d).count())
    }
}

/// What storage says about one Delta table: blob names, plus the row count and last commit time
/// from the JSON commits of its `_delta_log`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeltaSummary {
    pub table: String,
    /// Newest commit in `_delta_log`, None if the table does not exist yet.
    pub version: Option<u64>,
    /// `year=/month=/day=` folders holding data files (blobs in storage, including files no
    /// longer referenced by the current version).
    pub partitions: usize,
    pub data_files: usize,
    /// Rows in the current version: the sum of `numRecords` in the stats of its live add
    /// actions. None (unknown, never a guess) when the table does not exist, when a commit
    /// needed for the replay is no longer a JSON file (only a checkpoint, which labctl does not
    /// read, covers it), or when a live file has no `numRecords`.
    pub rows: Option<u64>,
    /// When the newest commit was made (its commitInfo timestamp): the last export.
    pub last_commit: Option<chrono::DateTime<chrono::Utc>>,
    /// Rows per UTC day (`YYYY-MM-DD`) in the current version; empty when `rows` is unknown.
    pub rows_per_day: std::collections::BTreeMap<String, u64>,
    /// What the newest export compared against (see `export_as_of`); None when unknown.
    pub export_as_of: Option<chrono::DateTime<chrono::Utc>>,
}

/// Commits fetched at once while replaying a log.
const LOG_FETCH_CONCURRENCY: usize = 8;

impl BlobClient {
    pub async fn delta_summary(&self, container: &str, table: &str) -> Result<DeltaSummary> {
        let blobs = self.list_blobs(container, &format!("{table}/")).await?;
        let log_prefix = format!("{table}/_delta_log/");
        let commits: std::collections::BTreeSet<u64> = blobs
            .iter()
            .filter_map(|b| b.strip_prefix(&log_prefix)?.strip_suffix(".json")?.parse::<u64>().ok())
            .collect();
        let version = commits.iter().next_back().copied();
        let data: Vec<&String> = blobs
            .iter()
            .filter(|b| !b.starts_with(&log_prefix) && b.ends_with(".parquet"))
            .collect();
        let mut dirs: Vec<&str> =
            data.iter().filter_map(|b| b.rsplit_once('/').map(|(d, _)| d)).collect();
        dirs.sort_unstable();
        dirs.dedup();
        let (mut rows, mut last_commit, mut rows_per_day, mut export_as_of) =
            (None, None, Default::default(), None);
        if let Some(v) = version {
            // Replay needs every commit 0..=v as JSON (a checkpoint would stand in for the
            // early ones, but it is Parquet: then the count is unknown).
            let complete = commits.len() as u64 == v + 1;
            let wanted: Vec<u64> = if complete { (0..=v).collect() } else { vec![v] };
            let texts = self.log_commits(container, &log_prefix, wanted.iter().copied()).await?;
            let state = replay_log(texts.iter().map(String::as_str))?;
            if complete {
                rows = state.rows;
                rows_per_day = state.rows_per_day;
                export_as_of = self::export_as_of(texts.iter().map(String::as_str), table);
            }
            last_commit = state.last_commit_ms.and_then(chrono::DateTime::from_timestamp_millis);
        }
        Ok(DeltaSummary {
            table: table.to_string(),
            version,
            partitions: dirs.len(),
            data_files: data.len(),
            rows,
            last_commit,
            rows_per_day,
            export_as_of,
        })
    }
}

/// What a replay of JSON commits (in version order, from version 0) says.
#[derive(Debug, Clone, PartialEq)]
pub struct LogState {
    /// Sum of numRecords over the live add actions; None if any of them has no numRecords.
    pub rows: Option<u64>,
    pub live_files: usize,
    /// commitInfo timestamp (ms since the epoch) of the last commit that has one.
    pub last_commit_ms: Option<i64>,
    /// Rows per `YYYY-MM-DD` of the live files' year/month/day partition values (files
    /// without those values or without numRecords are not counted here).
    pub rows_per_day: std::collections::BTreeMap<String, u64>,
}

/// One data file of a table's current version, from its add action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFile {
    /// Relative to the table's folder, percent-decoded (the blob's name below the table).
    pub path: String,
    /// `YYYY-MM-DD` from the year/month/day partition values, if it has them.
    pub day: Option<String>,
    pub rows: Option<u64>,
}

/// The data files of the current version, from a replay of every JSON commit (sorted by path).
pub fn live_files<'a>(commits: impl IntoIterator<Item = &'a str>) -> Result<Vec<LiveFile>> {
    let (live, _) = replay(commits)?;
    let mut files: Vec<LiveFile> =
        live.into_iter().map(|(path, (rows, day))| LiveFile { path, day, rows }).collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// What the newest export (a commit with `labctl.export` user metadata for `table`) compared
/// against: its `as_of` instant, or the commit's own time when it has none. None when no
/// commit is an export's.
pub fn export_as_of<'a>(
    commits: impl IntoIterator<Item = &'a str>,
    table: &str,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let mut found = None;
    for text in commits {
        for line in text.lines() {
            let Ok(action) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            let Some(info) = action.get("commitInfo") else { continue };
            let meta: Option<serde_json::Value> =
                info["userMetadata"].as_str().and_then(|m| serde_json::from_str(m).ok());
            let Some(export) =
                meta.as_ref().map(|m| &m["labctl.export"]).filter(|e| e["table"] == table)
            else {
                continue;
            };
            let as_of = export["as_of"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            found = as_of
                .or_else(|| {
                    info["timestamp"].as_i64().and_then(chrono::DateTime::from_timestamp_millis)
                })
                .or(found);
        }
    }
    found
}

/// The reading key of every row of a Parquet file: the lake's own bytes, read without Spark.
fn parquet_keys(bytes: bytes::Bytes) -> Result<Vec<(String, String, i64)>> {
    use parquet::{
        file::reader::{FileReader, SerializedFileReader},
        record::Field,
    };
    let reader = SerializedFileReader::new(bytes).context("not a Parquet file")?;
    let mut out = Vec::with_capacity(reader.metadata().file_metadata().num_rows().max(0) as usize);
    for row in reader.get_row_iter(None).context("reading its rows")? {
        let row = row.context("reading a row")?;
        let (mut machine, mut sensor, mut us) = (None, None, None);
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("machine_id", Field::Str(s)) => machine = Some(s.clone()),
                ("sensor_type", Field::Str(s)) => sensor = Some(s.clone()),
                ("timestamp", Field::TimestampMicros(x)) => us = Some(*x),
                ("timestamp", Field::TimestampMillis(x)) => us = Some(*x * 1000),
                _ => {}
            }
        }
        match (machine, sensor, us) {
            (Some(m), Some(s), Some(t)) => out.push((m, s, t)),
            _ => bail!("a row without machine_id, sensor_type or timestamp"),
        }
    }
    Ok(out)
}

impl BlobClient {
    /// The data files of a Delta table's current version, read from its `_delta_log` (every
    /// commit must still be a JSON file; an error otherwise). Empty when there is no table.
    pub async fn delta_live_files(&self, container: &str, table: &str) -> Result<Vec<LiveFile>> {
        match self.delta_log(container, table).await? {
            Some(commits) => live_files(commits.iter().map(String::as_str)),
            None => Ok(Vec::new()),
        }
    }

    /// Every commit of a Delta table's `_delta_log`, as JSON text in version order; None when
    /// there is no table. An error when early commits survive only in a checkpoint (Parquet),
    /// which labctl does not read.
    pub async fn delta_log(&self, container: &str, table: &str) -> Result<Option<Vec<String>>> {
        let log_prefix = format!("{table}/_delta_log/");
        let commits: std::collections::BTreeSet<u64> = self
            .list_blobs(container, &log_prefix)
            .await?
            .iter()
            .filter_map(|b| b.strip_prefix(&log_prefix)?.strip_suffix(".json")?.parse::<u64>().ok())
            .collect();
        let Some(&v) = commits.iter().next_back() else { return Ok(None) };
        if commits.len() as u64 != v + 1 {
            bail!("{container}/{table}: commits 0..={v} are not all JSON files in the log any more (only a checkpoint covers the early ones)");
        }
        Ok(Some(self.log_commits(container, &log_prefix, 0..=v).await?))
    }

    /// (machine_id, sensor_type, timestamp in microseconds) of every row of one data file of
    /// `table` (a path from `delta_live_files`).
    pub async fn reading_keys(
        &self,
        container: &str,
        table: &str,
        file: &str,
    ) -> Result<Vec<(String, String, i64)>> {
        let bytes = self.get_blob(container, &format!("{table}/{file}")).await?;
        tokio::task::spawn_blocking(move || parquet_keys(bytes))
            .await?
            .with_context(|| format!("reading {container}/{table}/{file}"))
    }
    /// The text of the given commits of a table's `_delta_log/` (`log_prefix`), fetched a few
    /// at a time, in order.
    async fn log_commits(
        &self,
        container: &str,
        log_prefix: &str,
        versions: impl Iterator<Item = u64>,
    ) -> Result<Vec<String>> {
        futures_util::stream::iter(versions.map(|n| {
            let name = format!("{log_prefix}{n:020}.json");
            async move {
                self.get_blob(container, &name)
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            }
        }))
        .buffered(LOG_FETCH_CONCURRENCY)
        .collect::<Vec<Result<String>>>()
        .await
        .into_iter()
        .collect()
    }
}

type LiveSet = std::collections::HashMap<String, (Option<u64>, Option<String>)>;

/// Replays Delta JSON commits (newline-delimited actions): add puts a file in the table, remove
/// takes it out (paths compared percent-decoded: writers differ in what they encode).
pub fn replay_log<'a>(commits: impl IntoIterator<Item = &'a str>) -> Result<LogState> {
    let (live, last_commit_ms) = replay(commits)?;
    let rows = live.values().try_fold(0u64, |sum, (n, _)| n.map(|n| sum + n));
    let mut rows_per_day = std::collections::BTreeMap::new();
    for (n, day) in live.values() {
        if let (Some(n), Some(day)) = (n, day) {
            *rows_per_day.entry(day.clone()).or_insert(0) += n;
        }
    }
    Ok(LogState { rows, live_files: live.len(), last_commit_ms, rows_per_day })
}

/// The live files (path -> rows, day) and the last commit's timestamp.
fn replay<'a>(commits: impl IntoIterator<Item = &'a str>) -> Result<(LiveSet, Option<i64>)> {
    let mut live: LiveSet = std::collections::HashMap::new();
    let mut last_commit_ms = None;
    for (i, text) in commits.into_iter().enumerate() {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let action: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("commit {i} of the Delta log: a line is not JSON"))?;
            if let Some(add) = action.get("add") {
                let path = add["path"].as_str().context("an add action without a path")?;
                // stats is a JSON document inside a string
                let n = add["stats"]
                    .as_str()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                    .and_then(|s| s["numRecords"].as_u64());
                let pv = &add["partitionValues"];
                let day = match (pv["year"].as_str(), pv["month"].as_str(), pv["day"].as_str()) {
                    (Some(y), Some(m), Some(d)) => Some(format!("{y}-{:0>2}-{:0>2}", m, d)),
                    _ => None,
                };
                live.insert(percent_decode(path), (n, day));
            } else if let Some(remove) = action.get("remove") {
                let path = remove["path"].as_str().context("a remove action without a path")?;
                live.remove(&percent_decode(path));
            } else if let Some(ts) = action.get("commitInfo").and_then(|c| c["timestamp"].as_i64())
            {
                last_commit_ms = Some(ts);
            }
        }
    }
    Ok((live, last_commit_ms))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A blob name as a URL path: everything but unreserved characters, `/` and `=` percent-encoded
/// (the signature covers the encoded path, as sent).
fn encode_blob_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/' | b'=') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Shared Key string-to-sign of a Blob request: verb, the standard headers (only
/// Content-Length and Content-Type are ever set here; Content-Length empty when zero, as for
/// API versions since 2015-02-21), the `x-ms-*` headers sorted, then "/account" + URI path and
/// the query parameters (names lower-cased, sorted).
fn shared_key_string_to_sign(
    method: &str,
    content_length: usize,
    content_type: &str,
    ms_headers: &[(String, &str)],
    account: &str,
    url_path: &str,
    query: &[(&str, &str)],
) -> String {
    let length = if content_length == 0 { String::new() } else { content_length.to_string() };
    let mut headers: Vec<_> =
        ms_headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.trim())).collect();
    headers.sort();
    let mut s = format!("{method}\n\n\n{length}\n\n{content_type}\n\n\n\n\n\n\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}:{v}\n"));
    }
    s.push_str(&format!("/{account}{url_path}"));
    let mut q: Vec<_> = query.iter().map(|(k, v)| (k.to_ascii_lowercase(), *v)).collect();
    q.sort();
    for (k, v) in &q {
        s.push_str(&format!("\n{k}:{v}"));
    }
    s
}

/// The string-to-sign of a blob service SAS, version 2020-12-06 and later: permissions, start,
/// expiry, canonicalized resource, identifier, IP range, protocol, version, resource (`b`),
/// snapshot time, encryption scope, then the response header overrides rscc, rscd, rsce, rscl,
/// rsct. Only permissions, expiry, resource, protocol and version are used here.
fn blob_sas_string_to_sign(
    account: &str,
    container: &str,
    blob: &str,
    permissions: &str,
    expiry: &str,
) -> String {
    let resource = format!("/blob/{account}/{container}/{blob}");
    [
        permissions,
        "",
        expiry,
        &resource,
        "",
        "",
        SAS_PROTOCOL,
        SAS_VERSION,
        "b",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n")
}

/// Both schemes: the lab's Azurite speaks http.
const SAS_PROTOCOL: &str = "https,http";

/// The query string of a blob service SAS (values URL-encoded).
fn blob_sas_query(
    account: &str,
    key: &[u8],
    container: &str,
    blob: &str,
    permissions: &str,
    expiry: chrono::DateTime<chrono::Utc>,
) -> Result<String> {
    if permissions.is_empty() || !permissions.chars().all(|c| "racwd".contains(c)) {
        bail!("SAS permissions {permissions:?}: use letters of racwd");
    }
    let se = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).context("HMAC key")?;
    mac.update(blob_sas_string_to_sign(account, container, blob, permissions, &se).as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    let pairs = [
        ("sv", SAS_VERSION),
        ("spr", SAS_PROTOCOL),
        ("se", &se),
        ("sr", "b"),
        ("sp", permissions),
        ("sig", &sig),
    ];
    Ok(pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode_query_value(v)))
        .collect::<Vec<_>>()
        .join("&"))
}

/// A query value percent-encoded: everything but unreserved characters.
fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    fn the_newest_export_of_the_table_says_what_it_compared_against() {
        let commit = |meta: &str, ts: i64| {
            format!(
                "{{\"commitInfo\":{{\"timestamp\":{ts},\"userMetadata\":{}}}}}\n",
                serde_json::to_string(meta).unwrap()
            )
        };
        let c0 = commit(
            r#"{"labctl.export":{"table":"machine_sensors","as_of":"2026-12-02T04:00:00.000+00:00"}}"#,
            1,
        );
        let c1 = commit(r#"{"labctl.export":{"table":"other","as_of":"2026-12-02T05:00:00Z"}}"#, 2);
        let c2 = "{\"commitInfo\":{\"timestamp\":3}}\n".to_string();
        let got = export_as_of([c0.as_str(), c1.as_str(), c2.as_str()], "machine_sensors");
        assert_eq!(
            got.map(|t| t.to_rfc3339()),
            Some("2026-12-02T04:00:00+00:00".into()),
            "another table's and a foreign commit do not count"
        );
        // An export without as_of (an older job): its commit time.
        let old = commit(r#"{"labctl.export":{"table":"machine_sensors"}}"#, 1_764_648_000_000);
        assert_eq!(
            export_as_of([c0.as_str(), old.as_str()], "machine_sensors").map(|t| t.timestamp()),
            Some(1_764_648_000)
        );
        assert_eq!(export_as_of([c2.as_str()], "machine_sensors"), None);
    }

    #[test]
    fn xml_names() {
        let xml = "<E><Containers><Container><Name>a</Name></Container><Container><Name>b&amp;c</Name></Container></Containers></E>";
        assert_eq!(xml_values(xml, "Name"), vec!["a", "b&c"]);
    }

    #[test]
    fn delta_log_replay() {
        // v0 creates the table with two files, v1 adds a third, v2 replaces day 1 (removes its
        // file, path percent-encoded differently, and adds a new one).
        let v0 = r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":2}}
{"metaData":{"id":"x","format":{"provider":"parquet","options":{}},"schemaString":"{}","partitionColumns":["year","month","day"],"configuration":{},"createdTime":1}}
{"add":{"path":"year=2026/month=1/day=1/part-0.parquet","partitionValues":{"year":"2026","month":"1","day":"1"},"size":10,"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":100,\"minValues\":{},\"maxValues\":{},\"nullCount\":{}}"}}
{"add":{"path":"year=2026/month=1/day=2/part-0.parquet","partitionValues":{"year":"2026","month":"1","day":"2"},"size":10,"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":20}"}}
{"commitInfo":{"timestamp":1767225600000,"operation":"CREATE TABLE"}}
"#;
        let v1 = r#"{"add":{"path":"year=2026/month=1/day=3/part-0.parquet","partitionValues":{"year":"2026","month":"1","day":"3"},"size":10,"modificationTime":2,"dataChange":true,"stats":"{\"numRecords\":3}"}}
{"commitInfo":{"timestamp":1767225700000,"operation":"WRITE"}}
"#;
        let v2 = r#"{"commitInfo":{"timestamp":1767225800000,"operation":"WRITE"}}
{"remove":{"path":"year%3D2026/month%3D1/day%3D1/part-0.parquet","deletionTimestamp":3,"dataChange":true}}
{"add":{"path":"year=2026/month=1/day=1/part-1.parquet","partitionValues":{"year":"2026","month":"1","day":"1"},"size":10,"modificationTime":3,"dataChange":true,"stats":"{\"numRecords\":7}"}}
"#;
        let s = replay_log([v0, v1, v2]).unwrap();
        let per_day = [("2026-01-01", 7), ("2026-01-02", 20), ("2026-01-03", 3)]
            .map(|(d, n)| (d.to_string(), n))
            .into();
        assert_eq!(
            s,
            LogState {
                rows: Some(7 + 20 + 3),
                live_files: 3,
                last_commit_ms: Some(1767225800000),
                rows_per_day: per_day
            }
        );
        assert_eq!(
            chrono::DateTime::from_timestamp_millis(s.last_commit_ms.unwrap())
                .unwrap()
                .to_rfc3339(),
            "2026-01-01T00:03:20+00:00"
        );
        // Only v0: two files.
        assert_eq!(replay_log([v0]).unwrap().rows, Some(120));
        // A live file without numRecords makes the count unknown, not too small.
        let v3 = r#"{"add":{"path":"year=2026/month=1/day=4/p.parquet","partitionValues":{},"size":1,"modificationTime":4,"dataChange":true}}"#;
        assert_eq!(replay_log([v0, v1, v2, v3]).unwrap().rows, None);
        // ... unless a later commit removes it again.
        let v4 = r#"{"remove":{"path":"year=2026/month=1/day=4/p.parquet","dataChange":true}}"#;
        assert_eq!(replay_log([v0, v1, v2, v3, v4]).unwrap().rows, Some(30));
        // An empty table (created without files) has 0 rows.
        assert_eq!(
            replay_log([r#"{"commitInfo":{"timestamp":5}}"#]).unwrap(),
            LogState {
                rows: Some(0),
                live_files: 0,
                last_commit_ms: Some(5),
                rows_per_day: Default::default()
            }
        );
        assert!(replay_log(["not json"]).is_err());
        let files = live_files([v0, v1, v2]).unwrap();
        assert_eq!(
            files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            [
                "year=2026/month=1/day=1/part-1.parquet",
                "year=2026/month=1/day=2/part-0.parquet",
                "year=2026/month=1/day=3/part-0.parquet"
            ]
        );
        assert_eq!((files[0].day.as_deref(), files[0].rows), (Some("2026-01-01"), Some(7)));
    }

    #[test]
    fn blob_paths() {
        assert_eq!(
            encode_blob_path("t/year=2026/month=1/part-0.snappy.parquet"),
            "t/year=2026/month=1/part-0.snappy.parquet"
        );
        assert_eq!(encode_blob_path("a b%/ü"), "a%20b%25/%C3%BC");
        assert_eq!(percent_decode("a%20b%25/%C3%BC"), "a b%/ü");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn path_of_endpoint() {
        assert_eq!(url_path_of("http://127.0.0.1:10000/devstoreaccount1"), "/devstoreaccount1");
        assert_eq!(url_path_of("https://acct.blob.core.windows.net"), "");
    }

    #[test]
    fn shared_key_signing_string() {
        let h = |d| vec![("x-ms-date".to_string(), d), ("x-ms-version".to_string(), "2021-08-06")];
        // Bodyless: Content-Length empty, no Content-Type.
        let get = shared_key_string_to_sign(
            "GET",
            0,
            "",
            &h("D"),
            "acct",
            "/acct/lake",
            &[("restype", "container"), ("comp", "list")],
        );
        assert_eq!(get, "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:D\nx-ms-version:2021-08-06\n/acct/acct/lake\ncomp:list\nrestype:container");
        // A body: its length and type are signed; extra x-ms headers are sorted in.
        let mut headers = h("D");
        headers.insert(0, ("X-MS-Blob-Type".to_string(), "BlockBlob"));
        let put = shared_key_string_to_sign(
            "PUT",
            12,
            "application/json",
            &headers,
            "acct",
            "/acct/lake/a/b.json",
            &[],
        );
        assert_eq!(put, "PUT\n\n\n12\n\napplication/json\n\n\n\n\n\n\nx-ms-blob-type:BlockBlob\nx-ms-date:D\nx-ms-version:2021-08-06\n/acct/acct/lake/a/b.json");
    }

    #[test]
    fn service_sas() {
        let s = blob_sas_string_to_sign(
            "devstoreaccount1",
            "lake",
            "_labctl/spark/x/config.json",
            "rd",
            "2026-01-02T03:04:05Z",
        );
        assert_eq!(s, "rd\n\n2026-01-02T03:04:05Z\n/blob/devstoreaccount1/lake/_labctl/spark/x/config.json\n\n\nhttps,http\n2021-08-06\nb\n\n\n\n\n\n\n");
        // The signature Azurite 3.35's own generateBlobSASSignature computes for these values.
        let key = B64.decode(DEV_KEY).unwrap();
        let expiry = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let q =
            blob_sas_query(DEV_ACCOUNT, &key, "lake", "_labctl/spark/x/config.json", "rd", expiry)
                .unwrap();
        assert_eq!(
            q,
            "sv=2021-08-06&spr=https%2Chttp&se=2026-01-02T03%3A04%3A05Z&sr=b&sp=rd&sig=zlfTQM1hfsYHedWUicAMf6Jl8BZczcDqNGMkbxsFF4g%3D"
        );
        assert!(blob_sas_query(DEV_ACCOUNT, &key, "lake", "x", "rwx", expiry).is_err());
        assert!(blob_sas_query(DEV_ACCOUNT, &key, "lake", "x", "", expiry).is_err());
        assert_eq!(encode_query_value("a+b/c=d e"), "a%2Bb%2Fc%3Dd%20e");
        let c = BlobClient::azurite("127.0.0.1", 1, Duration::from_secs(1)).unwrap();
        let url = c
            .sas_url(
                "http://azurite:10000/devstoreaccount1/",
                "lake",
                "_labctl/spark/x/job.py",
                "r",
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(
            url.starts_with(
                "http://azurite:10000/devstoreaccount1/lake/_labctl/spark/x/job.py?sv=2021-08-06&"
            ),
            "{url}"
        );
    }
}
