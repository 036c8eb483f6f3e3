//! Flink: the lab's job on a topic and scratch tables of its own, against a read-only baseline
//! (the same source into a blackhole sink) in the same run: how close writing both tables gets
//! to merely reading the topic. Also submit-to-RUNNING and late records dropped.

use std::{path::PathBuf, time::{Duration, Instant}};

use anyhow::{bail, Context, Result};

use super::{fill_topic, Measurement};
use crate::lab::Lab;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Days of history in the benchmark's own topic (7 = 1,088,640 readings).
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
}

/// Submits a script through the SQL runner and waits until it runs.
async fn run_script(client: &crate::flink::Client, script: &str) -> Result<String> {
    use base64::{engine::general_purpose::STANDARD as B64, Engine};
    let jar = crate::cli::flink::find_or_explain_runner(client).await?;
    let args: Vec<String> = crate::flink::job::split_statements(script).iter().map(|s| B64.encode(s)).collect();
    let id = client.run_jar(&jar, crate::flink::job::RUNNER_ENTRY_CLASS, &args, None).await?;
    crate::cli::flink::wait_running(client, &id, Duration::from_secs(120)).await?;
    Ok(id)
}

/// The full job on a topic and scratch tables of its own, against a read-only baseline (the
/// same source into a blackhole sink): how close writing both tables gets to reading alone.
pub async fn run(lab: &Lab, args: &Args) -> Result<Vec<Measurement>> {
    use crate::flink::job::{render_for, JobSettings, Target};
    let client = lab.flink(Duration::from_secs(10))?;
    let overview = client.overview().await.context("the Flink cluster is not up")?;
    let nonce = chrono::Utc::now().format("%H%M%S").to_string();
    let topic = format!("bench-flink-{nonce}");
    lab.broker()?.ensure_topic(&topic, lab.config.broker.partitions).await?;
    eprintln!("producing {} days into {topic} …", args.days);
    let n = fill_topic(lab, &topic, args.days).await?;

    let db = lab.database()?.connect(Duration::from_secs(10)).await?;
    let (raw, agg) = (format!("bench_raw_{nonce}"), format!("bench_agg_{nonce}"));
    for (t, like, time) in [(&raw, "machine_sensors", "timestamp"), (&agg, "sensor_aggregates", "window_start")] {
        db.batch_execute(&format!(
            "CREATE TABLE {t} (LIKE {like} INCLUDING ALL); SELECT create_hypertable('{t}', '{time}');"
        ))
        .await
        .with_context(|| format!("creating scratch table {t}"))?;
    }
    let settings = JobSettings::for_lab(&lab.config);
    let target = |kind: &str| Target {
        topic: topic.clone(),
        group_id: format!("bench-{nonce}-{kind}"),
        raw_table: raw.clone(),
        agg_table: agg.clone(),
        job_name: format!("{}: bench {kind}", lab.stack.project),
    };
    // Baseline: the job's own SET and source statements, into a blackhole.
    let full = render_for(&lab.config, &lab.state, &settings, &target("full"))?;
    let read_only = render_for(&lab.config, &lab.state, &settings, &target("read"))?;
    let mut base_script: Vec<String> = crate::flink::job::split_statements(&read_only)
        .into_iter()
        .filter(|s| s.starts_with("SET") || s.contains("CREATE TABLE sensor_readings"))
        .collect();
    base_script.push("CREATE TABLE bench_sink (machine_id STRING) WITH ('connector' = 'blackhole')".into());
    base_script.push("INSERT INTO bench_sink SELECT machine_id FROM sensor_readings".into());

    eprintln!("baseline: Flink reading the topic into a blackhole …");
    let t = Instant::now();
    let id = run_script(&client, &base_script.join(";\n")).await?;
    loop {
        let (read, _) = client.records_in_out(&id).await.unwrap_or((0.0, 0.0));
        if read as u64 >= n {
            break;
        }
        if t.elapsed() > Duration::from_secs(900) {
            bail!("the read-only job read {read} of {n} records in 15 min");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let base_secs = t.elapsed().as_secs_f64();
    client.cancel(&id).await?;

    eprintln!("the lab's job into scratch tables {raw} and {agg} …");
    let t = Instant::now();
    let id = run_script(&client, &full).await?;
    let submit_secs = t.elapsed().as_secs_f64();
    // Done when every reading is a raw row and every window but the last open minute is written.
    let open = 9 * 12;
    let (mut raw_secs, mut done_secs) = (None, None);
    while done_secs.is_none() {
        let r: i64 = db.query_one(&format!("SELECT count(*) FROM {raw}"), &[]).await?.get(0);
        let a: i64 = db.query_one(&format!("SELECT coalesce(sum(reading_count), 0)::bigint FROM {agg}"), &[]).await?.get(0);
        if raw_secs.is_none() && r as u64 >= n {
            raw_secs = Some(t.elapsed().as_secs_f64());
        }
        if r as u64 >= n && a as u64 + open >= n {
            done_secs = Some(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(900) {
            bail!("the job wrote {r} raw rows and windows for {a} readings of {n} in 15 min");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let late = client.late_records_dropped(&id).await.unwrap_or(f64::NAN);
    client.cancel(&id).await?;
    db.batch_execute(&format!("DROP TABLE {raw}; DROP TABLE {agg};")).await.context("dropping scratch tables")?;

    let done = done_secs.unwrap_or(f64::NAN);
    let conditions = format!(
        "{} TaskManager(s), {} slots, parallelism {}; {n} readings",
        overview.taskmanagers, overview.slots_total, settings.parallelism
    );
    let (base_rate, done_rate) = (n as f64 / base_secs, n as f64 / done);
    Ok(vec![
        Measurement::new("flink", "read-only (source -> blackhole)", base_rate, "readings/s").note(format!("{base_secs:.1} s; {conditions}")),
        Measurement::new("flink", "lab job: raw rows + 1-min windows", done_rate, "readings/s")
            .against("read-only (source -> blackhole)", done_rate / base_rate)
            .note(format!("{done:.1} s after submit; raw rows done at {:.1} s; late records dropped {late}", raw_secs.unwrap_or(f64::NAN))),
        Measurement::new("flink", "submit -> RUNNING", submit_secs, "s").note(conditions),
    ])
}
