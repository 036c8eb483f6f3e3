//! The streaming job on the real Flink cluster: known readings in, exact rows out.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{flink_diagnosis, rt, wait_for, wait_for_explained, TestLab};
use labctl::{
    clients::flink::JobState,
    model::fleet::Sensor,
    ops::ingest::{encode::Template, producer::producer_config},
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// 2026-01-05T10:00:00Z: an arbitrary whole minute in the past.
const T0: i64 = 1_767_607_200;
const MACHINES: [(&str, &str); 3] =
    [("CNC-1", "CNC"), ("LATHE-1", "Lathe"), ("WELDER-1", "Welder")];
const SENSORS: [Sensor; 3] = [Sensor::Temperature, Sensor::Pressure, Sensor::Vibration];

#[derive(Debug, Clone)]
struct Reading {
    machine: &'static str,
    kind: &'static str,
    sensor: Sensor,
    /// Milliseconds since the epoch.
    ms: i64,
    value: f64,
}

fn ts_text(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let base =
        String::from_utf8(labctl::ops::ingest::encode::format_timestamp(secs).to_vec()).unwrap();
    match ms.rem_euclid(1000) {
        0 => base,
        f => format!("{base}.{f:03}"),
    }
}

/// Readings of `minutes` whole minutes from `start`, every 5 s, plus one with a fraction of a
/// second in each minute; values are exact in three decimals so expectations are exact.
fn known_readings(start: i64, minutes: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    for (mi, (machine, kind)) in MACHINES.iter().enumerate() {
        for (si, sensor) in SENSORS.iter().enumerate() {
            for k in 0..minutes * 12 {
                let ms = (start + k * 5) * 1000;
                let value = 10.0 * mi as f64 + si as f64 + (k % 7) as f64 * 0.125;
                out.push(Reading { machine, kind, sensor: *sensor, ms, value });
            }
            for m in 0..minutes {
                out.push(Reading {
                    machine,
                    kind,
                    sensor: *sensor,
                    ms: (start + m * 60 + 7) * 1000 + 250,
                    value: 100.5 + m as f64,
                });
            }
        }
    }
    out.sort_by_key(|r| r.ms);
    out
}

fn produce(lab: &labctl::ops::lab::Lab, readings: &[Reading]) {
    let broker = lab.broker().unwrap();
    let producer: BaseProducer = producer_config(&broker.client_config()).create().unwrap();
    let mut buf = Vec::new();
    for r in readings {
        buf.clear();
        Template::new(r.machine, r.kind, r.sensor).encode_with(
            r.value,
            ts_text(r.ms).as_bytes(),
            &mut buf,
        );
        producer
            .send(BaseRecord::to(&lab.config.broker.topic).key(r.machine).payload(&buf))
            .unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Messages the job cannot use, each with the reason it must give, and the key they travel under.
fn bad_messages() -> Vec<(&'static [u8], Vec<u8>, &'static str)> {
    let reading = |replace: (&str, &str)| {
        let good = r#"{"machine_id":"CNC-1","machine_type":"CNC","sensor_type":"temperature","value":20.5,"unit":"C","timestamp":"2026-01-05T10:00:02"}"#;
        assert!(good.contains(replace.0));
        good.replace(replace.0, replace.1).into_bytes()
    };
    vec![
        (&b"CNC-1"[..], b"not json at all".to_vec(), "not a JSON object"),
        (b"CNC-1", b"[1, 2, 3]".to_vec(), "not a JSON object"),
        (b"LATHE-1", b"\xff\xfe\x00 binary".to_vec(), "not a JSON object"),
        (b"CNC-1", reading(("2026-01-05T10:00:02", "yesterday")), "timestamp does not parse"),
        (
            b"LATHE-1",
            reading(("2026-01-05T10:00:02", "2099-01-01T00:00:00")),
            "timestamp is after the time the message was produced",
        ),
        (b"CNC-1", reading(("20.5", r#""hot""#)), "value missing or not a number"),
        (b"CNC-1", reading((r#""machine_id":"CNC-1","#, "")), "machine_id missing"),
        (
            b"WELDER-1",
            reading((r#""unit":"C""#, r#""unit":"C\u0000""#)),
            "unit contains a NUL character",
        ),
        (
            b"CNC-1",
            reading((r#""CNC-1""#, r#""x'; DROP TABLE machine_sensors; --""#)),
            "machine_id is not an identifier",
        ),
        // A byte that is not UTF-8 inside a field: read as Flink decodes text (U+FFFD), so the
        // reason names the field, not the message.
        (
            b"CNC-1",
            reading((r#""CNC-1""#, r#""CNC-~""#))
                .into_iter()
                .map(|b| if b == b'~' { 0xff } else { b })
                .collect(),
            "machine_id is not an identifier",
        ),
    ]
}

fn produce_raw(lab: &labctl::ops::lab::Lab, messages: &[(&[u8], Vec<u8>, &str)]) {
    let broker = lab.broker().unwrap();
    let producer: BaseProducer = producer_config(&broker.client_config()).create().unwrap();
    for (key, payload, _) in messages {
        producer.send(BaseRecord::to(&lab.config.broker.topic).key(*key).payload(payload)).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// One temperature reading per machine at `secs` + 0.5 s: moves event time (and so the
/// watermark) past everything before it; the half second keeps it off the 5 s grid of
/// `known_readings`, so it never shares a raw row's key with one of them.
fn pusher_readings(secs: i64, value: f64) -> Vec<Reading> {
    MACHINES
        .iter()
        .map(|(m, k)| Reading {
            machine: m,
            kind: k,
            sensor: Sensor::Temperature,
            ms: secs * 1000 + 500,
            value,
        })
        .collect()
}

type Key = (String, String, i64);

/// The windows of `all` that a watermark at `watermark_s` (seconds) has closed.
fn closed_windows(all: &[Reading], watermark_s: i64) -> BTreeMap<Key, (f64, f64, f64, i64)> {
    expected_windows(all).into_iter().filter(|(k, _)| k.2 + 60 <= watermark_s).collect()
}

async fn raw_rows(lab: &labctl::ops::lab::Lab) -> (i64, i64) {
    let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
    let n: i64 = db.query_one("SELECT count(*) FROM machine_sensors", &[]).await.unwrap().get(0);
    let dup: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT machine_id, sensor_type, \"timestamp\" FROM machine_sensors GROUP BY 1,2,3 HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (n, dup)
}

/// The Flink jobs of `labctl status --json`, checked against the documented schema.
fn status_jobs(status: &serde_json::Value) -> Vec<serde_json::Value> {
    common::assert_status_schema(status);
    status["flink"]["jobs"].as_array().cloned().unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The lab job's entries in `labctl flink jobs --json` that are RUNNING, or None while the
/// JobManager does not answer.
fn lab_jobs_running(t: &TestLab) -> Option<Vec<String>> {
    Some(
        common::lab_jobs(t)?
            .into_iter()
            .filter(|(_, state)| state == "RUNNING")
            .map(|(id, _)| id)
            .collect(),
    )
}

/// (machine, sensor, window start in seconds) -> (avg, min, max, count), computed here.
fn expected_windows(readings: &[Reading]) -> BTreeMap<Key, (f64, f64, f64, i64)> {
    let mut acc: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for r in readings {
        acc.entry((r.machine.into(), r.sensor.name().into(), r.ms.div_euclid(60_000) * 60))
            .or_default()
            .push(r.value);
    }
    acc.into_iter()
        .map(|(k, v)| {
            let n = v.len() as f64;
            let avg = v.iter().sum::<f64>() / n;
            let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            (k, (avg, min, max, v.len() as i64))
        })
        .collect()
}

async fn windows_in_db(lab: &labctl::ops::lab::Lab) -> BTreeMap<Key, (f64, f64, f64, i64)> {
    let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
    let rows = db
        .query(
            "SELECT machine_id, sensor_type, extract(epoch from window_start)::bigint, avg_value, min_value, max_value, reading_count,
                    extract(epoch from window_end - window_start)::bigint FROM sensor_aggregates",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            assert_eq!(r.get::<_, i64>(7), 60, "1-minute windows");
            ((r.get(0), r.get(1), r.get(2)), (r.get(3), r.get(4), r.get(5), r.get(6)))
        })
        .collect()
}

/// Waits until every window of `want` is in sensor_aggregates; a timeout names the missing
/// ones and what Flink and Docker say of the job.
fn wait_for_windows(
    t: &TestLab,
    rt: &tokio::runtime::Runtime,
    job_id: &str,
    what: &str,
    timeout: Duration,
    want: &BTreeMap<Key, (f64, f64, f64, i64)>,
) -> BTreeMap<Key, (f64, f64, f64, i64)> {
    let lab = t.lab();
    let client = lab.flink(Duration::from_secs(10)).unwrap();
    let start = std::time::Instant::now();
    // The job's state as it changes, with the time: how a recovery went, even when it passes.
    let mut last_state = String::new();
    wait_for_explained(
        what,
        timeout,
        || {
            // Region failover restarts tasks under a RUNNING job: their states tell.
            let state = match rt.block_on(client.job(job_id)) {
                Ok(j) => {
                    let tasks: Vec<String> =
                        j.vertices.iter().map(|v| format!("{:?}", v.status)).collect();
                    format!("{:?}, tasks {}", j.state, tasks.join(" "))
                }
                Err(e) => format!("unknown ({e})"),
            };
            if state != last_state {
                eprintln!("  {:6.1} s: job {state}", start.elapsed().as_secs_f64());
                last_state = state;
            }
            let got = rt.block_on(windows_in_db(&lab));
            want.keys().all(|k| got.contains_key(k)).then_some(got)
        },
        || {
            let got = rt.block_on(windows_in_db(&lab));
            let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
            format!("windows missing: {missing:?}\n{}", flink_diagnosis(t, rt, job_id))
        },
    )
}

fn assert_windows(
    got: &BTreeMap<Key, (f64, f64, f64, i64)>,
    want: &BTreeMap<Key, (f64, f64, f64, i64)>,
) {
    for (k, w) in want {
        let g = got.get(k).unwrap_or_else(|| panic!("window {k:?} missing"));
        assert!(
            (g.0 - w.0).abs() < 1e-9 && g.1 == w.1 && g.2 == w.2 && g.3 == w.3,
            "window {k:?}: got {g:?}, want {w:?}"
        );
    }
}

/// The secret as text and as it would show inside base64 (the runner's statements travel as
/// base64 program arguments), at each of the three byte alignments.
fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forms = vec![secret.to_string()];
    for pad in 0..3usize {
        let enc = b64.encode(format!("{}{secret}", "x".repeat(pad)));
        // Characters that also encode the neighbouring bytes are left out.
        let skip = (pad * 4).div_ceil(3);
        let keep = (secret.len() * 4 / 3).saturating_sub(3);
        forms.push(enc.chars().skip(skip).take(keep).collect());
    }
    forms
}

/// No database password in anything Flink's REST API shows of the job, of the cluster or of its
/// logs (it answers whoever reaches its port), nor in any process's arguments in its containers.
fn assert_no_secret_in_flink(
    rt: &tokio::runtime::Runtime,
    t: &TestLab,
    lab: &labctl::ops::lab::Lab,
    job_id: &str,
) {
    let st = &lab.state;
    let secrets = [&st.db_password, &st.db_writer_password, &st.db_reader_password];
    assert!(secrets.iter().all(|s| s.len() >= 16), "generated passwords");
    let forms: Vec<String> = secrets.iter().flat_map(|s| secret_forms(s)).collect();
    let base = format!("http://127.0.0.1:{}", st.ports.flink_ui);
    let get = |path: &str| -> String {
        rt.block_on(async {
            let res = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert!(res.status().is_success(), "GET {path}: {}", res.status());
            res.text().await.unwrap()
        })
    };
    let tms: serde_json::Value = serde_json::from_str(&get("/taskmanagers")).unwrap();
    let mut paths: Vec<String> = [
        "/jobs/{id}",
        "/jobs/{id}/config",
        "/jobs/{id}/jobmanager/config",
        "/jobs/{id}/jobmanager/environment",
        "/jobs/{id}/plan",
        "/jobs/{id}/checkpoints/config",
        "/jars",
        "/jobmanager/config",
        "/jobmanager/environment",
        "/jobmanager/logs",
        "/jobs/{id}/exceptions",
    ]
    .iter()
    .map(|p| p.replace("{id}", job_id))
    .collect();
    for tm in tms["taskmanagers"].as_array().unwrap() {
        let id = tm["id"].as_str().unwrap();
        paths.extend([format!("/taskmanagers/{id}"), format!("/taskmanagers/{id}/logs")]);
    }
    let mut checked = 0;
    for path in &paths {
        let text = get(path);
        checked += text.len();
        for f in &forms {
            assert!(
                !text.contains(f.as_str()),
                "a database password shows in Flink's REST answer {path}"
            );
        }
    }
    // Something to look at: the job's plan and configs are not empty.
    assert!(checked > 10_000, "Flink's REST answers held only {checked} characters");
    for svc in ["flink-jobmanager", "flink-taskmanager"] {
        let name = format!("{}-{svc}-1", t.project);
        let out = std::process::Command::new("docker")
            .args(["exec", &name, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
            .output()
            .unwrap();
        let args = String::from_utf8_lossy(&out.stdout);
        assert!(args.contains("java"), "{name}: no process arguments read: {args}");
        // Flink logs to the console here (no log files behind the REST API): `labctl logs`.
        let logs = std::process::Command::new("docker").args(["logs", &name]).output().unwrap();
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned()
            + &String::from_utf8_lossy(&logs.stderr);
        assert!(logs.len() > 1000, "{name}: a log to look at");
        for f in &forms {
            assert!(
                !args.contains(f.as_str()),
                "a database password in a process's arguments in {name}"
            );
            assert!(!logs.contains(f.as_str()), "a database password in {name}'s log");
        }
    }
    eprintln!(
        "no password in {} REST answers ({checked} characters), the JVMs' arguments or their logs",
        paths.len()
    );
}

#[test]
fn streaming_job_writes_exact_rows() {
    let t = TestLab::new("flink").with_env("LABCTL_INGEST_ENABLED", "false");
    t.ok(&["up"]);
    let lab = t.lab();
    let rt = rt();

    // Three closed minutes, then one reading per machine ten minutes later to move event
    // time past them (its own window stays open and is not checked).
    let readings = known_readings(T0, 3);
    let pushers: Vec<Reading> = MACHINES
        .iter()
        .map(|(m, k)| Reading {
            machine: m,
            kind: k,
            sensor: Sensor::Temperature,
            ms: (T0 + 600) * 1000,
            value: 1.0,
        })
        .collect();
    produce(&lab, &readings);
    // Bad messages among the good ones: skipped, counted and kept; the job runs on.
    let bad = bad_messages();
    produce_raw(&lab, &bad);
    produce(&lab, &pushers);

    let sub = t.json(&["submit", "flink", "--json"]);
    let job_id = sub["job_id"].as_str().unwrap().to_string();
    eprintln!("submit to RUNNING: {} s", sub["submit_to_running_secs"]);
    assert_no_secret_in_flink(&rt, &t, &lab, &job_id);

    let want = expected_windows(&readings);
    assert_eq!(want.len(), 27, "3 machines x 3 sensors x 3 minutes");
    let got = wait_for_windows(
        &t,
        &rt,
        &job_id,
        "all 27 closed windows in sensor_aggregates",
        Duration::from_secs(180),
        &want,
    );
    assert_windows(&got, &want);

    // Raw rows: every reading once, timestamps parsed from the 'T' form, millis kept. The raw
    // sink flushes on its own schedule (5,000 rows or 1 s), independent of the windows' sink:
    // complete windows do not mean its last batch is in yet.
    let raw_count = || {
        rt.block_on(async {
            let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
            db.query_one("SELECT count(*) FROM machine_sensors", &[])
                .await
                .unwrap()
                .get::<_, i64>(0) as usize
        })
    };
    wait_for("every reading in machine_sensors", Duration::from_secs(60), || {
        (raw_count() >= readings.len() + pushers.len()).then_some(())
    });
    rt.block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        let n: i64 = db.query_one("SELECT count(*) FROM machine_sensors", &[]).await.unwrap().get(0);
        assert_eq!(n as usize, readings.len() + pushers.len());
        let ms: i64 = db
            .query_one(
                "SELECT (extract(epoch from \"timestamp\") * 1000)::bigint FROM machine_sensors WHERE machine_id = 'CNC-1' AND sensor_type = 'pressure' AND value = 100.5",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ms, (T0 + 7) * 1000 + 250, "the millisecond reading keeps its time, in UTC");
    });

    // Every bad message is in rejected_readings once, with its reason; status counts them.
    let rejected = wait_for(
        "the bad messages in rejected_readings",
        Duration::from_secs(60),
        || {
            let rows = rt.block_on(async {
            let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
            db.query("SELECT reason, payload FROM rejected_readings ORDER BY topic_partition, topic_offset", &[]).await.unwrap()
        });
            (rows.len() >= bad.len()).then(|| {
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                    .collect::<Vec<_>>()
            })
        },
    );
    let mut got_reasons: Vec<&str> = rejected.iter().map(|(r, _)| r.as_str()).collect();
    let mut want_reasons: Vec<&str> = bad.iter().map(|(_, _, r)| *r).collect();
    got_reasons.sort();
    want_reasons.sort();
    assert_eq!(got_reasons, want_reasons, "one row per bad message, with its reason");
    assert!(
        rejected.iter().any(|(_, p)| p == "not json at all"),
        "the payload is kept: {rejected:?}"
    );
    assert!(rejected.iter().all(|(_, p)| !p.contains('\0')), "NUL cannot reach PostgreSQL text");
    let status = t.json(&["status", "--json"]);
    common::assert_status_schema(&status);
    assert_eq!(status["database"]["rejected"]["count"], bad.len() as i64, "{status:#}");
    assert_eq!(
        status["database"]["light"]["health"], "yellow",
        "recent rejections ask for a look: {status:#}"
    );
    assert!(
        status["database"]["light"]["reason"].as_str().unwrap_or_default().contains("rejected"),
        "{status:#}"
    );

    // status agrees with the data: the topic holds what was produced, per partition; the
    // source read all of it; each sink took what its table holds; the group's offsets,
    // committed on checkpoints, reach the end of every partition.
    let produced = (readings.len() + bad.len() + pushers.len()) as i64;
    let offsets = rt
        .block_on(lab.broker().unwrap().offsets(&lab.config.broker.topic, Duration::from_secs(10)))
        .unwrap();
    assert_eq!(offsets.iter().map(|p| p.high - p.low).sum::<i64>(), produced);
    wait_for("status to count every message at each hop", Duration::from_secs(90), || {
        let status = t.json(&["status", "--json"]);
        let job = status_jobs(&status).into_iter().find(|j| j["id"] == job_id.as_str())?;
        let ops = |kind: &str| -> Vec<(String, i64)> {
            job[kind]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| {
                    (
                        o["name"].as_str().unwrap_or("").to_string(),
                        o["records"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        };
        let sink = |name: &str| ops("sinks").into_iter().find(|(n, _)| n == name).map(|(_, r)| r);
        let per_partition: Vec<i64> = status["broker"]["partitions"]
            .as_array()?
            .iter()
            .filter_map(|p| p["messages"].as_i64())
            .collect();
        let want_per: Vec<i64> = offsets.iter().map(|p| p.high - p.low).collect();
        let group = &status["broker"]["consumer_group"];
        let ok = per_partition == want_per
            && ops("sources").iter().map(|(_, r)| r).sum::<i64>() == produced
            && sink("machine_sensors") == Some((readings.len() + pushers.len()) as i64)
            && sink("rejected_readings") == Some(bad.len() as i64)
            && group["lag"].as_i64() == Some(0)
            && status["broker"]["flink_consumer_lag"].as_i64() == Some(0);
        if !ok {
            eprintln!("status not there yet: sources {:?}, sinks {:?}, per partition {per_partition:?} (want {want_per:?}), group lag {}", ops("sources"), ops("sinks"), group["lag"]);
        }
        ok.then_some(())
    });
    let text = t.ok(&["status"]);
    assert!(
        text.contains("machine_sensors") && text.contains("rejected_readings"),
        "status names each sink:\n{text}"
    );

    // A second submit of the same job is refused: still one job.
    let again = t.run(&["submit", "flink"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let jobs: serde_json::Value = t.json(&["flink", "jobs", "--json"]);
    let running = jobs.as_array().unwrap().iter().filter(|j| j["state"] == "RUNNING").count();
    assert_eq!(running, 1, "{jobs}");

    // SQL the planner rejects: its message reaches the user, and nothing is left running.
    let bad = t.state_dir.path().join("bad.sql");
    std::fs::write(
        &bad,
        "CREATE TABLE src (x INT) WITH ('connector' = 'datagen');\nCREATE TABLE snk (x INT) WITH ('connector' = 'blackhole');\nINSERT INTO snk SELECT avg_val FROM src;\n",
    )
    .unwrap();
    let out = t.run(&["submit", "flink", "--file", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Column 'avg_val' not found"), "{err}");
    assert!(err.lines().count() < 10, "the cause, not a stack trace: {err}");
    let jobs: serde_json::Value = t.json(&["flink", "jobs", "--json"]);
    assert_eq!(jobs.as_array().unwrap().iter().filter(|j| j["state"] == "RUNNING").count(), 1);

    // Late records: none dropped.
    let client = lab.flink(Duration::from_secs(10)).unwrap();
    assert_eq!(
        rt.block_on(client.late_records_dropped(&job_id)).unwrap(),
        0.0,
        "readings dropped as late"
    );

    // TaskManager restart: the job recovers from its checkpoint, windows stay exactly once.
    wait_for("a completed checkpoint", Duration::from_secs(60), || {
        let cp = rt.block_on(client.checkpoints(&job_id)).ok()?;
        (cp["counts"]["completed"].as_i64()? > 0).then_some(())
    });
    let tm = format!("{}-flink-taskmanager-1", t.project);
    // SIGKILL, not a graceful stop: the TaskManager gets no chance to flush or say goodbye.
    // (A killed container counts as stopped by hand for the restart policy, so start it again.)
    let killed = std::time::Instant::now();
    for args in [["kill", "--signal", "KILL"].as_slice(), ["start"].as_slice()] {
        assert!(
            std::process::Command::new("docker").args(args).arg(&tm).status().unwrap().success(),
            "docker {args:?} {tm}"
        );
    }
    // After the first pushers (event time is already past T0 + 595 s): minutes 11 and 12.
    let later = known_readings(T0 + 660, 2);
    produce(&lab, &later);
    let pushers2 = pusher_readings(T0 + 1260, 2.0);
    produce(&lab, &pushers2);
    let mut all = readings.clone();
    all.extend(later.iter().cloned());
    let want_all = expected_windows(&all);
    let got = wait_for_windows(
        &t,
        &rt,
        &job_id,
        "the job to recover and write the later windows",
        Duration::from_secs(360),
        &want_all,
    );
    assert_windows(&got, &want_all);
    eprintln!(
        "windows complete {:.1} s after the TaskManager was killed",
        killed.elapsed().as_secs_f64()
    );
    let state = rt.block_on(client.job(&job_id)).unwrap().state;
    assert_eq!(state, JobState::Running);
    let (_, dup) = rt.block_on(raw_rows(&lab));
    assert_eq!(dup, 0, "no duplicate raw readings after the restart");
    assert_eq!(
        rt.block_on(client.late_records_dropped(&job_id)).unwrap(),
        0.0,
        "readings dropped as late after restart"
    );

    // status shows the job. Its counters restarted with the recovered tasks, and the
    // JobManager refreshes metrics every 10 s (metrics.fetcher.update-interval): wait for them.
    wait_for("status to show the recovered job reading", Duration::from_secs(60), || {
        let status = t.json(&["status", "--json"]);
        let jobs = status_jobs(&status);
        jobs.iter()
            .any(|j| {
                j["id"] == job_id.as_str()
                    && j["state"] == "RUNNING"
                    && j["records_in"].as_i64().unwrap_or(0) > 0
            })
            .then_some(())
    });

    // Everything produced so far; the windows a watermark has closed are checked against it.
    let mut all: Vec<Reading> =
        readings.iter().chain(&pushers).chain(&later).chain(&pushers2).cloned().collect();

    // --replace: the job is stopped with a savepoint and the new one starts from it. Minute 21
    // is open at that moment and already holds the second pushers, read by the old job: its
    // count below is only right if the window's state was carried over.
    let rep = t.json(&["submit", "flink", "--replace", "--json"]);
    let job2 = rep["job_id"].as_str().unwrap().to_string();
    assert_ne!(job2, job_id, "a new job");
    let savepoint = rep["savepoint"]
        .as_str()
        .unwrap_or_else(|| panic!("no savepoint reported: {rep}"))
        .to_string();
    assert_eq!(rep["restored_from"]["kind"], "savepoint", "{rep}");
    assert_eq!(rep["restored_from"]["path"], savepoint.as_str(), "{rep}");
    assert_eq!(rep["replaced"][0], job_id.as_str(), "{rep}");
    assert_eq!(
        rt.block_on(client.restored_from(&job2)).unwrap(),
        Some((savepoint.clone(), true)),
        "Flink: job {job2} restored from the savepoint"
    );
    assert_eq!(
        rt.block_on(client.job(&job_id)).unwrap().state,
        JobState::Finished,
        "the old job ended with its savepoint"
    );
    assert_eq!(lab_jobs_running(&t).unwrap(), vec![job2.clone()], "only the new job runs");
    let phase3 = known_readings(T0 + 1260, 2);
    let pushers3 = pusher_readings(T0 + 1500, 3.0);
    produce(&lab, &phase3);
    produce(&lab, &pushers3);
    all.extend(phase3.iter().chain(&pushers3).cloned());
    let want = closed_windows(&all, T0 + 1500 - 5);
    assert!(
        want.contains_key(&("CNC-1".into(), "temperature".into(), T0 + 1260))
            && want.len() > want_all.len()
    );
    let got = wait_for_windows(
        &t,
        &rt,
        &job2,
        "the windows after --replace",
        Duration::from_secs(120),
        &want,
    );
    assert_windows(&got, &want);
    assert_eq!(
        got[&("CNC-1".to_string(), "temperature".to_string(), T0 + 1260)].3,
        14,
        "12 + 1 readings + the pusher read before --replace"
    );
    assert_eq!(
        rt.block_on(client.late_records_dropped(&job2)).unwrap(),
        0.0,
        "late records after --replace"
    );

    // JobManager SIGKILLed (no HA): the job is gone with it. The third pushers (minute 25, open)
    // are in the job's state; wait for a checkpoint taken after they were read.
    let read_at = now_ms();
    wait_for("a checkpoint holding the third pushers", Duration::from_secs(60), || {
        let cp = rt.block_on(client.checkpoints(&job2)).ok()?;
        (cp["latest"]["completed"]["trigger_timestamp"].as_i64()? > read_at).then_some(())
    });
    let jm = format!("{}-flink-jobmanager-1", t.project);
    // SIGKILL while the job writes: no savepoint, no clean cancel, nothing flushed by Flink.
    let jm_killed = std::time::Instant::now();
    for args in [["kill", "--signal", "KILL"].as_slice(), ["start"].as_slice()] {
        assert!(
            std::process::Command::new("docker").args(args).arg(&jm).status().unwrap().success(),
            "docker {args:?} {jm}"
        );
    }
    let running = wait_for("the JobManager to answer again", Duration::from_secs(120), || {
        lab_jobs_running(&t)
    });
    assert!(running.is_empty(), "no job survives a JobManager restart without HA: {running:?}");
    let status = t.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    let stale =
        status_jobs(&status).iter().any(|j| j["id"] == job2.as_str() && j["state"] == "RUNNING");
    assert!(!stale, "status shows the lost job as running: {status:#}");

    // The job is part of the lab: `up` finds it missing and brings it back from its latest
    // retained checkpoint (through the same submit as `labctl submit flink`).
    let up = t.json(&["up", "--json"]);
    assert_eq!(up["containers_changed"], 0, "{up}");
    let sub = up["flink_job_restored"].clone();
    let job3 = sub["job_id"].as_str().unwrap().to_string();
    assert_eq!(sub["restored_from"]["kind"], "checkpoint", "{sub}");
    let chk = sub["restored_from"]["path"].as_str().unwrap().to_string();
    assert!(chk.contains(&format!("/{job2}/chk-")), "the latest checkpoint of {job2}: {chk}");
    // (Flink reports any restore in its default NO_CLAIM mode with is_savepoint = true.)
    let (restored, _) =
        rt.block_on(client.restored_from(&job3)).unwrap().expect("Flink reports a restore");
    let bare = |p: &str| p.trim_start_matches("file:").trim_start_matches('/').to_string();
    assert_eq!(bare(&restored), bare(&chk), "Flink: job {job3} restored from the checkpoint");
    let phase5 = known_readings(T0 + 1500, 2);
    let pushers4 = pusher_readings(T0 + 1740, 4.0);
    produce(&lab, &phase5);
    produce(&lab, &pushers4);
    all.extend(phase5.iter().chain(&pushers4).cloned());
    let want = closed_windows(&all, T0 + 1740 - 5);
    let got = wait_for_windows(
        &t,
        &rt,
        &job3,
        "the windows after the JobManager restart",
        Duration::from_secs(120),
        &want,
    );
    assert_windows(&got, &want);
    eprintln!(
        "MEASURE | JobManager SIGKILL while the job writes | docker kill --signal KILL + start, then labctl up | job restored from its retained checkpoint by up; every window of the readings produced after it exact | {:.1} s from the kill to the last window",
        jm_killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        got[&("WELDER-1".to_string(), "temperature".to_string(), T0 + 1500)].3,
        14,
        "12 + 1 readings + the pusher read before the restart"
    );
    let (n, dup) = wait_for("every reading as one raw row", Duration::from_secs(30), || {
        let (n, dup) = rt.block_on(raw_rows(&lab));
        (n as usize >= all.len()).then_some((n, dup))
    });
    assert_eq!((n as usize, dup), (all.len(), 0), "every reading exactly once");
    assert_eq!(
        rt.block_on(client.late_records_dropped(&job3)).unwrap(),
        0.0,
        "late records after the JobManager restart"
    );

    // The state file lost while the job runs: `up` rebuilds it from the lab's containers, and
    // as the job roles get new passwords it replaces the job through a savepoint. The database
    // restart below makes the sinks log in again: with the writer's old password they could not.
    std::fs::remove_file(t.state_dir.path().join(format!("{}.json", t.project))).unwrap();
    let up = t.json(&["up", "--json"]);
    assert_eq!(up["containers_changed"], 0, "{up}");
    let sub = up["flink_job_restored"].clone();
    let job4 = sub["job_id"].as_str().unwrap_or_else(|| panic!("job not replaced: {up}"));
    let job4 = job4.to_string();
    assert_eq!(sub["replaced"][0], job3.as_str(), "{sub}");
    assert_eq!(sub["restored_from"]["kind"], "savepoint", "{sub}");
    let lab = t.lab();

    // Database restart while the job writes: the JDBC sinks fail, the job restarts from its
    // checkpoint (fixed-delay strategy) once the database is back; nothing lost or doubled.
    let phase6 = known_readings(T0 + 1740, 2);
    let pushers5 = pusher_readings(T0 + 1980, 5.0);
    produce(&lab, &phase6);
    let restarted = std::time::Instant::now();
    let db_container = format!("{}-timescaledb-1", t.project);
    assert!(std::process::Command::new("docker")
        .args(["restart", &db_container])
        .status()
        .unwrap()
        .success());
    produce(&lab, &pushers5);
    all.extend(phase6.iter().chain(&pushers5).cloned());
    wait_for("the database to accept logins again", Duration::from_secs(90), || {
        rt.block_on(lab.database().unwrap().probe(Duration::from_secs(2))).ok()
    });
    let want = closed_windows(&all, T0 + 1980 - 5);
    let got = wait_for_windows(
        &t,
        &rt,
        &job4,
        "the windows after the database restart",
        Duration::from_secs(240),
        &want,
    );
    assert_windows(&got, &want);
    eprintln!(
        "windows complete {:.1} s after the database restart began",
        restarted.elapsed().as_secs_f64()
    );
    let (n, dup) = wait_for(
        "every reading as one raw row after the database restart",
        Duration::from_secs(60),
        || {
            let (n, dup) = rt.block_on(raw_rows(&lab));
            (n as usize >= all.len()).then_some((n, dup))
        },
    );
    assert_eq!(
        (n as usize, dup),
        (all.len(), 0),
        "every reading exactly once after the database restart"
    );
    assert_eq!(
        rt.block_on(client.late_records_dropped(&job4)).unwrap(),
        0.0,
        "late records after the database restart"
    );

    // Everything so far agrees, read by verify's own readers.
    let v = t.json(&["verify", "--json"]);
    assert_eq!(v["ok"], true, "verify before the skewed producers: {:#}", v["hops"]);

    // Producer clocks 10 minutes off. Event time stands at T0 + 1980 s. CNC-1's producer is
    // 10 minutes behind: it stamps readings into minutes the watermark closed long ago, one
    // with windows written (minute 21) and one without (minute 23). LATHE-1's is 10 minutes
    // ahead: its readings land in minutes still open. Then every machine moves on to T0 + 2700.
    // The half-second offsets keep every reading off the other phases' keys.
    let skewed = |machine_index: usize, start: i64| -> Vec<Reading> {
        let (machine, kind) = MACHINES[machine_index];
        SENSORS
            .iter()
            .enumerate()
            .flat_map(|(si, sensor)| {
                (0..4).map(move |j| Reading {
                    machine,
                    kind,
                    sensor: *sensor,
                    ms: (start + 15 * j) * 1000 + 2500,
                    value: 500.0 + si as f64 * 10.0 + j as f64 * 0.25,
                })
            })
            .collect()
    };
    let behind: Vec<Reading> =
        skewed(0, T0 + 1260).into_iter().chain(skewed(0, T0 + 1380)).collect();
    let ahead = skewed(1, T0 + 1980 + 600);
    let pushers6 = pusher_readings(T0 + 2700, 6.0);
    produce(&lab, &behind);
    produce(&lab, &ahead);
    produce(&lab, &pushers6);
    all.extend(behind.iter().chain(&ahead).chain(&pushers6).cloned());
    // Nothing lost: each of them is a raw row.
    wait_for("the skewed producers' readings as raw rows", Duration::from_secs(60), || {
        let (n, dup) = rt.block_on(raw_rows(&lab));
        (n as usize == all.len() && dup == 0).then_some(())
    });
    let want = closed_windows(&all, T0 + 2700 - 5);
    wait_for("the windows after the skewed producers", Duration::from_secs(120), || {
        let got = rt.block_on(windows_in_db(&lab));
        want.keys().all(|k| got.contains_key(k) || k.0 == "CNC-1").then_some(())
    });
    // The behind producer's readings were late: Flink left them out of their windows. (Its
    // late-records metric is reported, not asserted: which operator drops them, and so
    // whether the metric counts them, depends on the plan.)
    std::thread::sleep(Duration::from_secs(11)); // metrics.fetcher.update-interval
    let late_metric = rt.block_on(client.late_records_dropped(&job4)).unwrap();

    // verify sees the windows that no longer match their raw rows, and nothing lost.
    let out = t.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "verify with late windows");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hop = |v: &serde_json::Value, i: usize| v["hops"][i].clone();
    assert_eq!(hop(&v, 0)["ok"], true, "nothing lost from the topic: {:#}", hop(&v, 0));
    assert_eq!(hop(&v, 1)["ok"], false);
    assert!(hop(&v, 1)["hint"].as_str().unwrap().contains("verify --repair"), "{:#}", hop(&v, 1));
    let (wrong, missing): (u64, u64) =
        v["cells"].as_array().unwrap().iter().fold((0, 0), |a, c| {
            (
                a.0 + c["windows_wrong"].as_u64().unwrap(),
                a.1 + c["windows_missing"].as_u64().unwrap(),
            )
        });
    assert_eq!(
        (wrong, missing),
        (3, 3),
        "minute 21 recounted, minute 23 never written, x 3 sensors"
    );

    // --repair rewrites exactly those windows from the raw rows, through the writer role.
    let v = t.json(&["verify", "--repair", "--json"]);
    assert_eq!(v["ok"], true, "verify after --repair: {:#}", v["hops"]);
    let rep = &v["repaired"];
    assert_eq!((rep["updated"].as_u64(), rep["added"].as_u64()), (Some(3), Some(3)), "{rep:#}");
    assert_eq!(rep["late_readings"].as_i64(), Some(behind.len() as i64));
    assert_windows(&rt.block_on(windows_in_db(&lab)), &want);
    eprintln!(
        "MEASURE | producer clocks 10 minutes behind and ahead | {} readings stamped into closed minutes, {} into open ones | every reading a raw row; verify: 3 windows wrong, 3 missing; Flink's late-records metric {late_metric}; verify --repair rewrote {} windows, {} late readings counted | -",
        behind.len(),
        ahead.len(),
        rep["updated"].as_u64().unwrap() + rep["added"].as_u64().unwrap(),
        rep["late_readings"]
    );
    // A second repair finds nothing to do.
    let again = t.json(&["verify", "--repair", "--json"]);
    assert_eq!(again["repaired"]["updated"].as_u64(), Some(0));
    assert_eq!(again["repaired"]["added"].as_u64(), Some(0));
    // status counts them (one run changed something).
    let st = t.json(&["status", "--json"]);
    common::assert_status_schema(&st);
    let repairs = &st["database"]["repairs"];
    assert_eq!((repairs["runs"].as_u64(), repairs["windows"].as_u64()), (Some(1), Some(6)));
    assert_eq!(repairs["late_readings"].as_i64(), Some(behind.len() as i64));
    assert!(t.ok(&["status"]).contains("late windows repaired 6 (24 late readings"));
}
