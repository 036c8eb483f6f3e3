//! Ingest: the generator against named baselines, in one run, on one broker.
//!
//! (a) labctl's backfill (`labctl ingest`, the real code path) into the lab's broker;
//! (b) the broker's raw ceiling: the same messages pre-encoded, from an rdkafka producer with
//!     the same settings that does nothing else;
//! (c) the original lab's Python producer (`shared/bench/seed_style_producer.py`);
//! (d) generate-and-encode without a broker, against the Python script's `-` mode.
//! (a)-(c) run in containers on the lab's network, so all three take the same path to the
//! broker; each writes a topic of its own.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{fleet_and_starts, run_container, Measurement};
use crate::{
    docker::{images::image_tag, Runtime},
    generator::{generate, producer::Sender},
    lab::Lab,
    stack::{INGEST_IMAGE, SPARK_IMAGE},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Days of history each producer writes (7 = 1,088,640 messages).
    #[arg(long, default_value_t = 7.0)]
    pub days: f64,
    /// The Python baseline script.
    #[arg(long, default_value = "../shared/bench/seed_style_producer.py", value_name = "FILE")]
    pub baseline: PathBuf,
    /// Write the table as JSON to this file as well.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
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

fn field(json: &str, key: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).with_context(|| format!("not JSON: {json}"))?;
    v[key].as_f64().with_context(|| format!("no `{key}` in {json}"))
}

/// Runs (a)-(d) and returns their rows.
pub async fn run(lab: &Lab, args: &Args) -> Result<Vec<Measurement>> {
    let baseline = std::fs::read(&args.baseline).with_context(|| {
        format!("cannot read the Python baseline {}; pass --baseline PATH", args.baseline.display())
    })?;
    let rt = Runtime::connect().await?;
    let broker = lab.broker()?;
    let bootstrap = crate::stack::cluster_bootstrap(lab.config.broker.nodes);
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
    let days_f = args.days;
    let (d_n, d_s) = tokio::task::spawn_blocking(move || generate_only(days_f)).await?;
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
    let a = run_container(&rt, lab, "a", &ingest_image, None,
        ["ingest", "--bootstrap", &bootstrap, "--topic", &topic("a"), "--backfill", &format!("{}s", (args.days * 86_400.0) as i64), "--no-live", "--json"].map(String::from).to_vec(), &[]).await?;
    eprintln!("(b) raw rdkafka producer, pre-encoded …");
    let b = run_container(&rt, lab, "b", &ingest_image, None,
        ["bench", "raw-producer", "--bootstrap", &bootstrap, "--topic", &topic("b"), "--days", &days].map(String::from).to_vec(), &[]).await?;
    eprintln!("(c) the Python baseline into the broker (installing confluent-kafka and numpy first, not timed) …");
    let script = format!(
        "python -m venv /tmp/v && /tmp/v/bin/pip install -q confluent-kafka numpy >/dev/null && /tmp/v/bin/python /tmp/seed_style_producer.py {bootstrap} {} {days}",
        topic("c")
    );
    let c = run_container(&rt, lab, "c", &spark_image, Some(vec!["sh".into(), "-c".into()]), vec![script], &[("/tmp/seed_style_producer.py", &baseline)]).await?;

    // How each producer's keys spread over the partitions (the job gets one reader each).
    let mut spread = Vec::new();
    for x in ["a", "b", "c"] {
        let offsets = broker.offsets(&topic(x), Duration::from_secs(10)).await?;
        let per: Vec<String> = offsets.iter().map(|p| (p.high - p.low).to_string()).collect();
        eprintln!("({x}) messages per partition of {}: [{}]", topic(x), per.join(", "));
        spread.push(format!("per partition [{}]", per.join(", ")));
    }
    let (a_n, a_s) = (field(&a, "delivered")?, field(&a, "seconds")?);
    let (b_n, b_s) = (field(&b, "messages")?, field(&b, "seconds")?);
    let (c_n, c_s) = (field(&c, "messages")?, field(&c, "seconds")?);
    let rate = |n: f64, s: f64| n / s.max(1e-9);
    let (a_r, b_r, c_r) = (rate(a_n, a_s), rate(b_n, b_s), rate(c_n, c_s));
    let (d_r, pd_r) = (rate(d_n as f64, d_s), rate(pd_n, pd_s));
    let n = |n: f64, s: f64| format!("{n:.0} msgs in {s:.2} s");
    let with = |i: usize, note: String| format!("{note}, {}", spread[i]);
    Ok(vec![
        Measurement::new("ingest", "(a) labctl ingest -> broker", a_r, "msg/s").against("(b) raw rdkafka ceiling", a_r / b_r).note(with(0, n(a_n, a_s))),
        Measurement::new("ingest", "(a) labctl ingest -> broker", a_r, "msg/s").against("(c) python producer", a_r / c_r).note(n(a_n, a_s)),
        Measurement::new("ingest", "(b) raw rdkafka, pre-encoded", b_r, "msg/s").note(with(1, n(b_n, b_s))),
        Measurement::new("ingest", "(c) python seed-style producer", c_r, "msg/s").note(with(2, n(c_n, c_s))),
        Measurement::new("ingest", "(d) generate+encode, no broker", d_r, "msg/s").against("python '-' mode", d_r / pd_r).note(n(d_n as f64, d_s)),
        Measurement::new("ingest", "(d) python '-' mode", pd_r, "msg/s").note(n(pd_n, pd_s)),
    ])
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

