//! An external broker as real clusters run it: TLS and SCRAM, against a real Kafka. `host` is a
//! lab whose broker has SASL_SSL listeners (`broker.sasl_ssl_listener`: a CA made on its first
//! start, SCRAM users created when its storage is formatted). `remote` is a second labctl
//! config with every part external, its broker being host's SASL_SSL listener (`sasl_ssl`,
//! SCRAM-SHA-512, the CA as a file): ingest produces through it, the Flink job reads through
//! the in-network SASL_SSL listener, and wrong credentials, a CA of another pair and a missing
//! CA file each fail with a one-line error naming the cause.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{rt, wait_for, TestLab};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `error: …` line labctl ends a failed command with.
fn error_line(out: &std::process::Output) -> String {
    stderr(out).lines().find(|l| l.starts_with("error: ")).unwrap_or_default().to_string()
}

#[test]
fn an_external_broker_over_sasl_ssl_with_scram_and_a_ca_file() {
    let started = Instant::now();
    let host = TestLab::new("tlshost")
        .with_env("LABCTL_INGEST_ENABLED", "false")
        .with_env("LABCTL_BROKER_SASL_SSL_LISTENER", "true");
    let up = host.json(&["up", "--json"]);
    let secure = &up["broker_sasl_ssl"];
    let (bootstrap, ca_file) = (
        secure["bootstrap"].as_str().unwrap_or_else(|| panic!("{up}")),
        secure["ca_file"].as_str().unwrap(),
    );
    assert_eq!(secure["cluster_bootstrap"], "broker:9095", "{up}");
    let h = host.lab();
    let password = h.state.broker_password.clone();
    assert!(password.len() >= 16, "no broker password in the state");
    let ca = std::fs::read_to_string(ca_file).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // The password reached the broker as a file: neither its container's definition nor any
    // process on this host shows it.
    let broker = format!("{}-broker-1", host.project);
    let inspect = Command::new("docker").args(["inspect", &broker]).output().unwrap();
    assert!(inspect.status.success());
    assert!(
        !String::from_utf8_lossy(&inspect.stdout).contains(&password),
        "docker inspect shows the broker password"
    );
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains(&password),
        "a process shows the broker password"
    );
    let shown = host.json(&["status", "--json", "--show-secrets"]);
    assert_eq!(shown["secrets"]["broker_sasl_password"], password.as_str());

    // remote: every part external, as in tests/external.rs, but the broker through its SASL_SSL
    // listeners: host's published one for labctl, the lab network's for the Flink cluster.
    let p = h.state.ports.clone();
    let remote = TestLab::new("tlsremote")
        .with_env("LABCTL_INGEST_ENABLED", "false")
        .with_env("LABCTL_DATABASE_PASSWORD", &h.state.db_password)
        .with_env("LABCTL_LAKE_KEY", labctl::model::topology::DEV_KEY)
        .with_env("LABCTL_BROKER_SASL_PASSWORD", &password);
    let toml = format!(
        r#"[broker]
bootstrap = "{bootstrap}"
cluster_bootstrap = "broker:9095"
security_protocol = "sasl_ssl"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "lab"
ssl_ca_file = "{ca_file}"

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

[lake]
endpoint = "http://127.0.0.1:{lake}/devstoreaccount1"
cluster_endpoint = "http://devstoreaccount1.blob.core.windows.net"
"#,
        db = p.database,
        flink = p.flink_ui,
        rest = p.spark_rest,
        ui = p.spark_ui,
        lake = p.azurite
    );
    std::fs::write(remote.state_dir.path().join("labctl.toml"), &toml).unwrap();
    let t = Instant::now();
    remote.ok(&["up"]);
    eprintln!("MEASURE | broker_tls | remote up (every part external, broker probed over SASL_SSL) {:.1} s", t.elapsed().as_secs_f64());

    // Produce through the SASL_SSL listener; host's topic (read over plaintext) holds exactly that.
    let t = Instant::now();
    let ingest = remote.json(&["ingest", "--backfill", "1h", "--no-live", "--json"]);
    let produced = ingest["delivered"].as_i64().unwrap_or_else(|| panic!("{ingest}"));
    assert_eq!(ingest["failed"], 0, "{ingest}");
    assert!(produced >= 6000, "1 h of 3 machines x 3 sensors every 5 s: {ingest}");
    let rt = rt();
    let ends = rt
        .block_on(h.broker().unwrap().offsets(&h.config.broker.topic, Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        ends.iter().map(|o| o.high).sum::<i64>(),
        produced,
        "host's topic holds what remote produced: {ends:?}"
    );
    eprintln!("MEASURE | broker_tls | {produced} readings produced over SASL_SSL + SCRAM-SHA-512 in {:.1} s, end offsets {:?}", t.elapsed().as_secs_f64(), ends.iter().map(|o| o.high).collect::<Vec<_>>());

    // Wrong password: the broker refuses the login, and labctl says so; `up` stops at once
    // instead of waiting out its readiness timeout.
    let mut wrong_up = remote.command(&["up"]);
    wrong_up.env("LABCTL_BROKER_SASL_PASSWORD", "not-the-password");
    let t = Instant::now();
    let out = wrong_up.output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "SEEN | up, wrong password ({secs:.1} s) | {}",
        stderr(&out).lines().rev().find(|l| l.contains("SASL")).unwrap_or_default()
    );
    assert!(
        !out.status.success() && stderr(&out).contains("SASL authentication failed"),
        "{}",
        stderr(&out)
    );
    assert!(secs < 60.0, "up waited {secs:.1} s on refused credentials");
    let mut wrong = remote.command(&["ingest", "--backfill", "1h", "--no-live"]);
    wrong.env("LABCTL_BROKER_SASL_PASSWORD", "not-the-password");
    let t = Instant::now();
    let out = wrong.output().unwrap();
    let line = error_line(&out);
    eprintln!("SEEN | ingest, wrong password ({:.1} s) | {line}", t.elapsed().as_secs_f64());
    assert!(!out.status.success());
    assert!(
        line.contains("SASL authentication failed") && line.contains("LABCTL_BROKER_SASL_PASSWORD"),
        "{}",
        stderr(&out)
    );

    // A CA of another self-signed pair (made with the broker image's openssl): the handshake fails.
    let other_ca = remote.state_dir.path().join("other-ca.pem");
    let image = labctl::clients::docker::images::image_tag(&labctl::stack::BROKER_IMAGE);
    let made = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "openssl",
            &image,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-keyout",
            "/dev/null",
            "-out",
            "/dev/stdout",
            "-days",
            "1",
            "-subj",
            "/CN=another CA",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    std::fs::write(&other_ca, &made.stdout).unwrap();
    let mut foreign = remote.command(&["ingest", "--backfill", "1h", "--no-live"]);
    foreign.env("LABCTL_BROKER_SSL_CA_FILE", &other_ca);
    let t = Instant::now();
    let out = foreign.output().unwrap();
    let line = error_line(&out);
    eprintln!("SEEN | ingest, CA of another pair ({:.1} s) | {line}", t.elapsed().as_secs_f64());
    assert!(!out.status.success());
    assert!(
        line.contains("certificate verify failed") && line.contains("broker.ssl_ca_file"),
        "{}",
        stderr(&out)
    );

    // A CA file that is not there: the config is refused before anything connects.
    let mut missing = remote.command(&["ingest", "--backfill", "1h", "--no-live"]);
    missing.env("LABCTL_BROKER_SSL_CA_FILE", "/nonexistent/plant-ca.pem");
    let out = missing.output().unwrap();
    let text = stderr(&out);
    eprintln!("SEEN | missing CA file | {}", text.trim().replace('\n', " / "));
    assert!(!out.status.success());
    assert!(
        text.lines().any(|l| l.contains("broker.ssl_ca_file") && l.contains("no such file")),
        "{text}"
    );

    // The Flink job on host's cluster reads through the lab network's SASL_SSL listener
    // (broker:9095 is that listener alone), with the CA inline in its properties.
    let submit = remote.run(&["submit", "flink", "--json"]);
    assert!(submit.status.success(), "{}", stderr(&submit));
    let job: serde_json::Value = serde_json::from_slice(&submit.stdout).unwrap();
    let job_id = job["job_id"].as_str().unwrap().to_string();
    let db = h.database().unwrap();
    let count = || -> i64 {
        rt.block_on(async {
            let c = db.connect(Duration::from_secs(5)).await.ok()?;
            c.query_one("SELECT count(*) FROM machine_sensors", &[])
                .await
                .ok()
                .map(|r| r.get::<_, i64>(0))
        })
        .unwrap_or(-1)
    };
    let t = Instant::now();
    wait_for(
        "every reading in host's machine_sensors through the SASL_SSL source",
        Duration::from_secs(300),
        || (count() == produced).then_some(()),
    );
    eprintln!("MEASURE | broker_tls | Flink job {job_id}: {produced} readings read over SASL_SSL into host's table {:.1} s after RUNNING", t.elapsed().as_secs_f64());
    remote.ok(&["flink", "cancel"]);
    remote.ok(&["down", "--volumes", "--yes"]);
    eprintln!("MEASURE | broker_tls | whole test {:.1} s", started.elapsed().as_secs_f64());
}
