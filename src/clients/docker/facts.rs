//! What a container costs and how long it has run, as `docker ps` and `docker stats` tell it.
//! Memory comes from the container's cgroup when the engine runs on this machine (a file read),
//! else from one `docker stats` sample: the engine answers that at its collector's next tick,
//! up to a second later (0.1-0.8 s per services page, measured with Docker 20.10).

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
        if let Some((used, limit)) = c.id.as_deref().filter(|_| running).and_then(cgroup_memory) {
            facts.memory_bytes = Some(used);
            facts.memory_limit_bytes = limit;
        } else if running {
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

/// A container's memory from its cgroup, as `docker stats` computes it (usage less inactive
/// page cache), and its limit (None: unlimited). None when no cgroup of that id is here (the
/// engine runs elsewhere, or lays cgroups out otherwise).
fn cgroup_memory(id: &str) -> Option<(u64, Option<u64>)> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let read = |p: String| std::fs::read_to_string(p).ok();
    let stat_value = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
    };
    // cgroup v2 (systemd driver, then cgroupfs driver)
    for dir in [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
        format!("/sys/fs/cgroup/docker/{id}"),
    ] {
        if let Some(usage) = read(format!("{dir}/memory.current")) {
            let usage: u64 = usage.trim().parse().ok()?;
            let cache = read(format!("{dir}/memory.stat"))
                .and_then(|t| stat_value(&t, "inactive_file"))
                .unwrap_or(0);
            let limit = read(format!("{dir}/memory.max")).and_then(|l| l.trim().parse().ok());
            return Some((usage.saturating_sub(cache), limit));
        }
    }
    // cgroup v1 (cgroupfs driver, then systemd driver)
    for dir in [
        format!("/sys/fs/cgroup/memory/docker/{id}"),
        format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope"),
    ] {
        if let Some(usage) = read(format!("{dir}/memory.usage_in_bytes")) {
            let usage: u64 = usage.trim().parse().ok()?;
            let cache = read(format!("{dir}/memory.stat"))
                .and_then(|t| stat_value(&t, "total_inactive_file"))
                .unwrap_or(0);
            // v1 says "no limit" with a huge number (a page-rounded i64::MAX).
            let limit = read(format!("{dir}/memory.limit_in_bytes"))
                .and_then(|l| l.trim().parse::<u64>().ok())
                .filter(|l| *l < 1 << 62);
            return Some((usage.saturating_sub(cache), limit));
        }
    }
    None
}

/// Size and free space of the file system a volume lives on (for a tmpfs volume, its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Space {
    pub total_bytes: u64,
    /// What an unprivileged writer (the database, the broker) can still use.
    pub free_bytes: u64,
}

impl Runtime {
    /// The space of `volume` as the engine's host sees its mount point; None when that is not
    /// this machine, or labctl may not look there (the engine's folder is root's).
    pub async fn volume_space(&self, volume: &str) -> Result<Option<Space>> {
        let v = self
            .docker
            .inspect_volume(volume)
            .await
            .with_context(|| format!("inspecting volume {volume}"))?;
        Ok(statvfs(&v.mountpoint))
    }
}

fn statvfs(path: &str) -> Option<Space> {
    let c = std::ffi::CString::new(path).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `s` is written by the call before it is read.
    if unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `s`.
    let s = unsafe { s.assume_init() };
    // c_ulong and fsblkcnt_t are u64 on the 64-bit Linux labctl is built for.
    let frag: u64 = s.f_frsize;
    Some(Space { total_bytes: s.f_blocks * frag, free_bytes: s.f_bavail * frag })
}
