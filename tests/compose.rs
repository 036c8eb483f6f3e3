//! The rendered `docker-compose.yml` works with the Compose tool Debian 12 ships
//! (`docker-compose` 1.29, which rejects a top-level `name:`): the whole file validates, and
//! its broker, started by Compose alone, answers Kafka clients on the host through the
//! advertised host listener.

mod common;

use std::{process::Command, time::Duration};

use common::{labctl_bin, port_env, rt, wait_for};
use labctl::model::config::PortKey;

/// `n` distinct free ports: each listener stays open until all are picked, or the kernel may
/// hand out one port twice.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> =
        (0..n).map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn compose(
    file: &std::path::Path,
    project: &str,
    password_file: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(file)
        .args(["-p", project])
        .args(args)
        .env("LABCTL_DB_PASSWORD_FILE", password_file)
        .output()
        .expect("running docker-compose (Debian's package `docker-compose`; scripts/test.sh installs it)");
    eprintln!(
        "--- docker-compose {} ({}) ---\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn debians_docker_compose_runs_the_rendered_file() {
    let dir = tempfile::tempdir().unwrap();
    let project = format!("t-compose-{}-{}", std::process::id() % 100_000, rand::random::<u16>());
    let keys = PortKey::ALL;
    let ports = free_ports(keys.len());
    let broker_port =
        ports[keys.iter().position(|k| *k == PortKey::Broker).expect("a broker port")];
    let mut render = Command::new(labctl_bin());
    render.args(["render", "compose", "-o"]).arg(dir.path().join("docker-compose.yml"));
    render
        .env("LABCTL_PROJECT", &project)
        .env("LABCTL_STATE_DIR", dir.path())
        .env_remove("LABCTL_CONFIG");
    for (key, port) in keys.into_iter().zip(&ports) {
        render.env(port_env(key), port.to_string());
    }
    let out = render.output().unwrap();
    assert!(out.status.success(), "render compose: {}", String::from_utf8_lossy(&out.stderr));
    let file = dir.path().join("docker-compose.yml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.lines().any(|l| l.starts_with("name:")), "no top-level name: for Compose 1.29");
    let password = dir.path().join("db-password");
    std::fs::write(&password, "compose-test-only").unwrap();

    let version = Command::new("docker-compose")
        .arg("version")
        .arg("--short")
        .output()
        .expect("docker-compose");
    eprintln!("docker-compose {}", String::from_utf8_lossy(&version.stdout).trim());
    let config = compose(&file, &project, &password, &["config", "-q"]);
    assert!(config.status.success(), "docker-compose 1.29 accepts the whole file");

    let up = compose(&file, &project, &password, &["up", "-d", "broker"]);
    let result = std::panic::catch_unwind(|| {
        assert!(up.status.success(), "docker-compose up -d broker");
        let broker = labctl::clients::kafka::Broker {
            bootstrap: format!("127.0.0.1:{broker_port}"),
            security: vec![],
        };
        let rt = rt();
        let n = wait_for(
            "the Compose-started broker to answer on the host",
            Duration::from_secs(120),
            || rt.block_on(broker.ping(Duration::from_secs(3))).ok(),
        );
        assert_eq!(n, 1);
        // A topic round trip through the advertised host listener: no address map needed.
        assert!(rt.block_on(broker.ensure_topic("compose-check", 3)).unwrap());
        let offsets = rt.block_on(broker.offsets("compose-check", Duration::from_secs(5))).unwrap();
        assert_eq!(offsets.len(), 3);
    });
    let down = compose(&file, &project, &password, &["down", "-v"]);
    assert!(down.status.success(), "docker-compose down -v");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
