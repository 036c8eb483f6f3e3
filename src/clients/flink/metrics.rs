//! A job's throughput and loss counters in one pass over its vertices, for `status`.

use anyhow::Result;

use super::{url_escape, Client};

/// Sums over all subtasks. Sources and sinks are found by metric name, not by vertex: chaining
/// puts a source and a sink in one vertex.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct JobMetrics {
    pub records_in: f64,
    pub records_out: f64,
    pub records_in_per_s: f64,
    pub records_out_per_s: f64,
    pub late_records_dropped: f64,
    /// The Kafka sources' `pendingRecords`: records in the topic not read yet.
    pub pending_records: f64,
    /// Each source's records emitted (`numRecordsOut`) and rate, by operator name.
    pub sources: Vec<OperatorRecords>,
    /// Each sink's records taken in (`numRecordsIn`) and rate, by operator name: what the
    /// JDBC sinks were handed (written within their flush interval, 1 s at most in the lab).
    pub sinks: Vec<OperatorRecords>,
}

/// One operator's counter and its rate, summed over its subtasks. Operator metrics, not the
/// vertex's `read-records`/`write-records`: those count only records crossing the network,
/// which is 0 for a source or sink chained into its vertex.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct OperatorRecords {
    /// The table name of the operator (`Sink: machine_sensors[6]` is `machine_sensors`).
    pub name: String,
    pub records: f64,
    pub per_s: f64,
}

/// `machine_sensors` from a metric's operator part `Sink__machine_sensors[6]`.
fn operator_name(metric_id: &str) -> String {
    let op = metric_id.rsplit_once('.').map_or(metric_id, |(op, _)| op);
    let op = op.strip_prefix("Source__").or_else(|| op.strip_prefix("Sink__")).unwrap_or(op);
    match op.rsplit_once('[') {
        Some((name, id)) if id.ends_with(']') => name.to_string(),
        _ => op.to_string(),
    }
}

fn entry<'a>(list: &'a mut Vec<OperatorRecords>, metric_id: &str) -> &'a mut OperatorRecords {
    let name = operator_name(metric_id);
    match list.iter().position(|o| o.name == name) {
        Some(i) => &mut list[i],
        None => {
            list.push(OperatorRecords { name, ..Default::default() });
            list.last_mut().expect("just pushed")
        }
    }
}

impl Client {
    pub async fn job_metrics(&self, job: &str) -> Result<JobMetrics> {
        let details = self.job(job).await?;
        let mut m = JobMetrics::default();
        let vertices = details.vertices.iter().map(|v| async move {
            let names = self.vertex_metric_names(job, &v.id).await?;
            let wanted: Vec<&String> = names.iter().filter(|n| classify(n).is_some()).collect();
            if wanted.is_empty() {
                return Ok::<_, anyhow::Error>(serde_json::Value::Null);
            }
            let list = wanted.iter().map(|n| url_escape(n)).collect::<Vec<_>>().join(",");
            self.get::<serde_json::Value>(&format!(
                "/jobs/{job}/vertices/{}/subtasks/metrics?get={list}&agg=sum",
                v.id
            ))
            .await
        });
        for vals in futures_util::future::try_join_all(vertices).await? {
            for v in vals.as_array().into_iter().flatten() {
                let (id, sum) = (v["id"].as_str().unwrap_or(""), v["sum"].as_f64().unwrap_or(0.0));
                match classify(id) {
                    Some(Counter::In) => {
                        m.records_in += sum;
                        entry(&mut m.sources, id).records += sum;
                    }
                    Some(Counter::InRate) => {
                        m.records_in_per_s += sum;
                        entry(&mut m.sources, id).per_s += sum;
                    }
                    Some(Counter::Out) => {
                        m.records_out += sum;
                        entry(&mut m.sinks, id).records += sum;
                    }
                    Some(Counter::OutRate) => {
                        m.records_out_per_s += sum;
                        entry(&mut m.sinks, id).per_s += sum;
                    }
                    Some(Counter::Late) => m.late_records_dropped += sum,
                    Some(Counter::Pending) => m.pending_records += sum,
                    None => {}
                }
            }
        }
        for list in [&mut m.sources, &mut m.sinks] {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(m)
    }
}

enum Counter {
    In,
    InRate,
    Out,
    OutRate,
    Late,
    Pending,
}

/// "In" is what the sources emitted, "out" what the sinks took in.
fn classify(name: &str) -> Option<Counter> {
    let source = name.starts_with("Source__");
    let sink = name.contains("Sink");
    match name.rsplit('.').next()? {
        "numRecordsOut" if source => Some(Counter::In),
        "numRecordsOutPerSecond" if source => Some(Counter::InRate),
        "numRecordsIn" if sink => Some(Counter::Out),
        "numRecordsInPerSecond" if sink => Some(Counter::OutRate),
        "numLateRecordsDropped" => Some(Counter::Late),
        "pendingRecords" if source => Some(Counter::Pending),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_by_name() {
        assert!(matches!(classify("Source__sensor_readings[1].numRecordsOut"), Some(Counter::In)));
        assert!(matches!(
            classify("Source__sensor_readings[1].numRecordsOutPerSecond"),
            Some(Counter::InRate)
        ));
        assert!(matches!(classify("Sink__machine_sensors[3].numRecordsIn"), Some(Counter::Out)));
        assert!(matches!(
            classify("GlobalWindowAggregate[8].numLateRecordsDropped"),
            Some(Counter::Late)
        ));
        assert!(classify("GlobalWindowAggregate[8].numRecordsIn").is_none());
    }

    #[test]
    fn operators_by_table_name() {
        assert_eq!(operator_name("Sink__machine_sensors[6].numRecordsIn"), "machine_sensors");
        assert_eq!(
            operator_name("Source__sensor_readings[1].numRecordsOutPerSecond"),
            "sensor_readings"
        );
        assert_eq!(operator_name("Sink__bench_blackhole.numRecordsIn"), "bench_blackhole");
        let mut sinks = Vec::new();
        entry(&mut sinks, "Sink__machine_sensors[6].numRecordsIn").records += 5.0;
        entry(&mut sinks, "Sink__rejected_readings[14].numRecordsIn").records += 1.0;
        entry(&mut sinks, "Sink__machine_sensors[6].numRecordsInPerSecond").per_s += 2.5;
        assert_eq!(sinks.len(), 2);
        assert_eq!(
            sinks[0],
            OperatorRecords { name: "machine_sensors".into(), records: 5.0, per_s: 2.5 }
        );
    }
}
