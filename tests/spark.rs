//! The export on the real Spark cluster: known rows in TimescaleDB, read back from the Delta
//! table on Azurite by an independent reader (delta-rs in Python, inside the Spark image).

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{rt, wait_for, TestLab};

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
                rows.push((ts.to_string(), *machine, *sensor, 1.5 * i as f64 + 10.0 * m as f64 + s as f64 + 0.125));
            }
        }
    }
    rows
}

/// Per UTC day: (rows, sum of values), from the Delta table, read by delta-rs in Python.
fn lake_per_day(t: &TestLab) -> (BTreeMap<String, (i64, f64)>, serde_json::Value) {
    let worker = format!("{}-spark-worker-1", t.project);
    let script = r#"
import json, pyarrow.compute as pc
from deltalake import DeltaTable
opts = {"account_name": "devstoreaccount1", "account_key": "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
        "endpoint": "http://azurite:10000/devstoreaccount1", "allow_http": "true"}
dt = DeltaTable("az://lake/machine_sensors", storage_options=opts)
tab = dt.to_pyarrow_table()
days = {}
ts = tab.column("timestamp")
vals = tab.column("value").to_pylist()
for t, v in zip(ts.to_pylist(), vals):
    d = t.strftime("%Y-%m-%d")
    n, s = days.get(d, (0, 0.0))
    days[d] = (n + 1, s + v)
print(json.dumps({"version": dt.version(), "days": days, "ts_type": str(ts.type), "value_type": str(tab.column("value").type),
                  "partition_columns": dt.metadata().partition_columns, "files": len(dt.file_uris())}))
# delta-rs' runtime threads can abort the interpreter's teardown ("terminate called without an
# active exception", seen once in CI after a correct result): leave without tearing down.
import os, sys
sys.stdout.flush()
os._exit(0)
"#;
    let out = std::process::Command::new("docker")
        .args(["exec", &worker, "/opt/spark-venv/bin/python", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "reading the Delta table failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(out.stdout.rsplit(|b| *b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    let days = v["days"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(d, x)| (d.clone(), (x[0].as_i64().unwrap(), x[1].as_f64().unwrap())))
        .collect();
    (days, v)
}

#[test]
fn export_writes_a_partitioned_delta_table_once() {
    let t = TestLab::new("spark").with_env("LABCTL_INGEST_ENABLED", "false");
    t.ok(&["up"]);
    let lab = t.lab();
    let rt = rt();
    let rows = known_rows();

    // An empty source succeeds with 0 rows.
    let empty = t.json(&["submit", "spark", "--json"]);
    assert_eq!(empty["state"], "FINISHED", "{empty}");
    assert_eq!(empty["result"]["rows_written"], 0, "{empty}");

    let db_days: BTreeMap<String, (i64, f64)> = rt.block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        for (ts, m, s, v) in &rows {
            db.execute(
                "INSERT INTO machine_sensors VALUES ($1::text::timestamptz, $2, 'X', $3, $4, 'u')",
                &[ts, m, s, v],
            )
            .await
            .unwrap();
        }
        db.query("SELECT to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*), sum(value) FROM machine_sensors GROUP BY 1 ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), (r.get::<_, i64>(1), r.get::<_, f64>(2))))
            .collect()
    });
    assert_eq!(db_days.len(), 3);

    let range = ["--from", "2026-01-01", "--to", "2026-01-04"];
    let first = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(first["state"], "FINISHED", "{first}");
    assert_eq!(first["result"]["rows_written"].as_u64().unwrap() as usize, rows.len(), "{first}");
    let (lake, meta) = lake_per_day(&t);
    assert_eq!(lake.len(), db_days.len(), "{lake:?} vs {db_days:?}");
    for (d, (n, s)) in &db_days {
        let (ln, ls) = lake[d];
        assert_eq!(ln, *n, "rows on {d}");
        assert!((ls - s).abs() < 1e-9, "sum of values on {d}: {ls} vs {s}");
    }
    assert_eq!(meta["ts_type"], "timestamp[us, tz=UTC]", "{meta}");
    assert_eq!(meta["value_type"], "double", "{meta}");
    assert_eq!(meta["partition_columns"], serde_json::json!(["year", "month", "day"]), "{meta}");
    let version = meta["version"].as_i64().unwrap();
    // What `labctl status` reads from the Delta log: the row count and the last commit.
    let summary = rt.block_on(lab.blob(Duration::from_secs(5)).unwrap().delta_summary("lake", "machine_sensors")).unwrap();
    assert_eq!(summary.rows, Some(rows.len() as u64), "{summary:?}");
    assert_eq!(summary.version, Some(version as u64), "{summary:?}");
    let age = chrono::Utc::now() - summary.last_commit.expect("last commit time");
    assert!(age.num_seconds() >= 0 && age.num_seconds() < 600, "{summary:?}");

    // Partition folders for exactly those days.
    let blobs = rt.block_on(lab.blob(Duration::from_secs(5)).unwrap().list_blobs("lake", "machine_sensors/year=")).unwrap();
    let mut dirs: Vec<String> = blobs.iter().filter_map(|b| b.rsplit_once('/').map(|(d, _)| d.trim_start_matches("machine_sensors/").to_string())).collect();
    dirs.sort();
    dirs.dedup();
    assert_eq!(dirs, vec!["year=2026/month=1/day=1", "year=2026/month=1/day=2", "year=2026/month=1/day=3"]);

    // The same range again: replaced, not appended; one new version.
    let second = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(second["state"], "FINISHED", "{second}");
    let (lake2, meta2) = lake_per_day(&t);
    assert_eq!(lake2, lake, "a re-run must not duplicate rows");
    assert_eq!(meta2["version"].as_i64().unwrap(), version + 1, "exactly one new table version");
    assert_eq!(meta2["files"], meta["files"], "replaced files are no longer part of the table");

    // Job and config reach the cluster through the lake; a waited-for export leaves none of it.
    let blob = lab.blob(Duration::from_secs(5)).unwrap();
    let staged = rt.block_on(blob.list_blobs("lake", "_labctl/")).unwrap();
    assert!(staged.is_empty(), "staged files left behind: {staged:?}");

    // A malformed range is refused before anything is submitted.
    let bad = t.run(&["submit", "spark", "--from", "yesterday"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--from"));

    // Azurite goes away while the job runs: the job fails, the table stays as it was.
    let sub = t.json(&[&["submit", "spark", "--json", "--no-wait"][..], &range[..]].concat());
    let id = sub["submission_id"].as_str().unwrap().to_string();
    let spark = lab.spark(Duration::from_secs(5)).unwrap();
    wait_for("the driver to run", Duration::from_secs(60), || {
        let s = rt.block_on(spark.status(&id)).ok()?;
        (s.driver_state.as_deref() == Some("RUNNING")).then_some(())
    });
    // The job deletes its config (it holds the password) as soon as it has read it, long before
    // it ends.
    let staged = wait_for("the job to delete its config", Duration::from_secs(60), || {
        let names = rt.block_on(blob.list_blobs("lake", "_labctl/spark/")).ok()?;
        (!names.is_empty() && !names.iter().any(|n| n.ends_with("/config.json"))).then_some(names)
    });
    assert!(staged.iter().any(|n| n.ends_with(".py")), "{staged:?}");
    let running = rt.block_on(spark.status(&id)).unwrap();
    assert_eq!(running.driver_state.as_deref(), Some("RUNNING"), "the driver was still running then: {running:?}");
    let azurite = format!("{}-azurite-1", t.project);
    assert!(std::process::Command::new("docker").args(["stop", &azurite]).status().unwrap().success());
    let end = wait_for("the driver to end", Duration::from_secs(240), || {
        let s = rt.block_on(spark.status(&id)).ok()?;
        s.finished().then_some(s.driver_state.unwrap_or_default())
    });
    assert_ne!(end, "FINISHED", "the export cannot have succeeded without its storage");
    assert!(std::process::Command::new("docker").args(["start", &azurite]).status().unwrap().success());
    wait_for("Azurite back", Duration::from_secs(30), || rt.block_on(lab.blob(Duration::from_secs(2)).unwrap().list_containers()).ok());
    let (lake3, meta3) = lake_per_day(&t);
    assert_eq!(meta3["version"], meta2["version"], "a failed export must not commit");
    assert_eq!(lake3, lake);
    let summary3 = rt.block_on(lab.blob(Duration::from_secs(5)).unwrap().delta_summary("lake", "machine_sensors")).unwrap();
    assert_eq!(summary3.rows, Some(rows.len() as u64), "a failed export leaves the count: {summary3:?}");

    // And the re-run completes it.
    let again = t.json(&[&["submit", "spark", "--json"][..], &range[..]].concat());
    assert_eq!(again["state"], "FINISHED", "{again}");
    let (lake4, _) = lake_per_day(&t);
    assert_eq!(lake4, lake);
}
