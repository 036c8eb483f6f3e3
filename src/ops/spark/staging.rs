//! Where a submission's files wait for the cluster: a folder of its own in the lake container,
//! reached by the driver through short-lived SAS URLs, removed when the export ends.

use std::time::Duration;

use anyhow::{Context, Result};

use super::cluster_lake_endpoint;
use crate::{clients::lake::BlobClient, ops::lab::Lab};

/// Folder of the lake container where submissions stage their files, one subfolder each. The
/// `_` keeps it out of every Delta table path (`valid_delta_path` refuses such segments).
const STAGING_ROOT: &str = "_labctl/spark";

/// Staged file names. The job's name is the one the driver's work dir gets (Spark's DriverRunner
/// names a downloaded app resource after the URL path's last segment).
pub(super) const STAGED_JOB: &str = "timescale_to_deltalake.py";

pub(super) const STAGED_CONFIG: &str = "config.json";

pub(super) const STAGED_RESULT: &str = "result.json";

/// How much longer than the submit timeout the SAS URLs stay valid: the driver may queue and
/// start late, and writes its result at the very end.
const SAS_MARGIN: Duration = Duration::from_secs(300);

/// Where one submission's files live in the lake while it runs: `_labctl/spark/<stamp>/` in the
/// lake container, reached by the Spark cluster through SAS URLs (no shared disk, no copy into
/// containers, no account key on the cluster for them), so an external cluster works as well.
pub struct Staging {
    blob: BlobClient,
    container: String,
    /// `_labctl/spark/<stamp>/`
    prefix: String,
    /// The lake's endpoint as the cluster sees it: the host of the SAS URLs.
    endpoint: String,
    ttl: Duration,
    result_url: String,
}

impl Staging {
    /// A new staging folder for a submission waited for at most `timeout`. Touches no storage.
    pub fn new(lab: &Lab, timeout: Duration) -> Result<Self> {
        let blob = lab.blob(Duration::from_secs(30))?;
        // Milliseconds and the process id: two labctl processes submitting at once do not share one.
        let stamp =
            format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"), std::process::id());
        let mut staging = Self {
            blob,
            container: lab.config.lake.container.clone(),
            prefix: format!("{STAGING_ROOT}/{stamp}/"),
            endpoint: cluster_lake_endpoint(lab),
            ttl: timeout + SAS_MARGIN,
            result_url: String::new(),
        };
        // create (first write) and write (replace): the job writes the result once, at its end.
        staging.result_url = staging.url(STAGED_RESULT, "cw")?;
        Ok(staging)
    }

    /// The SAS URL the job PUTs its result to (`result_url` in its config).
    pub fn result_url(&self) -> &str {
        &self.result_url
    }

    /// Where `file` lives, as `<container>/<prefix><file>` (for messages).
    pub(super) fn describe(&self, file: &str) -> String {
        format!("{}/{}", self.container, self.blob_name(file))
    }

    fn blob_name(&self, file: &str) -> String {
        format!("{}{file}", self.prefix)
    }

    pub(super) fn url(&self, file: &str, permissions: &str) -> Result<String> {
        self.blob.sas_url(
            &self.endpoint,
            &self.container,
            &self.blob_name(file),
            permissions,
            self.ttl,
        )
    }

    pub(super) async fn put(&self, file: &str, bytes: &[u8], content_type: &str) -> Result<()> {
        self.blob
            .put_blob(&self.container, &self.blob_name(file), bytes, content_type)
            .await
            .with_context(|| {
                format!("staging {file} in the lake ({}/{})", self.container, self.prefix)
            })
    }

    /// The job's result.json; None when it wrote none.
    pub(super) async fn result(&self) -> Result<Option<serde_json::Value>> {
        let name = self.blob_name(STAGED_RESULT);
        let Some(bytes) = self.blob.get_blob_if_exists(&self.container, &name).await? else {
            return Ok(None);
        };
        let v = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}/{name} is not JSON", self.container))?;
        Ok(Some(v))
    }

    /// Removes what earlier submissions left in the staging root: a labctl killed mid-export, or
    /// one that returned at once (`--no-wait`), leaves its folder, and a config it staged that
    /// no job read still holds the database's read password and the lake key. A folder goes
    /// once nothing can need it: its SAS URLs have expired, or its owner (the pid in its name)
    /// no longer runs on this host and the cluster runs no driver (`drivers_active` false) that
    /// could still fetch it. Returns the folders removed.
    pub(super) async fn sweep_leftovers(&self, drivers_active: bool) -> Result<Vec<String>> {
        let names = self.blob.list_blobs(&self.container, &format!("{STAGING_ROOT}/")).await?;
        let mut folders: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_prefix(&format!("{STAGING_ROOT}/")))
            .filter_map(|rest| rest.split_once('/').map(|(stamp, _)| stamp.to_string()))
            .collect();
        folders.sort();
        folders.dedup();
        let mut removed = Vec::new();
        for stamp in folders {
            let prefix = format!("{STAGING_ROOT}/{stamp}/");
            if prefix == self.prefix {
                continue;
            }
            let (when, owner) = match stamp.rsplit_once('-') {
                Some((when, pid)) => (
                    chrono::NaiveDateTime::parse_from_str(when, "%Y%m%dT%H%M%S%3f").ok(),
                    pid.parse::<u32>().ok(),
                ),
                None => (None, None),
            };
            let expired = when.is_some_and(|w| {
                let age = chrono::Utc::now().naive_utc() - w;
                age.to_std().is_ok_and(|age| age > self.ttl)
            });
            let orphaned = !drivers_active && !owner.is_some_and(crate::ops::lab::pid_alive);
            if !(expired || orphaned) {
                continue;
            }
            self.blob.delete_prefix(&self.container, &prefix).await?;
            removed.push(prefix);
        }
        Ok(removed)
    }

    /// Removes the whole folder; a failure is a warning (the job deletes its config itself, so
    /// what may stay behind is the job file and the result, no secret).
    pub(super) async fn remove(&self) {
        if let Err(e) = self.blob.delete_prefix(&self.container, &self.prefix).await {
            eprintln!(
                "warning: cannot remove the export's staged files {}/{}: {e:#}",
                self.container, self.prefix
            );
        }
    }
}
