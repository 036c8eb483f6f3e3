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
    let mut up = t
        .command(&["up"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
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
    assert!(
        n(&summary["machine_sensors_rows"]) >= n(&summary["readings_produced"]) - 100,
        "raw rows caught up when the summary was taken"
    );
    let steps: Vec<&str> =
        summary["steps"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap()).collect();
    assert_eq!(steps, ["up", "submit flink", "backfill aggregated", "submit spark", "verify"]);
    assert!(summary["urls"]["flink_ui"].as_str().unwrap().starts_with("http://127.0.0.1:"));

    // Stop the generator, let Flink catch up, then compare everything exactly.
    let ingest = format!("{}-ingest-1", t.project);
    assert!(std::process::Command::new("docker")
        .args(["stop", &ingest])
        .status()
        .unwrap()
        .success());
    let broker = lab.broker().unwrap();
    let db = rt.block_on(lab.database().unwrap().connect(Duration::from_secs(10))).unwrap();
    let offsets: i64 = rt
        .block_on(broker.offsets(&lab.config.broker.topic, Duration::from_secs(10)))
        .unwrap()
        .iter()
        .map(|p| p.high)
        .sum();
    assert!(offsets >= n(&summary["readings_produced"]));
    let count = |sql: &str| -> i64 { rt.block_on(db.query_one(sql, &[])).unwrap().get(0) };
    wait_for("Flink to write every reading in the topic", Duration::from_secs(120), || {
        (count("SELECT count(*) FROM machine_sensors") == offsets).then_some(())
    });
    assert_eq!(count("SELECT count(*) - count(DISTINCT (machine_id, sensor_type, timestamp)) FROM machine_sensors"), 0, "no duplicate readings");

    // Every closed window once, with counts that add up to the raw rows of its minute.
    let closed = "(SELECT max(window_end) FROM sensor_aggregates)";
    let windows =
        count(&format!("SELECT count(*) FROM sensor_aggregates WHERE window_end <= {closed}"));
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

    // The lake, read from its log, against the database per day: it holds every row stamped
    // before the export's bound and none the day does not have (the generator went on after
    // the export, so the newest day has more rows in the database).
    let delta = &summary["delta"];
    assert!(
        delta["days_compared"].as_u64().unwrap() >= 3,
        "two days of history span at least three UTC dates: {delta}"
    );
    assert_eq!(
        delta["days_compared"], delta["days_rewritten"],
        "a new lake: every day written: {delta}"
    );
    let as_of = delta["as_of"].as_str().expect("the export's as_of in its commit");
    let rows = rt
        .block_on(db.query(
            "SELECT to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*) FILTER (WHERE timestamp < $1::text::timestamptz - interval '60 seconds'), count(*) FROM machine_sensors GROUP BY 1 ORDER BY 1",
            &[&as_of],
        ))
        .unwrap();
    let lake_days: BTreeMap<String, i64> =
        delta["rows_per_day"].as_object().unwrap().iter().map(|(d, v)| (d.clone(), n(v))).collect();
    let db_days: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        lake_days.keys().all(|d| db_days.contains(d)),
        "days of the lake {lake_days:?} not all in the database {db_days:?}"
    );
    for r in &rows {
        let (day, due, all): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        let lake = lake_days.get(&day).copied().unwrap_or(0);
        assert!(
            due <= lake && lake <= all,
            "{day}: lake {lake} rows, database {due} due and {all} in all"
        );
    }

    // The demo's last step was `labctl verify`: every hop agreed.
    assert_eq!(summary["verify"]["ok"], true, "{:#}", summary["verify"]);
    assert_eq!(summary["verify"]["hops"].as_array().unwrap().len(), 3);

    // status agrees and matches its schema; the stopped generator is the one red line.
    let out = t.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    common::assert_status_schema(&status);
    let red: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["light"]["health"] == "red")
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(red, ["ingest"], "{status:#}");
    assert_eq!(status["broker"]["end_offsets"].as_i64(), Some(offsets));
    let lake = &status["lake"]["tables"][0];
    assert_eq!(lake["version"], delta["version"]);
    assert_eq!(lake["rows"], delta["rows"]);
    let currency = &status["lake"]["currency"];
    assert_eq!(
        (
            currency["days_differing"].as_array().map(Vec::len),
            currency["days_behind"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0)),
        "the lake is current: {currency}"
    );
    assert_eq!(currency["as_of"], delta["as_of"], "{currency}");

    // verify fails on a lab where one raw row is gone, and names where.
    let gone = rt
        .block_on(db.query_one(
            // By key, not by ctid: a ctid is a place within one chunk, and the same place in
            // another chunk of the hypertable matched too (two rows deleted).
            "DELETE FROM machine_sensors WHERE machine_id = 'CNC-1' AND sensor_type = 'pressure' AND timestamp = (SELECT timestamp FROM machine_sensors WHERE machine_id = 'CNC-1' AND sensor_type = 'pressure' ORDER BY timestamp LIMIT 1 OFFSET 100) RETURNING to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            &[],
        ))
        .unwrap()
        .get::<_, String>(0);
    let out = t.run(&["verify", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify must fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hops: Vec<(&str, bool)> = report["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        hops,
        [
            ("topic -> machine_sensors", false),
            ("machine_sensors -> sensor_aggregates", false),
            ("machine_sensors -> lake", false)
        ],
        "{report:#}"
    );
    let cell = report["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["lost"].as_u64() == Some(1))
        .expect("the cell with the lost reading");
    assert_eq!(
        (cell["machine_id"].as_str(), cell["sensor_type"].as_str(), cell["day"].as_str()),
        (Some("CNC-1"), Some("pressure"), Some(gone.as_str()))
    );
    assert_eq!(
        report["cells"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["lost"].as_u64() != Some(0))
            .count(),
        1,
        "one cell lost one reading"
    );
    assert_eq!(cell["lake_extra"].as_u64(), Some(1), "the lake still has it: {cell}");
    let status: serde_json::Value =
        serde_json::from_slice(&t.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        status["lake"]["currency"]["days_differing"],
        serde_json::json!([gone]),
        "{:#}",
        status["lake"]
    );
    let text = t.run(&["verify", "--problems-only"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "{gone} CNC-1 pressure: 1 of the topic's settled readings not in machine_sensors"
        )),
        "{text}"
    );

    // down --volumes leaves nothing of the project behind.
    t.ok(&["down", "--volumes", "--yes"]);
    for what in [["ps", "-a"], ["volume", "ls"], ["network", "ls"]] {
        let out = std::process::Command::new("docker")
            .args(what)
            .args(["--filter", &format!("label=labctl.project={}", t.project), "-q"])
            .output()
            .unwrap();
        assert!(
            out.stdout.is_empty(),
            "docker {what:?} still lists: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
