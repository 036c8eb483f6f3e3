//! `labctl demo` on a fresh project (after a crash of labctl mid-`up`): the whole pipeline in
//! one command, its summary checked against the services themselves, then `down --volumes`
//! leaves nothing.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{rt, wait_for, TestLab};

#[test]
fn demo_runs_the_whole_pipeline_and_its_summary_is_true() {
    // Two days of history keep the test short; the path is the same as for the default week.
    let t = TestLab::new("demo").with_env("LABCTL_INGEST_BACKFILL", "2d");
    // labctl itself crashes mid-`up` (SIGKILL: no cleanup runs); the demo must find the
    // half-started lab and repair it.
    let mut up = t.command(&["up"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(12));
    up.kill().unwrap();
    up.wait().unwrap();
    let summary = t.json(&["demo", "--json"]);
    eprintln!("{summary:#}");
    let lab = t.lab();
    let rt = rt();
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or_else(|| panic!("not a number: {v}"));

    // Backfill of 2 days: 3 sensors x machines x 34,560 ticks, all of it aggregated.
    assert!(n(&summary["readings_produced"]) >= 2 * 17_280 * 3, "{summary:#}");
    assert!(n(&summary["machine_sensors_rows"]) >= n(&summary["readings_produced"]) - 100, "raw rows caught up when the summary was taken");
    let steps: Vec<&str> = summary["steps"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap()).collect();
    assert_eq!(steps, ["up", "submit flink", "backfill aggregated", "submit spark"]);
    assert!(summary["urls"]["flink_ui"].as_str().unwrap().starts_with("http://127.0.0.1:"));

    // Stop the generator, let Flink catch up, then compare everything exactly.
    let ingest = format!("{}-ingest-1", t.project);
    assert!(std::process::Command::new("docker").args(["stop", &ingest]).status().unwrap().success());
    let broker = lab.broker().unwrap();
    let db = rt.block_on(lab.database().unwrap().connect(Duration::from_secs(10))).unwrap();
    let offsets: i64 = rt.block_on(broker.offsets(&lab.config.broker.topic, Duration::from_secs(10))).unwrap().iter().map(|p| p.high).sum();
    assert!(offsets >= n(&summary["readings_produced"]));
    let count = |sql: &str| -> i64 { rt.block_on(db.query_one(sql, &[])).unwrap().get(0) };
    wait_for("Flink to write every reading in the topic", Duration::from_secs(120), || (count("SELECT count(*) FROM machine_sensors") == offsets).then_some(()));
    assert_eq!(count("SELECT count(*) - count(DISTINCT (machine_id, sensor_type, timestamp)) FROM machine_sensors"), 0, "no duplicate readings");

    // Every closed window once, with counts that add up to the raw rows of its minute.
    let closed = "(SELECT max(window_end) FROM sensor_aggregates)";
    let windows = count(&format!("SELECT count(*) FROM sensor_aggregates WHERE window_end <= {closed}"));
    let expected_windows = count(&format!(
        "SELECT count(DISTINCT (machine_id, sensor_type, date_trunc('minute', timestamp))) FROM machine_sensors WHERE timestamp < {closed}"
    ));
    assert_eq!(windows, expected_windows, "one window per machine, sensor and closed minute");
    assert_eq!(
        count(&format!("SELECT coalesce(sum(reading_count), 0)::bigint FROM sensor_aggregates WHERE window_end <= {closed}")),
        count(&format!("SELECT count(*) FROM machine_sensors WHERE timestamp < {closed}")),
        "window counts add up to the raw rows"
    );
    let mismatched = count(&format!(
        "SELECT count(*) FROM sensor_aggregates a JOIN (SELECT machine_id, sensor_type, date_trunc('minute', timestamp) AS w, count(*) AS n FROM machine_sensors \
         WHERE timestamp < {closed} GROUP BY 1, 2, 3) r ON r.machine_id = a.machine_id AND r.sensor_type = a.sensor_type AND r.w = a.window_start WHERE r.n <> a.reading_count"
    ));
    assert_eq!(mismatched, 0, "each window's count equals its minute's raw rows");

    // The lake: rows per day equal the database's for the exported range.
    let delta = &summary["delta"];
    let (from, to) = (delta["exported_from"].as_str(), delta["exported_to"].as_str().expect("exported_to"));
    let lower = from.map(|f| format!("AND timestamp >= '{f}'::timestamptz")).unwrap_or_default();
    let rows = rt
        .block_on(db.query(
            &format!("SELECT to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*) FROM machine_sensors WHERE timestamp < '{to}'::timestamptz {lower} GROUP BY 1 ORDER BY 1"),
            &[],
        ))
        .unwrap();
    let db_days: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let lake_days: BTreeMap<String, i64> = delta["rows_per_day"].as_object().unwrap().iter().map(|(d, v)| (d.clone(), n(v))).collect();
    assert_eq!(lake_days, db_days, "Delta rows per day = the database's");
    assert_eq!(delta["rows"].as_i64(), Some(db_days.values().sum::<i64>()));
    assert!(db_days.len() >= 3, "two days of history span at least three UTC dates: {db_days:?}");

    // status agrees and matches its schema; the stopped generator is the one red line.
    let out = t.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    common::assert_status_schema(&status);
    let red: Vec<&str> = status["services"].as_array().unwrap().iter().filter(|s| s["light"]["health"] == "red").map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(red, ["ingest"], "{status:#}");
    assert_eq!(status["broker"]["end_offsets"].as_i64(), Some(offsets));
    let lake = &status["lake"]["tables"][0];
    assert_eq!(lake["version"], delta["version"]);
    assert_eq!(lake["rows"], delta["rows"]);

    // down --volumes leaves nothing of the project behind.
    t.ok(&["down", "--volumes", "--yes"]);
    for what in [["ps", "-a"], ["volume", "ls"], ["network", "ls"]] {
        let out = std::process::Command::new("docker").args(what).args(["--filter", &format!("label=labctl.project={}", t.project), "-q"]).output().unwrap();
        assert!(out.stdout.is_empty(), "docker {what:?} still lists: {}", String::from_utf8_lossy(&out.stdout));
    }
}
