//! What a container costs and how long it has run, as `docker ps` and `docker stats` tell it.

use anyhow::{Context as _, Result};
use bollard::container::{MemoryStatsStats, StatsOptions};
use futures_util::StreamExt;

use super::Runtime;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ContainerFacts {
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub restarts: i64,
    /// Memory in use without the page cache the kernel may drop (what `docker stats` shows).
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

impl Runtime {
    /// Inspection and one memory sample of a container; memory is None when it is not running.
    pub async fn container_facts(&self, name: &str) -> Result<ContainerFacts> {
        let c = self
            .docker
            .inspect_container(name, None)
            .await
            .with_context(|| format!("inspecting {name}"))?;
        let state = c.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let started_at = state
            .started_at
            .filter(|_| running)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc));
        let mut facts = ContainerFacts {
            started_at,
            restarts: c.restart_count.unwrap_or(0),
            ..Default::default()
        };
        if running {
            // One sample without waiting for a second (the engine's default waits ~1 s).
            let mut stats =
                self.docker.stats(name, Some(StatsOptions { stream: false, one_shot: true }));
            if let Some(s) = stats.next().await {
                let m = s.with_context(|| format!("memory of {name}"))?.memory_stats;
                let cache = match m.stats {
                    Some(MemoryStatsStats::V2(v2)) => v2.inactive_file,
                    Some(MemoryStatsStats::V1(v1)) => v1.total_inactive_file,
                    None => 0,
                };
                facts.memory_bytes = m.usage.map(|u| u.saturating_sub(cache));
                facts.memory_limit_bytes = m.limit;
            }
        }
        Ok(facts)
    }
}
