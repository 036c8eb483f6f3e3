//! `labctl console` against a real lab, seen through a real browser: Debian's chromium, headless,
//! driven by `tests/browser/console.mjs` (playwright-core). The lab is fed and exported through
//! labctl, one message is produced by the test itself, and what the page shows is compared with
//! `status --json` and with that message. Screenshots land in `target/console-screenshots/`.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use common::{lab_jobs, rt, wait_for, TestLab};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The console child, killed when the test ends however it ends.
struct Console(Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(t: &TestLab) -> serde_json::Value {
    // Exit code 3 (not every service ready: this lab runs no generator) still prints the report.
    let out = t.command(&["status", "--json"]).output().expect("labctl status");
    serde_json::from_slice(&out.stdout).expect("status --json")
}

fn table_rows(s: &serde_json::Value, table: &str) -> Option<i64> {
    s["database"]["tables"].as_array()?.iter().find(|t| t["table"] == table)?["rows"].as_i64()
}

/// Runs tests/browser/console.mjs with `args`; what it saw.
fn browse(args: &serde_json::Value) -> serde_json::Value {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let out = std::process::Command::new("node")
        .arg("console.mjs")
        .arg(args.to_string())
        .current_dir(&browser_dir)
        .output()
        .expect("node (the README's test command installs it with the browser)");
    assert!(
        out.status.success(),
        "the browser script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    eprintln!("browser saw: {seen:#}");
    seen
}

#[test]
fn the_console_shows_the_lab_in_a_browser() {
    let t = TestLab::new("console").with_env("LABCTL_INGEST_ENABLED", "false");
    t.ok(&["up"]);
    t.ok(&["submit", "flink"]);
    t.ok(&["ingest", "--backfill", "2h", "--no-live"]);
    let lab = t.lab();
    let rt = rt();

    // --- one message of the test's own, which the job must reject (not a reading) -------------
    let nonce: u32 = rand::random();
    let key = format!("console-probe-{nonce}");
    let value = serde_json::json!({ "probe": "labctl console test", "n": nonce, "text": "<b>not markup</b>" });
    let (partition, offset) = rt.block_on(async {
        let producer: FutureProducer = lab.broker().unwrap().client_config().create().unwrap();
        let payload = value.to_string();
        let record = FutureRecord::to(&lab.config.broker.topic).key(&key).payload(&payload);
        let d = producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        (d.partition, d.offset)
    });
    let total = common::topic_total(&rt, &lab).unwrap();
    wait_for("every message stored or rejected", Duration::from_secs(120), || {
        let s = status(&t);
        let rejected = s["database"]["rejected"]["count"].as_i64()?;
        (table_rows(&s, "machine_sensors")? == total - 1 && rejected == 1).then_some(())
    });
    // --- the console, with actions and their token ---------------------------------------------
    let mut child = t
        .command(&["console", "--port", "0", "--allow-actions"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("labctl console");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let _console = Console(child);
    let (url, token) = first
        .trim()
        .strip_prefix("labctl console: ")
        .and_then(|u| u.split_once("#token="))
        .unwrap_or_else(|| panic!("no link with a token in {first:?}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    // --- requests that must be refused, from outside a browser --------------------------------
    rt.block_on(async {
        let http = reqwest::Client::new();
        let action = format!("{url}api/actions/cancel-flink");
        let origin = url.trim_end_matches('/');
        let no_origin = http.post(&action).header("x-labctl-token", token).send().await.unwrap();
        assert_eq!(no_origin.status(), 403, "a POST without an Origin");
        let foreign = http
            .post(&action)
            .header("origin", "http://evil.example")
            .header("x-labctl-token", token)
            .send()
            .await
            .unwrap();
        assert_eq!(foreign.status(), 403, "a POST from another origin");
        let wrong = http
            .post(&action)
            .header("origin", origin)
            .header("x-labctl-token", "0000")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 403, "a wrong token");
        let rebound =
            http.get(format!("{url}api/meta")).header("host", "evil.example").send().await.unwrap();
        assert_eq!(rebound.status(), 421, "a request naming another host");
        let meta: serde_json::Value =
            http.get(format!("{url}api/meta")).send().await.unwrap().json().await.unwrap();
        assert_eq!(meta["project"], t.project.as_str());
        assert_eq!(meta["read_only"], false);
    });

    // --- the browser ---------------------------------------------------------------------------
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    // The export, run from the jobs page's button with the page's token: a successful action.
    let seen = browse(
        &serde_json::json!({ "phase": "export", "url": url, "token": token, "shots": shots }),
    );
    assert_eq!(seen["page_errors"], serde_json::json!([]), "no script error in the page");
    let output = seen["action_output"].as_str().unwrap();
    assert!(output.starts_with("$ labctl ") && output.contains("submit spark"), "{output}");
    assert!(output.contains("(exit 0,"), "the export from the page failed: {output}");
    let s = status(&t);
    let lake = s["lake"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["table"] == "machine_sensors")
        .cloned()
        .unwrap_or_else(|| panic!("no Delta table after the page's export: {:#}", s["lake"]));
    let lake_rows = lake["rows"].as_i64();
    // The export leaves out the newest seconds (still in flight), so not every row need be there.
    assert!(lake_rows.unwrap_or(0) > 0, "{:#}", s["lake"]);
    // The drivers table: that export's own figures, equal to what the lake's log says (the
    // first export writes every row the lake holds and makes version 0).
    let driver = &seen["drivers"][0];
    assert_eq!(driver["cells"][1], "FINISHED", "{driver:#}");
    assert_eq!(driver["id"], s["spark"]["drivers"][0]["id"], "{driver:#}");
    assert_eq!(driver["rows"].as_i64(), lake_rows, "{driver:#}");
    assert_eq!(driver["version"].as_u64(), lake["version"].as_u64(), "{driver:#}");

    // The console's own benchmark runs and reports every endpoint against `status` (its figures
    // are the benchmark's business, not this test's: a shared CI machine times nothing).
    let bench_json = std::env::temp_dir().join(format!("{}-bench-console.json", t.project));
    t.ok(&[
        "bench",
        "console",
        "--runs",
        "3",
        "--cpu-secs",
        "2",
        "--json-out",
        bench_json.to_str().unwrap(),
    ]);
    let bench: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bench_json).unwrap()).unwrap();
    std::fs::remove_file(&bench_json).ok();
    let rows = bench["measurements"].as_array().unwrap();
    let endpoints: Vec<_> =
        rows.iter().filter(|r| r["name"].as_str().unwrap().starts_with("/api/")).collect();
    assert_eq!(endpoints.len(), 8, "{bench:#}");
    for r in &endpoints {
        assert_eq!(r["baseline"], "status report in process", "{r:#}");
        assert!(r["value"].as_f64().unwrap() > 0.0 && r["ratio"].as_f64().unwrap() > 0.0, "{r:#}");
    }
    let unit = |name: &str| {
        rows.iter()
            .find(|r| r["name"].as_str().unwrap().starts_with(name))
            .map(|r| r["unit"].clone())
    };
    assert_eq!(unit("CPU idle"), Some("% core".into()), "{bench:#}");
    assert_eq!(unit("memory resident"), Some("MiB".into()), "{bench:#}");
    let azurite = format!("{}-azurite-1", t.project);
    let args = serde_json::json!({
        "url": url, "token": token, "shots": shots,
        "topic_message": { "partition": partition, "offset": offset },
        "bad_partition": 99, "bad_offset": 999_999_999,
        "log_container": azurite,
        "kill": ["docker", "kill", azurite],
    });
    let before = status(&t);
    let seen = browse(&args);

    assert_eq!(seen["page_errors"], serde_json::json!([]), "no script error in the page");
    assert_eq!(seen["token_left_address_bar"], true);

    // The pipeline page's counts are `status --json`'s (nothing moves: no generator runs).
    let hop = |id: &str| {
        seen["hops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .unwrap_or_else(|| panic!("no hop {id}"))
            .clone()
    };
    let ids: Vec<_> =
        seen["hops"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["generator", "topic", "flink", "raw", "windows", "export", "lake"]);
    assert_eq!(hop("topic")["count"].as_i64(), before["broker"]["end_offsets"].as_i64());
    assert_eq!(hop("topic")["count"].as_i64(), Some(total));
    assert_eq!(hop("raw")["count"].as_i64(), table_rows(&before, "machine_sensors"));
    assert_eq!(hop("windows")["count"].as_i64(), table_rows(&before, "sensor_aggregates"));
    assert_eq!(hop("lake")["count"].as_i64(), lake_rows);
    // Each hop has its status section's light (the database's is yellow: the test's message
    // was rejected, and status says so).
    for (id, section) in [
        ("topic", "broker"),
        ("flink", "flink"),
        ("raw", "database"),
        ("windows", "database"),
        ("lake", "lake"),
    ] {
        assert_eq!(hop(id)["health"], before[section]["light"]["health"], "{:#}", hop(id));
    }
    assert_eq!(hop("lake")["health"], "green");
    assert_eq!(hop("raw")["health"], "yellow", "the rejected message shows");

    // The topic browser shows the test's message exactly, as text.
    assert_eq!(seen["message"]["key"], key.as_str());
    let shown: serde_json::Value =
        serde_json::from_str(seen["message"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(shown, value);
    assert!(seen["message"]["head"].as_str().unwrap().contains(&format!("offset {offset}")));
    // Every partition with its rate, known after two refreshes (no generator runs: 0.0/s, but a
    // rate, not a dash).
    let partition_rows = seen["partition_rows"].as_array().unwrap();
    assert_eq!(partition_rows.len(), before["broker"]["partitions"].as_array().unwrap().len());
    let rate = regex::Regex::new(r"^\d+\.\d/s$").unwrap();
    for row in partition_rows {
        assert!(rate.is_match(row[4].as_str().unwrap()), "a partition without its rate: {row}");
    }
    assert!(
        seen["bad_partition"].as_str().unwrap().contains("no partition 99"),
        "{}",
        seen["bad_partition"]
    );
    assert!(
        seen["bad_offset"].as_str().unwrap().contains("outside partition"),
        "{}",
        seen["bad_offset"]
    );

    // Jobs: the job's facts, the rejected message, the export; the action without a token refused
    // and the job still running.
    assert_eq!(seen["job"]["state"], "RUNNING");
    let rejects = seen["rejects"].as_array().unwrap();
    assert!(
        rejects
            .iter()
            .any(|r| r[1] == partition.to_string().as_str() && r[2] == offset.to_string().as_str()),
        "{rejects:?}"
    );
    assert!(
        seen["drivers"].as_array().unwrap().iter().any(|d| d[1] == "FINISHED"),
        "{}",
        seen["drivers"]
    );
    assert_eq!(seen["no_token"]["status"], 403);
    let jobs = lab_jobs(&t).unwrap();
    assert!(
        jobs.iter().any(|(_, s)| s == "RUNNING"),
        "the refused cancel changed nothing: {jobs:?}"
    );

    // Data: the chart's hover and the lake's days, summing to the lake's rows.
    let tip = seen["tip"].as_str().unwrap();
    assert!(tip.contains("avg") && tip.contains("count "), "{tip}");
    let day_sum: i64 = seen["lake_days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[1].as_str().unwrap().replace(',', "").parse::<i64>().unwrap())
        .sum();
    assert_eq!(Some(day_sum), lake_rows);

    // Services: every container of the lab, with a log tail.
    let names: Vec<_> = seen["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    for svc in [
        "broker",
        "timescaledb",
        "flink-jobmanager",
        "flink-taskmanager",
        "spark-master",
        "spark-worker",
        "azurite",
    ] {
        assert!(names.contains(&format!("{}-{svc}-1", t.project)), "{svc} missing: {names:?}");
    }
    assert!(seen["log_chars"].as_u64().unwrap() > 0);

    // Azurite SIGKILLed: the lake hop turns red within 5 s, saying why.
    assert_ne!(seen["lake_before"], "red");
    let ms = seen["lake_red_after_ms"].as_u64().unwrap();
    eprintln!("lake hop red {ms} ms after Azurite was killed");
    assert!(ms <= 5_000, "lake hop red only after {ms} ms");
    assert!(
        seen["lake_reason"].as_str().unwrap().contains("did not answer"),
        "{}",
        seen["lake_reason"]
    );

    for png in
        ["jobs-export", "pipeline", "topic", "jobs", "data", "services", "pipeline-azurite-killed"]
    {
        let p = shots.join(format!("{png}.png"));
        assert!(
            std::fs::metadata(&p).map(|m| m.len() > 10_000).unwrap_or(false),
            "{}",
            p.display()
        );
    }

    // `--open` hands the page's address to the desktop's opener (a stand-in on PATH records
    // it); without --allow-actions the console is read-only and says how to allow actions.
    let bin = tempdir_named(&format!("{}-opener", t.project));
    let opened = bin.join("opened");
    let opener = bin.join("xdg-open");
    std::fs::write(&opener, format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", opened.display()))
        .unwrap();
    std::fs::set_permissions(&opener, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = t
        .command(&["console", "--port", "0", "--open"])
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("labctl console --open");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let _read_only = Console(child);
    let url = first.trim().strip_prefix("labctl console: ").unwrap().to_string();
    assert!(!url.contains("token"), "a read-only console prints no token: {first}");
    let got = wait_for("the opener called", Duration::from_secs(10), || {
        std::fs::read_to_string(&opened).ok().filter(|s| !s.is_empty())
    });
    assert_eq!(got, url);
    rt.block_on(async {
        let http = reqwest::Client::new();
        let meta: serde_json::Value =
            http.get(format!("{url}api/meta")).send().await.unwrap().json().await.unwrap();
        assert_eq!(meta["read_only"], true);
        let res = http
            .post(format!("{url}api/actions/export"))
            .header("origin", url.trim_end_matches('/'))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("--allow-actions"), "{body}");
    });
    std::fs::remove_dir_all(&bin).ok();
}

fn tempdir_named(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}
