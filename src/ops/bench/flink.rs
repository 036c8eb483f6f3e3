//! Flink: the lab's job on a topic and scratch tables of its own, against a read-only baseline
//! (the same source into a blackhole sink) in the same run: how close writing both tables gets
//! to merely reading the topic. Also submit-to-RUNNING, late records dropped, and the live
//! latency: wall-clock readings after the backfill, time from a window's end to its rows in the
//! database, against the target "watermark delay + 1.5 s".

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use super::{fill_topic, Measurement};
use crate::{
    model::fleet::Fleet,
    ops::{
        ingest::{generate, producer::Sender, Position},
        lab::Lab,
    },
    progress::Progress,
};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Days of history in the benchmark's own topic (7 = 1,088,640 readings).
    pub days: f64,
    /// Closed windows to measure the live latency on, after the backfill (about one minute of
    /// live readings each, plus up to a minute to reach the first whole window; 0 = skip).
    pub live_windows: u32,
}

/// Submits a script through the SQL runner and waits until it runs.
async fn run_script(client: &crate::clients::flink::Client, script: &str) -> Result<String> {
    use base64::{engine::general_purpose::STANDARD as B64, Engine};
    let jar = crate::ops::flink::find_or_explain_runner(client).await?;
    let args: Vec<String> =
        crate::ops::flink::job::split_statements(script).iter().map(|s| B64.encode(s)).collect();
    let id =
        client.run_jar(&jar, crate::ops::flink::job::RUNNER_ENTRY_CLASS, &args, None, None).await?;
    crate::ops::flink::wait_running(client, &id, Duration::from_secs(120)).await?;
    Ok(id)
}

/// The full job on a topic and scratch tables of its own, against a read-only baseline (the
/// same source into a blackhole sink): how close writing both tables gets to reading alone.
pub async fn run(lab: &Lab, bench: &Settings, progress: &dyn Progress) -> Result<Vec<Measurement>> {
    use crate::ops::flink::job::{render_for, JobSettings, Target};
    let client = lab.flink(Duration::from_secs(10))?;
    let overview = client.overview().await.context("the Flink cluster is not up")?;
    // A job without slots fails and restarts instead of waiting: say so before starting one.
    let needed = JobSettings::for_lab(&lab.config).parallelism;
    if overview.slots_available < needed {
        bail!(
            "the benchmark's jobs need {needed} free task slots but {} of {} are free (the lab's own job holds them?); \
             cancel it with `labctl flink cancel` (resubmit later with `labctl submit flink`) or add TaskManagers with `labctl scale flink-taskmanager 2`",
            overview.slots_available,
            overview.slots_total
        );
    }
    let nonce = chrono::Utc::now().format("%H%M%S").to_string();
    let topic = format!("bench-flink-{nonce}");
    lab.broker()?.ensure_topic(&topic, lab.config.broker.partitions).await?;
    progress.note(&format!("producing {} days into {topic} …", bench.days));
    let n = fill_topic(lab, &topic, bench.days).await?;

    let db = lab.database()?.connect(Duration::from_secs(10)).await?;
    let (raw, agg, rejected) = (
        format!("bench_raw_{nonce}"),
        format!("bench_agg_{nonce}"),
        format!("bench_rejected_{nonce}"),
    );
    for (t, like, time) in
        [(&raw, "machine_sensors", "timestamp"), (&agg, "sensor_aggregates", "window_start")]
    {
        db.batch_execute(&format!(
            "CREATE TABLE {t} (LIKE {like} INCLUDING ALL); SELECT create_hypertable('{t}', '{time}');"
        ))
        .await
        .with_context(|| format!("creating scratch table {t}"))?;
    }
    db.batch_execute(&format!("CREATE TABLE {rejected} (LIKE rejected_readings INCLUDING ALL)"))
        .await
        .with_context(|| format!("creating scratch table {rejected}"))?;
    let settings = JobSettings::for_lab(&lab.config);
    let target = |kind: &str| Target {
        topic: topic.clone(),
        group_id: format!("bench-{nonce}-{kind}"),
        raw_table: raw.clone(),
        agg_table: agg.clone(),
        rejected_table: rejected.clone(),
        job_name: format!("{}: bench {kind}", lab.stack.project),
        // Not the lab job's folder: its restore must never pick up a benchmark's checkpoint.
        checkpoint_dir: format!(
            "{}/checkpoints/bench",
            crate::ops::flink::job::state_root(&lab.config)
        ),
        retain_checkpoints: false,
    };
    // Baseline: the job's own SET and source statements, into a blackhole.
    // The owner: the benchmark's scratch tables are its own, not the lab's.
    let owner = lab.db_credentials(crate::model::topology::DbRole::Owner)?;
    let full = render_for(&lab.config, &owner, &settings, &target("full"))?;
    let read_only = render_for(&lab.config, &owner, &settings, &target("read"))?;
    let mut base_script: Vec<String> = crate::ops::flink::job::split_statements(&read_only)
        .into_iter()
        .filter(|s| s.starts_with("SET") || s.contains("CREATE TABLE sensor_readings"))
        .collect();
    base_script
        .push("CREATE TABLE bench_sink (payload STRING) WITH ('connector' = 'blackhole')".into());
    base_script.push("INSERT INTO bench_sink SELECT payload FROM sensor_readings".into());

    progress.note("baseline: Flink reading the topic into a blackhole …");
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

    progress.note(&format!("the lab's job into scratch tables {raw} and {agg} …"));
    let t = Instant::now();
    let id = run_script(&client, &full).await?;
    let submit_secs = t.elapsed().as_secs_f64();
    // Done when every reading is a raw row and every window but the last open minute is written.
    let open = 9 * 12;
    let (mut raw_secs, mut done_secs) = (None, None);
    while done_secs.is_none() {
        let r: i64 = db.query_one(&format!("SELECT count(*) FROM {raw}"), &[]).await?.get(0);
        let a: i64 = db
            .query_one(&format!("SELECT coalesce(sum(reading_count), 0)::bigint FROM {agg}"), &[])
            .await?
            .get(0);
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
    let windows = bench.live_windows;
    let live = if windows > 0 {
        progress.note(&format!(
            "live: readings on the wall clock into {topic}, measuring {windows} closed window(s) …"
        ));
        let r = live_latency(lab, &db, &topic, &agg, &settings, windows, progress).await;
        if let Err(e) = &r {
            progress.note(&format!("live latency not measured: {e:#}"));
        }
        r.ok()
    } else {
        None
    };
    let late = client.late_records_dropped(&id).await.unwrap_or(f64::NAN);
    client.cancel(&id).await?;
    db.batch_execute(&format!("DROP TABLE {raw}; DROP TABLE {agg}; DROP TABLE {rejected};"))
        .await
        .context("dropping scratch tables")?;

    let done = done_secs.unwrap_or(f64::NAN);
    let conditions = format!(
        "{} TaskManager(s), {} slots, parallelism {}; {n} readings",
        overview.taskmanagers, overview.slots_total, settings.parallelism
    );
    let (base_rate, done_rate) = (n as f64 / base_secs, n as f64 / done);
    let mut rows = vec![
        Measurement::new("flink", "read-only (source -> blackhole)", base_rate, "readings/s")
            .note(format!("{base_secs:.1} s; {conditions}")),
        Measurement::new("flink", "lab job: raw rows + 1-min windows", done_rate, "readings/s")
            .against("read-only (source -> blackhole)", done_rate / base_rate)
            .note(format!(
                "{done:.1} s after submit; raw rows done at {:.1} s; late records dropped {late}",
                raw_secs.unwrap_or(f64::NAN)
            )),
        Measurement::new("flink", "submit -> RUNNING", submit_secs, "s").note(conditions.clone()),
    ];
    if let Some(l) = live {
        rows.extend(l.measurements(&settings, &conditions, late));
    }
    Ok(rows)
}

fn now_secs_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Live readings like `labctl ingest` after its backfill: every `interval` s on the wall clock,
/// one reading per sensor and machine of the default fleet, stamped with that instant, until
/// `stop`. Returns the readings delivered.
fn produce_live(
    base: rdkafka::ClientConfig,
    topic: String,
    interval: i64,
    stop: Arc<AtomicBool>,
) -> Result<u64> {
    let fleet = Fleet::default_fleet(20231010);
    let sender = Sender::new(&base, &topic)?;
    let mut tick = now_secs_f64() as i64 / interval + 1;
    while !stop.load(Ordering::Relaxed) {
        let due = (tick * interval) as f64;
        loop {
            let wait = due - now_secs_f64();
            if wait <= 0.0 || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_secs_f64(wait.min(0.2)));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let starts = vec![Position { tick, sensor: 0 }; fleet.machines.len()];
        generate(&fleet, interval, &starts, tick + 1, &stop, |_, k, p| sender.send(k, p, &stop));
        tick += 1;
    }
    sender.flush(Duration::from_secs(30))?;
    let c = sender.counters();
    let failed = c.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} live readings were not delivered to {topic}");
    }
    Ok(c.delivered.load(Ordering::Relaxed))
}

/// Seconds from each measured window's end to the first poll that saw its row, one entry per
/// (window, machine, sensor).
struct Live {
    latencies: Vec<f64>,
    /// Per window: its end (epoch seconds) and when its last row appeared, after the end.
    per_window: Vec<(i64, f64)>,
    rows_per_window: usize,
    machines: usize,
    missing: usize,
}

impl Live {
    fn measurements(
        &self,
        settings: &crate::ops::flink::job::JobSettings,
        conditions: &str,
        late: f64,
    ) -> Vec<Measurement> {
        let target = settings.watermark_delay_secs as f64 + 1.5;
        let mut sorted = self.latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let max = sorted.last().copied().unwrap_or(f64::NAN);
        let median = if sorted.is_empty() {
            f64::NAN
        } else if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        let verdict = |v: f64| if v <= target && self.missing == 0 { "met" } else { "MISSED" };
        let windows: Vec<String> = self.per_window.iter().map(|(_, l)| format!("{l:.2}")).collect();
        let base = format!(
            "target <= {target:.1} s (watermark delay {} s + 1.5 s); {} window(s) x {} rows ({} machines, a reading per sensor every 5 s){}; window complete after [{}] s; polled every 100 ms; {conditions}",
            settings.watermark_delay_secs,
            self.per_window.len(),
            self.rows_per_window,
            self.machines,
            if self.missing > 0 { format!(", {} rows MISSING", self.missing) } else { String::new() },
            windows.join(", "),
        );
        vec![
            Measurement::new("flink", "live: window end -> row in DB, max", max, "s")
                .note(format!("{}: {base}", verdict(max))),
            Measurement::new("flink", "live: window end -> row in DB, median", median, "s")
                .note(format!("{}; late records dropped (whole run) {late}", verdict(median))),
        ]
    }
}

/// Produces live readings into the running job's topic and watches the aggregate table every
/// 100 ms until `windows` whole windows that began after the live readings started are written.
async fn live_latency(
    lab: &Lab,
    db: &tokio_postgres::Client,
    topic: &str,
    agg: &str,
    settings: &crate::ops::flink::job::JobSettings,
    windows: u32,
    progress: &dyn Progress,
) -> Result<Live> {
    let interval = 5i64;
    let window = settings.window_secs as i64;
    let fleet = Fleet::default_fleet(20231010);
    let rows_per_window = fleet.machines.len() * crate::model::fleet::SENSORS.len();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (base, topic, stop) = (lab.broker()?.client_config(), topic.to_string(), stop.clone());
        tokio::task::spawn_blocking(move || produce_live(base, topic, interval, stop))
    };
    // The first whole window after the first live reading, and the ends of those measured.
    let first_reading = (now_secs_f64() as i64 / interval + 1) * interval;
    let first_start = (first_reading + window - 1).div_euclid(window) * window;
    let ends: Vec<i64> = (1..=windows as i64).map(|i| first_start + i * window).collect();
    let last_end = *ends.last().unwrap_or(&first_start);
    let deadline = last_end as f64
        + settings.watermark_delay_secs as f64
        + settings.idle_timeout_secs as f64
        + 30.0;
    progress.note(&format!(
        "live: first reading at {}, measuring windows ending {} … {} (about {:.0} s)",
        fmt_time(first_reading),
        fmt_time(ends[0]),
        fmt_time(last_end),
        last_end as f64 - now_secs_f64()
    ));
    let query = format!(
        "SELECT machine_id, sensor_type, extract(epoch from window_end)::bigint FROM {agg} WHERE window_end > to_timestamp($1::float8) AND window_end <= to_timestamp($2::float8)"
    );
    let mut seen: HashMap<(String, String, i64), f64> = HashMap::new();
    let result = async {
        loop {
            let rows = db
                .query(&query, &[&(first_start as f64), &(last_end as f64)])
                .await
                .context("polling the aggregate table")?;
            let now = now_secs_f64();
            for r in rows {
                seen.entry((r.get(0), r.get(1), r.get(2))).or_insert(now);
            }
            if seen.len() >= rows_per_window * ends.len() || now > deadline {
                return Ok::<_, anyhow::Error>(());
            }
            if producer.is_finished() {
                bail!("the live producer stopped early");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let produced = producer.await?;
    result?;
    let delivered = produced?;
    tracing::info!("live readings delivered: {delivered}");
    let latencies: Vec<f64> = seen.iter().map(|((_, _, end), at)| at - *end as f64).collect();
    let per_window = ends
        .iter()
        .map(|e| {
            let last = seen
                .iter()
                .filter(|((_, _, end), _)| end == e)
                .map(|(_, at)| at - *e as f64)
                .fold(f64::NAN, f64::max);
            (*e, last)
        })
        .collect();
    let missing = rows_per_window * ends.len() - seen.len().min(rows_per_window * ends.len());
    if seen.is_empty() {
        bail!(
            "no live window was written within {:.0} s after the last one ended",
            deadline - last_end as f64
        );
    }
    Ok(Live { latencies, per_window, rows_per_window, machines: fleet.machines.len(), missing })
}

fn fmt_time(secs: i64) -> String {
    String::from_utf8_lossy(&crate::ops::ingest::encode::format_timestamp(secs)).into_owned()
}
