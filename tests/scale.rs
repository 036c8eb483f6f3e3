//! `labctl scale` on one real lab: TaskManagers and Spark workers 1 -> 2 (the clusters report
//! the new size), the Flink job and the Spark export submitted after scaling use it (Flink up
//! to the topic's partition count), a plain `up` keeps the scaled size, and back to 1.

mod common;

use std::{
    collections::BTreeSet,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{get_json, rt, wait_for, TestLab};
use labctl::model::config::PortKey;

#[test]
fn scale_taskmanagers_and_workers_out_and_back() {
    let started = Instant::now();
    let t = TestLab::new("scale").with_env("LABCTL_INGEST_ENABLED", "false");
    t.ok(&["up"]);
    let lab = t.lab();
    let rt = rt();
    let flink = lab.stack.url(PortKey::FlinkUi).unwrap();
    let spark = lab.stack.url(PortKey::SparkUi).unwrap();
    let slots_per_tm = lab.config.flink.slots_per_taskmanager as i64;
    let partitions = lab.config.broker.partitions as i64;

    // What cannot be scaled is refused with the names of what can.
    let bad = t.run(&["scale", "broker", "2"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("flink-taskmanager, spark-worker"), "{err}");
    let zero = t.run(&["scale", "spark-worker", "0"]);
    assert!(!zero.status.success() && String::from_utf8_lossy(&zero.stderr).contains("1 to 8"));

    // Out: the clusters themselves report the new size.
    let tm = t.json(&["scale", "flink-taskmanager", "2", "--json"]);
    assert_eq!((tm["from"].as_i64(), tm["replicas"].as_i64()), (Some(1), Some(2)), "{tm}");
    assert_eq!(tm["size"]["taskmanagers"], 2, "{tm}");
    assert_eq!(tm["size"]["slots_total"].as_i64(), Some(2 * slots_per_tm), "{tm}");
    let o = get_json(&rt, &format!("{flink}/overview")).unwrap();
    assert_eq!(
        (o["taskmanagers"].as_i64(), o["slots-total"].as_i64()),
        (Some(2), Some(2 * slots_per_tm)),
        "{o}"
    );

    let sw = t.json(&["scale", "spark-worker", "2", "--json"]);
    assert_eq!(sw["size"]["workers_alive"], 2, "{sw}");
    let m = get_json(&rt, &format!("{spark}/json/")).unwrap();
    let alive = m["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "ALIVE").count();
    assert_eq!(alive, 2, "{m}");
    let cores = m["cores"].as_i64().unwrap();
    assert_eq!(cores, 2 * lab.config.spark.worker_cores as i64, "{m}");

    // status shows the slots and cores.
    let st = t.json(&["status", "--json"]);
    common::assert_status_schema(&st);
    assert_eq!(st["flink"]["slots_total"].as_i64(), Some(2 * slots_per_tm), "{}", st["flink"]);
    assert_eq!(st["spark"]["cores"].as_i64(), Some(cores), "{}", st["spark"]);

    // The Flink job submitted now: every operator runs with parallelism = topic partitions
    // (one reader per partition), which caps it below the 6 slots.
    let sub = t.json(&["submit", "flink", "--json"]);
    let job = sub["job_id"].as_str().unwrap().to_string();
    let details = get_json(&rt, &format!("{flink}/jobs/{job}")).unwrap();
    let vertices = details["vertices"].as_array().unwrap();
    assert!(!vertices.is_empty());
    let mut tms = BTreeSet::new();
    for v in vertices {
        assert_eq!(v["parallelism"].as_i64(), Some(partitions.min(2 * slots_per_tm)), "{v}");
        let placed = get_json(
            &rt,
            &format!("{flink}/jobs/{job}/vertices/{}/taskmanagers", v["id"].as_str().unwrap()),
        )
        .unwrap();
        for t in placed["taskmanagers"].as_array().unwrap() {
            tms.insert(
                t["taskmanager-id"].as_str().or(t["host"].as_str()).unwrap_or("?").to_string(),
            );
        }
    }
    let o = get_json(&rt, &format!("{flink}/overview")).unwrap();
    eprintln!(
        "job {job}: parallelism {partitions} on {} TaskManager(s) {tms:?}; slots free {} of {}",
        tms.len(),
        o["slots-available"],
        o["slots-total"]
    );
    assert_eq!(o["slots-available"].as_i64(), Some(2 * slots_per_tm - partitions), "{o}");

    // The Spark export submitted now sizes its executors from both workers' free cores:
    // the driver takes one core, 1-core executors the rest. The master's JSON shows the
    // application holding those cores while it runs.
    rt.block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        db.batch_execute(
            "INSERT INTO machine_sensors SELECT '2026-01-01'::timestamptz + i * interval '1 second', 'CNC-1', 'CNC', 'temperature', i % 100, 'C' \
             FROM generate_series(0, 199999) i",
        )
        .await
        .unwrap();
    });
    let child = t
        .command(&["submit", "spark", "--json", "--from", "2026-01-01", "--to", "2026-01-04"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let (mut app_cores, mut cores_used) = (0, 0);
    while !waiter.is_finished() {
        if let Some(m) = get_json(&rt, &format!("{spark}/json/")) {
            for a in m["activeapps"].as_array().into_iter().flatten() {
                app_cores = app_cores.max(a["cores"].as_i64().unwrap_or(0));
            }
            cores_used = cores_used.max(m["coresused"].as_i64().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = waiter.join().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "submit spark failed");
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(export["state"], "FINISHED", "{export}");
    assert_eq!(export["result"]["rows_written"], 200_000, "{export}");
    let executors = export["sizing"]["executors"].as_i64().unwrap();
    assert_eq!(executors, cores - 1, "driver 1 core, 1-core executors on the rest: {export}");
    eprintln!("export: {} executors; the application held up to {app_cores} cores, the cluster used up to {cores_used}", executors);
    assert_eq!(app_cores, executors, "the application got one core per executor");
    assert_eq!(cores_used, cores, "driver + executors used every core of both workers");

    // A plain `up` keeps the scaled size (it is the lab's state, not the config's 1).
    let up = t.json(&["up", "--json"]);
    assert_eq!(up["containers_changed"], 0, "{up}");
    let o = get_json(&rt, &format!("{flink}/overview")).unwrap();
    assert_eq!(o["taskmanagers"], 2, "{o}");
    let m = get_json(&rt, &format!("{spark}/json/")).unwrap();
    assert_eq!(
        m["workers"].as_array().unwrap().iter().filter(|w| w["state"] == "ALIVE").count(),
        2,
        "{m}"
    );

    // Back to 1: the highest-numbered replica goes; the running job restarts on the
    // remaining slots (3 = its parallelism) and runs again.
    let tm = t.json(&["scale", "flink-taskmanager", "1", "--json"]);
    assert_eq!(tm["size"]["taskmanagers"], 1, "{tm}");
    assert_eq!(
        tm["containers_removed"],
        serde_json::json!([format!("{}-flink-taskmanager-2", t.project)]),
        "{tm}"
    );
    let o = get_json(&rt, &format!("{flink}/overview")).unwrap();
    assert_eq!(
        (o["taskmanagers"].as_i64(), o["slots-total"].as_i64()),
        (Some(1), Some(slots_per_tm)),
        "{o}"
    );
    wait_for(
        "the lab's job RUNNING with all tasks on the remaining TaskManager",
        Duration::from_secs(120),
        || {
            let d = get_json(&rt, &format!("{flink}/jobs/{job}"))?;
            let all = d["vertices"].as_array()?.iter().all(|v| v["status"] == "RUNNING");
            (d["state"] == "RUNNING" && all).then_some(())
        },
    );

    let sw = t.json(&["scale", "spark-worker", "1", "--json"]);
    assert_eq!(sw["size"]["workers_alive"], 1, "{sw}");
    let m = get_json(&rt, &format!("{spark}/json/")).unwrap();
    assert_eq!(m["cores"].as_i64(), Some(lab.config.spark.worker_cores as i64), "{m}");

    // Remembered: the state says 1 now, and `up` keeps it.
    let up = t.json(&["up", "--json"]);
    assert_eq!(up["containers_changed"], 0, "{up}");
    let names: Vec<String> = std::process::Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=labctl.project={}", t.project),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
        .unwrap();
    assert!(!names.iter().any(|n| n.ends_with("-2")), "{names:?}");
    eprintln!("scale test: {:.0} s", started.elapsed().as_secs_f64());
}
