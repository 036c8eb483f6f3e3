//! `status` latency: the report as `labctl status` builds it (every service asked at once)
//! against the same calls made one after another, on the running lab, in the same run.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Measurement;
use crate::{
    clients::docker::Runtime,
    ops::{lab::Lab, status},
};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Reports per variant; the median and the worst are shown.
    pub runs: usize,
}

fn median_and_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

pub async fn run(lab: &Lab, bench: &Settings) -> Result<Vec<Measurement>> {
    let rt = Runtime::connect().await?;
    let timeout = Duration::from_secs(2);
    let runs = bench.runs.max(1);
    let (mut par, mut seq) = (Vec::new(), Vec::new());
    // Interleaved, so load changes on the machine hit both variants alike.
    for _ in 0..runs {
        let t = Instant::now();
        status::report_with(lab, &rt, timeout, true).await?;
        par.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        status::report_with(lab, &rt, timeout, false).await?;
        seq.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let ((pm, px), (sm, sx)) = (median_and_max(par), median_and_max(seq));
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = loadavg.split_whitespace().next().unwrap_or("?");
    Ok(vec![
        Measurement::new("status", "status report, calls in parallel (median)", pm, "ms")
            .against("same calls one by one", sm / pm)
            .note(format!("worst {px:.0} ms of {runs}; target 300 ms; load average {load}")),
        Measurement::new("status", "same calls one by one (median)", sm, "ms")
            .note(format!("worst {sx:.0} ms of {runs}")),
    ])
}
