//! `labctl bench ingest`: the generator against named baselines, in one run, on one broker.
//!
//! (a) labctl's backfill (`labctl ingest`, the real code path) into the lab's broker;
//! (b) the broker's raw ceiling: the same messages pre-encoded, from an rdkafka producer with
//!     the same settings that does nothing else;
//! (c) the original lab's Python producer (`shared/bench/seed_style_producer.py`);
//! (d) generate-and-encode without a broker, against the Python script's `-` mode.
//! (a)-(c) run in containers on the lab's network, so all three take the same path to the
//! broker; each writes a topic of its own, removed afterwards.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bollard::container::{Config as ContainerConfig, CreateContainerOptions, RemoveContainerOptions, WaitContainerOptions};
use futures_util::StreamExt;
use serde::Serialize;

use crate::{
    config::Config,
    docker::{images::image_tag, Runtime, LABEL_PROJECT},
    generator::{generate, model::Fleet, producer::Sender, Position},
    lab::Lab,
    stack::{BROKER, BROKER_PORT, INGEST_IMAGE, SPARK_IMAGE},
};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Generator vs raw broker ceiling vs the Python baseline (see module docs).
    Ingest(IngestArgs),
    /// The Flink job's backfill throughput into both tables vs Flink merely reading the topic.
    Flink(FlinkArgs),
    /// Inside a bench container: produce pre-encoded messages as fast as the broker takes them.
    #[command(hide = true)]
    RawProducer {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        days: f64,
    },
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Days of history each producer writes (7 = 1,088,640 messages).
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// The Python baseline script.
    #[arg(long, default_value = "../shared/bench/seed_style_producer.py", value_name = "FILE")]
    baseline: PathBuf,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct FlinkArgs {
    /// Days of history in the benchmark's own topic (7 = 1,088,640 readings).
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    name: &'static str,
    messages: u64,
    seconds: f64,
    msgs_per_s: f64,
    baseline: &'static str,
    ratio: Option<f64>,
}

fn fleet_and_starts(days: f64) -> (Fleet, Vec<Position>, i64) {
    let fleet = Fleet::default_fleet(20231010);
    let now_tick = chrono::Utc::now().timestamp() / 5;
    let first = now_tick - (days * 86_400.0 / 5.0) as i64;
    let starts = vec![Position { tick: first, sensor: 0 }; fleet.machines.len()];
    (fleet, starts, now_tick)
}

/// (d): generation and encoding only, into a sink that keeps nothing.
fn generate_only(days: f64) -> (u64, f64) {
    let (fleet, starts, end) = fleet_and_starts(days);
    let t = Instant::now();
    let mut bytes = 0usize;
    let n = generate(&fleet, 5, &starts, end, &AtomicBool::new(false), |_, k, p| {
        bytes += k.len() + p.len();
        true
    });
    std::hint::black_box(bytes);
    (n, t.elapsed().as_secs_f64())
}

/// Inside a container: pre-encode, then time only producing and delivery.
pub fn raw_producer(bootstrap: &str, topic: &str, days: f64) -> Result<()> {
    let (fleet, starts, end) = fleet_and_starts(days);
    let mut messages: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    generate(&fleet, 5, &starts, end, &AtomicBool::new(false), |_, k, p| {
        messages.push((k.to_vec(), p.to_vec()));
        true
    });
    let mut base = rdkafka::ClientConfig::new();
    base.set("bootstrap.servers", bootstrap);
    let sender = Sender::new(&base, topic)?;
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    for (k, p) in &messages {
        sender.send(k, p, &stop);
    }
    sender.flush(Duration::from_secs(600))?;
    let secs = t.elapsed().as_secs_f64();
    let c = sender.counters();
    let delivered = c.delivered.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({"messages": delivered, "failed": c.failed.load(Ordering::Relaxed), "seconds": secs, "msgs_per_s": delivered as f64 / secs})
    );
    Ok(())
}

/// Runs a one-off container on the lab's network and returns its last output line.
async fn run_container(rt: &Runtime, lab: &Lab, name: &str, image: &str, entrypoint: Option<Vec<String>>, cmd: Vec<String>, files: &[(&str, &[u8])]) -> Result<String> {
    let cname = format!("{}-bench-{name}", lab.stack.project);
    let _ = rt.docker.remove_container(&cname, Some(RemoveContainerOptions { force: true, ..Default::default() })).await;
    let config = ContainerConfig {
        image: Some(image.to_string()),
        entrypoint,
        cmd: Some(cmd),
        labels: Some(HashMap::from([(LABEL_PROJECT.to_string(), lab.stack.project.clone())])),
        host_config: Some(bollard::models::HostConfig { network_mode: Some(lab.stack.network.clone()), ..Default::default() }),
        ..Default::default()
    };
    rt.docker
        .create_container(Some(CreateContainerOptions { name: cname.as_str(), platform: None }), config)
        .await
        .with_context(|| format!("creating {cname}"))?;
    for (path, content) in files {
        rt.upload_file(&cname, path, content, 0o644).await?;
    }
    rt.start(&cname).await?;
    let mut wait = rt.docker.wait_container(&cname, None::<WaitContainerOptions<String>>);
    while let Some(r) = wait.next().await {
        if let Err(e) = r {
            tracing::debug!("wait {cname}: {e}");
        }
    }
    let logs = rt.tail_logs(&cname, 40).await?;
    let _ = rt.docker.remove_container(&cname, Some(RemoveContainerOptions { force: true, ..Default::default() })).await;
    logs.lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(|l| l.trim().to_string())
        .with_context(|| format!("{name} printed no result:\n{logs}"))
}

fn field(json: &str, key: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).with_context(|| format!("not JSON: {json}"))?;
    v[key].as_f64().with_context(|| format!("no `{key}` in {json}"))
}

pub async fn run(config: Config, cmd: BenchCommand) -> Result<ExitCode> {
    let args = match cmd {
        BenchCommand::RawProducer { bootstrap, topic, days } => {
            tokio::task::spawn_blocking(move || raw_producer(&bootstrap, &topic, days)).await??;
            return Ok(ExitCode::SUCCESS);
        }
        BenchCommand::Ingest(a) => a,
        BenchCommand::Flink(a) => return bench_flink(config, a).await,
    };
    let baseline = std::fs::read(&args.baseline).with_context(|| {
        format!("cannot read the Python baseline {}; pass --baseline PATH", args.baseline.display())
    })?;
    let lab = Lab::existing(config)?;
    let rt = Runtime::connect().await?;
    let broker = lab.broker()?;
    let bootstrap = format!("{BROKER}:{BROKER_PORT}");
    let partitions = lab.config.broker.partitions;
    let nonce = chrono::Utc::now().format("%H%M%S").to_string();
    let topic = |x: &str| format!("bench-{nonce}-{x}");
    for x in ["a", "b", "c"] {
        broker.ensure_topic(&topic(x), partitions).await?;
    }
    let days = format!("{}", args.days);
    // The generator's image carries this very binary (rebuilt here if it changed).
    let (ingest_image, _) = rt.ensure_image(&INGEST_IMAGE, false, &indicatif::ProgressBar::hidden()).await?;
    let spark_image = image_tag(&SPARK_IMAGE);
    if !rt.image_exists(&spark_image).await {
        bail!("the bench needs the lab's images; run `labctl up` first");
    }

    eprintln!("(d) generate and encode in this process …");
    let (d_n, d_s) = tokio::task::spawn_blocking(move || generate_only(args.days)).await?;
    let venv = python_venv().await?;
    eprintln!("(d) baseline: Python script, '-' mode …");
    let out = tokio::process::Command::new(venv.join("bin/python"))
        .arg(&args.baseline)
        .args(["-", "unused", &days])
        .output()
        .await
        .context("running the Python baseline")?;
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
    let (pd_n, pd_s) = (field(&line, "messages")?, field(&line, "seconds")?);

    eprintln!("(a) labctl ingest into the broker …");
    let a = run_container(&rt, &lab, "a", &ingest_image, None,
        ["ingest", "--bootstrap", &bootstrap, "--topic", &topic("a"), "--backfill", &format!("{}s", (args.days * 86_400.0) as i64), "--no-live", "--json"].map(String::from).to_vec(), &[]).await?;
    eprintln!("(b) raw rdkafka producer, pre-encoded …");
    let b = run_container(&rt, &lab, "b", &ingest_image, None,
        ["bench", "raw-producer", "--bootstrap", &bootstrap, "--topic", &topic("b"), "--days", &days].map(String::from).to_vec(), &[]).await?;
    eprintln!("(c) the Python baseline into the broker (installing confluent-kafka and numpy first, not timed) …");
    let script = format!(
        "python -m venv /tmp/v && /tmp/v/bin/pip install -q confluent-kafka numpy >/dev/null && /tmp/v/bin/python /tmp/seed_style_producer.py {bootstrap} {} {days}",
        topic("c")
    );
    let c = run_container(&rt, &lab, "c", &spark_image, Some(vec!["sh".into(), "-c".into()]), vec![script], &[("/tmp/seed_style_producer.py", &baseline)]).await?;

    let (a_n, a_s) = (field(&a, "delivered")?, field(&a, "seconds")?);
    let (b_n, b_s) = (field(&b, "messages")?, field(&b, "seconds")?);
    let (c_n, c_s) = (field(&c, "messages")?, field(&c, "seconds")?);
    let rate = |n: f64, s: f64| n / s.max(1e-9);
    let rows = vec![
        Row { name: "(a) labctl ingest -> broker", messages: a_n as u64, seconds: a_s, msgs_per_s: rate(a_n, a_s), baseline: "(b) raw ceiling", ratio: Some(rate(a_n, a_s) / rate(b_n, b_s)) },
        Row { name: "(a) labctl ingest -> broker", messages: a_n as u64, seconds: a_s, msgs_per_s: rate(a_n, a_s), baseline: "(c) python", ratio: Some(rate(a_n, a_s) / rate(c_n, c_s)) },
        Row { name: "(b) raw rdkafka, pre-encoded", messages: b_n as u64, seconds: b_s, msgs_per_s: rate(b_n, b_s), baseline: "-", ratio: None },
        Row { name: "(c) python seed-style producer", messages: c_n as u64, seconds: c_s, msgs_per_s: rate(c_n, c_s), baseline: "-", ratio: None },
        Row { name: "(d) generate+encode, no broker", messages: d_n, seconds: d_s, msgs_per_s: rate(d_n as f64, d_s), baseline: "python '-' mode", ratio: Some(rate(d_n as f64, d_s) / rate(pd_n, pd_s)) },
        Row { name: "(d) python '-' mode", messages: pd_n as u64, seconds: pd_s, msgs_per_s: rate(pd_n, pd_s), baseline: "-", ratio: None },
    ];
    println!("{:<34} {:>10} {:>8} {:>12}  {:<16} {:>7}", "BENCHMARK", "MESSAGES", "SECONDS", "MSG/S", "BASELINE", "RATIO");
    for r in &rows {
        println!(
            "{:<34} {:>10} {:>8.2} {:>12.0}  {:<16} {:>7}",
            r.name, r.messages, r.seconds, r.msgs_per_s, r.baseline, r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default()
        );
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A venv with the baseline's dependencies, made once in labctl's cache folder.
async fn python_venv() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    let dir = home.join(".cache/labctl/bench-venv");
    if !dir.join("bin/python").exists() || !dir.join(".ready").exists() {
        eprintln!("making {} (confluent-kafka, numpy) …", dir.display());
        let ok = tokio::process::Command::new("python3").args(["-m", "venv"]).arg(&dir).status().await?.success()
            && tokio::process::Command::new(dir.join("bin/pip")).args(["install", "-q", "confluent-kafka", "numpy"]).status().await?.success();
        if !ok {
            bail!("could not set up the Python baseline's venv in {}", dir.display());
        }
        std::fs::write(dir.join(".ready"), b"")?;
    }
    Ok(dir)
}

/// Produces `days` of the default fleet into `topic` from this process; returns the count.
async fn fill_topic(lab: &Lab, topic: &str, days: f64) -> Result<u64> {
    let base = lab.broker()?.client_config();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let (fleet, starts, end) = fleet_and_starts(days);
        let sender = Sender::new(&base, &topic)?;
        let stop = AtomicBool::new(false);
        generate(&fleet, 5, &starts, end, &stop, |_, k, p| sender.send(k, p, &stop));
        sender.flush(Duration::from_secs(600))?;
        let c = sender.counters();
        let failed = c.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} readings were not delivered to {topic}");
        }
        Ok(c.delivered.load(Ordering::Relaxed))
    })
    .await?
}

/// Submits a script through the SQL runner and waits until it runs.
async fn run_script(client: &crate::flink::Client, script: &str) -> Result<String> {
    use base64::{engine::general_purpose::STANDARD as B64, Engine};
    let jar = super::flink::find_or_explain_runner(client).await?;
    let args: Vec<String> = crate::flink::job::split_statements(script).iter().map(|s| B64.encode(s)).collect();
    let id = client.run_jar(&jar, crate::flink::job::RUNNER_ENTRY_CLASS, &args, None).await?;
    super::flink::wait_running(client, &id, Duration::from_secs(120)).await?;
    Ok(id)
}

/// The full job on a topic and scratch tables of its own, against a read-only baseline (the
/// same source into a blackhole sink): how close writing both tables gets to reading alone.
async fn bench_flink(config: Config, args: FlinkArgs) -> Result<ExitCode> {
    use crate::flink::job::{render_for, JobSettings, Target};
    let lab = Lab::existing(config)?;
    let client = lab.flink(Duration::from_secs(10))?;
    let overview = client.overview().await.context("the Flink cluster is not up")?;
    let nonce = chrono::Utc::now().format("%H%M%S").to_string();
    let topic = format!("bench-flink-{nonce}");
    lab.broker()?.ensure_topic(&topic, lab.config.broker.partitions).await?;
    eprintln!("producing {} days into {topic} …", args.days);
    let n = fill_topic(&lab, &topic, args.days).await?;

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
    let rows = vec![
        serde_json::json!({"benchmark": "flink read-only (source -> blackhole)", "readings": n, "seconds": base_secs, "per_s": n as f64 / base_secs}),
        serde_json::json!({"benchmark": "flink lab job: raw rows + windows", "readings": n, "seconds": done, "per_s": n as f64 / done,
            "raw_rows_done_s": raw_secs, "submit_to_running_s": submit_secs, "late_records_dropped": late,
            "ratio_vs_read_only": (n as f64 / done) / (n as f64 / base_secs)}),
    ];
    println!(
        "Flink {} TaskManager(s), {} slots, parallelism {}; {n} readings",
        overview.taskmanagers, overview.slots_total, settings.parallelism
    );
    println!("{:<40} {:>9} {:>10}  {}", "BENCHMARK", "SECONDS", "READINGS/S", "NOTES");
    println!("{:<40} {:>9.1} {:>10.0}  baseline", "read-only (source -> blackhole)", base_secs, n as f64 / base_secs);
    println!(
        "{:<40} {:>9.1} {:>10.0}  {:.2}x of read-only; raw rows done at {:.1} s; submit->RUNNING {:.1} s; late dropped {}",
        "lab job (raw + 1-min windows)",
        done,
        n as f64 / done,
        base_secs / done,
        raw_secs.unwrap_or(f64::NAN),
        submit_secs,
        late
    );
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
