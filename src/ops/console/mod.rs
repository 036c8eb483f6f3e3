//! What `labctl console` serves, as data: one status report at a time shared by every page and
//! event stream (built by a single refresher, and only while someone is watching, so an idle
//! console costs next to nothing), the pipeline's hops, the topic browser and the services'
//! facts. The HTTP side is `cli::console`.

pub mod browse;
pub mod pipeline;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::{
    clients::{
        docker::{facts::ContainerFacts, Runtime},
        kafka::records::TopicReader,
    },
    ops::{lab::Lab, status},
};

/// Samples of history the sparklines draw: five minutes at the default refresh.
const HISTORY: usize = 150;
/// How far back a partition's rate looks.
const RATE_SPAN: chrono::Duration = chrono::Duration::seconds(30);
/// How long the refresher goes on after the last request when no event stream is open.
const LINGER: Duration = Duration::from_secs(10);

/// One refresh: the report and what the pipeline page derives from it, serialized once for every
/// client.
pub struct Snapshot {
    pub taken: Instant,
    pub healthy: bool,
    /// `{"report": .., "hops": .., "history": ..}`
    pub json: Arc<str>,
}

#[derive(Serialize)]
struct SnapshotDoc<'a> {
    report: &'a status::Report,
    hops: Vec<pipeline::Hop>,
    history: Vec<pipeline::Sample>,
    partition_rates: Vec<pipeline::PartitionRate>,
}

/// The lab as the console sees it, refreshed every `every` while in demand.
pub struct Hub {
    pub lab: Lab,
    pub rt: Runtime,
    pub timeout: Duration,
    pub every: Duration,
    latest: watch::Sender<Option<Arc<Snapshot>>>,
    demand: Notify,
    last_demand: Mutex<Instant>,
    /// The topic browser's client, made on first use and kept (see `clients::kafka::records`).
    reader: Mutex<Option<Arc<TopicReader>>>,
}

impl Hub {
    pub fn new(lab: Lab, rt: Runtime, every: Duration, timeout: Duration) -> Arc<Self> {
        let (latest, _) = watch::channel(None);
        Arc::new(Self {
            lab,
            rt,
            timeout,
            every,
            latest,
            demand: Notify::new(),
            last_demand: Mutex::new(Instant::now()),
            reader: Mutex::new(None),
        })
    }

    /// The refresher; runs until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut history = pipeline::History::new(HISTORY);
        loop {
            let idle = self.latest.receiver_count() == 0
                && self.last_demand.lock().map(|t| t.elapsed() > LINGER).unwrap_or(true);
            if idle {
                self.demand.notified().await;
            }
            let started = Instant::now();
            match status::report(&self.lab, &self.rt, self.timeout).await {
                Ok(report) => {
                    history.push(pipeline::Sample::of(&report));
                    let doc = SnapshotDoc {
                        report: &report,
                        hops: pipeline::hops(&report),
                        history: history.samples(),
                        partition_rates: history.partition_rates(RATE_SPAN),
                    };
                    match serde_json::to_string(&doc) {
                        Ok(json) => {
                            self.latest.send_replace(Some(Arc::new(Snapshot {
                                taken: Instant::now(),
                                healthy: report.healthy,
                                json: json.into(),
                            })));
                        }
                        Err(e) => tracing::warn!("console: cannot serialize the report: {e}"),
                    }
                }
                // Only the engine itself failing lands here; a service down is in the report.
                Err(e) => tracing::warn!("console: no status report: {e:#}"),
            }
            tokio::time::sleep(self.every.saturating_sub(started.elapsed())).await;
        }
    }

    fn wanted(&self) {
        if let Ok(mut t) = self.last_demand.lock() {
            *t = Instant::now();
        }
        self.demand.notify_one();
    }

    /// The newest snapshot no older than two refreshes, waiting for one when there is none yet
    /// (the first request after the console sat idle).
    pub async fn current(&self) -> Result<Arc<Snapshot>> {
        self.wanted();
        let mut rx = self.latest.subscribe();
        let fresh = |s: &Option<Arc<Snapshot>>| {
            s.as_ref().filter(|s| s.taken.elapsed() < self.every * 2).cloned()
        };
        if let Some(s) = fresh(&rx.borrow_and_update()) {
            return Ok(s);
        }
        let wait = self.timeout * 3 + self.every;
        tokio::time::timeout(wait, async {
            loop {
                rx.changed().await.ok();
                if let Some(s) = rx.borrow_and_update().clone() {
                    return s;
                }
            }
        })
        .await
        .with_context(|| format!("no status report within {} s", wait.as_secs()))
    }

    /// The newest messages a query asks for. A reader that failed is dropped, so the next
    /// request starts with a new client (a broker restarted meanwhile).
    pub async fn messages(
        &self,
        q: browse::MessageQuery,
        timeout: Duration,
    ) -> Result<browse::MessagePage> {
        let reader = self.reader()?;
        let page = browse::messages(reader.clone(), q, timeout).await;
        if page.as_ref().is_err_and(|e| e.downcast_ref::<browse::BadQuery>().is_none()) {
            if let Ok(mut r) = self.reader.lock() {
                if r.as_ref().is_some_and(|x| Arc::ptr_eq(x, &reader)) {
                    *r = None;
                }
            }
        }
        page
    }

    fn reader(&self) -> Result<Arc<TopicReader>> {
        let mut slot = self.reader.lock().map_err(|_| anyhow::anyhow!("topic reader poisoned"))?;
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(self.lab.broker()?.topic_reader(&self.lab.config.broker.topic)?);
        *slot = Some(r.clone());
        Ok(r)
    }

    /// A stream of snapshots for one event-stream client; keeps the refresher going while open.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.wanted();
        self.latest.subscribe()
    }
}

/// One container of the lab, as the services page lists it.
#[derive(Debug, Serialize)]
pub struct ContainerRow {
    pub service: String,
    pub name: String,
    pub replica: u32,
    pub state: String,
    pub status: String,
    pub image: String,
    pub uptime_secs: Option<i64>,
    #[serde(flatten)]
    pub facts: ContainerFacts,
    /// Why the facts are missing (the engine did not answer for this container).
    pub error: Option<String>,
}

pub async fn containers(lab: &Lab, rt: &Runtime) -> Result<Vec<ContainerRow>> {
    let mut list = rt.list_containers(&lab.stack.project).await?;
    list.sort_by(|a, b| (&a.service, a.replica).cmp(&(&b.service, b.replica)));
    let now = chrono::Utc::now();
    let rows = list.into_iter().map(|c| async move {
        let facts = rt.container_facts(&c.name).await;
        let (facts, error) = match facts {
            Ok(f) => (f, None),
            Err(e) => (ContainerFacts::default(), Some(format!("{e:#}"))),
        };
        ContainerRow {
            uptime_secs: facts.started_at.map(|t| (now - t).num_seconds()),
            service: c.service,
            name: c.name,
            replica: c.replica,
            state: c.state,
            status: c.status,
            image: c.image,
            facts,
            error,
        }
    });
    Ok(futures_util::future::join_all(rows).await)
}

/// The last `lines` of a container's log; only the lab's own containers are asked for.
pub async fn log_tail(lab: &Lab, rt: &Runtime, name: &str, lines: usize) -> Result<Option<String>> {
    let known = rt.list_containers(&lab.stack.project).await?.into_iter().any(|c| c.name == name);
    if !known {
        return Ok(None);
    }
    Ok(Some(rt.tail_logs(name, lines).await?))
}

/// A message the streaming job rejected, newest first on the jobs page.
#[derive(Debug, Serialize)]
pub struct Reject {
    pub partition: i32,
    pub offset: i64,
    pub produced_at: Option<chrono::DateTime<chrono::Utc>>,
    pub reason: String,
    /// The message's first 200 characters.
    pub payload: String,
}

/// The newest `limit` rejected messages, read through the export's read-only role.
pub async fn rejects(lab: &Lab, limit: i64, timeout: Duration) -> Result<Vec<Reject>> {
    use crate::model::{schema::REJECTED_READINGS as T, topology::DbRole};
    let db = lab.database_as(DbRole::Reader)?.connect(timeout).await?;
    let sql = format!(
        "SELECT topic_partition, topic_offset, produced_at, reason, left(payload, 200) FROM {} ORDER BY produced_at DESC NULLS LAST, topic_offset DESC LIMIT $1",
        T.name
    );
    let rows = db.query(&sql, &[&limit]).await.with_context(|| format!("reading {}", T.name))?;
    Ok(rows
        .iter()
        .map(|r| Reject {
            partition: r.get(0),
            offset: r.get(1),
            produced_at: r.get(2),
            reason: r.get(3),
            payload: r.get::<_, Option<String>>(4).unwrap_or_default(),
        })
        .collect())
}

/// The 1-minute windows of one machine's sensor over the `hours` up to its newest window.
pub async fn windows(
    lab: &Lab,
    machine: &str,
    sensor: &str,
    hours: u32,
    timeout: Duration,
) -> Result<crate::ops::plot::Series> {
    use crate::{model::topology::DbRole, ops::windows};
    let db = lab.database_as(DbRole::Reader)?.connect(timeout).await?;
    let q = windows::WindowQuery {
        hours,
        machines: vec![machine.to_string()],
        sensors: vec![sensor.to_string()],
    };
    let mut series = windows::read_series(&db, &q).await?;
    Ok(series.remove(0))
}

/// The machines that have windows, for the chart's picker.
pub async fn machines(lab: &Lab, timeout: Duration) -> Result<Vec<String>> {
    use crate::model::{schema::SENSOR_AGGREGATES as T, topology::DbRole};
    let db = lab.database_as(DbRole::Reader)?.connect(timeout).await?;
    let sql = format!("SELECT DISTINCT machine_id FROM {} ORDER BY 1 LIMIT 1000", T.name);
    let rows = db.query(&sql, &[]).await.with_context(|| format!("reading {}", T.name))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
