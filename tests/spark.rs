//! The export on the real Spark cluster: known rows in TimescaleDB, written by Delta's Spark writer
//! over WASB to Azurite, and read back by an independent reader: the Delta log replayed by
//! `labctl::clients::lake` (not the job's code), the live Parquet files fetched from the blob store and
//! read with the `parquet` crate.

mod common;

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use common::{rt, wait_for, TestLab};
use labctl::clients::spark::DriverState;

/// One lab at a time: each test brings up a whole lab (Kafka, Flink, Spark, ...), and two at
/// once on a small machine only make both slow.
static SERIAL: Mutex<()> = Mutex::new(());

/// Rows over three UTC days, with readings just before and just after midnight.
fn known_rows() -> Vec<(String, &'static str, &'static str, f64)> {
    let mut rows = Vec::new();
    let stamps = [
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T12:00:00.000Z",
        "2026-01-01T23:59:59.500Z",
        "2026-01-02T00:00:00.000Z",
        "2026-01-02T00:00:00.250Z",
        "2026-01-02T18:30:00.000Z",
        "2026-01-03T23:59:59.999Z",
    ];
    for (i, ts) in stamps.iter().enumerate() {
        for (m, machine) in ["CNC-1", "LATHE-1"].iter().enumerate() {
            for (s, sensor) in ["temperature", "pressure"].iter().enumerate() {
                rows.push((
                    ts.to_string(),
                    *machine,
                    *sensor,
                    1.5 * i as f64 + 10.0 * m as f64 + s as f64 + 0.125,
                ));
            }
        }
    }
    rows
}

type Days = BTreeMap<String, (i64, f64)>;

/// What the independent reader sees in the Delta table `machine_sensors`.
#[derive(Debug)]
struct LakeView {
    /// Per UTC day of the rows' timestamps: rows and the sum of `value`.
    days: Days,
    /// The values of the rows of machine [`WRITER`], sorted.
    writer_values: Vec<f64>,
    version: Option<u64>,
    files: usize,
    partition_columns: serde_json::Value,
    /// Delta types of `timestamp` and `value` (from the log's schema), and the Parquet
    /// logical type of `timestamp` in the data files.
    ts_type: String,
    value_type: String,
    parquet_ts_type: String,
}

fn lake_view(t: &TestLab) -> LakeView {
    use parquet::{
        file::reader::{FileReader, SerializedFileReader},
        record::Field,
    };
    let lab = t.lab();
    let blob = lab.blob(Duration::from_secs(30)).unwrap();
    let table = "machine_sensors";
    rt().block_on(async {
        let summary = blob.delta_summary("lake", table).await.unwrap();
        let files = blob.delta_live_files("lake", table).await.unwrap();
        // The table's metadata: the newest metaData action of the log (every table has one in
        // version 0; no schema change happens here).
        let v0 =
            blob.get_blob("lake", &format!("{table}/_delta_log/{:020}.json", 0)).await.unwrap();
        let meta: serde_json::Value = String::from_utf8_lossy(&v0)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|a| a.get("metaData").cloned())
            .expect("a metaData action in version 0");
        let schema: serde_json::Value =
            serde_json::from_str(meta["schemaString"].as_str().unwrap()).unwrap();
        let field_type = |name: &str| {
            schema["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["name"] == name)
                .map(|f| f["type"].to_string())
                .unwrap_or_default()
        };
        let mut days = Days::new();
        let mut writer_values = Vec::new();
        let mut parquet_ts_type = String::new();
        for f in &files {
            let bytes = blob.get_blob("lake", &format!("{table}/{}", f.path)).await.unwrap();
            let reader = SerializedFileReader::new(bytes).unwrap();
            let descr = reader.metadata().file_metadata().schema_descr_ptr();
            if let Some(c) = descr.columns().iter().find(|c| c.name() == "timestamp") {
                parquet_ts_type = format!("{:?} {:?}", c.physical_type(), c.logical_type_ref());
            }
            let mut n = 0;
            for row in reader.get_row_iter(None).unwrap() {
                let row = row.unwrap();
                let (mut us, mut value, mut writer) = (None, None, false);
                for (name, field) in row.get_column_iter() {
                    match (name.as_str(), field) {
                        ("timestamp", Field::TimestampMicros(x)) => us = Some(*x),
                        ("timestamp", Field::TimestampMillis(x)) => us = Some(*x * 1000),
                        ("value", Field::Double(x)) => value = Some(*x),
                        ("machine_id", Field::Str(m)) => writer = m == WRITER,
                        _ => {}
                    }
                }
                let (us, value) = (us.expect("a timestamp"), value.expect("a value"));
                if writer {
                    writer_values.push(value);
                }
                let day = chrono::DateTime::from_timestamp_micros(us)
                    .unwrap()
                    .format("%Y-%m-%d")
                    .to_string();
                assert_eq!(
                    Some(&day),
                    f.day.as_ref(),
                    "a row of {} lies outside its partition",
                    f.path
                );
                let e = days.entry(day).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += value;
                n += 1;
            }
            assert_eq!(Some(n), f.rows, "numRecords of {} in the log", f.path);
        }
        writer_values.sort_by(f64::total_cmp);
        LakeView {
            days,
            writer_values,
            version: summary.version,
            files: files.len(),
            partition_columns: meta["partitionColumns"].clone(),
            ts_type: field_type("timestamp"),
            value_type: field_type("value"),
            parquet_ts_type,
        }
    })
}

/// Per UTC day: rows and the sum of values in `machine_sensors`.
fn db_days(t: &TestLab) -> Days {
    let lab = t.lab();
    rt().block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        db.query("SELECT to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*), sum(value) FROM machine_sensors GROUP BY 1 ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), (r.get::<_, i64>(1), r.get::<_, f64>(2))))
            .collect()
    })
}

fn insert(t: &TestLab, rows: &[(String, &str, &str, f64)]) {
    let lab = t.lab();
    rt().block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        for (ts, m, s, v) in rows {
            db.execute(
                "INSERT INTO machine_sensors VALUES ($1::text::timestamptz, $2, 'X', $3, $4, 'u')",
                &[ts, m, s, v],
            )
            .await
            .unwrap();
        }
    });
}

/// The machine whose readings [`write_in_sequence`] writes.
const WRITER: &str = "SNAPSHOT-1";

/// Readings 1, 2, 3 ... (the value is the number), each in a transaction of its own, spread over
/// three days, until `stop`; returns how many were written.
fn write_in_sequence(t: &TestLab, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let lab = t.lab();
    rt().block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            n += 1;
            let day = ["2026-01-01", "2026-01-03", "2026-01-05"][(n % 3) as usize];
            let ts = format!("{day}T20:00:00Z");
            db.execute(
                "INSERT INTO machine_sensors VALUES ($1::text::timestamptz + $2 * interval '1 millisecond', $3, 'X', 'temperature', $4, 'u')",
                &[&ts, &(n as f64), &WRITER, &(n as f64)],
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    })
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn assert_equal_days(lake: &Days, db: &Days, what: &str) {
    assert_eq!(
        lake.keys().collect::<Vec<_>>(),
        db.keys().collect::<Vec<_>>(),
        "{what}: days of the lake vs the database"
    );
    for (d, (n, s)) in db {
        let (ln, ls) = lake[d];
        assert_eq!(ln, *n, "{what}: rows on {d}");
        assert!(
            (ls - s).abs() < 1e-9 * s.abs().max(1.0),
            "{what}: sum of values on {d}: {ls} vs {s}"
        );
    }
}

/// The driver's JVM was told to map the image's class-data archive, and the class path the worker
/// built for it (read from the driver's launch command) is one the archive fits: otherwise the
/// JVM silently loads every class from the jars again.
fn assert_driver_fits_the_class_data_archive(t: &TestLab) {
    let worker = format!("{}-spark-worker-1", t.project);
    let out = std::process::Command::new("docker")
        .args(["exec", &worker, "sh", "-c"])
        .arg("grep -h '^Launch Command: ' /var/lib/spark/work/driver-*/stderr | tail -n 1")
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let args: Vec<&str> =
        line.trim_start_matches("Launch Command: ").trim_matches('"').split("\" \"").collect();
    let archive = labctl::stack::SPARK_DRIVER_ARCHIVE;
    assert!(
        args.contains(&format!("-XX:SharedArchiveFile={archive}").as_str()),
        "the driver maps the archive: {line}"
    );
    let cp = args.iter().position(|a| *a == "-cp").map(|i| args[i + 1]).expect(&line);
    let check = std::process::Command::new("docker")
        .args(["exec", &worker, "java", &format!("-XX:SharedArchiveFile={archive}")])
        .args(["-XX:+UseSerialGC", "-cp", cp, "-XX:+PrintSharedArchiveAndExit"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        text.trim_end().lines().last(),
        Some("archive is valid"),
        "the archive does not fit the driver's class path {cp}"
    );
    eprintln!("the driver's class path {cp} fits {archive}");
}

#[test]
fn export_writes_a_partitioned_delta_table_once() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestLab::new("spark").with_env("LABCTL_INGEST_ENABLED", "false");
    t.ok(&["up"]);
    let lab = t.lab();
    let rt = rt();
    let rows = known_rows();

    // An empty source succeeds with 0 rows.
    let empty = t.json(&["submit", "spark", "--json"]);
    assert_eq!(empty["state"], "FINISHED", "{empty}");
    assert_eq!(empty["result"]["rows_written"], 0, "{empty}");
    assert_eq!(empty["result"]["days_rewritten"], 0, "{empty}");

    insert(&t, &rows);
    let db = db_days(&t);
    assert_eq!(db.len(), 3);

    let range = ["--from", "2026-01-01", "--to", "2026-01-04"];
    let first = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(first["state"], "FINISHED", "{first}");
    assert_eq!(first["result"]["rows_written"].as_u64().unwrap() as usize, rows.len(), "{first}");
    assert_eq!(
        (first["result"]["days_compared"].as_u64(), first["result"]["days_rewritten"].as_u64()),
        (Some(3), Some(3)),
        "{first}"
    );
    let view = lake_view(&t);
    assert_equal_days(&view.days, &db, "first export");
    assert_eq!(view.ts_type, "\"timestamp\"", "{view:?}");
    assert_eq!(view.value_type, "\"double\"", "{view:?}");
    assert!(
        view.parquet_ts_type.contains("INT64") && view.parquet_ts_type.contains("MICROS"),
        "{view:?}"
    );
    assert_eq!(view.partition_columns, serde_json::json!(["year", "month", "day"]), "{view:?}");
    let version = view.version.unwrap();
    assert_eq!(first["result"]["delta_version"].as_u64(), Some(version), "{first}");
    // What `labctl status` reads from the Delta log: the row count and the last commit.
    let summary = rt
        .block_on(
            lab.blob(Duration::from_secs(5)).unwrap().delta_summary("lake", "machine_sensors"),
        )
        .unwrap();
    assert_eq!(summary.rows, Some(rows.len() as u64), "{summary:?}");
    let age = chrono::Utc::now() - summary.last_commit.expect("last commit time");
    assert!(age.num_seconds() >= 0 && age.num_seconds() < 600, "{summary:?}");

    assert_driver_fits_the_class_data_archive(&t);

    // Partition folders for exactly those days (data files only: WASB also keeps a marker blob
    // per folder).
    let blobs = rt
        .block_on(
            lab.blob(Duration::from_secs(5)).unwrap().list_blobs("lake", "machine_sensors/year="),
        )
        .unwrap();
    let mut dirs: Vec<String> = blobs
        .iter()
        .filter(|b| b.ends_with(".parquet"))
        .filter_map(|b| {
            b.rsplit_once('/').map(|(d, _)| d.trim_start_matches("machine_sensors/").to_string())
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(
        dirs,
        vec!["year=2026/month=1/day=1", "year=2026/month=1/day=2", "year=2026/month=1/day=3"]
    );

    // The same range again: the lake already equals the database, so nothing is rewritten and
    // no version is added. (Before issue 15 a re-run replaced the range: one new version.)
    let second = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(second["state"], "FINISHED", "{second}");
    assert_eq!(
        (second["result"]["days_rewritten"].as_u64(), second["result"]["committed"].as_bool()),
        (Some(0), Some(false)),
        "{second}"
    );
    let view2 = lake_view(&t);
    assert_eq!(view2.days, view.days, "a re-run must not duplicate rows");
    assert_eq!(view2.version, view.version, "nothing to change: no new version");
    assert_eq!(view2.files, view.files);
    assert!(
        second["result"]["startup"].get("spark_context").is_none(),
        "nothing to change: no SparkContext started: {second}"
    );

    // One reading changed in the database: exactly its day is rewritten, in one new version.
    rt.block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        db.execute("UPDATE machine_sensors SET value = value + 1000 WHERE \"timestamp\" = '2026-01-02T18:30:00Z' AND machine_id = 'CNC-1' AND sensor_type = 'pressure'", &[]).await.unwrap();
    });
    let db2 = db_days(&t);
    let third = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(third["result"]["days_rewritten"].as_u64(), Some(1), "{third}");
    assert_eq!(third["result"]["partitions"], serde_json::json!([["2026", "1", "2"]]), "{third}");
    assert_eq!(
        third["result"]["rows_written"].as_u64(),
        Some(db2["2026-01-02"].0 as u64),
        "{third}"
    );
    let view3 = lake_view(&t);
    assert_equal_days(&view3.days, &db2, "after a changed reading");
    assert_eq!(view3.version, Some(version + 1), "exactly one new table version");
    // The replaced file stays in storage: an export vacuums nothing, and VACUUM's default keeps
    // 7 days for readers of older versions.
    let parquet = rt
        .block_on(lab.blob(Duration::from_secs(5)).unwrap().list_blobs("lake", "machine_sensors/"))
        .unwrap()
        .iter()
        .filter(|b| b.ends_with(".parquet"))
        .count();
    assert!(parquet > view3.files, "{parquet} Parquet blobs, {} live files", view3.files);

    // Job and config reach the cluster through the lake; a waited-for export leaves none of it.
    let blob = lab.blob(Duration::from_secs(5)).unwrap();
    let staged = rt.block_on(blob.list_blobs("lake", "_labctl/")).unwrap();
    assert!(staged.is_empty(), "staged files left behind: {staged:?}");

    // A malformed range is refused before anything is submitted.
    let bad = t.run(&["submit", "spark", "--from", "yesterday"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--from"));

    // Azurite goes away while the job runs (it has a day to rewrite): the job fails, the table
    // stays as it was.
    rt.block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        db.execute(
            "UPDATE machine_sensors SET value = value + 1 WHERE \"timestamp\" < '2026-01-02'",
            &[],
        )
        .await
        .unwrap();
    });
    let db3 = db_days(&t);
    let sub = t.json(&[&["submit", "spark", "--json", "--no-wait"][..], &range[..]].concat());
    let id = sub["submission_id"].as_str().unwrap().to_string();
    let spark = lab.spark(Duration::from_secs(5)).unwrap();
    wait_for("the driver to run", Duration::from_secs(60), || {
        let s = rt.block_on(spark.status(&id)).ok()?;
        (s.driver_state == Some(DriverState::Running)).then_some(())
    });
    // The job deletes its config (it holds the password and the key) as soon as it has read it,
    // long before it ends.
    let staged = wait_for("the job to delete its config", Duration::from_secs(60), || {
        let names = rt.block_on(blob.list_blobs("lake", "_labctl/spark/")).ok()?;
        (!names.is_empty() && !names.iter().any(|n| n.ends_with("/config.json"))).then_some(names)
    });
    assert!(staged.iter().any(|n| n.ends_with(".py")), "{staged:?}");
    let running = rt.block_on(spark.status(&id)).unwrap();
    assert_eq!(
        running.driver_state,
        Some(DriverState::Running),
        "the driver was still running then: {running:?}"
    );
    let azurite = format!("{}-azurite-1", t.project);
    assert!(std::process::Command::new("docker")
        .args(["stop", &azurite])
        .status()
        .unwrap()
        .success());
    let end = wait_for("the driver to end", Duration::from_secs(240), || {
        let s = rt.block_on(spark.status(&id)).ok()?;
        s.finished().then_some(s.driver_state.unwrap_or_default())
    });
    assert_ne!(end, DriverState::Finished, "the export cannot have succeeded without its storage");
    assert!(std::process::Command::new("docker")
        .args(["start", &azurite])
        .status()
        .unwrap()
        .success());
    wait_for("Azurite back", Duration::from_secs(30), || {
        rt.block_on(lab.blob(Duration::from_secs(2)).unwrap().list_containers()).ok()
    });
    let view4 = lake_view(&t);
    assert_eq!(view4.version, view3.version, "a failed export must not commit");
    assert_eq!(view4.days, view3.days);

    // And the re-run completes it: the changed day, nothing else. It also sweeps what earlier
    // exports left staged: the failed --no-wait export's folder, and a config that no job read
    // (a labctl killed before its submission: the config holds the read password).
    let blob = lab.blob(Duration::from_secs(5)).unwrap();
    let leftover = rt.block_on(blob.list_blobs("lake", "_labctl/spark/")).unwrap();
    assert!(!leftover.is_empty(), "the failed --no-wait export left its folder");
    let stale = "_labctl/spark/20200101T000000000-4194305/config.json";
    rt.block_on(blob.put_blob("lake", stale, b"{\"db_password\": \"stale\"}", "application/json"))
        .unwrap();
    let again = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(again["state"], "FINISHED", "{again}");
    assert_eq!(again["result"]["days_rewritten"].as_u64(), Some(1), "{again}");
    assert_equal_days(&lake_view(&t).days, &db3, "re-run after the failed export");
    let staged = rt.block_on(blob.list_blobs("lake", "_labctl/")).unwrap();
    assert!(staged.is_empty(), "earlier exports' staged files left behind: {staged:?}");
}

/// Readings that reach the database late (timestamps older than the last export), two exports at
/// once, and an export with nothing to do.
#[test]
fn late_readings_reach_the_lake_and_concurrent_exports_never_double_rows() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestLab::new("spark-late").with_env("LABCTL_INGEST_ENABLED", "false");
    t.ok(&["up"]);
    let lab = t.lab();
    let rows = known_rows();
    insert(&t, &rows);

    // Something that is not a Delta table where the table goes: refused, nothing written.
    let blob = lab.blob(Duration::from_secs(5)).unwrap();
    rt().block_on(blob.put_blob("lake", "machine_sensors/notes.csv", b"a,b\n", "text/csv"))
        .unwrap();
    let refused = t.run(&["submit", "spark"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("is not a Delta table"), "{err}");
    assert_eq!(
        rt().block_on(blob.list_blobs("lake", "machine_sensors/")).unwrap(),
        ["machine_sensors/notes.csv"],
        "nothing written beside it"
    );
    rt().block_on(blob.delete_blob("lake", "machine_sensors/notes.csv")).unwrap();

    // The database unreachable from Spark: a clear error naming it.
    let timescaledb = format!("{}-timescaledb-1", t.project);
    assert!(std::process::Command::new("docker")
        .args(["stop", &timescaledb])
        .status()
        .unwrap()
        .success());
    let refused = t.run(&["submit", "spark"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("cannot connect to the database"), "{err}");
    assert!(std::process::Command::new("docker")
        .args(["start", &timescaledb])
        .status()
        .unwrap()
        .success());
    wait_for("the database back", Duration::from_secs(60), || {
        rt().block_on(lab.database().unwrap().connect(Duration::from_secs(2))).ok()
    });

    // The default export (no range) compares every day.
    let first = t.json(&["submit", "spark", "--json"]);
    assert_eq!(first["result"]["days_rewritten"].as_u64(), Some(3), "{first}");
    assert_equal_days(&lake_view(&t).days, &db_days(&t), "first export");

    // Late readings: older than everything the last export wrote, on two of the three days.
    let late: Vec<_> = ["2026-01-01T06:00:00.000Z", "2026-01-03T01:02:03.456Z"]
        .iter()
        .map(|ts| (ts.to_string(), "WELDER-1", "temperature", 42.5))
        .collect();
    insert(&t, &late);
    let late_export = t.json(&["submit", "spark", "--json"]);
    let r = &late_export["result"];
    assert_eq!(
        (r["days_compared"].as_u64(), r["days_rewritten"].as_u64()),
        (Some(3), Some(2)),
        "{late_export}"
    );
    assert_eq!(
        r["partitions"],
        serde_json::json!([["2026", "1", "1"], ["2026", "1", "3"]]),
        "{late_export}"
    );
    let view = lake_view(&t);
    assert_equal_days(&view.days, &db_days(&t), "after the late readings");

    // Nothing to change: nothing rewritten, no new version, and only the comparison's cost.
    let started = Instant::now();
    let noop = t.json(&["submit", "spark", "--json"]);
    let noop_secs = started.elapsed().as_secs_f64();
    let r = &noop["result"];
    assert_eq!(
        (r["days_rewritten"].as_u64(), r["rows_written"].as_u64(), r["committed"].as_bool()),
        (Some(0), Some(0), Some(false)),
        "{noop}"
    );
    assert_eq!(
        lake_view(&t).version,
        view.version,
        "an export with nothing to change must not commit"
    );
    eprintln!("export with nothing to change: {noop_secs:.1} s (submit to FINISHED {:.1} s, compare {:.1} + {:.1} s)", noop["seconds"], r["tables"][0]["phases"]["compare_db"], r["tables"][0]["phases"]["compare_lake"]);

    // Two exports started together, both with days to rewrite (more late readings, and a day the
    // lake does not have yet): one through labctl and the master, one as a second driver in
    // local mode beside it (the master would queue a second submission behind the first on a
    // one-worker lab, so they would not overlap). Whatever their order, every day ends equal to
    // the database and no row is doubled.
    let more: Vec<_> =
        ["2026-01-02T03:00:00.000Z", "2026-01-05T12:00:00.000Z", "2026-01-05T13:00:00.000Z"]
            .iter()
            .map(|ts| (ts.to_string(), "WELDER-1", "pressure", 7.25))
            .collect();
    insert(&t, &more);
    let worker = format!("{}-spark-worker-1", t.project);
    use labctl::ops::spark;
    let req = spark::ExportRequest { partitions: 2, ..Default::default() };
    let secrets = spark::JobSecrets::of(&lab).unwrap();
    let config =
        spark::render_config(&lab, &req, &secrets, &spark::Overrides::default(), None).unwrap();
    let job = labctl::stack::assets::text(spark::JOB_FILE).unwrap();
    let cfg_file = t.state_dir.path().join("side-export.json");
    let job_file = t.state_dir.path().join("side-export.py");
    std::fs::write(&cfg_file, config).unwrap();
    std::fs::write(&job_file, job).unwrap();
    for (from, to) in [(&cfg_file, "/tmp/side-export.json"), (&job_file, "/tmp/side-export.py")] {
        assert!(std::process::Command::new("docker")
            .args(["cp", &from.display().to_string(), &format!("{worker}:{to}")])
            .status()
            .unwrap()
            .success());
    }
    let (via_labctl, side) = std::thread::scope(|s| {
        let a = s.spawn(|| t.run(&["submit", "spark", "--json"]));
        let b = s.spawn(|| {
            std::process::Command::new("docker")
                .args([
                    "exec",
                    &worker,
                    "/opt/spark-venv/bin/spark-submit",
                    "--master",
                    "local[1]",
                    "--jars",
                    "/usr/share/java/postgresql.jar",
                    "--conf",
                    "spark.ui.enabled=false",
                    "--driver-java-options",
                    "-Duser.timezone=UTC -Djava.security.egd=file:/dev/urandom",
                    "/tmp/side-export.py",
                    "@/tmp/side-export.json",
                ])
                .output()
                .unwrap()
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let _ = std::process::Command::new("docker")
        .args([
            "exec",
            "-u",
            "0",
            &worker,
            "rm",
            "-f",
            "/tmp/side-export.json",
            "/tmp/side-export.py",
        ])
        .status();
    let side_out = String::from_utf8_lossy(&side.stdout).into_owned();
    let side_result: Option<serde_json::Value> = side_out
        .lines()
        .find_map(|l| l.strip_prefix("LABCTL_RESULT "))
        .and_then(|j| serde_json::from_str(j).ok());
    let side_error = side_out.lines().find(|l| l.starts_with("LABCTL_ERROR")).map(str::to_string);
    assert!(
        via_labctl.status.success(),
        "the labctl export failed:\n{}",
        String::from_utf8_lossy(&via_labctl.stderr)
    );
    let via: serde_json::Value = serde_json::from_slice(&via_labctl.stdout).unwrap();
    eprintln!(
        "two exports at once: labctl's rewrote {} days in {} attempt(s) (committed {}); the side driver: {}",
        via["result"]["days_rewritten"],
        via["result"]["tables"][0]["attempts"],
        via["result"]["committed"],
        match (&side_result, &side_error) {
            (Some(r), _) => format!("rewrote {} days in {} attempt(s) (committed {})", r["days_rewritten"], r["tables"][0]["attempts"], r["committed"]),
            (None, Some(e)) => e.clone(),
            (None, None) => format!("no result:\n{}\n{}", side_out, String::from_utf8_lossy(&side.stderr)),
        }
    );
    // Either both finished (the later one found the lake current, or retried after Delta's
    // conflict check), or the side driver reports a conflict it could not resolve: never a
    // silent double.
    assert!(
        side_result.is_some() || side_error.as_deref().is_some_and(|e| e.contains("concurrent")),
        "side driver: {side_out}"
    );
    let db = db_days(&t);
    let view = lake_view(&t);
    assert_equal_days(&view.days, &db, "after two exports at once");
    let total: i64 = db.values().map(|(n, _)| n).sum();
    assert_eq!(view.days.values().map(|(n, _)| n).sum::<i64>(), total, "no doubled rows");

    // Readings written while an export runs, one transaction after another: the export reads
    // one snapshot of the database in all its tasks (and the comparison that chose the days), so
    // the lake holds the writer's first K readings for one K, on every day, and the next export
    // adds the rest. Tasks reading at their own moments would each see a different K, and their
    // rows would disagree with the comparison's counts (the export fails then).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (during, written) = std::thread::scope(|s| {
        let writer = s.spawn(|| write_in_sequence(&t, &stop));
        // Dropped on the way out, also by a panic below: the scope then joins a writer that stops
        // instead of waiting for it forever.
        let stop_writer = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(300));
        let export = t.run(&["submit", "spark", "--json"]);
        drop(stop_writer);
        (export, writer.join().unwrap())
    });
    assert!(
        during.status.success(),
        "the export beside a writer failed:\n{}",
        String::from_utf8_lossy(&during.stderr)
    );
    let seen = lake_view(&t).writer_values;
    let k = seen.len() as u64;
    assert!(k >= 1 && k < written, "the export saw {k} of {written} readings written beside it");
    assert_eq!(seen, (1..=k).map(|i| i as f64).collect::<Vec<_>>(), "one snapshot: the first {k}");
    let after = t.json(&["submit", "spark", "--json"]);
    assert!(after["result"]["days_rewritten"].as_u64() >= Some(1), "{after}");
    let view = lake_view(&t);
    assert_equal_days(&view.days, &db_days(&t), "after the writer");
    assert_eq!(view.writer_values, (1..=written).map(|i| i as f64).collect::<Vec<_>>());
    eprintln!("an export beside a writer saw the first {k} of its {written} readings, the next one the rest");

    // And once more: nothing left to do.
    let last = t.json(&["submit", "spark", "--json"]);
    assert_eq!(last["result"]["days_rewritten"].as_u64(), Some(0), "{last}");

    // Vacuum on request: with no history kept, exactly the live files stay, and the table reads
    // the same.
    let before = lake_view(&t);
    let vacuum = t.json(&["lake", "vacuum", "--retain-hours", "0", "--json"]);
    let r = &vacuum["result"]["tables"][0];
    assert!(r["files_deleted"].as_u64().unwrap() >= 1, "{vacuum}");
    assert_eq!(r["files_left"].as_u64(), Some(before.files as u64), "{vacuum}");
    let parquet = rt()
        .block_on(blob.list_blobs("lake", "machine_sensors/"))
        .unwrap()
        .iter()
        .filter(|b| b.ends_with(".parquet"))
        .count();
    assert_eq!(parquet, before.files, "only live files left");
    let after = lake_view(&t);
    assert_eq!(
        (after.days, after.version),
        (before.days, before.version),
        "vacuum changes no data and adds no version"
    );
}
