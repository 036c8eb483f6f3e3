//! The lab on a real Docker engine, checked through each service's own protocol. One lab for
//! the whole binary (JVM clusters are slow to start), phases in order; it is removed at the end.

mod common;

use std::{collections::HashMap, time::Duration};

use bollard::container::ListContainersOptions;
use common::{rt, wait_for, TestLab};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{BaseProducer, BaseRecord, Producer},
    Message, Offset, TopicPartitionList,
};

#[test]
fn lab_on_a_real_engine() {
    // The generator service is checked in its own phase below, so start without it.
    let mut t = TestLab::new("lab").with_env("LABCTL_INGEST_ENABLED", "false");
    let up = t.json(&["up", "--json"]);
    assert!(up["containers_changed"].as_u64().unwrap() >= 7, "{up}");

    let lab = t.lab();
    let rt = rt();

    // --- status: every service ready, JSON for scripts ---------------------------------------
    let status = t.json(&["status", "--json"]);
    assert_eq!(status["healthy"], true, "{status:#}");
    let names: Vec<_> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "broker",
        "timescaledb",
        "azurite",
        "flink-jobmanager",
        "flink-taskmanager",
        "spark-master",
        "spark-worker",
    ] {
        assert!(names.iter().any(|n| n == want), "status lacks {want}: {names:?}");
    }
    assert!(status.get("secrets").is_none(), "secrets only with --show-secrets");
    let secret = t.json(&["status", "--json", "--show-secrets"]);
    assert_eq!(secret["secrets"]["db_password"].as_str().unwrap(), lab.state.db_password);
    common::assert_status_schema(&status);
    common::assert_status_schema(&secret);

    // --- status: a hung service is reported down within the check timeout ---------------------
    // A paused container accepts connections but never answers: only the timeout ends the call.
    let azurite = format!("{}-azurite-1", t.project);
    assert!(std::process::Command::new("docker")
        .args(["pause", &azurite])
        .status()
        .unwrap()
        .success());
    let started = std::time::Instant::now();
    let out = t.run(&["status", "--json", "--timeout", "1"]);
    let took = started.elapsed();
    assert!(std::process::Command::new("docker")
        .args(["unpause", &azurite])
        .status()
        .unwrap()
        .success());
    assert_eq!(out.status.code(), Some(3), "a service down means exit code 3");
    let down: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    common::assert_status_schema(&down);
    let svc =
        down["services"].as_array().unwrap().iter().find(|s| s["service"] == "azurite").unwrap();
    assert_eq!(svc["light"]["health"], "red", "{svc:#}");
    assert_eq!(down["lake"]["light"]["health"], "red", "{:#}", down["lake"]);
    assert_eq!(down["health"], "red");
    assert_eq!(
        down["database"]["light"]["health"], "green",
        "other services are unaffected: {:#}",
        down["database"]
    );
    // 1 s per check (the service checks get twice that), plus the process's own start.
    assert!(took < Duration::from_millis(3500), "status took {took:?} with a 1 s timeout");

    // --- broker: produce and consume one message through the published port ------------------
    let broker = lab.broker().unwrap();
    let probe_topic = lab.config.broker.topic.clone();
    let producer: BaseProducer = broker.client_config().create().unwrap();
    let marker = format!("probe-{}", t.project);
    producer.send(BaseRecord::to(&probe_topic).key("probe").payload(&marker)).unwrap();
    producer.flush(Duration::from_secs(20)).unwrap();
    let consumer: BaseConsumer =
        broker.client_config().set("group.id", "lab-test").create().unwrap();
    let md = consumer.fetch_metadata(Some(&probe_topic), Duration::from_secs(10)).unwrap();
    let parts = md.topics()[0].partitions().len();
    assert_eq!(
        parts as i32, lab.config.broker.partitions,
        "topic created with the configured partitions"
    );
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(&probe_topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let got = wait_for("the probe message back", Duration::from_secs(30), || {
        consumer
            .poll(Duration::from_millis(500))
            .and_then(|m| m.ok())
            .and_then(|m| m.payload().map(|p| p.to_vec()))
    });
    assert_eq!(String::from_utf8(got).unwrap(), marker);

    // --- database: both hypertables take rows and give them back ----------------------------
    rt.block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        let hts: Vec<String> = db
            .query("SELECT hypertable_name::text FROM timescaledb_information.hypertables ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(hts, vec!["machine_sensors", "sensor_aggregates"]);
        db.execute(
            "INSERT INTO machine_sensors VALUES ('2026-01-01T00:00:00Z','CNC-1','CNC','temperature',70.5,'C')",
            &[],
        )
        .await
        .unwrap();
        db.execute(
            "INSERT INTO sensor_aggregates VALUES ('2026-01-01T00:00:00Z','2026-01-01T00:01:00Z','CNC-1','temperature',70.5,70.0,71.0,12)",
            &[],
        )
        .await
        .unwrap();
        let v: f64 = db.query_one("SELECT value FROM machine_sensors WHERE machine_id='CNC-1'", &[]).await.unwrap().get(0);
        assert_eq!(v, 70.5);
        let n: i64 = db.query_one("SELECT reading_count FROM sensor_aggregates", &[]).await.unwrap().get(0);
        assert_eq!(n, 12);
        // A wrong password is refused.
        let mut bad = tokio_postgres::Config::new();
        bad.host("127.0.0.1").port(lab.state.ports.database).user(&lab.config.database.user).dbname(&lab.config.database.name).password("wrong");
        assert!(bad.connect(tokio_postgres::NoTls).await.is_err(), "a wrong password must be refused");
    });

    // --- database roles: the clusters' passwords are not the owner's -------------------------
    rt.block_on(async {
        use labctl::model::topology::DbRole;
        let owner = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        let writer = lab.database_as(DbRole::Writer).unwrap();
        let reader = lab.database_as(DbRole::Reader).unwrap();
        assert_ne!(writer.user, lab.config.database.user);
        assert_ne!(reader.user, writer.user);
        for role in [&writer.user, &reader.user] {
            let row = owner
                .query_one(
                    "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = $1",
                    &[role],
                )
                .await
                .unwrap();
            let flags: [bool; 4] = [row.get(0), row.get(1), row.get(2), row.get(3)];
            assert_eq!(flags, [false; 4], "{role}: superuser, createrole, createdb, bypassrls");
        }
        let w = writer.connect(Duration::from_secs(10)).await.unwrap();
        // What the Flink job's sinks do: an upsert into each of the lab's tables.
        w.execute(
            "INSERT INTO machine_sensors VALUES ('2026-01-01T00:00:00Z','CNC-1','CNC','temperature',70.7,'C') \
             ON CONFLICT (machine_id, sensor_type, \"timestamp\") DO UPDATE SET value = EXCLUDED.value",
            &[],
        )
        .await
        .unwrap();
        let v: f64 = owner
            .query_one("SELECT value FROM machine_sensors WHERE machine_id='CNC-1'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, 70.7, "the writer's upsert landed");
        // A reading of a time no chunk covers yet: TimescaleDB creates the chunk for the writer.
        w.execute(
            "INSERT INTO machine_sensors VALUES ('2031-06-01T00:00:00Z','CNC-1','CNC','temperature',1.0,'C')",
            &[],
        )
        .await
        .unwrap();
        // What it may not: a shell through COPY ... PROGRAM, reading files, DDL, deleting rows.
        for sql in [
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "SELECT pg_read_file('/etc/passwd')",
            "CREATE TABLE intruder (x int)",
            "DELETE FROM machine_sensors",
            "TRUNCATE sensor_aggregates",
            "DROP TABLE rejected_readings",
            "CREATE ROLE intruder SUPERUSER",
        ] {
            let e = w.batch_execute(sql).await.expect_err(sql);
            let code = e.code().map(|c| c.code().to_string());
            assert_eq!(code.as_deref(), Some("42501"), "{sql}: not refused for privilege: {e}");
        }
        let r = reader.connect(Duration::from_secs(10)).await.unwrap();
        let n: i64 = r.query_one("SELECT count(*) FROM machine_sensors", &[]).await.unwrap().get(0);
        assert_eq!(n, 2, "the reader sees the lab's rows, in every chunk");
        for sql in [
            "INSERT INTO sensor_aggregates VALUES ('2026-01-02T00:00:00Z','2026-01-02T00:01:00Z','CNC-1','temperature',1,1,1,1)",
            "UPDATE machine_sensors SET value = 0",
            "COPY (SELECT 1) TO PROGRAM 'id'",
        ] {
            let e = r.batch_execute(sql).await.expect_err(sql);
            assert_eq!(e.code().map(|c| c.code().to_string()).as_deref(), Some("42501"), "{sql}: {e}");
        }
        owner.execute("DELETE FROM machine_sensors WHERE \"timestamp\" >= '2031-01-01'", &[]).await.unwrap();
    });

    // --- Flink, Spark, Azurite over their REST APIs -----------------------------------------
    rt.block_on(async {
        let flink = lab.flink(Duration::from_secs(5)).unwrap();
        let o = flink.overview().await.unwrap();
        assert_eq!(o.taskmanagers, lab.config.flink.taskmanagers);
        assert_eq!(
            o.slots_total,
            lab.config.flink.taskmanagers * lab.config.flink.slots_per_taskmanager
        );
        assert!(o.flink_version.starts_with("2.2"), "{}", o.flink_version);
        assert_eq!(flink.taskmanagers().await.unwrap().len() as u32, lab.config.flink.taskmanagers);

        let spark = lab.spark(Duration::from_secs(5)).unwrap();
        let m = spark.master().await.unwrap();
        assert_eq!(m.status, "ALIVE");
        assert_eq!(
            labctl::clients::spark::Client::alive_workers(&m),
            lab.config.spark.workers as usize
        );

        let blob = lab.blob(Duration::from_secs(5)).unwrap();
        assert!(blob.create_container("probe-container").await.unwrap());
        let listed = blob.list_containers().await.unwrap();
        assert!(
            listed.contains(&"probe-container".to_string())
                && listed.contains(&lab.config.lake.container),
            "{listed:?}"
        );
    });

    // --- security: ports on 127.0.0.1 only, no password in the engine's view ------------------
    rt.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let filters =
            HashMap::from([("label".to_string(), vec![format!("labctl.project={}", t.project)])]);
        let cs = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .unwrap();
        for c in &cs {
            for p in c.ports.iter().flatten() {
                if p.public_port.is_some() {
                    assert_eq!(p.ip.as_deref(), Some("127.0.0.1"), "{:?} publishes {p:?}", c.names);
                }
            }
            let name = c.names.as_ref().unwrap()[0].trim_start_matches('/');
            let inspect =
                serde_json::to_string(&docker.inspect_container(name, None).await.unwrap())
                    .unwrap();
            assert!(
                !inspect.contains(&lab.state.db_password),
                "{name}: password visible in docker inspect"
            );
        }
    });
    let state_file = t.state_dir.path().join(format!("{}.json", t.project));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&state_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "state file must be readable by its owner only");

    // --- up again, twice at once, while another labctl holds the lab: both wait, take turns,
    // and change nothing. The lock is held here (as a running `up` or `scale` would hold it), so
    // the waiting does not depend on how fast a no-op `up` is: on a quiet machine the first of
    // two plain concurrent ups used to finish before the second asked for the lock.
    let _ = t.lab(); // points this process at the lab's state folder, where the lock lives
    let held = labctl::stack::state::LabLock::try_acquire(&t.project, "test-holder")
        .unwrap()
        .unwrap_or_else(|h| panic!("the lab's lock is taken by {h:?}"));
    let mut ups: Vec<_> = (0..2)
        .map(|_| {
            t.command(&["up", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    for up in &mut ups {
        assert!(up.try_wait().unwrap().is_none(), "an up ran while the lab was locked");
    }
    drop(held);
    let outs: Vec<_> = ups.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let holder = format!("waiting: `labctl test-holder` (pid {})", std::process::id());
    for out in &outs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(again["containers_changed"], 0, "another up must be a no-op: {again}");
        assert!(
            again["seconds"]["images"].as_f64().unwrap() < 30.0,
            "another up must build nothing: {again}"
        );
        assert!(stderr.contains(&holder), "each up waits for the holder and says who: {stderr}");
    }

    // --- a port taken by something else: refused before the running lab is touched ----------
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = listener.local_addr().unwrap().port().to_string();
    let refused = t.command(&["up"]).env("LABCTL_PORTS_FLINK_UI", &taken).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("port {taken}")),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let still = t.json(&["status", "--json"]);
    assert_eq!(still["healthy"], true, "the running lab must be untouched: {still:#}");
    drop(listener);

    // --- a lost state file: `up` takes the passwords and the ports it picked back from the
    // lab's containers and changes none of them (new ports would recreate every container);
    // the job roles get new passwords, which the database then takes -------------------------
    let before: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    std::fs::remove_file(&state_file).unwrap();
    let out = t.run(&["up", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "up without its state file: {stderr}");
    assert!(stderr.contains("was missing; rebuilt from the lab's containers"), "{stderr}");
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["containers_changed"], 0, "no container may change: {again}");
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(after["db_password"], before["db_password"]);
    // (Ports of services this lab does not run, other broker nodes, are picked afresh.)
    for key in ["broker", "database", "flink_ui", "spark_ui", "spark_rest", "azurite"] {
        assert_eq!(after["ports"][key], before["ports"][key], "ports.{key}");
    }
    assert_ne!(after["db_writer_password"], before["db_writer_password"]);
    let recovered = t.lab();
    rt.block_on(async {
        use labctl::model::topology::DbRole;
        for role in [DbRole::Writer, DbRole::Reader] {
            let db = recovered.database_as(role).unwrap();
            db.connect(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{role:?}: {e}"));
        }
    });
    let still = t.json(&["status", "--json"]);
    assert_eq!(still["healthy"], true, "{still:#}");

    // --- logs and bad input ------------------------------------------------------------------
    let logs = t.run(&["logs", "timescaledb", "--tail", "20"]);
    assert!(logs.status.success() && !logs.stdout.is_empty());
    let bad = t.run(&["logs", "kafka"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown service `kafka`"));

    // --- ingest from the host: backfill, consume back, restart without duplicates ------------
    check_host_ingest(&t, &lab);

    // --- ingest as a service of the lab: resumes, restarts after a crash ----------------------
    t.set_env("LABCTL_INGEST_ENABLED", "true");
    t.set_env("LABCTL_INGEST_BACKFILL", "20m");
    let with_ingest = t.json(&["up", "--json"]);
    assert_eq!(with_ingest["containers_changed"], 1, "only the generator is added: {with_ingest}");
    let before = total_offsets(&lab);
    wait_for("the generator service to produce", Duration::from_secs(60), || {
        (total_offsets(&lab) > before).then_some(())
    });
    let ingest_container = format!("{}-ingest-1", t.project);
    crash(&ingest_container);
    let after_kill = total_offsets(&lab);
    wait_for("the generator to be restarted and produce again", Duration::from_secs(60), || {
        (total_offsets(&lab) > after_kill).then_some(())
    });
    let restarts = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.RestartCount}}", &ingest_container])
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8_lossy(&restarts.stdout).trim(),
        "0",
        "the engine restarted the crashed generator"
    );
    let readings = read_all(&lab);
    assert_no_duplicates_or_gaps(&readings, 5);

    // --- the broker restarts under the live generator: it recovers by itself, nothing is lost
    // or doubled (refused readings stop the generator; its restart resumes from the topic).
    let broker_container = format!("{}-broker-1", t.project);
    let before = total_offsets(&lab);
    let restarted = std::time::Instant::now();
    assert!(std::process::Command::new("docker")
        .args(["restart", &broker_container])
        .status()
        .unwrap()
        .success());
    wait_for(
        "the generator to produce again after the broker restart",
        Duration::from_secs(120),
        || (total_offsets(&lab) > before + 18).then_some(()),
    );
    eprintln!(
        "generator producing again {:.1} s after the broker restart began",
        restarted.elapsed().as_secs_f64()
    );
    let readings = read_all(&lab);
    assert_no_duplicates_or_gaps(&readings, 5);

    // --- down keeps data, down --volumes removes everything -----------------------------------
    t.ok(&["down"]);
    rt.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let filters =
            HashMap::from([("label".to_string(), vec![format!("labctl.project={}", t.project)])]);
        let cs = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: filters.clone(),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert!(cs.is_empty(), "containers left after down: {cs:?}");
        let nets = docker
            .list_networks(Some(bollard::network::ListNetworksOptions { filters: filters.clone() }))
            .await
            .unwrap();
        assert!(nets.is_empty(), "network left after down");
        let vols = docker
            .list_volumes(Some(bollard::volume::ListVolumesOptions { filters: filters.clone() }))
            .await
            .unwrap();
        assert!(
            !vols.volumes.unwrap_or_default().is_empty(),
            "down without --volumes keeps the data"
        );
    });
    t.ok(&["down", "--volumes", "--yes"]);
    rt.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let filters =
            HashMap::from([("label".to_string(), vec![format!("labctl.project={}", t.project)])]);
        let vols = docker
            .list_volumes(Some(bollard::volume::ListVolumesOptions { filters }))
            .await
            .unwrap();
        assert!(vols.volumes.unwrap_or_default().is_empty(), "volumes left after down --volumes");
    });
    assert!(!state_file.exists(), "state removed with the volumes");
    assert!(
        !t.state_dir.path().join(format!("{}.offsets.json", t.project)).exists(),
        "status's offset samples removed too"
    );
}

/// Kills a container's main process with SIGKILL from the host, as a crash would; unlike
/// `docker kill` (a manual stop) this lets the restart policy act.
fn crash(container: &str) {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", container])
        .output()
        .unwrap();
    let init_pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let children = std::process::Command::new("ps")
        .args(["--ppid", &init_pid, "-o", "pid="])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .unwrap_or(init_pid);
    assert!(
        std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success(),
        "kill -9 {pid}"
    );
}

fn total_offsets(lab: &labctl::ops::lab::Lab) -> i64 {
    rt().block_on(lab.broker().unwrap().offsets(&lab.config.broker.topic, Duration::from_secs(5)))
        .map(|o| o.iter().map(|p| p.high).sum())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
struct Reading {
    partition: i32,
    key: String,
    machine: String,
    sensor: String,
    ts: i64,
}

/// Every generator message on the topic (the probe message above is skipped).
fn read_all(lab: &labctl::ops::lab::Lab) -> Vec<Reading> {
    common::read_topic(lab, Duration::from_secs(120))
        .iter()
        .filter_map(|m| {
            let v = serde_json::from_slice::<serde_json::Value>(&m.payload).ok()?;
            if v.get("planted").is_some() {
                return None; // the test's own reading from 2099
            }
            let ts = v["timestamp"].as_str()?;
            Some(Reading {
                partition: m.partition,
                key: String::from_utf8_lossy(&m.key).into_owned(),
                machine: v["machine_id"].as_str().unwrap().into(),
                sensor: v["sensor_type"].as_str().unwrap().into(),
                ts: labctl::ops::ingest::encode::parse_timestamp(ts).unwrap(),
            })
        })
        .collect()
}

/// Each machine on one partition, keyed by its id, its readings in time order, every
/// (machine, sensor, timestamp) exactly once, and no tick missing between first and last.
fn assert_no_duplicates_or_gaps(readings: &[Reading], interval: i64) {
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    let mut last: HashMap<(&str, &str), i64> = HashMap::new();
    let mut count: HashMap<(&str, &str), (i64, i64, usize)> = HashMap::new();
    for r in readings {
        assert_eq!(r.key, r.machine, "messages are keyed by machine_id");
        let p = *partition_of.entry(&r.machine).or_insert(r.partition);
        assert_eq!(p, r.partition, "{} appears on two partitions", r.machine);
        let k = (r.machine.as_str(), r.sensor.as_str());
        if let Some(prev) = last.insert(k, r.ts) {
            assert!(r.ts > prev, "{k:?}: {} after {prev}: duplicate or out of order", r.ts);
        }
        let e = count.entry(k).or_insert((r.ts, r.ts, 0));
        e.0 = e.0.min(r.ts);
        e.1 = e.1.max(r.ts);
        e.2 += 1;
    }
    assert_eq!(count.len(), 9, "3 machines x 3 sensors: {:?}", count.keys());
    for (k, (first, last, n)) in count {
        assert_eq!(
            ((last - first) / interval + 1) as usize,
            n,
            "{k:?}: gap between {first} and {last}"
        );
    }
}

fn check_host_ingest(t: &TestLab, lab: &labctl::ops::lab::Lab) {
    // Dry run needs no broker and prints exactly N messages.
    let dry = t.ok(&["ingest", "--dry-run", "--count", "7"]);
    assert_eq!(dry.lines().count(), 7);

    let first = t.json(&["ingest", "--backfill", "30m", "--no-live", "--json"]);
    let produced = first["produced"].as_u64().unwrap();
    // 30 minutes at 5 s = 360 ticks (plus the current one) x 9 readings.
    assert!((360 * 9..=362 * 9).contains(&produced), "{first}");
    assert_eq!(first["delivered"], first["produced"]);
    assert_eq!(first["failed"], 0);
    assert_eq!(
        total_offsets(lab) as u64,
        produced + 1,
        "every reading in the topic once (+1 probe message)"
    );

    // Someone else writes to the topic after the generator: many records that are no readings,
    // on every machine's partition, and one reading stamped 2099.
    let producer: BaseProducer = lab.broker().unwrap().client_config().create().unwrap();
    for i in 0..400 {
        for key in ["CNC-1", "LATHE-1", "WELDER-1"] {
            let foreign = format!(r#"{{"foreign":{i}}}"#);
            producer
                .send(BaseRecord::to(&lab.config.broker.topic).key(key).payload(&foreign))
                .unwrap();
            producer.poll(Duration::ZERO);
        }
    }
    let far = r#"{"machine_id":"CNC-1","sensor_type":"vibration","timestamp":"2099-01-01T00:00:00","planted":true}"#;
    producer.send(BaseRecord::to(&lab.config.broker.topic).key("CNC-1").payload(far)).unwrap();
    producer.flush(Duration::from_secs(20)).unwrap();

    // A restart continues where the topic is: only ticks that passed since, no backfill again,
    // for every machine (the foreign records and the reading from 2099 notwithstanding).
    let second = t.json(&["ingest", "--backfill", "30m", "--no-live", "--json"]);
    assert_eq!(second["resumed"], true);
    assert!(
        second["produced"].as_u64().unwrap() <= 9 * 4,
        "restart must not backfill again: {second}"
    );
    let readings = read_all(lab);
    assert_eq!(readings.len() as u64, produced + second["produced"].as_u64().unwrap());
    assert_no_duplicates_or_gaps(&readings, 5);
    let newest = readings.iter().map(|r| r.ts).max().unwrap();
    for m in ["CNC-1", "LATHE-1", "WELDER-1"] {
        let last = readings.iter().filter(|r| r.machine == m).map(|r| r.ts).max().unwrap();
        assert!(newest - last <= 5, "{m} stopped at {last}, the others went on to {newest}");
    }
}
