//! Flink: the lab's job on a topic and scratch tables of its own, against a read-only baseline
//! (the same source into a blackhole sink) in the same run: how close writing both tables gets
//! to merely reading the topic. Also submit-to-RUNNING, late records dropped, and the live
//! latency: wall-clock readings after the backfill, time from a window's end to its rows in the
//! database, against issue 19's target "watermark delay + 1 s".

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use super::{fill_table, fill_topic, median, Measurement};
use crate::{
    model::fleet::Fleet,
    model::schema::{pg_ident, MACHINE_SENSORS, REJECTED_READINGS, SENSOR_AGGREGATES},
    ops::{
        flink::job::{render_for, JobSettings, Target},
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
    /// Runs of each case (COPY, read-only, the lab's job), in alternating order.
    pub runs: u32,
    /// Flink options set on both Flink cases after the job's own (`--set key=value`): to
    /// measure a setting before it goes into the template.
    pub overrides: Vec<(String, String)>,
}

impl Settings {
    /// The script with the overrides as SET statements at its end (the SQL runner applies every
    /// SET before planning, the last of a key winning).
    fn with_overrides(&self, script: String) -> String {
        let mut script = script;
        for (k, v) in &self.overrides {
            script.push_str(&format!("\nSET '{}' = '{}';\n", k, v.replace('\'', "''")));
        }
        script
    }
}

/// `key=value` of `--set`: a Flink option name and its value.
pub fn parse_override(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("{k:?} is not a Flink option name (letters, digits, '.', '-', '_')"));
    }
    Ok((k.to_string(), v.trim().to_string()))
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

/// The scratch tables of one benchmark run: the job's three and the COPY baseline's two.
struct Scratch {
    raw: String,
    agg: String,
    rejected: String,
    copy_raw: String,
    copy_agg: String,
}

impl Scratch {
    fn new(nonce: &str) -> Self {
        Self {
            raw: format!("bench_raw_{nonce}"),
            agg: format!("bench_agg_{nonce}"),
            rejected: format!("bench_rejected_{nonce}"),
            copy_raw: format!("bench_copy_raw_{nonce}"),
            copy_agg: format!("bench_copy_agg_{nonce}"),
        }
    }

    async fn create(&self, db: &tokio_postgres::Client) -> Result<()> {
        for (t, like) in [
            (&self.raw, &MACHINE_SENSORS),
            (&self.agg, &SENSOR_AGGREGATES),
            (&self.copy_raw, &MACHINE_SENSORS),
            (&self.copy_agg, &SENSOR_AGGREGATES),
        ] {
            db.batch_execute(&format!(
                "CREATE TABLE {t} (LIKE {} INCLUDING ALL); SELECT create_hypertable('{t}', '{}');",
                like.name, like.time_column
            ))
            .await
            .with_context(|| format!("creating scratch table {t}"))?;
        }
        db.batch_execute(&format!(
            "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
            self.rejected, REJECTED_READINGS.name
        ))
        .await
        .with_context(|| format!("creating scratch table {}", self.rejected))
    }

    /// One statement per table: TimescaleDB refuses to drop a hypertable along with others.
    async fn drop(&self, db: &tokio_postgres::Client) -> Result<()> {
        for t in [&self.raw, &self.agg, &self.rejected, &self.copy_raw, &self.copy_agg] {
            db.batch_execute(&format!("DROP TABLE IF EXISTS {t}"))
                .await
                .with_context(|| format!("dropping the benchmark's scratch table {t}"))?;
        }
        Ok(())
    }
}

/// What one round measures, in an order that alternates from round to round so that a drift of
/// the machine (page cache, JIT, a growing database) favours no case.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    /// PostgreSQL's binary COPY of the same readings and their windows into scratch copies of
    /// both hypertables: the sink's physical limit.
    Copy,
    /// The job's own source (parsing, event time, watermark) into a blackhole.
    ReadOnly,
    /// The lab's job: raw rows, windows and rejects into scratch tables.
    Job,
}

fn round_order(round: u32) -> [Case; 3] {
    if round.is_multiple_of(2) {
        [Case::Copy, Case::ReadOnly, Case::Job]
    } else {
        [Case::Job, Case::ReadOnly, Case::Copy]
    }
}

/// The topic the cases read: how many readings, where each partition ends, and the instant of
/// every machine's last reading (the backfill ends on one tick for all).
struct Backfill {
    readings: u64,
    /// (partition, end offset) of each partition that holds readings.
    ends: Vec<(i32, i64)>,
    last_secs: i64,
}

impl Backfill {
    /// The newest window the job closes: its watermark stops at the last reading minus the
    /// watermark delay, and a window fires once the watermark reaches its end.
    fn last_closed_window_end(&self, settings: &JobSettings) -> i64 {
        let w = settings.window_secs as i64;
        (self.last_secs - settings.watermark_delay_secs as i64).div_euclid(w) * w
    }
}

/// The full job on a topic and scratch tables of its own, against two baselines in the same run
/// (the job's source into a blackhole, and PostgreSQL's COPY of the same rows), each case
/// `runs` times in alternating order; medians are reported. Every clock stops on rows seen in
/// the database, not on Flink's metrics (they refresh every 10 s).
pub async fn run(lab: &Lab, bench: &Settings, progress: &dyn Progress) -> Result<Vec<Measurement>> {
    let client = lab.flink(Duration::from_secs(10))?;
    let overview = client.overview().await.context("the Flink cluster is not up")?;
    // A job without slots fails and restarts instead of waiting: say so before starting one.
    let settings = JobSettings::for_lab(&lab.config);
    let needed = settings.parallelism;
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
    let broker = lab.broker()?;
    broker.ensure_topic(&topic, lab.config.broker.partitions).await?;
    progress.note(&format!("producing {} days into {topic} …", bench.days));
    let (readings, end_tick) = fill_topic(lab, &topic, bench.days).await?;
    let offsets = broker.offsets(&topic, Duration::from_secs(10)).await?;
    let backfill = Backfill {
        readings,
        ends: offsets.iter().filter(|p| p.high > p.low).map(|p| (p.partition, p.high)).collect(),
        last_secs: (end_tick - 1) * 5,
    };
    let per_partition: Vec<String> =
        offsets.iter().map(|p| format!("p{} {}", p.partition, p.high - p.low)).collect();
    progress.note(&format!("{readings} readings; per partition: {}", per_partition.join(", ")));

    let db = lab.database()?.connect(Duration::from_secs(10)).await?;
    let scratch = Scratch::new(&nonce);
    let running = std::sync::Mutex::new(None::<String>);
    let result = async {
        scratch.create(&db).await?;
        measure(
            lab, &client, &db, bench, &settings, &scratch, &topic, &nonce, &backfill, &running,
            progress,
        )
        .await
    }
    .await;
    // Whatever happened: no benchmark job left holding slots, no scratch table left behind.
    let left = running.lock().map(|mut g| g.take()).unwrap_or(None);
    if let Some(id) = left {
        if let Err(e) = client.cancel(&id).await {
            progress.note(&format!("cancelling benchmark job {id} failed: {e:#}"));
        }
        crate::ops::flink::wait_terminal(&client, &id, Duration::from_secs(60)).await.ok();
    }
    // A failed cleanup loses no figures: it is said, and the measurements are still printed.
    if let Err(e) = scratch.drop(&db).await {
        progress.note(&format!("{e:#}"));
    }
    broker.delete_topics(&[topic]).await.ok();
    let (mut rows, live, late) = result?;
    let mut conditions = format!(
        "{} TaskManager(s), {} slots, parallelism {}, {} partitions ({}); {readings} readings; median of {} run(s)",
        overview.taskmanagers,
        overview.slots_total,
        settings.parallelism,
        offsets.len(),
        per_partition.join(", "),
        bench.runs
    );
    if !bench.overrides.is_empty() {
        let set: Vec<String> = bench.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        conditions.push_str(&format!("; --set {}", set.join(" ")));
    }
    for r in &mut rows {
        r.notes = format!("{}; {conditions}", r.notes);
    }
    if let Some(l) = live {
        rows.extend(l.measurements(&settings, &conditions, late));
    }
    Ok(rows)
}

/// The rounds of the three cases, then (after the last job run) the live latency.
#[allow(clippy::too_many_arguments)]
async fn measure(
    lab: &Lab,
    client: &crate::clients::flink::Client,
    db: &tokio_postgres::Client,
    bench: &Settings,
    settings: &JobSettings,
    scratch: &Scratch,
    topic: &str,
    nonce: &str,
    backfill: &Backfill,
    running: &std::sync::Mutex<Option<String>>,
    progress: &dyn Progress,
) -> Result<(Vec<Measurement>, Option<Live>, f64)> {
    // The owner: the benchmark's scratch tables are its own, not the lab's.
    let owner = lab.db_credentials(crate::model::topology::DbRole::Owner)?;
    let target = |kind: &str| Target {
        topic: topic.to_string(),
        group_id: format!("bench-{nonce}-{kind}"),
        raw_table: scratch.raw.clone(),
        agg_table: scratch.agg.clone(),
        rejected_table: scratch.rejected.clone(),
        job_name: format!("{}: bench {kind}", lab.stack.project),
        // Not the lab job's folder: its restore must never pick up a benchmark's checkpoint.
        checkpoint_dir: format!(
            "{}/checkpoints/bench",
            crate::ops::flink::job::state_root(&lab.config)
        ),
        retain_checkpoints: false,
    };
    let runs = bench.runs.max(1);
    let (mut copy_secs, mut read_secs, mut job_secs, mut submit_secs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut job_notes = Vec::new();
    let mut live = None;
    let mut late = f64::NAN;
    for round in 0..runs {
        for case in round_order(round) {
            db.batch_execute(&format!(
                "TRUNCATE {}, {}, {}, {}, {}",
                scratch.raw, scratch.agg, scratch.rejected, scratch.copy_raw, scratch.copy_agg
            ))
            .await
            .context("emptying the scratch tables")?;
            let tag = format!(
                "{}-{round}",
                match case {
                    Case::Copy => "copy",
                    Case::ReadOnly => "read",
                    Case::Job => "full",
                }
            );
            match case {
                Case::Copy => {
                    progress.note(&format!(
                        "run {}/{runs}: COPY of the readings and their windows …",
                        round + 1
                    ));
                    let t = Instant::now();
                    copy_baseline(db, scratch, bench.days, settings.window_secs as i64).await?;
                    copy_secs.push(t.elapsed().as_secs_f64());
                    progress.note(&format!("  COPY {:.1} s", t.elapsed().as_secs_f64()));
                }
                Case::ReadOnly => {
                    progress.note(&format!(
                        "run {}/{runs}: Flink reading the topic into a blackhole …",
                        round + 1
                    ));
                    let script = read_only_script(
                        &bench.with_overrides(render_for(
                            &lab.config,
                            &owner,
                            settings,
                            &target(&tag),
                        )?),
                        &scratch.rejected,
                        backfill,
                    );
                    let t = Instant::now();
                    let id = run_script(client, &script).await?;
                    set(running, Some(id.clone()));
                    wait_markers(db, &scratch.rejected, backfill, t).await?;
                    read_secs.push(t.elapsed().as_secs_f64());
                    progress.note(&format!("  read-only {:.1} s", t.elapsed().as_secs_f64()));
                    stop(client, running, &id).await?;
                }
                Case::Job => {
                    progress.note(&format!(
                        "run {}/{runs}: the lab's job into scratch tables …",
                        round + 1
                    ));
                    let script = bench.with_overrides(render_for(
                        &lab.config,
                        &owner,
                        settings,
                        &target(&tag),
                    )?);
                    let t = Instant::now();
                    let id = run_script(client, &script).await?;
                    set(running, Some(id.clone()));
                    submit_secs.push(t.elapsed().as_secs_f64());
                    let (raw_at, done_at) =
                        wait_job_done(db, scratch, settings, backfill, t).await?;
                    job_secs.push(done_at);
                    job_notes.push(format!("{done_at:.1} s (raw rows {raw_at:.1} s)"));
                    progress.note(&format!("  lab job {done_at:.1} s (raw rows {raw_at:.1} s)"));
                    // Live readings extend the topic: only after the last backfill run.
                    if round + 1 == runs && bench.live_windows > 0 {
                        let windows = bench.live_windows;
                        progress.note(&format!(
                            "live: readings on the wall clock into {topic}, measuring {windows} closed window(s) …"
                        ));
                        let r =
                            live_latency(lab, db, topic, &scratch.agg, settings, windows, progress)
                                .await;
                        if let Err(e) = &r {
                            progress.note(&format!("live latency not measured: {e:#}"));
                        }
                        live = r.ok();
                    }
                    late = client.late_records_dropped(&id).await.unwrap_or(f64::NAN);
                    stop(client, running, &id).await?;
                }
            }
        }
    }
    let n = backfill.readings as f64;
    let rate = |secs: &[f64]| n / median(secs.to_vec());
    let list = |secs: &[f64]| secs.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ");
    let (copy_rate, read_rate, job_rate) = (rate(&copy_secs), rate(&read_secs), rate(&job_secs));
    const READ: &str = "read-only (source -> blackhole)";
    const COPY: &str = "COPY into both hypertables";
    const JOB: &str = "lab job: raw rows + 1-min windows + rejects";
    let rows = vec![
        Measurement::new("flink", COPY, copy_rate, "readings/s")
            .note(format!("runs [{}] s (readings and their windows, binary COPY from labctl)", list(&copy_secs))),
        Measurement::new("flink", READ, read_rate, "readings/s")
            .note(format!("runs [{}] s, until a marker row of each partition's last offset is in the database", list(&read_secs))),
        Measurement::new("flink", JOB, job_rate, "readings/s")
            .against(READ, job_rate / read_rate)
            .note(format!("runs [{}] after submit, until every raw row and closed window is in the database; late records dropped {late}", job_notes.join(", "))),
        Measurement::new("flink", format!("{JOB} vs COPY"), job_rate, "readings/s")
            .against(COPY, job_rate / copy_rate)
            .note("the same runs against the database's own bulk path".to_string()),
        Measurement::new("flink", "submit -> RUNNING", median(submit_secs.clone()), "s")
            .note(format!("runs [{}] s", list(&submit_secs))),
    ];
    Ok((rows, live, late))
}

fn set(running: &std::sync::Mutex<Option<String>>, id: Option<String>) {
    if let Ok(mut g) = running.lock() {
        *g = id;
    }
}

/// Cancels a case's job and waits until it has released its slots, so that the next case does
/// not share the machine with it.
async fn stop(
    client: &crate::clients::flink::Client,
    running: &std::sync::Mutex<Option<String>>,
    id: &str,
) -> Result<()> {
    client.cancel(id).await?;
    crate::ops::flink::wait_terminal(client, id, Duration::from_secs(60)).await?;
    set(running, None);
    Ok(())
}

/// The job's own SET, function and source statements into a blackhole, plus one marker row per
/// partition when its last offset is read (into the scratch rejects table, which the lab's job
/// renders anyway): the clock stops on rows in the database, as for the full job.
fn read_only_script(rendered: &str, rejected: &str, backfill: &Backfill) -> String {
    let sink = format!("CREATE TABLE {rejected} ");
    let mut script: Vec<String> = crate::ops::flink::job::split_statements(rendered)
        .into_iter()
        .filter(|s| {
            s.starts_with("SET")
                || s.starts_with("CREATE TEMPORARY SYSTEM FUNCTION")
                || s.contains("CREATE TABLE sensor_readings")
                || s.starts_with(&sink)
        })
        .collect();
    script.push("CREATE TABLE bench_sink (payload STRING) WITH ('connector' = 'blackhole')".into());
    script.push("INSERT INTO bench_sink SELECT payload FROM sensor_readings".into());
    let last: Vec<String> = backfill
        .ends
        .iter()
        .map(|(p, end)| format!("(topic_partition = {p} AND topic_offset >= {})", end - 1))
        .collect();
    script.push(format!(
        "INSERT INTO {rejected} SELECT topic_partition, topic_offset, CAST(produced_at AS TIMESTAMP(3)), 'bench marker', '' FROM sensor_readings WHERE {}",
        last.join(" OR ")
    ));
    script.join(";\n")
}

/// Waits for the read-only job's marker rows (a table of at most one row per partition).
async fn wait_markers(
    db: &tokio_postgres::Client,
    table: &str,
    backfill: &Backfill,
    t: Instant,
) -> Result<()> {
    let want = backfill.ends.len() as i64;
    loop {
        let seen = count(db, &format!("SELECT count(*) FROM {table}"), &[]).await?;
        if seen >= want {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(900) {
            bail!("the read-only job reached the end of {seen} of {want} partitions in 15 min");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the job has written every raw row and every closed window; returns the seconds
/// since `t` at which the raw rows, and then everything, were complete. Polls the rows of the
/// last reading and of the last closed window (index lookups), which the job writes last per
/// machine since a machine's readings travel in order through one partition and one sink task;
/// the full counts are taken once those are there (and again every 2 s should they fall short).
async fn wait_job_done(
    db: &tokio_postgres::Client,
    scratch: &Scratch,
    settings: &JobSettings,
    backfill: &Backfill,
    t: Instant,
) -> Result<(f64, f64)> {
    let per_instant =
        (Fleet::default_fleet(20231010).machines.len() * crate::model::fleet::SENSORS.len()) as i64;
    let last =
        chrono::DateTime::from_timestamp(backfill.last_secs, 0).context("time out of range")?;
    let closed_end = backfill.last_closed_window_end(settings);
    let closed_start =
        chrono::DateTime::from_timestamp(closed_end - settings.window_secs as i64, 0)
            .context("time out of range")?;
    let closed_end_ts =
        chrono::DateTime::from_timestamp(closed_end, 0).context("time out of range")?;
    let raw_tail = format!("SELECT count(*) FROM {} WHERE \"timestamp\" = $1", scratch.raw);
    let raw_all = format!("SELECT count(*) FROM {}", scratch.raw);
    let agg_tail = format!("SELECT count(*) FROM {} WHERE window_start = $1", scratch.agg);
    let in_windows = format!(
        "SELECT coalesce(sum(reading_count), 0)::bigint FROM {} WHERE window_end <= $1",
        scratch.agg
    );
    let raw_before = format!("SELECT count(*) FROM {} WHERE \"timestamp\" < $1", scratch.raw);
    let mut raw_at = None;
    loop {
        // The full counts run only once the tail is there, and at most every 2 s after that.
        let mut short = false;
        if raw_at.is_none() && count(db, &raw_tail, &[&last]).await? >= per_instant {
            if count(db, &raw_all, &[]).await? as u64 >= backfill.readings {
                raw_at = Some(t.elapsed().as_secs_f64());
            } else {
                short = true;
            }
        }
        if let Some(raw_at) = raw_at {
            if count(db, &agg_tail, &[&closed_start]).await? >= per_instant {
                if count(db, &in_windows, &[&closed_end_ts]).await?
                    >= count(db, &raw_before, &[&closed_end_ts]).await?
                {
                    return Ok((raw_at, t.elapsed().as_secs_f64()));
                }
                short = true;
            }
        }
        if t.elapsed() > Duration::from_secs(900) {
            bail!(
                "the job did not write every raw row and closed window of {} readings in 15 min",
                backfill.readings
            );
        }
        let pause = if short { 2000 } else { 250 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// The one number a counting query returns.
async fn count(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<i64> {
    Ok(db.query_one(sql, params).await.with_context(|| format!("counting: {sql}"))?.get(0))
}

/// A window of the COPY baseline: machine and sensor index, start in epoch seconds.
type WindowKey = (usize, usize, i64);

/// AVG/MIN/MAX/COUNT of one window, as the job computes them.
struct Window {
    sum: f64,
    min: f64,
    max: f64,
    count: i64,
}

impl Default for Window {
    fn default() -> Self {
        Self { sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, count: 0 }
    }
}

impl Window {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.count += 1;
    }
}

/// The COPY baseline: the readings into the raw copy, then their 1-minute windows (computed
/// here, as the job computes them) into the aggregate copy.
async fn copy_baseline(
    db: &tokio_postgres::Client,
    scratch: &Scratch,
    days: f64,
    window: i64,
) -> Result<()> {
    use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type};
    let mut windows: std::collections::BTreeMap<WindowKey, Window> = Default::default();
    fill_table(db, &scratch.copy_raw, days, |r| {
        windows
            .entry((r.machine, r.sensor, r.secs.div_euclid(window) * window))
            .or_default()
            .add(r.value);
    })
    .await?;
    let fleet = Fleet::default_fleet(20231010);
    let cols: Vec<String> = SENSOR_AGGREGATES.columns.iter().map(|c| pg_ident(c.name)).collect();
    let sink = db
        .copy_in(&format!(
            "COPY {} ({}) FROM STDIN BINARY",
            pg_ident(&scratch.copy_agg),
            cols.join(", ")
        ))
        .await?;
    let types = [
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::INT8,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    tokio::pin!(writer);
    for ((m, s, start), Window { sum, min, max, count }) in windows {
        let from = chrono::DateTime::from_timestamp(start, 0).context("time out of range")?;
        let to =
            chrono::DateTime::from_timestamp(start + window, 0).context("time out of range")?;
        let (mid, sensor) = (fleet.machines[m].id.as_str(), crate::model::fleet::SENSORS[s].name());
        let avg = sum / count as f64;
        writer.as_mut().write(&[&from, &to, &mid, &sensor, &avg, &min, &max, &count]).await?;
    }
    writer.finish().await?;
    Ok(())
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

/// How long after the watermark delay a closed window's rows may take to be in the database.
const LIVE_SLACK_SECS: f64 = 1.0;

impl Live {
    fn measurements(
        &self,
        settings: &crate::ops::flink::job::JobSettings,
        conditions: &str,
        late: f64,
    ) -> Vec<Measurement> {
        let target = settings.watermark_delay_secs as f64 + LIVE_SLACK_SECS;
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
            "target <= {target:.1} s (watermark delay {} s + {LIVE_SLACK_SECS} s); {} window(s) x {} rows ({} machines, a reading per sensor every 5 s){}; window complete after [{}] s; polled every 100 ms; {conditions}",
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
