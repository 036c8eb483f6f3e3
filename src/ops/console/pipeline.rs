//! The console's pipeline page as data: the hops of the lab's data flow, each with the light and
//! reason of the `status` section it rests on and the figures a person watches, plus a short
//! history of rates and lags for sparklines. Pure functions of [`Report`]s, so the page and
//! `status --json` cannot disagree.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    clients::flink::JobState,
    model::schema::{MACHINE_SENSORS, SENSOR_AGGREGATES},
    ops::{
        numbers::count,
        status::{FlinkJobStatus, Health, Light, Report},
    },
    stack::INGEST,
};

/// One step of generator -> topic -> Flink job -> hypertables -> export -> Delta table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hop {
    /// Stable name the page and its tests address the hop by.
    pub id: &'static str,
    pub title: String,
    pub health: Health,
    pub reason: String,
    /// The hop's headline count (messages, records, rows), when known.
    pub count: Option<i64>,
    pub figures: Vec<Figure>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub label: &'static str,
    pub value: String,
}

fn fig(label: &'static str, value: impl Into<String>) -> Figure {
    Figure { label, value: value.into() }
}

/// A state as its service's REST API spells it (`RUNNING`, `FINISHED`).
fn wire_name<T: Serialize>(t: &T) -> String {
    serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn hop(id: &'static str, title: impl Into<String>, light: &Light) -> Hop {
    Hop {
        id,
        title: title.into(),
        health: light.health,
        reason: light.reason.clone(),
        count: None,
        figures: vec![],
    }
}

/// The lab's own streaming job: the running one, else the newest listed.
pub fn lab_job(r: &Report) -> Option<&FlinkJobStatus> {
    let mine = || r.flink.jobs.iter().filter(|j| j.lab_job);
    mine().find(|j| j.state == JobState::Running).or_else(|| mine().next())
}

pub fn hops(r: &Report) -> Vec<Hop> {
    let mut out = Vec::new();

    let generator = r.services.iter().find(|s| s.service == INGEST);
    let mut h = match generator {
        Some(s) => hop("generator", "Generator", &s.light),
        None => hop("generator", "Generator", &Light::yellow("no generator in this lab")),
    };
    h.figures.push(fig("state", generator.map(|s| s.state.as_str()).unwrap_or("none")));
    if let Some(rate) = r.broker.ingest_per_s {
        h.figures.push(fig("rate", format!("{rate:.1}/s")));
    }
    out.push(h);

    let b = &r.broker;
    let mut h = hop("topic", format!("Topic {}", b.topic), &b.light);
    h.count = b.end_offsets;
    h.figures.push(fig("partitions", b.partitions.len().to_string()));
    if let Some(n) = b.end_offsets {
        h.figures.push(fig("messages", count(n)));
    }
    if let Some(lag) = b.consumer_group.lag {
        h.figures.push(fig("committed lag", count(lag)));
    }
    out.push(h);

    let mut h = hop("flink", "Flink job", &r.flink.light);
    match lab_job(r) {
        Some(j) => {
            h.count = Some(j.records_in);
            h.figures.push(fig("state", wire_name(&j.state)));
            h.figures.push(fig("records in", count(j.records_in)));
            h.figures.push(fig("rate", format!("{:.0}/s", j.records_in_per_s)));
            h.figures.push(fig("pending", count(j.pending_records)));
            if j.late_records_dropped > 0 {
                h.figures.push(fig("late dropped", count(j.late_records_dropped)));
            }
        }
        None => h.figures.push(fig("state", "no lab job")),
    }
    out.push(h);

    for (id, table) in [("raw", MACHINE_SENSORS.name), ("windows", SENSOR_AGGREGATES.name)] {
        let mut h = hop(id, table, &r.database.light);
        if let Some(t) = r.database.tables.iter().find(|t| t.table == table) {
            h.count = Some(t.rows);
            let approx = if t.rows_exact { "" } else { "~" };
            h.figures.push(fig("rows", format!("{approx}{}", count(t.rows))));
            if let Some(age) = t.freshness_secs {
                h.figures.push(fig("newest", format!("{age} s ago")));
            }
        }
        if id == "windows" && r.database.repairs.windows > 0 {
            let n = r.database.repairs.windows as i64;
            h.figures.push(fig("repaired", format!("{} late windows", count(n))));
        }
        out.push(h);
    }

    let mut h = hop("export", "Spark export", &r.spark.light);
    match r.spark.drivers.first() {
        Some(d) => {
            h.figures.push(fig("newest", format!("{} {}", d.id, wire_name(&d.state))));
            if let Some(at) = d.started {
                h.figures.push(fig("started", at.format("%Y-%m-%d %H:%M:%S UTC").to_string()));
            }
            if let Some(e) = &d.export {
                h.figures.push(fig("took", format!("{:.1} s", e.seconds)));
                if let Some(n) = e.rows_written {
                    h.figures.push(fig("rows written", count(n as i64)));
                }
            }
        }
        None => h.figures.push(fig("newest", "no export yet")),
    }
    out.push(h);

    let mut h = hop("lake", format!("Delta table ({})", r.lake.container), &r.lake.light);
    if let Some(t) = r.lake.tables.iter().find(|t| t.table == MACHINE_SENSORS.name) {
        h.count = t.rows.map(|n| n as i64);
        if let Some(v) = t.version {
            h.figures.push(fig("version", v.to_string()));
        }
        if let Some(n) = t.rows {
            h.figures.push(fig("rows", count(n as i64)));
        }
        h.figures.push(fig("partitions", t.partitions.to_string()));
    }
    out.push(h);
    out
}

/// The figures a sparkline draws, sampled from one report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub ingest_per_s: Option<f64>,
    pub flink_in_per_s: Option<f64>,
    /// Records the lab job has yet to read.
    pub flink_pending: Option<i64>,
    pub topic_messages: Option<i64>,
    pub raw_rows: Option<i64>,
    pub window_rows: Option<i64>,
    /// End offset per partition (for the topic browser's rates; not drawn).
    #[serde(skip)]
    pub partition_ends: Vec<(i32, i64)>,
}

impl Sample {
    pub fn of(r: &Report) -> Self {
        let rows = |name: &str| r.database.tables.iter().find(|t| t.table == name).map(|t| t.rows);
        let job = lab_job(r).filter(|j| j.state == JobState::Running);
        Self {
            at: r.at,
            ingest_per_s: r.broker.ingest_per_s,
            flink_in_per_s: job.map(|j| j.records_in_per_s),
            flink_pending: job.map(|j| j.pending_records),
            topic_messages: r.broker.end_offsets,
            raw_rows: rows(MACHINE_SENSORS.name),
            window_rows: rows(SENSOR_AGGREGATES.name),
            partition_ends: r
                .broker
                .partitions
                .iter()
                .map(|p| (p.offsets.partition, p.offsets.high))
                .collect(),
        }
    }
}

/// Messages per second arriving in one partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionRate {
    pub partition: i32,
    pub per_s: f64,
    /// Seconds the rate is measured over.
    pub over_secs: f64,
}

/// The newest samples, oldest first, at most `cap` of them.
#[derive(Debug, Clone)]
pub struct History {
    cap: usize,
    samples: VecDeque<Sample>,
}

impl History {
    pub fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), samples: VecDeque::new() }
    }
    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }

    /// Each partition's rate between the newest sample and the oldest one at most `span`
    /// before it that knew the partition; empty until two samples are there.
    pub fn partition_rates(&self, span: chrono::Duration) -> Vec<PartitionRate> {
        let Some(newest) = self.samples.back() else { return vec![] };
        let mut out = Vec::new();
        for &(partition, high) in &newest.partition_ends {
            let earlier = self
                .samples
                .iter()
                .filter(|s| s.at < newest.at && newest.at - s.at <= span)
                .find_map(|s| {
                    s.partition_ends.iter().find(|(p, _)| *p == partition).map(|&(_, h)| (s.at, h))
                });
            if let Some((at, then)) = earlier {
                let secs = (newest.at - at).num_milliseconds() as f64 / 1000.0;
                // A topic recreated meanwhile starts again at 0: no rate rather than a negative.
                if secs > 0.0 && high >= then {
                    out.push(PartitionRate {
                        partition,
                        per_s: (high - then) as f64 / secs,
                        over_secs: secs,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::{ServiceStatus, TableStatus};

    fn report() -> Report {
        Report {
            schema: crate::ops::status::SCHEMA_ID,
            project: "t".into(),
            at: Utc::now(),
            health: Health::Green,
            healthy: true,
            services: vec![ServiceStatus {
                service: "ingest".into(),
                state: "running".into(),
                ready: true,
                light: Light::green("producing"),
                restarts: 0,
                url: None,
                containers: vec![],
                volumes: vec![],
            }],
            broker: Default::default(),
            flink: Default::default(),
            database: Default::default(),
            spark: Default::default(),
            lake: Default::default(),
            secrets: None,
            elapsed_ms: 1,
        }
    }

    #[test]
    fn every_hop_is_there_in_flow_order_with_its_sections_light() {
        let mut r = report();
        r.broker.end_offsets = Some(1234);
        r.lake.light = Light::red("Azurite not answering");
        r.database.tables.push(TableStatus {
            table: "machine_sensors".into(),
            rows: 1200,
            rows_exact: true,
            chunks: 1,
            newest: None,
            freshness_secs: Some(3),
        });
        let h = hops(&r);
        let ids: Vec<_> = h.iter().map(|h| h.id).collect();
        assert_eq!(ids, ["generator", "topic", "flink", "raw", "windows", "export", "lake"]);
        assert_eq!(h[0].health, Health::Green);
        assert_eq!(h[1].count, Some(1234));
        assert_eq!(h[3].count, Some(1200));
        assert_eq!(h[4].count, None, "no row count for a table status did not list");
        assert_eq!((h[6].health, h[6].reason.as_str()), (Health::Red, "Azurite not answering"));
        assert!(h[2].figures.iter().any(|f| f.value == "no lab job"));
        assert!(h[4].figures.iter().all(|f| f.label != "repaired"), "nothing repaired yet");
        r.database.repairs.windows = 1234;
        let h = hops(&r);
        assert!(h[4]
            .figures
            .iter()
            .any(|f| f.label == "repaired" && f.value == "1,234 late windows"));
    }

    #[test]
    fn a_lab_without_a_generator_says_so() {
        let mut r = report();
        r.services.clear();
        let h = hops(&r);
        assert_eq!(h[0].health, Health::Yellow);
        assert!(h[0].reason.contains("no generator"));
    }

    #[test]
    fn history_keeps_the_newest() {
        let mut hist = History::new(2);
        for n in 0..5 {
            let mut r = report();
            r.broker.end_offsets = Some(n);
            hist.push(Sample::of(&r));
        }
        let s = hist.samples();
        assert_eq!(s.iter().map(|s| s.topic_messages).collect::<Vec<_>>(), [Some(3), Some(4)]);
    }

    #[test]
    fn partition_rates_span_the_samples_within_reach() {
        let t0 = Utc::now();
        let sample = |secs: i64, ends: &[(i32, i64)]| {
            let mut s = Sample::of(&report());
            s.at = t0 + chrono::Duration::seconds(secs);
            s.partition_ends = ends.to_vec();
            s
        };
        let mut hist = History::new(10);
        assert!(hist.partition_rates(chrono::Duration::seconds(30)).is_empty());
        hist.push(sample(0, &[(0, 100), (1, 50)]));
        assert!(hist.partition_rates(chrono::Duration::seconds(30)).is_empty(), "one sample");
        hist.push(sample(10, &[(0, 150), (1, 50), (2, 7)]));
        hist.push(sample(20, &[(0, 300), (1, 40), (2, 9)]));
        let r = hist.partition_rates(chrono::Duration::seconds(30));
        assert_eq!(r.len(), 2, "partition 1 went back (recreated): no rate; {r:?}");
        assert_eq!((r[0].partition, r[0].per_s, r[0].over_secs), (0, 10.0, 20.0));
        assert_eq!((r[1].partition, r[1].per_s, r[1].over_secs), (2, 0.2, 10.0));
        let r = hist.partition_rates(chrono::Duration::seconds(10));
        assert_eq!(r[0].per_s, 15.0, "only the sample 10 s back is within reach");
    }
}
