//! Faults, restarts and hostile timing against the real stack: the lab loses nothing and
//! doubles nothing. One lab for the whole binary, scenarios in sequence:
//! 1. the broker is SIGKILLed while the generator backfills, then started again; the database
//!    is SIGKILLed while the Flink job writes that backfill, then down for 3 minutes;
//! 2. `down` + `up` keeps the topic, both tables and the Delta table as they were; `down
//!    --volumes` needs --yes when not at a terminal;
//! 3. `labctl submit flink` is SIGKILLed at several points: the next submit finds one job;
//! 4. the Spark driver is killed while it writes: the Delta table is unchanged, a re-run
//!    completes it once;
//! 5. Azurite is SIGKILLed while an export writes: the table stays a committed version, a
//!    re-run makes it equal to the database;
//! 6. labctl itself is SIGKILLed during `scale`, `submit spark`, `down` and `up`: the same
//!    command again finishes the work, nothing staged is left, no data changed.
//!
//! Each scenario prints one `MEASURE` line (fault, action, lost, duplicated, recovery time).

mod common;

use std::{
    collections::HashSet,
    io::BufRead,
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    assert_verified, audit, docker, lab_jobs, read_readings as read_topic, rt, topic_ends,
    topic_total, wait_for, TestLab, INTERVAL,
};

const BACKFILL_SECS: i64 = 12 * 3_600;
/// 3 machines x 3 sensors.
const PER_TICK: i64 = 9;

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn table_count(lab: &labctl::ops::lab::Lab, sql: &str) -> i64 {
    let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// A count, or None while the database does not answer (it is being killed and restarted).
async fn try_count(lab: &labctl::ops::lab::Lab, sql: &str) -> Option<i64> {
    let db = lab.database().ok()?.connect(Duration::from_secs(3)).await.ok()?;
    db.query_one(sql, &[]).await.ok().map(|r| r.get(0))
}

/// Flink job states in which a job still holds its slots or may run again.
const ACTIVE: &[&str] =
    &["CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "RECONCILING", "FAILING", "CANCELLING"];

fn active_lab_jobs(t: &TestLab) -> Vec<(String, String)> {
    wait_for("the Flink job list", Duration::from_secs(30), || lab_jobs(t))
        .into_iter()
        .filter(|(_, s)| ACTIVE.contains(&s.as_str()))
        .collect()
}

fn volumes(project: &str) -> Vec<String> {
    let out =
        docker(&["volume", "ls", "-q", "--filter", &format!("label=labctl.project={project}")]);
    out.lines().map(str::to_string).collect()
}

fn containers(project: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=labctl.project={project}"),
    ]);
    out.lines().map(str::to_string).collect()
}

/// The job's restarts as `status --json` reports them (null when it does not list the job).
fn job_restarts(t: &TestLab, job_id: &str) -> serde_json::Value {
    // status exits non-zero while any light is not green; its report is what counts here
    let report: serde_json::Value =
        serde_json::from_slice(&t.run(&["status", "--json"]).stdout).unwrap_or_default();
    report["flink"]["jobs"]
        .as_array()
        .and_then(|j| j.iter().find(|j| j["id"] == job_id).cloned())
        .map(|j| j["restarts"].clone())
        .unwrap_or_default()
}

/// Changes every reading's value in machine_sensors, so that the next export has every day to
/// write again (it rewrites only the days where the lake differs from the database). The
/// windows no longer match their raw rows then, until an export repairs them first.
fn shift_values(rt: &tokio::runtime::Runtime, lab: &labctl::ops::lab::Lab, delta: f64) {
    rt.block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        db.execute("UPDATE machine_sensors SET value = value + $1", &[&delta]).await.unwrap();
    });
}

#[test]
fn faults_lose_and_double_nothing() {
    let test_start = Instant::now();
    // Held to 4,000 readings/s, the 12 h backfill takes about 20 s: long enough to kill the
    // broker in the middle of it (unthrottled, Kafka takes it in a few seconds).
    let t = TestLab::new("faults")
        .with_env("LABCTL_INGEST_BACKFILL", "12h")
        .with_env("LABCTL_INGEST_BACKFILL_RATE", "4000");
    let rt = rt();

    // ========== 1. broker restart during the generator's backfill ==========================
    let before_up = now_secs();
    t.ok(&["up"]);
    let after_up = now_secs();
    let lab = t.lab();
    let backfill_readings = BACKFILL_SECS / INTERVAL * PER_TICK;
    // Restart while the backfill is under way: offsets growing, well below the total. (What the
    // topic holds once the restart returns is only reported: the generator may be back by then.)
    let (at, t_seen) =
        wait_for("the generator's backfill to be under way", Duration::from_secs(120), || {
            let n = topic_total(&rt, &lab)?;
            (n > backfill_readings / 10).then_some((n, Instant::now()))
        });
    assert!(
        at < backfill_readings * 8 / 10,
        "the backfill went too fast to be interrupted ({at} of {backfill_readings} already)"
    );
    let broker = format!("{}-broker-1", t.project);
    let ingest = format!("{}-ingest-1", t.project);
    let restarted = Instant::now();
    // SIGKILL, not a graceful stop: no controlled shutdown, no flush; `docker kill` counts as
    // a manual stop, so the restart policy does not bring it back: start it by hand.
    docker(&["kill", "-s", "KILL", &broker]);
    std::thread::sleep(Duration::from_secs(2));
    docker(&["start", &broker]);
    let at_restart = topic_total(&rt, &lab).unwrap_or(0);
    eprintln!(
        "broker restarted with {at} readings in the topic ({:.1} s after seeing the backfill); {at_restart} after the restart",
        restarted.duration_since(t_seen).as_secs_f64()
    );
    let (producing_again, _) =
        wait_for("the generator to produce again", Duration::from_secs(180), || {
            let n = topic_total(&rt, &lab)?;
            (n > at_restart + 1000 || n >= backfill_readings)
                .then_some((restarted.elapsed().as_secs_f64(), n))
        });
    // Done with the backfill: the topic reaches the 2 days plus the ticks since.
    let backfill_done = wait_for(
        "the backfill to complete after the broker restart",
        Duration::from_secs(300),
        || {
            let n = topic_total(&rt, &lab)?;
            (n >= backfill_readings).then(|| restarted.elapsed().as_secs_f64())
        },
    );
    let ingest_restarts = docker(&["inspect", "-f", "{{.RestartCount}}", &ingest]);
    let broker_restarts = docker(&["inspect", "-f", "{{.RestartCount}}", &broker]);
    let ingest_state = docker(&["inspect", "-f", "{{.State.Status}}", &ingest]);
    assert_eq!(ingest_state, "running", "the generator runs on by itself");
    let gen_logs = t.run(&["logs", "ingest", "--tail", "40"]);
    let gen_logs = String::from_utf8_lossy(&gen_logs.stdout).to_string()
        + &String::from_utf8_lossy(&gen_logs.stderr);
    eprintln!("--- generator log (tail) ---\n{gen_logs}");
    let broker_logs = t.run(&["logs", "broker", "--tail", "60"]);
    let broker_text = String::from_utf8_lossy(&broker_logs.stdout).to_string()
        + &String::from_utf8_lossy(&broker_logs.stderr);
    let recovered = broker_text
        .lines()
        .filter(|l| l.contains("Recovering unflushed segment") || l.contains("recovery"))
        .count();
    eprintln!("broker restarts by policy: {broker_restarts}; log recovery lines: {recovered}");

    let readings = read_topic(&lab);
    let first_range = (
        before_up / INTERVAL - BACKFILL_SECS / INTERVAL - 1,
        after_up / INTERVAL - BACKFILL_SECS / INTERVAL + 1,
    );
    let a = audit(&readings, first_range);
    eprintln!(
        "MEASURE | broker SIGKILL during backfill | docker kill -s KILL broker at {at}/{backfill_readings} readings ({at_restart} once it returned) | messages {} unique {} lost {} duplicated {} | producing again after {producing_again:.1} s, backfill complete after {backfill_done:.1} s | generator restarts {ingest_restarts}",
        a.messages, a.unique, a.lost, a.duplicated
    );
    assert_eq!(a.first_ticks.len(), 1, "every pair starts at the same tick: {:?}", a.first_ticks);
    assert_eq!((a.lost, a.duplicated), (0, 0), "every reading in the topic exactly once");

    // The Flink job writes every reading once into machine_sensors, though the database is
    // SIGKILLed while both sinks write: crash recovery (WAL replay), not a clean shutdown. The
    // sinks' writes fail; the JDBC connector's own retries (or, past them, a restart of the job
    // from its last checkpoint) carry the job over, and it writes on.
    let sub = t.json(&["submit", "flink", "--json"]);
    let job_id = sub["job_id"].as_str().unwrap().to_string();
    let cutoff = a.last_tick * INTERVAL;
    let want = readings.iter().filter(|r| r.2 <= cutoff).count() as i64;
    let flink_started = Instant::now();
    let q = format!(
        "SELECT count(*) FROM machine_sensors WHERE \"timestamp\" <= to_timestamp({cutoff})"
    );
    let at_kill = wait_for("the job's first rows", Duration::from_secs(120), || {
        rt.block_on(try_count(&lab, "SELECT count(*) FROM machine_sensors")).filter(|n| *n > 0)
    });
    let db = format!("{}-timescaledb-1", t.project);
    let db_killed = Instant::now();
    docker(&["kill", "-s", "KILL", &db]);
    std::thread::sleep(Duration::from_secs(2));
    docker(&["start", &db]);
    assert!(at_kill < want, "the job wrote all {want} rows before the kill: not mid-write");
    let got =
        wait_for("Flink to write the topic into machine_sensors", Duration::from_secs(300), || {
            let n = rt.block_on(try_count(&lab, &q))?;
            (n >= want).then_some(n)
        });
    let recovered = db_killed.elapsed().as_secs_f64();
    let caught_up = flink_started.elapsed().as_secs_f64();
    let client = lab.flink(Duration::from_secs(10)).unwrap();
    let late = rt.block_on(client.late_records_dropped(&job_id)).unwrap();
    let restarts = job_restarts(&t, &job_id);
    eprintln!(
        "MEASURE | database SIGKILL while the job writes | docker kill -s KILL timescaledb at {at_kill} of {want} rows, started 2 s later | rows {got} of {want} readings, lost {}, late dropped {late}, job restarts {restarts} | all rows {recovered:.1} s after the kill, {caught_up:.1} s after submit",
        want - got
    );
    // (Doubles are the primary key's business; `verify` below compares the table with the
    // topic reading by reading.)
    assert_eq!(got, want, "machine_sensors holds every reading of the topic");
    assert_eq!(late, 0.0, "no reading dropped as late");

    // A database outage of 3 minutes under the live generator: the job rides it out (restarts
    // spaced exponentially up to 30 s apart, 20 in a row allowed) and catches up by itself.
    let outage = Duration::from_secs(180);
    docker(&["kill", "-s", "KILL", &db]);
    let down_at = Instant::now();
    std::thread::sleep(outage / 2);
    let job_state =
        |c: &labctl::clients::flink::Client| rt.block_on(c.job(&job_id)).ok().map(|j| j.state);
    let mid_state = job_state(&client);
    std::thread::sleep(outage.saturating_sub(down_at.elapsed()));
    docker(&["start", &db]);
    let back_at = Instant::now();
    let produced = topic_total(&rt, &lab).unwrap();
    let caught = wait_for("the job to catch up after the outage", Duration::from_secs(300), || {
        let n = rt.block_on(try_count(&lab, "SELECT count(*) FROM machine_sensors"))?;
        (n >= produced).then_some(n)
    });
    let catch_up = back_at.elapsed().as_secs_f64();
    let state = job_state(&client);
    let restarts = job_restarts(&t, &job_id);
    eprintln!(
        "MEASURE | database down 3 minutes under the live generator | docker kill -s KILL timescaledb, started {:.0} s later | job {mid_state:?} mid-outage, {state:?} after, restarts {restarts}; {caught} rows for {produced} messages produced by the restart | caught up {catch_up:.1} s after the database was back",
        outage.as_secs_f64()
    );
    assert_eq!(
        state,
        Some(labctl::clients::flink::JobState::Running),
        "the job rode out the outage"
    );
    assert!(caught >= produced);

    // A broker outage of 3 minutes under the live generator and the running job: the
    // generator keeps its readings queued (its deliveries never time out), the job's source
    // waits for the broker. Once it is back, every tick produced meanwhile is in the topic
    // once, in order, and the job writes it; nothing restarts the job.
    let restarts_before = job_restarts(&t, &job_id);
    let in_topic_before = topic_total(&rt, &lab).unwrap();
    docker(&["kill", "-s", "KILL", &broker]);
    let down_at = Instant::now();
    std::thread::sleep(outage / 2);
    let mid_state = job_state(&client);
    std::thread::sleep(outage.saturating_sub(down_at.elapsed()));
    docker(&["start", &broker]);
    let back_at = Instant::now();
    let outage_ticks = (outage.as_secs() as i64) / INTERVAL;
    let delivered = wait_for(
        "the generator to deliver the outage's readings",
        Duration::from_secs(180),
        || {
            let n = topic_total(&rt, &lab)?;
            (n >= in_topic_before + outage_ticks * PER_TICK)
                .then(|| back_at.elapsed().as_secs_f64())
        },
    );
    let readings = read_topic(&lab);
    let a = audit(&readings, first_range);
    let flink_caught =
        wait_for("the job to write the outage's readings", Duration::from_secs(300), || {
            let n = rt.block_on(try_count(&lab, "SELECT count(*) FROM machine_sensors"))?;
            (n >= readings.len() as i64).then(|| back_at.elapsed().as_secs_f64())
        });
    let state = job_state(&client);
    let restarts = job_restarts(&t, &job_id);
    eprintln!(
        "MEASURE | broker down 3 minutes under the live generator and the job | docker kill -s KILL broker, started {:.0} s later | topic {} messages, lost {} duplicated {}; job {mid_state:?} mid-outage, {state:?} after, restarts {restarts_before} -> {restarts} | the outage's readings in the topic {delivered:.1} s, in machine_sensors {flink_caught:.1} s after the broker was back",
        outage.as_secs_f64(),
        a.messages,
        a.lost,
        a.duplicated
    );
    assert_eq!((a.lost, a.duplicated), (0, 0), "every tick of the outage in the topic once");
    assert_eq!(
        state,
        Some(labctl::clients::flink::JobState::Running),
        "the job rode out the broker's outage"
    );

    // ========== 2. down + up keeps every piece of data =======================================
    // Quiet the lab: stop the generator, let Flink write the rest, end the job, export.
    docker(&["stop", &ingest]);
    let readings = read_topic(&lab);
    let n_readings = readings.len() as i64;
    wait_for("Flink to write the last readings", Duration::from_secs(120), || {
        (rt.block_on(table_count(&lab, "SELECT count(*) FROM machine_sensors")) >= n_readings)
            .then_some(())
    });
    // And every window the final watermark (newest reading - 5 s) closes, once.
    let watermark = readings.iter().map(|r| r.2).max().unwrap() - 5;
    let closed: HashSet<(&str, &str, i64)> = readings
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2.div_euclid(60) * 60))
        .filter(|w| w.2 + 60 <= watermark)
        .collect();
    let q = format!(
        "SELECT count(*) FROM sensor_aggregates WHERE window_end <= to_timestamp({watermark})"
    );
    let windows_at = Instant::now();
    let windows = wait_for("Flink to write every closed window", Duration::from_secs(180), || {
        let n = rt.block_on(table_count(&lab, &q));
        (n >= closed.len() as i64).then_some(n)
    });
    eprintln!(
        "{windows} closed windows of {} expected, {:.1} s after the raw rows",
        closed.len(),
        windows_at.elapsed().as_secs_f64()
    );
    assert_eq!(windows, closed.len() as i64, "each closed window once");
    t.ok(&["flink", "cancel"]);
    let day = |secs: i64| {
        chrono::DateTime::from_timestamp(secs, 0).unwrap().format("%Y-%m-%d").to_string()
    };
    let from = day(before_up - BACKFILL_SECS - 86_400);
    let to = day(now_secs() + 86_400);
    let range = ["--from", from.as_str(), "--to", to.as_str()];
    let export = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(export["state"], "FINISHED", "{export}");
    assert_eq!(export["result"]["rows_written"].as_i64().unwrap(), n_readings, "{export}");

    let snapshot = || {
        let offs = topic_ends(&rt, &lab).expect("topic offsets");
        let raw = rt.block_on(table_count(&lab, "SELECT count(*) FROM machine_sensors"));
        let agg = rt.block_on(table_count(&lab, "SELECT count(*) FROM sensor_aggregates"));
        let d = rt
            .block_on(
                lab.blob(Duration::from_secs(10))
                    .unwrap()
                    .delta_summary(&lab.config.lake.container, "machine_sensors"),
            )
            .unwrap();
        (offs, raw, agg, d.version, d.rows, d.rows_per_day)
    };
    let before = snapshot();
    assert_eq!(before.1, n_readings);
    assert_eq!(before.4, Some(n_readings as u64), "the Delta table holds the export");
    assert!(before.2 > 0, "windows were written");
    t.ok(&["down"]);
    assert!(containers(&t.project).is_empty(), "down removes the containers");
    let vols_kept = volumes(&t.project);
    assert!(!vols_kept.is_empty(), "down keeps the volumes");
    let up_again = Instant::now();
    let t = t.with_env("LABCTL_INGEST_ENABLED", "false");
    t.ok(&["up"]);
    let up_secs = up_again.elapsed().as_secs_f64();
    let lab = t.lab();
    let after = snapshot();
    let lost_raw = before.1 - after.1;
    eprintln!(
        "MEASURE | down + up | labctl down (volumes kept), labctl up | offsets {:?} -> {:?}, machine_sensors {} -> {}, sensor_aggregates {} -> {}, Delta v{:?}/{:?} rows -> v{:?}/{:?} rows | lost {lost_raw} duplicated {} | up again in {up_secs:.1} s",
        before.0, after.0, before.1, after.1, before.2, after.2, before.3, before.4, after.3, after.4, (after.1 - before.1).max(0)
    );
    assert_eq!(after, before, "topic, tables and Delta table unchanged by down + up");
    // The broker restart mid-backfill and down + up, proven hop by hop by an independent check.
    assert_verified(
        &t,
        "a broker SIGKILL mid-backfill, a database SIGKILL mid-write, an export, down and up",
    );

    // ========== 3. SIGKILL of `labctl submit flink` ==========================================
    // At three points: after 1 s (checks, or the run request if it went out), while the run
    // request is in flight (just after labctl says it submits), and the moment the job shows in
    // Flink (before labctl saw it RUNNING). Each time the next
    // `labctl submit flink` runs at once and must leave exactly one job of the lab.
    #[derive(Clone, Copy, Debug)]
    enum KillAt {
        AfterOneSecond,
        RunRequestInFlight,
        JobListed,
    }
    for point in [KillAt::AfterOneSecond, KillAt::RunRequestInFlight, KillAt::JobListed] {
        assert!(active_lab_jobs(&t).is_empty(), "no job of the lab before {point:?}");
        let before_ids: HashSet<String> =
            lab_jobs(&t).unwrap().into_iter().map(|(id, _)| id).collect();
        let mut child = t
            .command(&["submit", "flink"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        match point {
            KillAt::AfterOneSecond => std::thread::sleep(Duration::from_secs(1)),
            KillAt::RunRequestInFlight => {
                let line = lines.recv_timeout(Duration::from_secs(60)).ok();
                let mut line = line;
                while let Some(l) = &line {
                    if l.contains("submitting the job") {
                        break;
                    }
                    line = lines.recv_timeout(Duration::from_secs(60)).ok();
                }
                assert!(line.is_some(), "submit never said it was submitting");
                // The request goes out right after that line; the JobManager needs far longer
                // than this to answer it.
                std::thread::sleep(Duration::from_millis(150));
            }
            KillAt::JobListed => {
                let client = lab.flink(Duration::from_secs(2)).unwrap();
                wait_for("the job to show in Flink", Duration::from_secs(60), || {
                    let jobs = rt.block_on(client.jobs()).ok()?;
                    jobs.iter().any(|j| !before_ids.contains(&j.jid)).then_some(())
                });
            }
        }
        let killed_after = started.elapsed().as_secs_f64();
        let finished_already = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        let killed_output = reader.join().unwrap();
        let recovering = Instant::now();
        let next = t.run(&["submit", "flink", "--json"]);
        let next_err = String::from_utf8_lossy(&next.stderr).to_string();
        let outcome = if next.status.success() {
            "submitted or adopted"
        } else {
            assert!(
                next_err.contains("already running"),
                "after a SIGKILL at {point:?} the next submit fails:\n{next_err}"
            );
            "refused: already running"
        };
        // Whatever was in flight has had time to show: still one job, and it runs.
        let mut most = 0;
        let running = wait_for("one RUNNING job of the lab", Duration::from_secs(90), || {
            let jobs = active_lab_jobs(&t);
            most = most.max(jobs.len());
            assert!(jobs.len() <= 1, "after a SIGKILL at {point:?}: two jobs of the lab: {jobs:?}\nkilled submit said:\n{killed_output}");
            (jobs.len() == 1 && jobs[0].1 == "RUNNING").then(|| jobs[0].0.clone())
        });
        let recover_secs = recovering.elapsed().as_secs_f64();
        for _ in 0..10 {
            let jobs = active_lab_jobs(&t);
            assert_eq!(jobs.len(), 1, "after a SIGKILL at {point:?}: {jobs:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "MEASURE | SIGKILL of submit flink {point:?} | killed after {killed_after:.1} s{} | next submit {outcome}; lab jobs active: 1 ({running}), at most {most} | consistent {recover_secs:.1} s after the kill",
            if finished_already { " (had already ended)" } else { "" }
        );
        t.ok(&["flink", "cancel"]);
    }

    assert_verified(&t, "SIGKILLs of submit flink");

    // ========== 4. the Spark driver killed while it writes ===================================
    let summary = |lab: &labctl::ops::lab::Lab| {
        rt.block_on(
            lab.blob(Duration::from_secs(10))
                .unwrap()
                .delta_summary(&lab.config.lake.container, "machine_sensors"),
        )
        .unwrap()
    };
    // After a kill mid-export: the table is at a committed version (the one before the export
    // or the one the export made) holding each reading once, and a re-run finishes. Returns
    // the version before and after the kill.
    let assert_committed_then_rerun =
        |v_before: &labctl::clients::lake::DeltaSummary,
         after_kill: &labctl::clients::lake::DeltaSummary| {
            let v0 = v_before.version.unwrap();
            let v_killed = after_kill.version.unwrap();
            assert!(
                v_killed == v0 || v_killed == v0 + 1,
                "the table is at its version before the export or one after: v{v0} -> v{v_killed}"
            );
            assert_eq!(
                after_kill.rows,
                Some(n_readings as u64),
                "a committed version, each reading once"
            );
            let again = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
            assert_eq!(again["state"], "FINISHED", "{again}");
            (v0, v_killed)
        };
    let v_before = summary(&lab);
    let parquet = |lab: &labctl::ops::lab::Lab| {
        rt.block_on(
            lab.blob(Duration::from_secs(10))
                .unwrap()
                .list_blobs(&lab.config.lake.container, "machine_sensors/year="),
        )
        .map(|b| b.iter().filter(|n| n.ends_with(".parquet")).count())
        .unwrap_or(0)
    };
    let files_before = parquet(&lab);
    // The export rewrites only the days where the lake differs from the database: change every
    // reading's value, so that it has the whole range to write again.
    shift_values(&rt, &lab, 0.5);
    let sub = t.json(&[&["submit", "spark", "--json", "--no-wait"][..], &range[..]].concat());
    let id = sub["submission_id"].as_str().unwrap().to_string();
    // Before submitting, the export rewrote every closed window from the changed raw rows.
    let rewritten = sub["repaired"]["updated"].as_u64().unwrap();
    assert!(rewritten > 1000, "12 hours of windows rewritten: {:#}", sub["repaired"]);
    assert_eq!(sub["repaired"]["late_readings"], 0, "the same rows, other values");
    let spark = lab.spark(Duration::from_secs(5)).unwrap();
    let worker = format!("{}-spark-worker-1", t.project);
    // Mid-write: the first new data file is in storage, the commit is not made yet.
    wait_for("the export to write its first file", Duration::from_secs(180), || {
        (parquet(&lab) > files_before).then_some(())
    });
    // The driver is the DriverWrapper JVM and what it started (the Python program, the task
    // workers): all of them at once, as a crash of the driver's machine would.
    let kill_driver = r#"
jvm=""
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in *java*[D]riverWrapper*) jvm="$jvm ${p#/proc/}";; esac
done
[ -n "$jvm" ] || { echo "no driver" >&2; exit 1; }
all="$jvm"; frontier="$jvm"
while [ -n "$frontier" ]; do
  next=""
  for s in /proc/[0-9]*/stat; do
    read -r pid comm state ppid rest < "$s" 2>/dev/null || continue
    for f in $frontier; do [ "$ppid" = "$f" ] && next="$next $pid"; done
  done
  all="$all$next"; frontier="$next"
done
kill -9 $all 2>/dev/null || true  # a task worker may have ended by itself meanwhile
echo $all
"#;
    let killed = Instant::now();
    let pids = docker(&["exec", &worker, "bash", "-c", kill_driver]);
    let v_at_kill = summary(&lab).version;
    let end = wait_for("the driver to end", Duration::from_secs(120), || {
        let s = rt.block_on(spark.status(&id)).ok()?;
        s.finished().then_some(s.driver_state.unwrap_or_default())
    });
    let v_after = summary(&lab);
    eprintln!("driver processes {pids} killed: {end}; Delta v{:?} just after the kill, v{:?} after the end", v_at_kill, v_after.version);
    assert_ne!(
        end,
        labctl::clients::spark::DriverState::Finished,
        "a killed driver cannot have finished"
    );
    assert_eq!(v_at_kill, v_before.version, "killed before its commit");
    assert_eq!(
        (v_after.version, v_after.rows),
        (v_before.version, v_before.rows),
        "a killed export commits nothing"
    );
    let again = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(again["state"], "FINISHED", "{again}");
    let v_rerun = summary(&lab);
    let rerun_secs = killed.elapsed().as_secs_f64();
    let rows = v_rerun.rows.unwrap() as i64;
    eprintln!(
        "MEASURE | Spark driver SIGKILL mid-write | kill -9 of the driver (JVM, Python, task workers) after its first data file, re-run | Delta v{:?} -> v{:?} (killed) -> v{:?}, rows {} -> {rows} of {n_readings}: lost {} duplicated {} | re-run complete {rerun_secs:.1} s after the kill",
        v_before.version, v_after.version, v_rerun.version, v_before.rows.unwrap(), (n_readings - rows).max(0), (rows - n_readings).max(0)
    );
    assert_eq!(v_rerun.version, v_before.version.map(|v| v + 1), "the re-run is one new version");
    assert_eq!(rows, n_readings, "each reading once in the lake");
    assert_eq!(v_rerun.rows_per_day, v_before.rows_per_day);
    // Every hop agrees again: the lake equals the database, and the windows whose raw rows
    // changed under them above were rewritten from those rows by the export's repair step.
    assert_verified(&t, "the Spark driver's SIGKILL and a re-run");

    // ========== 4b. Spark master and worker SIGKILLed while an export writes ================
    // The whole cluster dies under the export: the driver (inside the worker) with it, and the
    // master forgets every submission (no recovery mode). `up` brings both back; the table is
    // a committed version with each reading once, and a re-run makes it equal to the database
    // and sweeps the killed submission's staged files.
    shift_values(&rt, &lab, 0.375);
    let v_before = summary(&lab);
    let files_before = parquet(&lab);
    t.json(&[&["submit", "spark", "--json", "--no-wait"][..], &range[..]].concat());
    wait_for("the export to write its first file", Duration::from_secs(180), || {
        (parquet(&lab) > files_before).then_some(())
    });
    let master = format!("{}-spark-master-1", t.project);
    let killed = Instant::now();
    docker(&["kill", "-s", "KILL", &master, &worker]);
    let after_kill = summary(&lab);
    t.ok(&["up"]);
    let up_secs = killed.elapsed().as_secs_f64();
    let (v0, v_killed) = assert_committed_then_rerun(&v_before, &after_kill);
    let rerun_secs = killed.elapsed().as_secs_f64();
    let v_rerun = summary(&lab);
    let rows = v_rerun.rows.unwrap() as i64;
    let staged = rt
        .block_on(
            lab.blob(Duration::from_secs(10))
                .unwrap()
                .list_blobs(&lab.config.lake.container, "_labctl/spark/"),
        )
        .unwrap();
    eprintln!(
        "MEASURE | Spark master and worker SIGKILL mid-export | docker kill -s KILL spark-master spark-worker after the export's first data file, `labctl up`, re-run | Delta v{v0} -> v{v_killed} after the kill -> v{:?}, rows {rows} of {n_readings}: lost {} duplicated {}; staged files left {} | cluster back (up) {up_secs:.1} s, re-run complete {rerun_secs:.1} s after the kill",
        v_rerun.version,
        (n_readings - rows).max(0),
        (rows - n_readings).max(0),
        staged.len()
    );
    assert_eq!(rows, n_readings, "each reading once in the lake");
    assert!(staged.is_empty(), "the killed submission's staged files swept: {staged:?}");
    assert_verified(&t, "the Spark cluster's SIGKILL and a re-run");

    // ========== 5. Azurite SIGKILLed while an export writes ===================================
    // The storage dies under the export (no clean shutdown: Azurite's metadata is whatever it
    // had saved). Whatever the driver makes of it, the Delta table is a committed version with
    // each reading once, and the next export makes it equal to the database.
    shift_values(&rt, &lab, 0.25);
    let v_before = summary(&lab);
    let files_before = parquet(&lab);
    let sub = t.json(&[&["submit", "spark", "--json", "--no-wait"][..], &range[..]].concat());
    let id = sub["submission_id"].as_str().unwrap().to_string();
    wait_for("the export to write its first file", Duration::from_secs(180), || {
        (parquet(&lab) > files_before).then_some(())
    });
    let azurite = format!("{}-azurite-1", t.project);
    let killed = Instant::now();
    docker(&["kill", "-s", "KILL", &azurite]);
    std::thread::sleep(Duration::from_secs(2));
    docker(&["start", &azurite]);
    let end = wait_for("the driver to end", Duration::from_secs(300), || {
        let s = rt.block_on(spark.status(&id)).ok()?;
        s.finished().then_some(s.driver_state.unwrap_or_default())
    });
    let after_kill = wait_for("Azurite to answer again", Duration::from_secs(60), || {
        rt.block_on(
            lab.blob(Duration::from_secs(5))
                .ok()?
                .delta_summary(&lab.config.lake.container, "machine_sensors"),
        )
        .ok()
    });
    let (v0, v_killed) = assert_committed_then_rerun(&v_before, &after_kill);
    let v_rerun = summary(&lab);
    let rerun_secs = killed.elapsed().as_secs_f64();
    let rows = v_rerun.rows.unwrap() as i64;
    eprintln!(
        "MEASURE | Azurite SIGKILL mid-export | docker kill -s KILL azurite after the export's first data file, started 2 s later, re-run | driver {end}; Delta v{v0} -> v{v_killed} after the kill -> v{:?}, rows {rows} of {n_readings}: lost {} duplicated {} | re-run complete {rerun_secs:.1} s after the kill",
        v_rerun.version,
        (n_readings - rows).max(0),
        (rows - n_readings).max(0)
    );
    assert_eq!(rows, n_readings, "each reading once in the lake");
    assert_verified(&t, "Azurite's SIGKILL and a re-run");

    // ========== 6. SIGKILL of labctl during scale, submit spark, down and up =================
    // Each time the same command run again finishes the work, and the lab is as it should be.
    let kill_after = |args: &[&str], after: Duration| -> f64 {
        let mut child =
            t.command(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(after);
        let ended_by_itself = child.try_wait().unwrap().is_some();
        assert!(!ended_by_itself, "labctl {} ended before it could be killed", args.join(" "));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        after.as_secs_f64()
    };
    let tm_containers =
        || containers(&t.project).iter().filter(|c| c.contains("-flink-taskmanager-")).count();
    // Killed once the new TaskManager's container exists, while scale waits for it to register
    // (a fixed delay raced the TaskManager's start: seen finished within 3 s).
    let mut child = t
        .command(&["scale", "flink-taskmanager", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while tm_containers() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "labctl scale flink-taskmanager 2 ended before its new container existed"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "no second TaskManager container");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended_by_itself = child.try_wait().unwrap().is_some();
    assert!(!ended_by_itself, "labctl scale ended before it could be killed");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let k = started.elapsed().as_secs_f64();
    let again = Instant::now();
    t.ok(&["scale", "flink-taskmanager", "2"]);
    wait_for("2 TaskManagers registered", Duration::from_secs(120), || {
        let r: serde_json::Value =
            serde_json::from_slice(&t.run(&["status", "--json"]).stdout).ok()?;
        (r["flink"]["taskmanagers"] == 2).then_some(())
    });
    assert_eq!(tm_containers(), 2);
    eprintln!(
        "MEASURE | SIGKILL of labctl scale | killed {k:.1} s into `scale flink-taskmanager 2` (its new container made), run again | 2 TaskManager containers, 2 registered | {:.1} s to both registered",
        again.elapsed().as_secs_f64()
    );
    t.ok(&["scale", "flink-taskmanager", "1"]);
    assert_eq!(tm_containers(), 1);

    // Work for the export: every day differs from the lake again.
    shift_values(&rt, &lab, 0.125);
    let k = kill_after(&[&["submit", "spark"][..], &range[..]].concat(), Duration::from_secs(5));
    // Its driver, if submitted, runs on in the cluster: let it end before the next export.
    wait_for("no driver running", Duration::from_secs(300), || {
        let m = rt.block_on(spark.master()).ok()?;
        m.activedrivers.is_empty().then_some(())
    });
    let again = Instant::now();
    let rerun = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(rerun["state"], "FINISHED", "{rerun}");
    // The killed submit's staged folder (job, result, maybe a config with the read password)
    // went with the re-run's sweep; the re-run removed its own.
    let staged = rt
        .block_on(
            lab.blob(Duration::from_secs(10))
                .unwrap()
                .list_blobs(&lab.config.lake.container, "_labctl/spark/"),
        )
        .unwrap();
    assert!(staged.is_empty(), "staged files left in the lake: {staged:?}");
    let lake = summary(&lab);
    assert_eq!(lake.rows, Some(n_readings as u64), "each reading once in the lake");
    eprintln!(
        "MEASURE | SIGKILL of labctl submit spark | killed {k:.0} s in, its driver left to end, run again | Delta v{:?} with {n_readings} rows, nothing staged left | re-run {:.1} s",
        lake.version,
        again.elapsed().as_secs_f64()
    );

    let before = snapshot();
    let k = kill_after(&["down"], Duration::from_millis(700));
    t.ok(&["down"]);
    assert!(containers(&t.project).is_empty(), "the second down removes the containers");
    assert_eq!(volumes(&t.project), vols_kept, "down keeps the volumes");
    let k_up = kill_after(&["up"], Duration::from_secs(3));
    let again = Instant::now();
    t.ok(&["up"]);
    let up_secs = again.elapsed().as_secs_f64();
    let after = snapshot();
    eprintln!(
        "MEASURE | SIGKILL of labctl down, then of labctl up | down killed {k:.1} s in, down again; up killed {k_up:.0} s in, up again | offsets, both tables and the Delta table unchanged: {} | up again in {up_secs:.1} s",
        after == before
    );
    assert_eq!(after, before, "topic, tables and Delta table unchanged");
    assert_verified(&t, "SIGKILLs of labctl scale, submit spark, down and up");

    // ========== down --volumes: refused without --yes off a terminal, then removes ==========
    let vols = volumes(&t.project);
    let running = containers(&t.project);
    let refused = t.run(&["down", "--volumes"]);
    assert!(
        !refused.status.success(),
        "down --volumes without --yes must refuse when not at a terminal"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(volumes(&t.project), vols, "nothing removed");
    assert_eq!(containers(&t.project), running, "nothing stopped");
    t.ok(&["down", "--volumes", "--yes"]);
    assert!(volumes(&t.project).is_empty(), "down --volumes --yes removes the volumes");
    assert!(containers(&t.project).is_empty());
    eprintln!("faults test wall time {:.1} s", test_start.elapsed().as_secs_f64());
}
