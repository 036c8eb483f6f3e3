//! The lab job's saved state: the retained checkpoints and savepoints a new job can start from,
//! found in the flink-data volume (managed cluster) or through Flink's REST API (external).

use std::time::Duration;

use anyhow::{Context, Result};

use super::job;
use crate::{clients::docker::Runtime, model::topology::Part, ops::lab::Lab, stack::FLINK_JM};

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
        job::lab_checkpoint_dir(),
        job::lab_savepoint_dir()
    );
    let listing = rt
        .exec_output(&jm, &["bash", "-c", &script])
        .await
        .context("listing the retained checkpoints and savepoints")?;
    Ok(parse_snapshots(&listing))
}

/// On a cluster labctl cannot look into: the newest completed checkpoint or savepoint Flink
/// still reports for an ended job of the lab's name (`/jobs/{id}/checkpoints`). After a
/// JobManager restart without HA that history is gone; the job then starts without state.
async fn rest_snapshots(lab: &Lab) -> Result<Vec<Snapshot>> {
    let client = lab.flink(Duration::from_secs(10))?;
    let name = job::job_name(&lab.config.project);
    let mut ended: Vec<_> = client
        .jobs()
        .await?
        .into_iter()
        .filter(|j| j.name == name && !j.state.is_active())
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
}
