//! The pipeline at a glance: one [`Report`] built from parallel calls to every service, each
//! with a short timeout so a dead service shows as down instead of hanging the caller, and a
//! red/yellow/green [`Light`] per line with the reason a person can act on.
//!
//! The JSON form of [`Report`] is documented by `docs/status.schema.json`; a test checks real
//! reports against it, so the two cannot drift apart.

mod health;
mod rate;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use health::{Health, Light};

use crate::{
    clients::{docker::Runtime, flink::JobState, spark::DriverState},
    model::schema,
    ops::lab::Lab,
    stack::{Probe, INGEST},
};

pub const SCHEMA_ID: &str = "labctl.status/v1";

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub project: String,
    pub at: DateTime<Utc>,
    /// The worst light of all sections.
    pub health: Health,
    /// Every service's containers run and its readiness check passes (the exit code's basis).
    pub healthy: bool,
    pub services: Vec<ServiceStatus>,
    pub broker: BrokerSection,
    pub flink: FlinkSection,
    pub database: DatabaseSection,
    pub spark: SparkSection,
    pub lake: LakeSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<serde_json::Value>,
    pub elapsed_ms: u128,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    /// running / partial / paused / stopped / missing / external
    pub state: String,
    pub ready: bool,
    pub light: Light,
    /// Restarts by the engine's restart policy, summed over the service's containers.
    pub restarts: i64,
    pub url: Option<String>,
    pub containers: Vec<ContainerStatus>,
    /// Space of the volumes it writes to, where the engine runs on this machine.
    pub volumes: Vec<VolumeSpace>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeSpace {
    pub volume: String,
    /// Where the service mounts it.
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    pub status: String,
}

#[derive(Debug, Default, Serialize)]
pub struct BrokerSection {
    pub light: Light,
    pub topic: String,
    pub partitions: Vec<crate::clients::kafka::PartitionActivity>,
    /// Sum of the partitions' end offsets: readings in the topic.
    pub end_offsets: Option<i64>,
    /// Messages appended over the last minute, per second (by message timestamp).
    pub ingest_per_s: Option<f64>,
    /// Records the lab's Flink job has yet to read (its Kafka source's `pendingRecords`).
    pub flink_consumer_lag: Option<i64>,
    /// The Flink job's consumer group as the broker sees it: the offsets it committed (on
    /// completed checkpoints) and how far they are behind the end of each partition.
    pub consumer_group: GroupLag,
    /// Brokers, the active controller and the replication state of the topic's partitions.
    pub cluster: ClusterStatus,
}

#[derive(Debug, Default, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub partitions: Vec<PartitionLag>,
    /// End offsets minus committed offsets, over all partitions; None when the lookup failed.
    pub lag: Option<i64>,
    /// Why the figures are unknown (the lookup failed or did not answer in time).
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    /// The next offset the group will read; None: nothing committed for this partition (Flink
    /// commits none for a partition it has read nothing from).
    pub committed: Option<i64>,
    /// End offset minus committed offset; without a commit, every message of the partition
    /// (the job starts such a partition at its earliest offset).
    pub lag: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct ClusterStatus {
    pub brokers: Vec<crate::clients::kafka::BrokerNode>,
    /// The active controller: the KRaft quorum's leader (DescribeQuorum). None: see
    /// `quorum_error`.
    pub controller_id: Option<i32>,
    pub quorum: Option<crate::clients::kafka::quorum::Quorum>,
    pub quorum_error: Option<String>,
    /// Leader, replicas and in-sync replicas of each partition of the topic.
    pub partitions: Vec<crate::clients::kafka::PartitionReplicas>,
    /// Partitions with fewer in-sync replicas than replicas.
    pub under_replicated: Vec<i32>,
    /// Partitions without a leader.
    pub offline: Vec<i32>,
    /// Why the metadata is unknown.
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct FlinkSection {
    pub light: Light,
    pub taskmanagers: Option<u32>,
    pub slots_total: Option<u32>,
    pub slots_available: Option<u32>,
    /// Active jobs (and failed ones), the lab's own job first.
    pub jobs: Vec<FlinkJobStatus>,
}

#[derive(Debug, Serialize)]
pub struct FlinkJobStatus {
    pub id: String,
    pub name: String,
    pub state: JobState,
    /// Whether this is the lab's streaming job (by name).
    pub lab_job: bool,
    pub uptime_secs: i64,
    /// Records the sources emitted and the sinks took in (since the job last started).
    pub records_in: i64,
    pub records_out: i64,
    pub records_in_per_s: f64,
    pub records_out_per_s: f64,
    /// Readings dropped as late: non-zero means data loss (see PLATFORM.md on idle partitions).
    pub late_records_dropped: i64,
    /// Records in the topic its sources have not read yet (consumer lag).
    pub pending_records: i64,
    /// Each source's records emitted and rate (operator metrics, by table name).
    pub sources: Vec<OperatorStatus>,
    /// Each sink's records taken in and rate: raw rows, windows, rejected messages.
    pub sinks: Vec<OperatorStatus>,
    /// Why the record counts are unknown (the metrics lookup failed); they read 0 then.
    pub metrics_error: Option<String>,
    pub last_checkpoint_age_secs: Option<i64>,
    /// Restores from a checkpoint since the job was submitted.
    pub restarts: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorStatus {
    pub name: String,
    pub records: i64,
    pub per_s: f64,
}

impl From<&crate::clients::flink::metrics::OperatorRecords> for OperatorStatus {
    fn from(o: &crate::clients::flink::metrics::OperatorRecords) -> Self {
        Self { name: o.name.clone(), records: o.records as i64, per_s: o.per_s }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct DatabaseSection {
    pub light: Light,
    pub tables: Vec<TableStatus>,
    /// Messages the streaming job could not use (table `rejected_readings`); None when the
    /// table cannot be read (a lab created before it existed, until the next `up`).
    pub rejected: Option<crate::clients::db::RejectedStats>,
    /// Late windows rewritten from the raw rows so far (`verify --repair`, exports), as
    /// recorded on this machine.
    pub repairs: crate::ops::verify::repair::RepairTotals,
}

#[derive(Debug, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub rows: i64,
    /// False when `rows` is TimescaleDB's estimate (large tables; within ~0.1 %).
    pub rows_exact: bool,
    pub chunks: i64,
    pub newest: Option<DateTime<Utc>>,
    /// Seconds between the newest row and now (for aggregates: the newest window's end).
    pub freshness_secs: Option<i64>,
}

#[derive(Debug, Default, Serialize)]
pub struct SparkSection {
    pub light: Light,
    pub master: Option<String>,
    pub workers: Vec<crate::clients::spark::Worker>,
    pub cores: Option<u32>,
    pub cores_used: Option<u32>,
    /// The newest drivers (running and completed) with their outcome.
    pub drivers: Vec<SparkDriver>,
}

#[derive(Debug, Serialize)]
pub struct SparkDriver {
    pub id: String,
    pub state: DriverState,
    pub started: Option<DateTime<Utc>>,
    /// How the export ended, when this machine's labctl followed it (`submit spark` without
    /// `--no-wait`, the console's action).
    pub export: Option<crate::ops::spark::history::ExportRecord>,
}

#[derive(Debug, Default, Serialize)]
pub struct LakeSection {
    pub light: Light,
    pub container: String,
    pub tables: Vec<crate::clients::lake::DeltaSummary>,
    /// Whether the lake's machine_sensors table is current with the database.
    pub currency: Option<LakeCurrency>,
}

/// Rows per UTC day of the lake against the database's, as of the newest export: a day is
/// current when the lake holds at least the database's rows stamped before the export's bound
/// (`verify::LAKE_IN_FLIGHT_SECS` before it compared) and at most all of the day's rows.
#[derive(Debug, Default, Serialize)]
pub struct LakeCurrency {
    pub as_of: Option<DateTime<Utc>>,
    pub due_before: Option<DateTime<Utc>>,
    pub days_compared: usize,
    /// Days whose lake rows are outside those bounds (late readings since, or a loss).
    pub days_differing: Vec<String>,
    /// Days with due rows and none in the lake.
    pub days_behind: Vec<String>,
    pub error: Option<String>,
}

/// Everything `status` shows, gathered concurrently; no call may take longer than `timeout`.
pub async fn report(lab: &Lab, rt: &Runtime, timeout: Duration) -> Result<Report> {
    report_with(lab, rt, timeout, true).await
}

/// `concurrent = false` makes the same calls one after another: the benchmark's baseline.
pub async fn report_with(
    lab: &Lab,
    rt: &Runtime,
    timeout: Duration,
    concurrent: bool,
) -> Result<Report> {
    let started = Instant::now();
    let services_f = bounded("services", timeout * 2, services(lab, rt, timeout));
    let broker_f = bounded("broker", timeout, broker(lab, timeout));
    let flink_f = bounded("flink", timeout, flink(lab, timeout));
    let database_f = bounded("database", timeout, database(lab, timeout));
    let spark_f = bounded("spark", timeout, spark(lab, timeout));
    let lake_f = bounded("lake", timeout, lake(lab, timeout));
    let (services, broker, flink, database, spark, lake) = if concurrent {
        tokio::join!(services_f, broker_f, flink_f, database_f, spark_f, lake_f)
    } else {
        (
            services_f.await,
            broker_f.await,
            flink_f.await,
            database_f.await,
            spark_f.await,
            lake_f.await,
        )
    };
    let services = services?;
    let ingest_running = services.iter().any(|s| s.service == INGEST && s.state == "running");
    let facts = health::Facts {
        ingest_running,
        now: Utc::now(),
        checkpoint_interval_secs: crate::ops::flink::job::JobSettings::for_lab(&lab.config)
            .checkpoint_interval_secs as i64,
    };
    let mut broker = broker.unwrap_or_else(|e| {
        let unknown = Some(format!("broker not answering: {e:#}"));
        BrokerSection {
            light: Light::red(format!("{e:#}")),
            topic: lab.config.broker.topic.clone(),
            consumer_group: GroupLag {
                group: lab_group(lab),
                error: unknown.clone(),
                ..Default::default()
            },
            cluster: ClusterStatus {
                error: unknown.clone(),
                quorum_error: unknown,
                ..Default::default()
            },
            ..Default::default()
        }
    });
    let mut flink = flink.unwrap_or_else(|e| FlinkSection {
        light: Light::red(format!("{e:#}")),
        ..Default::default()
    });
    let mut database = database.unwrap_or_else(|e| DatabaseSection {
        light: Light::red(format!("{e:#}")),
        ..Default::default()
    });
    let mut spark = spark.unwrap_or_else(|e| SparkSection {
        light: Light::red(format!("{e:#}")),
        ..Default::default()
    });
    let mut lake = lake.unwrap_or_else(|e| LakeSection {
        light: Light::red(format!("{e:#}")),
        container: lab.config.lake.container.clone(),
        ..Default::default()
    });
    broker.flink_consumer_lag = flink
        .jobs
        .iter()
        .find(|j| j.lab_job && j.state == JobState::Running)
        .map(|j| j.pending_records);
    health::judge_broker(&mut broker, &facts);
    health::judge_flink(&mut flink, &facts);
    health::judge_database(
        &mut database,
        &facts,
        flink.jobs.iter().any(|j| j.lab_job && j.state == JobState::Running),
    );
    health::judge_spark(&mut spark);
    health::judge_lake(&mut lake);
    let health = services
        .iter()
        .map(|s| s.light.health)
        .chain([
            broker.light.health,
            flink.light.health,
            database.light.health,
            spark.light.health,
            lake.light.health,
        ])
        .max()
        .unwrap_or(Health::Green);
    Ok(Report {
        schema: SCHEMA_ID,
        project: lab.stack.project.clone(),
        at: facts.now,
        health,
        healthy: services.iter().all(|s| s.ready),
        services,
        broker,
        flink,
        database,
        spark,
        lake,
        secrets: None,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// `fut`'s result, or an error naming the timeout when it takes longer.
async fn bounded<T>(
    what: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let t = Instant::now();
    let r = tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")));
    tracing::debug!("status: {what} took {} ms", t.elapsed().as_millis());
    r
}

/// Containers from the engine, readiness through each service's own protocol.
async fn services(lab: &Lab, rt: &Runtime, timeout: Duration) -> Result<Vec<ServiceStatus>> {
    let containers = rt.list_containers(&lab.stack.project).await?;
    let probes = lab.stack.services.iter().map(|svc| async move {
        // The generator's liveness is its container; its output shows in the broker section.
        if matches!(svc.probe, Probe::Running | Probe::CoveredBy { .. }) {
            return Ok(match &svc.probe {
                Probe::CoveredBy { service } => format!("checked with {service}"),
                _ => "container running".to_string(),
            });
        }
        tokio::time::timeout(timeout, lab.probe(&svc.probe, timeout))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")))
            .map_err(|e| format!("{e:#}"))
    });
    let restarts = containers
        .iter()
        .map(|c| async move { (c.name.clone(), rt.restart_count(&c.name).await.unwrap_or(0)) });
    let volumes: BTreeSet<String> = lab
        .stack
        .services
        .iter()
        .flat_map(|s| &s.mounts)
        .map(|m| lab.stack.volume_name(m.volume))
        .collect();
    let spaces = volumes.into_iter().map(|v| async move {
        let space = rt.volume_space(&v).await.ok().flatten();
        (v, space)
    });
    let (probes, restarts, spaces) = tokio::join!(
        futures_util::future::join_all(probes),
        futures_util::future::join_all(restarts),
        futures_util::future::join_all(spaces)
    );
    let mut out = Vec::new();
    for (svc, probe) in lab.stack.services.iter().zip(probes) {
        let mine: Vec<_> = containers.iter().filter(|c| c.service == svc.name).collect();
        let running = mine.iter().filter(|c| c.running()).count();
        let state = match (running, mine.len()) {
            (_, 0) => "missing",
            _ if mine.iter().any(|c| c.state == "paused") => "paused",
            (r, n) if r == n && n as u32 >= svc.replicas => "running",
            (0, _) => "stopped",
            _ => "partial",
        };
        let restarts: i64 = restarts
            .iter()
            .filter(|(n, _)| mine.iter().any(|c| &c.name == n))
            .map(|(_, r)| r)
            .sum();
        let ready = state == "running" && probe.is_ok();
        let volumes: Vec<VolumeSpace> = svc
            .mounts
            .iter()
            .filter_map(|m| {
                let name = lab.stack.volume_name(m.volume);
                let (_, space) = spaces.iter().find(|(v, _)| *v == name)?;
                space.map(|s| VolumeSpace {
                    volume: name,
                    path: m.path.to_string(),
                    total_bytes: s.total_bytes,
                    free_bytes: s.free_bytes,
                })
            })
            .collect();
        let light = health::judge_volumes(
            health::judge_service(
                svc.name,
                state,
                running,
                svc.replicas,
                &probe,
                restarts,
                lab.config.ingest.enabled,
            ),
            svc.name,
            &volumes,
        );
        out.push(ServiceStatus {
            service: svc.name.to_string(),
            state: state.to_string(),
            ready: ready || (svc.name == INGEST && !lab.config.ingest.enabled && mine.is_empty()),
            light,
            restarts,
            url: svc.ports.iter().find(|p| p.url_path.is_some()).and_then(|p| lab.stack.url(p.key)),
            containers: mine
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    state: c.state.clone(),
                    status: c.status.clone(),
                })
                .collect(),
            volumes,
        });
    }
    // External services: no containers, only whether they answer.
    let external = futures_util::future::join_all(lab.stack.external.iter().map(|e| async move {
        let probe = tokio::time::timeout(timeout, lab.probe(&e.probe, timeout))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")));
        let light = match probe {
            Ok(d) => Light::green(d),
            Err(err) => {
                Light::red(format!("not answering (the address is {}): {err:#}", e.part.key()))
            }
        };
        ServiceStatus {
            service: e.name.to_string(),
            state: "external".into(),
            ready: light.health == Health::Green,
            light,
            restarts: 0,
            url: Some(e.address.clone()),
            containers: vec![],
            volumes: vec![],
        }
    }))
    .await;
    out.extend(external);
    Ok(out)
}

/// The consumer group the lab's Flink job commits its offsets to.
fn lab_group(lab: &Lab) -> String {
    crate::ops::flink::job::Target::lab(&lab.config).group_id
}

async fn broker(lab: &Lab, timeout: Duration) -> Result<BrokerSection> {
    let topic = lab.config.broker.topic.clone();
    let project = &lab.stack.project;
    let group = lab_group(lab);
    let mut samples = rate::load(project);
    // One round trip set: the slow lookup by time only when no sample can give the rate.
    let at = Utc::now();
    let since = (!rate::has_base(&samples, at)).then(|| at - chrono::Duration::seconds(60));
    let b = lab.broker()?;
    // The group's offsets and the cluster's facts side by side with the offsets; each gives up
    // a little before the section's own bound, so its failure is its own "unknown".
    let inner = timeout.mul_f64(0.9);
    let (a, committed, cluster) = tokio::join!(
        b.activity(&topic, since, timeout),
        bounded("consumer group", inner, b.committed(&group, &topic, inner)),
        bounded("cluster", inner, b.cluster(&topic, inner)),
    );
    let a = a?;
    let cached = rate::update(&mut samples, rate::Sample { at, end_offsets: a.end_offsets() });
    rate::store(project, &samples);
    let ingest_per_s = cached.or_else(|| a.appended_since().map(|n| n as f64 / 60.0));
    Ok(BrokerSection {
        light: Light::default(),
        topic,
        end_offsets: Some(a.end_offsets()),
        ingest_per_s,
        flink_consumer_lag: None,
        consumer_group: group_lag(group, &a.partitions, committed),
        cluster: cluster_status(cluster),
        partitions: a.partitions,
    })
}

/// Lag per partition: the end offset minus the committed offset.
fn group_lag(
    group: String,
    partitions: &[crate::clients::kafka::PartitionActivity],
    committed: Result<Vec<(i32, Option<i64>)>>,
) -> GroupLag {
    let committed = match committed {
        Ok(c) => c,
        Err(e) => return GroupLag { group, error: Some(format!("{e:#}")), ..Default::default() },
    };
    let partitions: Vec<PartitionLag> = partitions
        .iter()
        .map(|p| {
            let c =
                committed.iter().find(|(id, _)| *id == p.offsets.partition).and_then(|(_, c)| *c);
            PartitionLag {
                partition: p.offsets.partition,
                committed: c,
                lag: (p.offsets.high - c.unwrap_or(p.offsets.low)).max(0),
            }
        })
        .collect();
    let lag = Some(partitions.iter().map(|p| p.lag).sum());
    GroupLag { group, partitions, lag, error: None }
}

fn cluster_status(facts: Result<crate::clients::kafka::ClusterFacts>) -> ClusterStatus {
    let facts = match facts {
        Ok(f) => f,
        Err(e) => {
            return ClusterStatus {
                error: Some(format!("{e:#}")),
                quorum_error: Some("metadata unknown".into()),
                ..Default::default()
            }
        }
    };
    let (quorum, quorum_error) = match facts.quorum {
        Ok(q) => (Some(q), None),
        Err(e) => (None, Some(e)),
    };
    ClusterStatus {
        brokers: facts.brokers,
        controller_id: quorum.as_ref().map(|q| q.leader_id).filter(|id| *id >= 0),
        quorum_error: quorum_error.or_else(|| {
            quorum
                .as_ref()
                .filter(|q| q.leader_id < 0)
                .map(|_| "the quorum has no leader".to_string())
        }),
        quorum,
        under_replicated: facts
            .partitions
            .iter()
            .filter(|p| p.under_replicated())
            .map(|p| p.partition)
            .collect(),
        offline: facts.partitions.iter().filter(|p| p.leader < 0).map(|p| p.partition).collect(),
        partitions: facts.partitions,
        error: None,
    }
}

async fn flink(lab: &Lab, timeout: Duration) -> Result<FlinkSection> {
    let client = lab.flink(timeout)?;
    let (overview, jobs) = tokio::try_join!(client.overview(), client.jobs())?;
    let lab_job = crate::ops::flink::job::Target::lab(&lab.config).job_name;
    let now = Utc::now().timestamp_millis();
    let shown =
        jobs.into_iter().filter(|j| !matches!(j.state, JobState::Canceled | JobState::Finished));
    let jobs = futures_util::future::join_all(shown.map(|j| {
        let (client, lab_job) = (&client, &lab_job);
        async move {
            let (m, cp) = tokio::join!(client.job_metrics(&j.jid), client.checkpoints(&j.jid));
            let (m, metrics_error) = match m {
                Ok(m) => (m, None),
                Err(e) => {
                    tracing::debug!("metrics of job {}: {e:#}", j.jid);
                    (Default::default(), Some(format!("{e:#}")))
                }
            };
            let cp = cp.ok();
            let last = cp
                .as_ref()
                .and_then(|c| c["latest"]["completed"]["latest_ack_timestamp"].as_i64())
                .filter(|t| *t > 0);
            FlinkJobStatus {
                lab_job: &j.name == lab_job,
                uptime_secs: (now - j.start_time).max(0) / 1000,
                records_in: m.records_in as i64,
                records_out: m.records_out as i64,
                records_in_per_s: m.records_in_per_s,
                records_out_per_s: m.records_out_per_s,
                late_records_dropped: m.late_records_dropped as i64,
                pending_records: m.pending_records as i64,
                sources: m.sources.iter().map(OperatorStatus::from).collect(),
                sinks: m.sinks.iter().map(OperatorStatus::from).collect(),
                metrics_error,
                last_checkpoint_age_secs: last.map(|t| (now - t).max(0) / 1000),
                restarts: cp.as_ref().and_then(|c| c["counts"]["restored"].as_i64()),
                id: j.jid,
                name: j.name,
                state: j.state,
            }
        }
    }))
    .await;
    let mut jobs = jobs;
    jobs.sort_by_key(|j| (!j.lab_job, j.state != JobState::Running, -j.uptime_secs));
    Ok(FlinkSection {
        light: Light::default(),
        taskmanagers: Some(overview.taskmanagers),
        slots_total: Some(overview.slots_total),
        slots_available: Some(overview.slots_available),
        jobs,
    })
}

async fn database(lab: &Lab, timeout: Duration) -> Result<DatabaseSection> {
    let client = lab.database()?.connect(timeout).await?;
    let now = Utc::now();
    let stats = futures_util::future::try_join_all(
        schema::TABLES.iter().map(|t| crate::clients::db::table_stats(&client, t)),
    )
    .await?;
    let tables = stats
        .into_iter()
        .map(|s| {
            // A window is fresh when it closed, not when it opened.
            let shift = if s.table == "sensor_aggregates" { 60 } else { 0 };
            TableStatus {
                freshness_secs: s.newest.map(|n| (now - n).num_seconds() - shift),
                table: s.table,
                rows: s.rows,
                rows_exact: s.rows_exact,
                chunks: s.chunks,
                newest: s.newest,
            }
        })
        .collect();
    let rejected = match crate::clients::db::rejected_stats(&client).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::debug!("rejected readings: {e:#}");
            None
        }
    };
    let repairs = crate::ops::verify::repair::totals(&lab.stack.project).unwrap_or_else(|e| {
        tracing::debug!("repair history: {e:#}");
        Default::default()
    });
    Ok(DatabaseSection { light: Light::default(), tables, rejected, repairs })
}

async fn spark(lab: &Lab, timeout: Duration) -> Result<SparkSection> {
    let m = lab.spark(timeout)?.master().await?;
    let history = crate::ops::spark::history::by_driver(&lab.stack.project).unwrap_or_else(|e| {
        tracing::debug!("export history: {e:#}");
        Default::default()
    });
    let mut drivers: Vec<SparkDriver> = m
        .activedrivers
        .iter()
        .chain(m.completeddrivers.iter())
        .map(|d| driver_of(d, &history))
        .collect();
    drivers.sort_by_key(|d| std::cmp::Reverse(d.started));
    drivers.truncate(5);
    Ok(SparkSection {
        light: Light::default(),
        master: Some(m.status),
        cores: Some(m.cores),
        cores_used: Some(m.coresused),
        workers: m.workers,
        drivers,
    })
}

/// A driver as the master's `/json` lists it, with the export labctl recorded for it.
fn driver_of(
    d: &serde_json::Value,
    history: &std::collections::HashMap<String, crate::ops::spark::history::ExportRecord>,
) -> SparkDriver {
    let id = d["id"].as_str().unwrap_or_default().to_string();
    // Spark 4's master writes starttime as a string of milliseconds.
    let started_ms =
        d["starttime"].as_i64().or_else(|| d["starttime"].as_str().and_then(|t| t.parse().ok()));
    SparkDriver {
        export: history.get(&id).cloned(),
        state: serde_json::from_value(d["state"].clone()).unwrap_or(DriverState::Unknown),
        started: started_ms.and_then(DateTime::from_timestamp_millis),
        id,
    }
}

async fn lake(lab: &Lab, timeout: Duration) -> Result<LakeSection> {
    let blob = lab.blob(timeout)?;
    let container = lab.config.lake.container.clone();
    let tables: Vec<_> = futures_util::future::try_join_all(
        schema::TABLES.iter().map(|t| blob.delta_summary(&container, t.name)),
    )
    .await?
    .into_iter()
    .filter(|t| t.version.is_some())
    .collect();
    let currency = match tables.iter().find(|t| t.table == schema::MACHINE_SENSORS.name) {
        Some(t) => Some(match lake_currency(lab, t, timeout).await {
            Ok(c) => c,
            Err(e) => LakeCurrency { error: Some(format!("{e:#}")), ..Default::default() },
        }),
        None => None,
    };
    Ok(LakeSection { light: Light::default(), tables, container, currency })
}

async fn lake_currency(
    lab: &Lab,
    t: &crate::clients::lake::DeltaSummary,
    timeout: Duration,
) -> Result<LakeCurrency> {
    let as_of = t.export_as_of.or(t.last_commit);
    let Some(due_before) =
        as_of.map(|a| a - chrono::Duration::seconds(crate::ops::verify::LAKE_IN_FLIGHT_SECS))
    else {
        return Ok(LakeCurrency {
            error: Some("the lake's log does not say what was exported (checkpointed log)".into()),
            ..Default::default()
        });
    };
    let db = lab.database()?.connect(timeout).await?;
    let ms = schema::MACHINE_SENSORS;
    let sql = format!(
        "SELECT to_char({tc} AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*) FILTER (WHERE {tc} < $1), count(*) FROM {name} GROUP BY 1",
        tc = schema::pg_ident(ms.time_column),
        name = ms.name
    );
    let rows = db.query(&sql, &[&due_before]).await.context("counting machine_sensors per day")?;
    let mut c = LakeCurrency { as_of, due_before: Some(due_before), ..Default::default() };
    let mut days: std::collections::BTreeSet<String> = t.rows_per_day.keys().cloned().collect();
    let db_days: std::collections::HashMap<String, (i64, i64)> =
        rows.iter().map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2)))).collect();
    days.extend(db_days.keys().cloned());
    for day in days {
        let (due, all) = db_days.get(&day).copied().unwrap_or((0, 0));
        let lake = t.rows_per_day.get(&day).copied().unwrap_or(0) as i64;
        if due == 0 && all == 0 && lake == 0 {
            continue;
        }
        c.days_compared += 1;
        if lake == 0 && due > 0 {
            c.days_behind.push(day);
        } else if lake < due || lake > all {
            c.days_differing.push(day);
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_of_the_masters_list_with_its_recorded_export() {
        // As Spark 4.0's master lists a completed driver (starttime a string of ms).
        let d = serde_json::json!({"id": "driver-20261203130401-0000", "starttime": "1796303041809",
            "state": "FINISHED", "cores": 2, "memory": 1536});
        let none = std::collections::HashMap::new();
        let got = driver_of(&d, &none);
        assert_eq!(got.started.map(|t| t.timestamp_millis()), Some(1_796_303_041_809));
        assert_eq!(got.state, DriverState::Finished);
        assert!(got.export.is_none());
        let d = serde_json::json!({"id": "driver-2", "starttime": 1796303041809i64, "state": "RUNNING"});
        assert_eq!(
            driver_of(&d, &none).started.map(|t| t.timestamp_millis()),
            Some(1_796_303_041_809)
        );
    }

    /// The documented schema and the serialized report cannot drift apart: a report with every
    /// optional part filled and one with every part empty both validate.
    #[test]
    fn report_matches_its_documented_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/status.schema.json"))
                .expect("schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("schema compiles");
        let light = Light::green("fine");
        let full = Report {
            schema: SCHEMA_ID,
            project: "lab".into(),
            at: Utc::now(),
            health: Health::Yellow,
            healthy: true,
            services: vec![ServiceStatus {
                service: "broker".into(),
                state: "running".into(),
                ready: true,
                light: light.clone(),
                restarts: 1,
                url: Some("http://127.0.0.1:1".into()),
                containers: vec![ContainerStatus {
                    name: "lab-broker-1".into(),
                    state: "running".into(),
                    status: "Up".into(),
                }],
                volumes: vec![VolumeSpace {
                    volume: "lab-broker-data".into(),
                    path: "/var/lib/kafka".into(),
                    total_bytes: 1 << 30,
                    free_bytes: 1 << 29,
                }],
            }],
            broker: BrokerSection {
                light: light.clone(),
                topic: "sensors".into(),
                partitions: vec![crate::clients::kafka::PartitionActivity {
                    offsets: crate::clients::kafka::PartitionOffsets {
                        partition: 0,
                        low: 0,
                        high: 9,
                    },
                    messages: 9,
                    at_since: Some(3),
                }],
                end_offsets: Some(9),
                ingest_per_s: Some(1.8),
                flink_consumer_lag: Some(0),
                consumer_group: GroupLag {
                    group: "labctl-lab-flink".into(),
                    partitions: vec![
                        PartitionLag { partition: 0, committed: Some(9), lag: 0 },
                        PartitionLag { partition: 1, committed: None, lag: 0 },
                    ],
                    lag: Some(0),
                    error: None,
                },
                cluster: ClusterStatus {
                    brokers: vec![crate::clients::kafka::BrokerNode {
                        id: 1,
                        host: "127.0.0.1".into(),
                        port: 9092,
                    }],
                    controller_id: Some(1),
                    quorum: Some(crate::clients::kafka::quorum::Quorum {
                        leader_id: 1,
                        leader_epoch: 2,
                        high_watermark: 300,
                        voters: vec![crate::clients::kafka::quorum::Replica {
                            id: 1,
                            log_end_offset: 300,
                        }],
                        observers: vec![],
                    }),
                    quorum_error: None,
                    partitions: vec![crate::clients::kafka::PartitionReplicas {
                        partition: 0,
                        leader: 1,
                        replicas: vec![1, 2],
                        isr: vec![1],
                    }],
                    under_replicated: vec![0],
                    offline: vec![],
                    error: None,
                },
            },
            flink: FlinkSection {
                light: light.clone(),
                taskmanagers: Some(1),
                slots_total: Some(3),
                slots_available: Some(0),
                jobs: vec![FlinkJobStatus {
                    id: "0123456789abcdef0123456789abcdef".into(),
                    name: "lab: sensor aggregation".into(),
                    state: "RUNNING".into(),
                    lab_job: true,
                    uptime_secs: 5,
                    records_in: 1,
                    records_out: 2,
                    records_in_per_s: 0.5,
                    records_out_per_s: 1.0,
                    late_records_dropped: 0,
                    pending_records: 0,
                    sources: vec![OperatorStatus {
                        name: "sensor_readings".into(),
                        records: 1,
                        per_s: 0.5,
                    }],
                    sinks: vec![OperatorStatus {
                        name: "machine_sensors".into(),
                        records: 2,
                        per_s: 1.0,
                    }],
                    metrics_error: None,
                    last_checkpoint_age_secs: Some(1),
                    restarts: Some(0),
                }],
            },
            database: DatabaseSection {
                light: light.clone(),
                tables: vec![TableStatus {
                    table: "machine_sensors".into(),
                    rows: 3,
                    rows_exact: true,
                    chunks: 1,
                    newest: Some(Utc::now()),
                    freshness_secs: Some(2),
                }],
                rejected: Some(crate::clients::db::RejectedStats {
                    count: 1,
                    newest: Some(Utc::now()),
                    last_reason: Some("not a JSON object".into()),
                }),
                repairs: crate::ops::verify::repair::RepairTotals {
                    runs: 1,
                    windows: 1,
                    late_readings: 1,
                    last: Some(crate::ops::verify::repair::RepairRecord {
                        at: Utc::now(),
                        trigger: crate::ops::verify::repair::Trigger::Verify,
                        updated: 1,
                        added: 0,
                        late_readings: 1,
                        windows: vec![crate::ops::verify::repair::RepairedWindow {
                            machine_id: "CNC-1".into(),
                            sensor_type: "pressure".into(),
                            window_start: Utc::now(),
                            count_before: Some(11),
                            count_after: 12,
                        }],
                    }),
                },
            },
            spark: SparkSection {
                light: light.clone(),
                master: Some("ALIVE".into()),
                workers: vec![crate::clients::spark::Worker {
                    id: "w".into(),
                    host: "h".into(),
                    state: "ALIVE".into(),
                    cores: 2,
                    coresused: 0,
                    memory: 1024,
                    memoryused: 0,
                }],
                cores: Some(2),
                cores_used: Some(0),
                drivers: vec![SparkDriver {
                    id: "driver-1".into(),
                    state: "FINISHED".into(),
                    started: Some(Utc::now()),
                    export: Some(crate::ops::spark::history::ExportRecord {
                        driver: "driver-1".into(),
                        ended_at: Utc::now(),
                        state: DriverState::Finished,
                        seconds: 12.5,
                        rows_read: Some(10),
                        rows_written: Some(10),
                        delta_version: Some(0),
                        days_rewritten: Some(1),
                        committed: Some(true),
                        error: None,
                    }),
                }],
            },
            lake: LakeSection {
                light,
                container: "lake".into(),
                tables: vec![crate::clients::lake::DeltaSummary {
                    table: "machine_sensors".into(),
                    version: Some(0),
                    partitions: 1,
                    data_files: 1,
                    rows: Some(3),
                    last_commit: Some(Utc::now()),
                    rows_per_day: [("2026-11-24".to_string(), 3)].into(),
                    export_as_of: Some(Utc::now()),
                }],
                currency: Some(LakeCurrency {
                    as_of: Some(Utc::now()),
                    due_before: Some(Utc::now()),
                    days_compared: 2,
                    days_differing: vec!["2026-11-24".into()],
                    days_behind: vec!["2026-11-25".into()],
                    error: None,
                }),
            },
            secrets: Some(serde_json::json!({"db_password": "x", "db_url": "postgresql://..."})),
            elapsed_ms: 12,
        };
        let empty = Report {
            services: vec![],
            broker: BrokerSection {
                light: Light::red("down"),
                consumer_group: GroupLag {
                    group: "g".into(),
                    error: Some("broker not answering".into()),
                    ..Default::default()
                },
                cluster: ClusterStatus {
                    error: Some("broker not answering".into()),
                    quorum_error: Some("broker not answering".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            flink: FlinkSection { light: Light::red("down"), ..Default::default() },
            database: DatabaseSection { light: Light::red("down"), ..Default::default() },
            spark: SparkSection { light: Light::red("down"), ..Default::default() },
            lake: LakeSection { light: Light::red("down"), ..Default::default() },
            secrets: None,
            ..full.clone_shallow()
        };
        for report in [&full, &empty] {
            let doc = serde_json::to_value(report).expect("serializes");
            let errors: Vec<String> = validator
                .iter_errors(&doc)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
        }
    }

    #[test]
    fn group_lag_per_partition() {
        let part = |partition, low, high| crate::clients::kafka::PartitionActivity {
            offsets: crate::clients::kafka::PartitionOffsets { partition, low, high },
            messages: high - low,
            at_since: None,
        };
        let parts = [part(0, 0, 100), part(1, 5, 5), part(2, 10, 40)];
        let g = group_lag("g".into(), &parts, Ok(vec![(0, Some(90)), (1, None), (2, None)]));
        let lags: Vec<(i32, Option<i64>, i64)> =
            g.partitions.iter().map(|p| (p.partition, p.committed, p.lag)).collect();
        assert_eq!(
            lags,
            vec![(0, Some(90), 10), (1, None, 0), (2, None, 30)],
            "without a commit the job starts at the earliest offset"
        );
        assert_eq!((g.lag, g.error), (Some(40), None));
        let failed = group_lag("g".into(), &parts, Err(anyhow::anyhow!("no answer within 1.8s")));
        assert_eq!(
            (failed.lag, failed.error.as_deref(), failed.partitions.len()),
            (None, Some("no answer within 1.8s"), 0)
        );
    }

    impl Report {
        fn clone_shallow(&self) -> Report {
            Report {
                schema: self.schema,
                project: self.project.clone(),
                at: self.at,
                health: self.health,
                healthy: self.healthy,
                services: vec![],
                broker: Default::default(),
                flink: Default::default(),
                database: Default::default(),
                spark: Default::default(),
                lake: Default::default(),
                secrets: None,
                elapsed_ms: self.elapsed_ms,
            }
        }
    }
}
