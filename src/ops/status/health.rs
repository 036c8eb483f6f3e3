//! Red/yellow/green per line of `status`, with the reason. Pure functions of what was gathered,
//! so every rule is unit-tested without services.
//!
//! Red: broken or down, something must be done. Yellow: works, but a person should look (a
//! restart happened, data stopped flowing, a step has not been run yet). Green: as it should be.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{BrokerSection, DatabaseSection, FlinkSection, LakeSection, SparkSection, VolumeSpace};
use crate::{
    clients::spark::{DriverState, WorkerState},
    stack::{ServiceId, INGEST},
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Green,
    Yellow,
    Red,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Light {
    pub health: Health,
    pub reason: String,
}

impl Light {
    pub fn green(reason: impl Into<String>) -> Self {
        Self { health: Health::Green, reason: reason.into() }
    }
    pub fn yellow(reason: impl Into<String>) -> Self {
        Self { health: Health::Yellow, reason: reason.into() }
    }
    pub fn red(reason: impl Into<String>) -> Self {
        Self { health: Health::Red, reason: reason.into() }
    }
    fn is_set(&self) -> bool {
        !self.reason.is_empty()
    }
}

/// What the rules need beyond a section's own data.
pub struct Facts {
    pub ingest_running: bool,
    pub now: DateTime<Utc>,
    pub checkpoint_interval_secs: i64,
}

/// Windows may lag the clock by one window plus the watermark delay; three minutes is a stall.
const STALL_SECS: i64 = 180;

pub fn judge_service(
    name: ServiceId,
    state: &str,
    running: usize,
    replicas: u32,
    probe: &Result<String, String>,
    restarts: i64,
    ingest_enabled: bool,
) -> Light {
    match (state, probe) {
        ("missing", _) if name == INGEST && !ingest_enabled => {
            Light::green("disabled (ingest.enabled = false)")
        }
        ("missing", _) => Light::red("no container: run `labctl up`"),
        ("paused", _) => Light::red("paused: `docker unpause` its container"),
        ("stopped", _) => {
            Light::red(format!("stopped: run `labctl up` (see `labctl logs {name}`)"))
        }
        ("partial", _) => {
            Light::red(format!("{running} of {replicas} containers running: run `labctl up`"))
        }
        (_, Err(e)) => Light::red(format!("not answering: {e}")),
        (_, Ok(d)) if restarts > 0 => {
            Light::yellow(format!("{d}; restarted {restarts} time(s), see `labctl logs {name}`"))
        }
        (_, Ok(d)) => Light::green(d.clone()),
    }
}

/// Free space below which a volume counts as full (or 5 % of a small one): a database or
/// broker then fails writes (PostgreSQL's WAL alone takes 16 MiB segments).
const FULL_FREE_BYTES: u64 = 64 << 20;

/// A service's light with its volumes' space taken into account: a full volume is red whatever
/// the service answers (it may still accept logins while every write fails), one past 90 %
/// yellow. The reason says which volume, how full, and what to do.
pub fn judge_volumes(light: Light, name: ServiceId, volumes: &[VolumeSpace]) -> Light {
    let mib = |b: u64| b >> 20;
    let worst = volumes.iter().map(|v| {
        let used_pct = 100.0 * (1.0 - v.free_bytes as f64 / v.total_bytes.max(1) as f64);
        let what = format!(
            "volume `{}` ({}) {used_pct:.0} % full, {} MiB free of {} MiB",
            v.volume,
            v.path,
            mib(v.free_bytes),
            mib(v.total_bytes)
        );
        if v.free_bytes < FULL_FREE_BYTES.min(v.total_bytes / 20) {
            Light::red(format!("{what}: {name} cannot write; free space there (or give the engine's disk more room), it resumes by itself"))
        } else if used_pct >= 90.0 {
            Light::yellow(what)
        } else {
            Light::green(String::new())
        }
    });
    let Some(disk) = worst.max_by_key(|l| l.health) else { return light };
    match disk.health {
        Health::Green => light,
        h if h > light.health => disk,
        _ => Light { health: light.health, reason: format!("{}; {}", light.reason, disk.reason) },
    }
}

pub fn judge_broker(b: &mut BrokerSection, f: &Facts) {
    if b.light.is_set() {
        return;
    }
    let total = b.end_offsets.unwrap_or(0);
    b.light = match b.ingest_per_s {
        _ if total == 0 && f.ingest_running => {
            Light::yellow(format!("topic `{}` is empty although ingest runs", b.topic))
        }
        _ if total == 0 => Light::yellow(format!(
            "topic `{}` is empty: start ingest (`labctl up` or `labctl ingest`)",
            b.topic
        )),
        Some(r) if r == 0.0 && f.ingest_running => Light::yellow(
            "no new readings for 1 min while ingest is running (see `labctl logs ingest`)",
        ),
        Some(r) => Light::green(format!("{total} readings, {r:.1}/s over the last minute")),
        None => Light::green(format!("{total} readings")),
    };
    if let (Some(lag), Health::Green) = (b.flink_consumer_lag, b.light.health) {
        b.light.reason.push_str(&format!(", Flink lag {lag} (pendingRecords)"));
    }
    // Replication problems outrank the flow of readings: they are what needs doing.
    let list = |ids: &[i32]| ids.iter().map(|p| format!("p{p}")).collect::<Vec<_>>().join(" ");
    let c = &b.cluster;
    if !c.offline.is_empty() {
        b.light = Light::red(format!(
            "partition(s) {} of `{}` have no leader: their readings cannot be written or read",
            list(&c.offline),
            b.topic
        ));
    } else if !c.under_replicated.is_empty() && b.light.health < Health::Red {
        b.light = Light::yellow(format!(
            "partition(s) {} of `{}` are under-replicated (in-sync replicas < replicas)",
            list(&c.under_replicated),
            b.topic
        ));
    }
}

pub fn judge_flink(fl: &mut FlinkSection, f: &Facts) {
    if fl.light.is_set() {
        return;
    }
    let slots = format!(
        "{} TaskManager(s), {}/{} slots free",
        fl.taskmanagers.unwrap_or(0),
        fl.slots_available.unwrap_or(0),
        fl.slots_total.unwrap_or(0)
    );
    let Some(job) = fl.jobs.iter().find(|j| j.lab_job) else {
        fl.light =
            Light::yellow(format!("the lab's job is not running: `labctl submit flink` ({slots})"));
        return;
    };
    fl.light = match job.state.as_str() {
        "FAILED" => {
            Light::red("the lab's job FAILED: see `labctl flink jobs`, then `labctl submit flink`")
        }
        "RUNNING" if job.late_records_dropped > 0 => Light::red(format!(
            "{} readings dropped as late: event time ran ahead of a partition",
            job.late_records_dropped
        )),
        "RUNNING" => match job.last_checkpoint_age_secs {
            Some(age) if age > 3 * f.checkpoint_interval_secs + 30 => Light::yellow(format!(
                "last checkpoint {age} s ago (interval {} s)",
                f.checkpoint_interval_secs
            )),
            None if job.uptime_secs > 3 * f.checkpoint_interval_secs + 30 => {
                Light::yellow("no checkpoint completed yet")
            }
            _ if job.restarts.unwrap_or(0) > 0 => Light::yellow(format!(
                "running; restored from a checkpoint {} time(s)",
                job.restarts.unwrap_or(0)
            )),
            _ => Light::green(format!(
                "running, {:.0} readings/s in, {:.0} rows/s out ({slots})",
                job.records_in_per_s, job.records_out_per_s
            )),
        },
        other => Light::yellow(format!("the lab's job is {other}")),
    };
}

pub fn judge_database(d: &mut DatabaseSection, f: &Facts, flink_running: bool) {
    if d.light.is_set() {
        return;
    }
    let fresh = |name: &str| {
        d.tables
            .iter()
            .find(|t| t.table == name)
            .and_then(|t| t.freshness_secs.map(|s| (t.rows, s)))
    };
    d.light = match fresh("sensor_aggregates") {
        Some((_, age)) if age > STALL_SECS && f.ingest_running && flink_running => {
            Light::yellow(format!("no new windows for {} min while ingest is running", age / 60))
        }
        None if flink_running && f.ingest_running => Light::yellow("no windows yet"),
        _ => match fresh("machine_sensors") {
            Some((rows, age)) => Light::green(format!("{rows} readings, newest {age} s old")),
            None => Light::green("tables empty"),
        },
    };
    // Bad messages do not stop the job, so they would go unseen; recent ones ask for a look.
    if let Some(r) = d.rejected.as_ref().filter(|r| r.count > 0) {
        let recent = r.newest.is_some_and(|n| (f.now - n).num_seconds() < REJECTED_RECENT_SECS);
        if recent && d.light.health == Health::Green {
            d.light = Light::yellow(format!(
                "{} message(s) rejected by the job, last: {} (see table rejected_readings)",
                r.count,
                r.last_reason.as_deref().unwrap_or("?")
            ));
        }
    }
}

/// Rejections newer than this turn the database line yellow.
const REJECTED_RECENT_SECS: i64 = 3600;

pub fn judge_spark(s: &mut SparkSection) {
    if s.light.is_set() {
        return;
    }
    let alive = s.workers.iter().filter(|w| w.state == WorkerState::Alive).count();
    s.light = match s.drivers.first() {
        _ if alive == 0 => Light::red("no ALIVE worker: exports cannot run (`labctl up`)"),
        Some(d) if matches!(d.state, DriverState::Failed | DriverState::Error) => Light::yellow(
            format!("last export {} {}: see `labctl spark status {}`", d.id, d.state, d.id),
        ),
        Some(d) => Light::green(format!("{alive} worker(s); last export {} {}", d.id, d.state)),
        None => Light::green(format!("{alive} worker(s); no export yet")),
    };
}

pub fn judge_lake(l: &mut LakeSection) {
    if l.light.is_set() {
        return;
    }
    let behind = l
        .currency
        .as_ref()
        .map(|c| (c.days_behind.len(), c.days_differing.len()))
        .unwrap_or((0, 0));
    l.light = if l.tables.is_empty() {
        Light::yellow("no Delta table yet: `labctl submit spark`")
    } else if behind != (0, 0) {
        let c = l.currency.as_ref().expect("counted above");
        let mut what = Vec::new();
        if behind.0 > 0 {
            what.push(format!("{} day(s) missing ({})", behind.0, c.days_behind.join(", ")));
        }
        if behind.1 > 0 {
            what.push(format!("{} day(s) differ ({})", behind.1, c.days_differing.join(", ")));
        }
        Light::yellow(format!(
            "lake behind the database: {}: `labctl submit spark`",
            what.join(", ")
        ))
    } else {
        Light::green(format!("{} Delta table(s)", l.tables.len()))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::{FlinkJobStatus, TableStatus};
    use crate::stack::{BROKER, DATABASE};

    fn facts(ingest: bool) -> Facts {
        Facts { ingest_running: ingest, now: Utc::now(), checkpoint_interval_secs: 10 }
    }

    fn job(state: &str) -> FlinkJobStatus {
        FlinkJobStatus {
            id: "j".into(),
            name: "lab: sensor aggregation".into(),
            state: state.into(),
            lab_job: true,
            uptime_secs: 100,
            records_in: 10,
            records_out: 10,
            records_in_per_s: 1.0,
            records_out_per_s: 1.0,
            late_records_dropped: 0,
            pending_records: 0,
            sources: vec![],
            sinks: vec![],
            metrics_error: None,
            last_checkpoint_age_secs: Some(5),
            restarts: Some(0),
        }
    }

    #[test]
    fn services() {
        let ok = Ok("fine".to_string());
        assert_eq!(judge_service(BROKER, "running", 1, 1, &ok, 0, true).health, Health::Green);
        assert_eq!(judge_service(BROKER, "running", 1, 1, &ok, 2, true).health, Health::Yellow);
        assert_eq!(
            judge_service(BROKER, "running", 1, 1, &Err("timeout".into()), 0, true).health,
            Health::Red
        );
        assert_eq!(judge_service(BROKER, "stopped", 0, 1, &ok, 0, true).health, Health::Red);
        assert_eq!(judge_service(INGEST, "missing", 0, 1, &ok, 0, false).health, Health::Green);
        assert_eq!(judge_service(INGEST, "missing", 0, 1, &ok, 0, true).health, Health::Red);
    }

    #[test]
    fn a_full_volume_turns_its_service_red_whatever_it_answers() {
        let vol = |total: u64, free: u64| VolumeSpace {
            volume: "lab-db-data".into(),
            path: "/var/lib/postgresql/data".into(),
            total_bytes: total,
            free_bytes: free,
        };
        let ok = || Light::green("login ok");
        let gib = 1u64 << 30;
        assert_eq!(judge_volumes(ok(), DATABASE, &[]).reason, "login ok");
        assert_eq!(judge_volumes(ok(), DATABASE, &[vol(100 * gib, 50 * gib)]).reason, "login ok");
        let nearly = judge_volumes(ok(), DATABASE, &[vol(100 * gib, 5 * gib)]);
        assert_eq!(nearly.health, Health::Yellow);
        assert!(nearly.reason.contains("95 % full"), "{}", nearly.reason);
        // A large disk is full below 64 MiB, a small volume below 5 % of it.
        let full = judge_volumes(ok(), DATABASE, &[vol(100 * gib, 63 << 20)]);
        assert_eq!(full.health, Health::Red);
        assert!(full.reason.contains("cannot write") && full.reason.contains("free space"));
        let small = 192u64 << 20;
        assert_eq!(judge_volumes(ok(), DATABASE, &[vol(small, 15 << 20)]).health, Health::Yellow);
        assert_eq!(judge_volumes(ok(), DATABASE, &[vol(small, 9 << 20)]).health, Health::Red);
        // Both reasons when the service is red anyway.
        let both = judge_volumes(Light::red("not answering"), DATABASE, &[vol(small, 0)]);
        assert!(both.reason.starts_with("not answering; volume `lab-db-data`"), "{}", both.reason);
    }

    #[test]
    fn broker_stall_is_yellow_only_while_ingest_runs() {
        let mut b = BrokerSection {
            topic: "t".into(),
            end_offsets: Some(100),
            ingest_per_s: Some(0.0),
            ..Default::default()
        };
        judge_broker(&mut b, &facts(true));
        assert_eq!(b.light.health, Health::Yellow, "{}", b.light.reason);
        let mut b = BrokerSection {
            topic: "t".into(),
            end_offsets: Some(100),
            ingest_per_s: Some(0.0),
            ..Default::default()
        };
        judge_broker(&mut b, &facts(false));
        assert_eq!(b.light.health, Health::Green);
        let mut down = BrokerSection { light: Light::red("no answer"), ..Default::default() };
        judge_broker(&mut down, &facts(true));
        assert_eq!(down.light.health, Health::Red);
    }

    #[test]
    fn replication_problems_of_the_topic() {
        let section = |under: Vec<i32>, offline: Vec<i32>| {
            let mut b = BrokerSection {
                topic: "t".into(),
                end_offsets: Some(100),
                ingest_per_s: Some(2.0),
                ..Default::default()
            };
            b.cluster.under_replicated = under;
            b.cluster.offline = offline;
            judge_broker(&mut b, &facts(true));
            b.light
        };
        assert_eq!(section(vec![], vec![]).health, Health::Green);
        let under = section(vec![2], vec![]);
        assert_eq!(under.health, Health::Yellow);
        assert!(
            under.reason.contains("p2") && under.reason.contains("under-replicated"),
            "{}",
            under.reason
        );
        let offline = section(vec![0, 2], vec![0]);
        assert_eq!(offline.health, Health::Red);
        assert!(
            offline.reason.contains("p0") && offline.reason.contains("no leader"),
            "{}",
            offline.reason
        );
    }

    #[test]
    fn flink_rules() {
        let judge = |jobs: Vec<FlinkJobStatus>| {
            let mut s = FlinkSection {
                jobs,
                taskmanagers: Some(1),
                slots_total: Some(3),
                slots_available: Some(0),
                ..Default::default()
            };
            judge_flink(&mut s, &facts(true));
            s.light.health
        };
        assert_eq!(judge(vec![job("RUNNING")]), Health::Green);
        assert_eq!(judge(vec![]), Health::Yellow);
        assert_eq!(judge(vec![job("RESTARTING")]), Health::Yellow);
        assert_eq!(judge(vec![job("FAILED")]), Health::Red);
        let mut late = job("RUNNING");
        late.late_records_dropped = 3;
        assert_eq!(judge(vec![late]), Health::Red);
        let mut stale = job("RUNNING");
        stale.last_checkpoint_age_secs = Some(600);
        assert_eq!(judge(vec![stale]), Health::Yellow);
    }

    #[test]
    fn windows_stalled_while_ingest_runs() {
        let table = |name: &str, age: i64| TableStatus {
            table: name.into(),
            rows: 1,
            rows_exact: true,
            chunks: 1,
            newest: None,
            freshness_secs: Some(age),
        };
        let mut d = DatabaseSection {
            tables: vec![table("machine_sensors", 2), table("sensor_aggregates", 400)],
            ..Default::default()
        };
        judge_database(&mut d, &facts(true), true);
        assert_eq!(d.light.health, Health::Yellow);
        assert!(d.light.reason.contains("no new windows for 6 min"), "{}", d.light.reason);
        let mut d = DatabaseSection {
            tables: vec![table("machine_sensors", 2), table("sensor_aggregates", 400)],
            ..Default::default()
        };
        judge_database(&mut d, &facts(false), true);
        assert_eq!(d.light.health, Health::Green);
    }

    #[test]
    fn recent_rejections_turn_the_database_yellow() {
        let f = facts(true);
        let rejected = |age_secs: i64| {
            let mut d = DatabaseSection {
                rejected: Some(crate::clients::db::RejectedStats {
                    count: 2,
                    newest: Some(f.now - chrono::Duration::seconds(age_secs)),
                    last_reason: Some("timestamp does not parse".into()),
                }),
                ..Default::default()
            };
            judge_database(&mut d, &f, false);
            d.light
        };
        let recent = rejected(30);
        assert_eq!(recent.health, Health::Yellow);
        assert!(
            recent.reason.contains("2 message(s) rejected")
                && recent.reason.contains("timestamp does not parse"),
            "{}",
            recent.reason
        );
        assert_eq!(
            rejected(7200).health,
            Health::Green,
            "old rejections are history, not a problem"
        );
    }
}
