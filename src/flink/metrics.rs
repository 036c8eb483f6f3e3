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
            self.get::<serde_json::Value>(&format!("/jobs/{job}/vertices/{}/subtasks/metrics?get={list}&agg=sum", v.id)).await
        });
        for vals in futures_util::future::try_join_all(vertices).await? {
            for v in vals.as_array().into_iter().flatten() {
                let (id, sum) = (v["id"].as_str().unwrap_or(""), v["sum"].as_f64().unwrap_or(0.0));
                match classify(id) {
                    Some(Counter::In) => m.records_in += sum,
                    Some(Counter::InRate) => m.records_in_per_s += sum,
                    Some(Counter::Out) => m.records_out += sum,
                    Some(Counter::OutRate) => m.records_out_per_s += sum,
                    Some(Counter::Late) => m.late_records_dropped += sum,
                    Some(Counter::Pending) => m.pending_records += sum,
                    None => {}
                }
            }
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
        assert!(matches!(classify("Source__sensor_readings[1].numRecordsOutPerSecond"), Some(Counter::InRate)));
        assert!(matches!(classify("Sink__machine_sensors[3].numRecordsIn"), Some(Counter::Out)));
        assert!(matches!(classify("GlobalWindowAggregate[8].numLateRecordsDropped"), Some(Counter::Late)));
        assert!(classify("GlobalWindowAggregate[8].numRecordsIn").is_none());
    }
}
