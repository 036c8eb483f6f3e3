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
    clients::docker::{images::image_tag, Runtime},
    ops::{
        ingest::{generate, producer::Sender},
        lab::Lab,
    },
    progress::Progress,
    stack::{INGEST_IMAGE, SPARK_IMAGE},
};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Days of history each producer writes (7 = 1,088,640 messages).
    pub days: f64,
    /// The Python baseline script.
    pub baseline: PathBuf,
    /// Runs of each producer, (a) and (b) alternating; the table shows medians. One run of 7
    /// days takes about 3 s here, so single runs vary by ±20% on a busy machine.
    pub runs: usize,
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
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("not JSON: {json}"))?;
    v[key].as_f64().with_context(|| format!("no `{key}` in {json}"))
}

/// The median of some figures (the mean of the middle two for an even count).
pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One producer's runs: messages and seconds of each.
#[derive(Debug, Default)]
struct Runs {
    runs: Vec<(f64, f64)>,
}

impl Runs {
    fn push(&mut self, json: &str, count_key: &str) -> Result<()> {
        self.runs.push((field(json, count_key)?, field(json, "seconds")?));
        Ok(())
    }
    fn rates(&self) -> Vec<f64> {
        self.runs.iter().map(|(n, s)| n / s.max(1e-9)).collect()
    }
    fn median(&self) -> f64 {
        median(&self.rates())
    }
    /// "median of 3: 301k 310k 322k msg/s, 1088640 msgs each"
    fn describe(&self) -> String {
        let rates: Vec<String> =
            self.rates().iter().map(|r| format!("{:.0}k", r / 1000.0)).collect();
        let n = self.runs.first().map(|r| r.0).unwrap_or(0.0);
        format!("median of {}: [{}] msg/s, {n:.0} msgs each", self.runs.len(), rates.join(" "))
    }
}

/// Runs (a)-(d) and returns their rows. (a) and (b) alternate run by run, so that a change in
/// the machine's load during the benchmark falls on both alike; each run writes a fresh topic
/// (a used topic would make `ingest` resume instead of backfilling) and the topics are deleted
/// at the end.
pub async fn run(lab: &Lab, bench: &Settings, progress: &dyn Progress) -> Result<Vec<Measurement>> {
    if bench.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let baseline = std::fs::read(&bench.baseline).with_context(|| {
        format!(
            "cannot read the Python baseline {}; pass --baseline PATH",
            bench.baseline.display()
        )
    })?;
    let rt = Runtime::connect().await?;
    let broker = lab.broker()?;
    let bootstrap = crate::stack::cluster_bootstrap(lab.config.broker.nodes);
    let partitions = lab.config.broker.partitions;
    let nonce = chrono::Utc::now().format("%H%M%S").to_string();
    let topic = |x: &str, run: usize| format!("bench-{nonce}-{x}{run}");
    let mut topics = Vec::new();
    for run in 0..bench.runs {
        for x in ["a", "b", "c"] {
            broker.ensure_topic(&topic(x, run), partitions).await?;
            topics.push(topic(x, run));
        }
    }
    let result = measure(
        lab,
        bench,
        &rt,
        &Scratch { broker: &broker, bootstrap: &bootstrap, topic: &topic },
        &baseline,
        progress,
    )
    .await;
    if let Err(e) = broker.delete_topics(&topics).await {
        progress.note(&format!(
            "could not delete the benchmark's topics ({}): {e:#}",
            topics.join(", ")
        ));
    }
    result
}

/// The benchmark's own topics on the lab's broker.
struct Scratch<'a> {
    broker: &'a crate::clients::kafka::Broker,
    /// As containers on the lab's network reach the broker.
    bootstrap: &'a str,
    /// The topic of a producer (a, b, c, d) and run.
    topic: &'a dyn Fn(&str, usize) -> String,
}

async fn measure(
    lab: &Lab,
    bench: &Settings,
    rt: &Runtime,
    scratch: &Scratch<'_>,
    baseline: &[u8],
    progress: &dyn Progress,
) -> Result<Vec<Measurement>> {
    let Scratch { broker, bootstrap, topic } = *scratch;
    let days = format!("{}", bench.days);
    // The generator's image carries this very binary (rebuilt here if it changed).
    let (ingest_image, _) = rt.ensure_image(&INGEST_IMAGE, false, &crate::progress::Quiet).await?;
    let spark_image = image_tag(&SPARK_IMAGE);
    if !rt.image_exists(&spark_image).await {
        bail!("the bench needs the lab's images; run `labctl up` first");
    }

    let venv = python_venv(progress).await?;
    let (mut d, mut pd) = (Runs::default(), Runs::default());
    for run in 1..=bench.runs {
        progress.note(&format!("(d) run {run}/{}: generate and encode in this process, then the Python script's '-' mode …", bench.runs));
        let days_f = bench.days;
        let (n, s) = tokio::task::spawn_blocking(move || generate_only(days_f)).await?;
        d.runs.push((n as f64, s));
        let out = tokio::process::Command::new(venv.join("bin/python"))
            .arg(&bench.baseline)
            .args(["-", "unused", &days])
            .output()
            .await
            .context("running the Python baseline")?;
        let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").to_string();
        pd.push(&line, "messages")?;
    }

    let (mut a, mut b) = (Runs::default(), Runs::default());
    for run in 0..bench.runs {
        progress.note(&format!(
            "(a) run {}/{}: labctl ingest into the broker …",
            run + 1,
            bench.runs
        ));
        let backfill = format!("{}s", (bench.days * 86_400.0) as i64);
        let cmd = [
            "ingest",
            "--bootstrap",
            bootstrap,
            "--topic",
            &topic("a", run),
            "--backfill",
            &backfill,
            "--no-live",
            "--json",
        ];
        let out =
            run_container(rt, lab, "a", &ingest_image, None, cmd.map(String::from).to_vec(), &[])
                .await?;
        a.push(last(&out)?, "delivered")?;
        progress.note(&format!(
            "(b) run {}/{}: raw rdkafka producer, pre-encoded …",
            run + 1,
            bench.runs
        ));
        let cmd = [
            "bench",
            "raw-producer",
            "--bootstrap",
            bootstrap,
            "--topic",
            &topic("b", run),
            "--days",
            &days,
        ];
        let out =
            run_container(rt, lab, "b", &ingest_image, None, cmd.map(String::from).to_vec(), &[])
                .await?;
        b.push(last(&out)?, "messages")?;
    }
    // The Python producer is slow to install: one container, its runs one after another.
    progress.note(&format!("(c) the Python baseline into the broker, {} run(s) (installing confluent-kafka and numpy first, not timed) …", bench.runs));
    let runs: Vec<String> = (0..bench.runs)
        .map(|run| {
            format!(
                "/tmp/v/bin/python /tmp/seed_style_producer.py {bootstrap} {} {days}",
                topic("c", run)
            )
        })
        .collect();
    let script = format!(
        "python -m venv /tmp/v && /tmp/v/bin/pip install -q confluent-kafka numpy >/dev/null && {}",
        runs.join(" && ")
    );
    let out = run_container(
        rt,
        lab,
        "c",
        &spark_image,
        Some(vec!["sh".into(), "-c".into()]),
        vec![script],
        &[("/tmp/seed_style_producer.py", baseline)],
    )
    .await?;
    let mut c = Runs::default();
    for line in &out {
        c.push(line, "messages")?;
    }
    if c.runs.len() != bench.runs {
        bail!(
            "the Python baseline printed {} result(s) for {} run(s):\n{}",
            c.runs.len(),
            bench.runs,
            out.join("\n")
        );
    }

    // How each producer's keys spread over the partitions (the job gets one reader each).
    let mut spread = Vec::new();
    for x in ["a", "b", "c"] {
        let offsets = broker.offsets(&topic(x, 0), Duration::from_secs(10)).await?;
        let per: Vec<String> = offsets.iter().map(|p| (p.high - p.low).to_string()).collect();
        progress.note(&format!(
            "({x}) messages per partition of {}: [{}]",
            topic(x, 0),
            per.join(", ")
        ));
        spread.push(format!("per partition [{}]", per.join(", ")));
    }
    let ratios: Vec<String> =
        a.rates().iter().zip(b.rates()).map(|(x, y)| format!("{:.2}", x / y)).collect();
    let (a_r, b_r, c_r, d_r, pd_r) = (a.median(), b.median(), c.median(), d.median(), pd.median());
    Ok(vec![
        Measurement::new("ingest", "(a) labctl ingest -> broker", a_r, "msg/s")
            .against("(b) raw rdkafka ceiling", a_r / b_r)
            .note(format!("{}; run by run [{}]; {}", a.describe(), ratios.join(" "), spread[0])),
        Measurement::new("ingest", "(a) labctl ingest -> broker", a_r, "msg/s")
            .against("(c) python producer", a_r / c_r),
        Measurement::new("ingest", "(b) raw rdkafka, pre-encoded", b_r, "msg/s").note(format!(
            "{}; {}",
            b.describe(),
            spread[1]
        )),
        Measurement::new("ingest", "(c) python seed-style producer", c_r, "msg/s").note(format!(
            "{}; {}",
            c.describe(),
            spread[2]
        )),
        Measurement::new("ingest", "(d) generate+encode, no broker", d_r, "msg/s")
            .against("python '-' mode", d_r / pd_r)
            .note(d.describe()),
        Measurement::new("ingest", "(d) python '-' mode", pd_r, "msg/s").note(pd.describe()),
    ])
}

fn last(lines: &[String]) -> Result<&str> {
    lines.last().map(String::as_str).context("no result line")
}

/// A venv with the baseline's dependencies, made once in labctl's cache folder.
async fn python_venv(progress: &dyn Progress) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    let dir = home.join(".cache/labctl/bench-venv");
    if !dir.join("bin/python").exists() || !dir.join(".ready").exists() {
        progress.note(&format!("making {} (confluent-kafka, numpy) …", dir.display()));
        let ok = tokio::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .await?
            .success()
            && tokio::process::Command::new(dir.join("bin/pip"))
                .args(["install", "-q", "confluent-kafka", "numpy"])
                .status()
                .await?
                .success();
        if !ok {
            bail!("could not set up the Python baseline's venv in {}", dir.display());
        }
        std::fs::write(dir.join(".ready"), b"")?;
    }
    Ok(dir)
}
