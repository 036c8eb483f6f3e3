//! Two labs on one engine. `host` runs every service; `remote` runs none: its broker, database,
//! Flink, Spark and lake are external, pointing at `host`'s published ports for labctl and at
//! `host`'s network names for the clusters (the two views differ, as they do for real clusters).
//! Ingest and both submits go through `remote`; the data must land in `host`'s broker, tables and
//! lake, the jobs must run on `host`'s clusters, and `down` of `remote` must leave `host` alone.

mod common;

use std::time::{Duration, Instant};

use common::{rt, wait_for, TestLab};

fn get_json(rt: &tokio::runtime::Runtime, url: &str) -> serde_json::Value {
    common::get_json(rt, url).unwrap_or_else(|| panic!("no JSON from {url}"))
}

fn running_containers(project: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "--filter", &format!("name=^{project}-"), "--format", "{{.Names}}"])
        .output()
        .unwrap();
    let mut names: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn a_lab_of_external_services_drives_another_labs_clusters() {
    let started = Instant::now();
    let host = TestLab::new("exthost").with_env("LABCTL_INGEST_ENABLED", "false");
    host.ok(&["up"]);
    let h = host.lab();
    let p = h.state.ports.clone();
    let rt = rt();
    let host_containers = running_containers(&host.project);
    assert!(host_containers.len() >= 7, "{host_containers:?}");

    // remote: every part external. Its labctl reaches host's ports on 127.0.0.1; host's broker
    // advertises `broker:9092`, which only host's network resolves, hence the address map.
    let mut remote = TestLab::new("extremote")
        .with_env("LABCTL_INGEST_ENABLED", "false")
        .with_env("LABCTL_DATABASE_PASSWORD", &h.state.db_password)
        .with_env("LABCTL_LAKE_KEY", labctl::model::topology::DEV_KEY);
    let toml = format!(
        r#"[broker]
bootstrap = "127.0.0.1:{broker}"
cluster_bootstrap = "broker:9092"
address_map = {{ "broker:9092" = "127.0.0.1:{broker}" }}

[database]
url = "postgresql://lab@127.0.0.1:{db}/iiot?sslmode=require"
cluster_url = "postgresql://timescaledb:5432/iiot?sslmode=require"

[flink]
url = "http://127.0.0.1:{flink}"
state_dir = "file:///var/lib/flink/remote"

[spark]
master_url = "spark://spark-master:7077"
rest_url = "http://127.0.0.1:{rest}"
ui_url = "http://127.0.0.1:{ui}"
python = "/opt/spark-venv/bin/python"
jdbc_jar = "file:/usr/share/java/postgresql.jar"

[lake]
endpoint = "http://127.0.0.1:{lake}/devstoreaccount1"
cluster_endpoint = "http://devstoreaccount1.blob.core.windows.net"
"#,
        broker = p.broker,
        db = p.database,
        flink = p.flink_ui,
        rest = p.spark_rest,
        ui = p.spark_ui,
        lake = p.azurite
    );
    let remote_toml = remote.state_dir.path().join("labctl.toml");
    std::fs::write(&remote_toml, &toml).unwrap();

    // A missing secret is named with its variable, before anything happens.
    let mut no_key = remote.command(&["up"]);
    no_key.env_remove("LABCTL_LAKE_KEY");
    let out = no_key.output().unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("LABCTL_LAKE_KEY"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // up starts nothing and checks every external part with its probe.
    let up = remote.run(&["up", "--json"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let up_err = String::from_utf8_lossy(&up.stderr);
    assert!(up_err.contains("external"), "{up_err}");
    assert!(running_containers(&remote.project).is_empty(), "remote started containers");
    let st = remote.json(&["status", "--json"]);
    common::assert_status_schema(&st);
    let services = st["services"].as_array().unwrap();
    let names: Vec<_> = services.iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["broker", "timescaledb", "flink-jobmanager", "spark-master", "azurite"],
        "{st:#}"
    );
    for s in services {
        assert_eq!(
            (s["state"].as_str(), s["ready"].as_bool()),
            (Some("external"), Some(true)),
            "{s}"
        );
    }
    assert_eq!(st["healthy"], true);
    // remote's own database connections are encrypted (sslmode=require against host's
    // self-signed certificate), and verify-full refuses that certificate.
    let remote_lab = {
        let config =
            labctl::model::config::Config::load(Some(&remote_toml), remote.env.iter().cloned())
                .unwrap();
        let state = labctl::stack::state::State {
            db_password: String::new(),
            ports: config.ports.clone(),
            replicas: Default::default(),
            broker_password: String::new(),
            ..Default::default()
        };
        labctl::ops::lab::Lab::new(config, state)
    };
    std::env::set_var("LABCTL_DATABASE_PASSWORD", &h.state.db_password);
    let encrypted: bool = rt.block_on(async {
        let c = remote_lab.database().unwrap().connect(Duration::from_secs(5)).await.unwrap();
        c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert!(encrypted, "remote's connection is not encrypted");
    let strict =
        remote_lab.database().unwrap().with_tls(labctl::model::address::SslMode::VerifyFull, None);
    let refused = rt
        .block_on(strict.connect(Duration::from_secs(5)))
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        refused.contains("verify-full") && refused.to_lowercase().contains("certificate"),
        "{refused}"
    );

    // Nothing of remote's can be scaled or shown as logs: it does not run it.
    let scale = remote.run(&["scale", "flink-taskmanager", "2"]);
    assert!(!scale.status.success() && String::from_utf8_lossy(&scale.stderr).contains("external"));

    // The runner jar is not on the cluster: submit flink must upload it.
    let flink = format!("http://127.0.0.1:{}", p.flink_ui);
    for jar in get_json(&rt, &format!("{flink}/jars"))["files"].as_array().unwrap() {
        let id = jar["id"].as_str().unwrap();
        let del = rt
            .block_on(reqwest::Client::new().delete(format!("{flink}/jars/{id}")).send())
            .unwrap();
        assert!(del.status().is_success(), "deleting {id}: {}", del.status());
    }

    // Ingest through remote into host's broker.
    let ingest = remote.json(&["ingest", "--backfill", "2h", "--no-live", "--json"]);
    let produced = ingest["delivered"]
        .as_i64()
        .or_else(|| ingest["produced"].as_i64())
        .unwrap_or_else(|| panic!("{ingest}"));
    assert!(produced > 4000, "{ingest}");
    let offsets = rt
        .block_on(h.broker().unwrap().offsets(&h.config.broker.topic, Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        offsets.iter().map(|o| o.high).sum::<i64>(),
        produced,
        "host's topic holds what remote produced"
    );

    // submit flink through remote: the job runs on host's cluster and writes host's tables.
    let submit = remote.run(&["submit", "flink", "--json"]);
    let submit_err = String::from_utf8_lossy(&submit.stderr);
    assert!(submit.status.success(), "{submit_err}");
    // The jar is versioned by the Flink image's input hash, so an older runner is never reused.
    let runner = format!(
        "labctl-sql-runner-{}.jar",
        labctl::clients::docker::images::input_hash(&labctl::stack::FLINK_IMAGE)
    );
    assert!(submit_err.contains(&format!("uploading {runner}")), "{submit_err}");
    let jars = get_json(&rt, &format!("{flink}/jars"));
    assert!(
        jars["files"].as_array().unwrap().iter().any(|j| j["name"] == runner.as_str()),
        "{jars}"
    );
    assert!(
        !submit_err.contains("class path shows no jar"),
        "host's cluster has every connector: {submit_err}"
    );
    let job: serde_json::Value = serde_json::from_slice(&submit.stdout).unwrap();
    let job_id = job["job_id"].as_str().unwrap();
    let on_host = get_json(&rt, &format!("{flink}/jobs/{job_id}"));
    assert_eq!(on_host["state"], "RUNNING", "{on_host}");
    assert!(on_host["name"].as_str().unwrap().contains(&remote.project), "{on_host}");
    let db = h.database().unwrap();
    let query = |sql: &str| -> i64 {
        rt.block_on(async {
            let c = db.connect(Duration::from_secs(5)).await.ok()?;
            c.query_one(sql, &[]).await.ok().map(|r| r.get::<_, Option<i64>>(0).unwrap_or(0))
        })
        .unwrap_or(-1)
    };
    let count = |table: &str| query(&format!("SELECT count(*) FROM {table}"));
    let t_rows = Instant::now();
    wait_for("every reading in host's machine_sensors", Duration::from_secs(300), || {
        (count("machine_sensors") == produced).then_some(())
    });
    // The job's JDBC sinks took cluster_url's sslmode: their connections are encrypted.
    let jdbc_tls = query("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'PostgreSQL JDBC Driver' AND s.ssl");
    let jdbc_plain = query("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'PostgreSQL JDBC Driver' AND NOT s.ssl");
    assert!(
        jdbc_tls > 0 && jdbc_plain == 0,
        "JDBC connections: {jdbc_tls} encrypted, {jdbc_plain} plain"
    );
    eprintln!("MEASURE | external | {produced} readings through remote's job into host's table {:.1} s after RUNNING", t_rows.elapsed().as_secs_f64());
    // Every closed window counts exactly the readings it covers.
    wait_for(
        "host's windows to cover the readings before the newest window's end",
        Duration::from_secs(120),
        || {
            let counted = query("SELECT sum(reading_count)::bigint FROM sensor_aggregates");
            let covered = query("SELECT count(*) FROM machine_sensors WHERE timestamp < (SELECT max(window_end) FROM sensor_aggregates)");
            (counted > 0 && counted == covered && covered > produced * 9 / 10).then_some(())
        },
    );

    // The job keeps its checkpoints where remote's config says, on host's cluster; after a
    // cancel, the next submit finds the newest one through Flink's REST API (labctl cannot look
    // into an external cluster's disks) and restores from it, without uploading the jar again.
    let checkpoint =
        wait_for("a completed checkpoint under flink.state_dir", Duration::from_secs(90), || {
            let cp = get_json(&rt, &format!("{flink}/jobs/{job_id}/checkpoints"));
            cp["latest"]["completed"]["external_path"]
                .as_str()
                .filter(|p| {
                    p.contains(&format!(
                        "/var/lib/flink/remote/checkpoints/{}-sensor-aggregation/",
                        remote.project
                    ))
                })
                .map(str::to_string)
        });
    remote.ok(&["flink", "cancel"]);
    wait_for("the job to be cancelled", Duration::from_secs(60), || {
        (get_json(&rt, &format!("{flink}/jobs/{job_id}"))["state"] == "CANCELED").then_some(())
    });
    let again = remote.run(&["submit", "flink", "--json"]);
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{again_err}");
    assert!(!again_err.contains("uploading"), "{again_err}");
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let restored = again["restored_from"]["path"].as_str().unwrap_or_else(|| panic!("{again}"));
    assert!(
        restored.contains(&format!(
            "/var/lib/flink/remote/checkpoints/{}-sensor-aggregation/",
            remote.project
        )),
        "{again}"
    );
    eprintln!("MEASURE | external | restored from {restored} (newest completed when cancelled: {checkpoint})");
    let job_id = again["job_id"].as_str().unwrap().to_string();
    let job_id = job_id.as_str();

    // submit spark through remote: no shared disk, no container of remote's; the Delta table
    // lands in host's Azurite.
    let today = chrono::Utc::now().date_naive();
    let (from, to) =
        ((today - chrono::Days::new(1)).to_string(), (today + chrono::Days::new(1)).to_string());
    let export = remote.json(&["submit", "spark", "--from", &from, "--to", &to, "--json"]);
    assert_eq!(export["state"], "FINISHED", "{export}");
    assert_eq!(export["result"]["rows_written"].as_i64(), Some(produced), "{export}");
    let blob = h.blob(Duration::from_secs(10)).unwrap();
    let summary =
        rt.block_on(blob.delta_summary(&h.config.lake.container, "machine_sensors")).unwrap();
    assert_eq!(summary.rows, Some(produced as u64), "{summary:?}");
    let drivers = get_json(&rt, &format!("http://127.0.0.1:{}/json/", p.spark_ui));
    let driver = export["submission_id"].as_str().unwrap();
    assert!(
        drivers["completeddrivers"].as_array().unwrap().iter().any(|d| d["id"] == driver),
        "the export ran on host's master: {drivers}"
    );

    // With the generator on, remote's `up` starts just that, on the host's network with
    // labctl's view of the broker (bootstrap and address map), and it feeds host's topic.
    remote.set_env("LABCTL_INGEST_ENABLED", "true");
    remote.set_env("LABCTL_INGEST_BACKFILL", "2h");
    let topic_end = || {
        rt.block_on(h.broker().unwrap().offsets(&h.config.broker.topic, Duration::from_secs(10)))
            .unwrap()
            .iter()
            .map(|o| o.high)
            .sum::<i64>()
    };
    let up = remote.json(&["up", "--json"]);
    assert_eq!(up["containers_changed"], 1, "{up}");
    let ingest = format!("{}-ingest-1", remote.project);
    assert_eq!(running_containers(&remote.project), std::slice::from_ref(&ingest));
    let mode = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.NetworkMode}}", &ingest])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "host");
    wait_for("remote's generator to produce into host's topic", Duration::from_secs(90), || {
        (topic_end() > produced).then_some(())
    });

    // down of remote: its generator goes; host keeps every container, its job, its rows and its lake.
    remote.ok(&["down", "--volumes", "--yes"]);
    assert!(running_containers(&remote.project).is_empty());
    assert_eq!(running_containers(&host.project), host_containers);
    assert_eq!(get_json(&rt, &format!("{flink}/jobs/{job_id}"))["state"], "RUNNING");
    assert!(count("machine_sensors") >= produced);
    let after =
        rt.block_on(blob.delta_summary(&h.config.lake.container, "machine_sensors")).unwrap();
    assert_eq!(after.version, summary.version);
    assert!(remote.run(&["status"]).status.code() != Some(0), "remote has no state any more");
    eprintln!("MEASURE | external | whole test {:.1} s", started.elapsed().as_secs_f64());
}
