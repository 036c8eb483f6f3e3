//! Bad input at the command line: each gives one clear error naming the cause and the fix,
//! exits non-zero and changes nothing.

mod common;

use common::TestLab;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn malformed_config_names_file_line_and_key() {
    let t = TestLab::new("cfg");
    let path = t.state_dir.path().join("labctl.toml");
    std::fs::write(&path, "project = \"x\"\n\n[flink]\ntaskmanagerz = 2\n").unwrap();
    let out = t.run(&["--config", path.to_str().unwrap(), "config"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("labctl.toml:4:") && e.contains("taskmanagerz"), "{e}");

    std::fs::write(&path, "[flink\n").unwrap();
    let out = t.run(&["--config", path.to_str().unwrap(), "config"]);
    assert!(!out.status.success() && stderr(&out).contains("labctl.toml:1:"), "{}", stderr(&out));
}

#[test]
fn impossible_values_are_rejected_with_their_key() {
    let t = TestLab::new("val");
    for (k, v, key) in [
        ("LABCTL_FLINK_TASKMANAGERS", "0", "flink.taskmanagers"),
        ("LABCTL_SPARK_WORKERS", "x", "LABCTL_SPARK_WORKERS"),
        ("LABCTL_PROJECT", "a;b", "project"),
        ("LABCTL_BROKER_TOPIC", "../x", "broker.topic"),
    ] {
        let out = t.command(&["config"]).env(k, v).output().unwrap();
        assert!(!out.status.success(), "{k}={v} accepted");
        assert!(stderr(&out).contains(key), "{k}={v}: {}", stderr(&out));
    }
    let out = t.run(&["up", "--taskmanagers", "99"]);
    assert!(
        !out.status.success() && stderr(&out).contains("flink.taskmanagers"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn docker_not_reachable_says_how_to_fix_it() {
    let t = TestLab::new("dock");
    let out =
        t.command(&["up"]).env("DOCKER_HOST", "unix:///nonexistent/docker.sock").output().unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("Docker engine not reachable") && e.contains("DOCKER_HOST"), "{e}");
}

/// Flink's and Spark's REST APIs run submitted code: never published beyond loopback.
#[test]
fn up_refuses_to_publish_unauthenticated_services_beyond_loopback() {
    let t = TestLab::new("bind").with_env("LABCTL_BIND_ADDRESS", "0.0.0.0");
    let out = t.run(&["up"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("publishes the lab to other hosts")
            && e.contains("flink.rest_mutual_tls = true")
            && e.contains("spark.rest_tokens = true")
            && e.contains("broker.sasl_ssl_listener = true")
            && e.contains("bind_address = \"127.0.0.1\""),
        "{e}"
    );
    assert!(!t.state_dir.path().join(format!("{}.json", t.project)).exists(), "nothing made");
}

#[test]
fn commands_on_a_lab_never_started_say_so() {
    let t = TestLab::new("none");
    for cmd in [&["status"][..], &["logs", "broker"][..], &["ingest", "--no-live"][..]] {
        let out = t.run(cmd);
        assert!(!out.status.success(), "{cmd:?}");
        assert!(stderr(&out).contains("labctl up"), "{cmd:?}: {}", stderr(&out));
    }
}

#[test]
fn a_taken_port_is_named_before_anything_changes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let t = TestLab::new("port").with_env("LABCTL_PORTS_FLINK_UI", &port);
    let out = t.run(&["up"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&port) && e.contains("ports.flink_ui") && e.contains("already in use"),
        "{e}"
    );
    // Nothing of the lab was created.
    let ps = std::process::Command::new("docker")
        .args(["ps", "-a", "--filter", &format!("label=labctl.project={}", t.project), "-q"])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "containers were created despite the error");
}

#[test]
fn generator_input_is_validated() {
    let t = TestLab::new("gen");
    for (args, want) in [
        (&["ingest", "--dry-run", "--machines", "0"][..], "fleet is empty"),
        (&["ingest", "--dry-run", "--interval", "0"][..], "--interval"),
        (&["ingest", "--dry-run", "--interval", "-5"][..], "--interval"),
        (&["ingest", "--dry-run", "--types", "drill"][..], "unknown machine type `drill`"),
        (&["ingest", "--dry-run", "--backfill", "soon"][..], "invalid duration"),
    ] {
        let out = t.run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?} printed messages despite the error");
    }
}

#[test]
fn every_command_has_help() {
    let t = TestLab::new("help");
    // The commands as clap lists them (so a new one is never missed), one level of
    // subcommands deep.
    let commands = |args: &[&str]| -> Vec<String> {
        let out = t.run(&[args, &["--help"]].concat());
        assert!(out.status.success() && !out.stdout.is_empty(), "labctl {} --help", args.join(" "));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect()
    };
    let top = commands(&[]);
    for must in ["demo", "up", "down", "status", "submit", "verify", "lake", "logs", "bench"] {
        assert!(top.iter().any(|c| c == must), "{must} in {top:?}");
    }
    let mut seen = 0;
    for cmd in &top {
        for sub in commands(&[cmd.as_str()]) {
            commands(&[cmd.as_str(), sub.as_str()]);
            seen += 1;
        }
    }
    assert!(seen >= 8, "subcommands of submit, flink, spark, lake, images: {seen}");
}

#[test]
fn images_prune_removes_only_stale_unused_images() {
    let t = TestLab::new("prune");
    let name = format!("prunetest-{}", t.project);
    let tag = format!("labctl/{name}:old");
    let docker = |args: &[&str]| {
        let out = std::process::Command::new("docker").args(args).output().expect("running docker");
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // An image as labctl labels its builds, with a tag no build of labctl uses.
    let dir = t.state_dir.path().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM labctl/debian:bookworm\nLABEL labctl.image={name}\n"),
    )
    .unwrap();
    docker(&["build", "-q", "-t", &tag, dir.to_str().unwrap()]);
    let container = docker(&["create", &tag, "true"]);

    let current: serde_json::Value = t.json(&["images", "list", "--json"]);
    let listed = t.json(&["images", "prune", "--dry-run", "--json"]);
    let stale = listed["images"].as_array().unwrap();
    for img in current.as_array().unwrap() {
        assert!(
            !stale.iter().any(|s| s["tags"].as_array().unwrap().contains(&img["tag"])),
            "a current image listed as stale: {img}"
        );
    }
    let ours = stale
        .iter()
        .find(|s| s["image"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {listed:#}"));
    assert!(ours["outcome"].as_str().unwrap().contains("kept: used by"), "{ours}");

    // In use: kept. Unused: removed, and only it (the filter by name).
    t.json(&["images", "prune", "--json", &name]);
    docker(&["image", "inspect", &tag]);
    docker(&["rm", &container]);
    let pruned = t.json(&["images", "prune", "--json", &name]);
    assert_eq!(pruned["removed"], 1, "{pruned:#}");
    let gone =
        std::process::Command::new("docker").args(["image", "inspect", &tag]).output().unwrap();
    assert!(!gone.status.success(), "{tag} still present");
    for img in current.as_array().unwrap() {
        docker(&["image", "inspect", img["tag"].as_str().unwrap()]);
    }
}
