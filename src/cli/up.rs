//! `labctl up`: images, network, volumes, containers in dependency order, then real readiness,
//! then the lab's own setup (topic, schema, lake container). Safe to run again at any time:
//! what already runs is kept, what is missing or changed is repaired.

use std::{
    collections::HashSet,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use indicatif::MultiProgress;

use super::{finish, spinner};
use crate::model::security;
use crate::model::topology;
use crate::{
    clients::docker::{images::tail_lines, Action, ContainerInfo, Runtime},
    model::config::Config,
    ops::lab::Lab,
    stack::{self, state::State, Probe, Secret, Service, FLINK_TM, IMAGES, SCALABLE, SPARK_WORKER},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of Flink TaskManagers; remembered like `labctl scale flink-taskmanager N`.
    #[arg(long, value_name = "N")]
    taskmanagers: Option<u32>,
    /// Number of Spark workers; remembered like `labctl scale spark-worker N`.
    #[arg(long, value_name = "N")]
    spark_workers: Option<u32>,
    /// Do not start the generator (`labctl ingest` can be run by hand).
    #[arg(long)]
    no_ingest: bool,
    /// Rebuild every image even if one with the same inputs exists.
    #[arg(long)]
    rebuild: bool,
    /// Print a JSON summary (ports, URLs, timings) on stdout when done.
    #[arg(long)]
    json: bool,
}

pub async fn run(mut config: Config, args: Args) -> Result<ExitCode> {
    if let Some(n) = args.taskmanagers {
        config.flink.taskmanagers = n;
    }
    if let Some(n) = args.spark_workers {
        config.spark.workers = n;
    }
    if args.no_ingest {
        config.ingest.enabled = false;
    }
    config.validate()?;
    security::check_secrets(&config)?;
    let started = Instant::now();
    let rt = Runtime::connect().await?;
    let mut state = State::load_or_init(&config)?;
    // An explicit size is remembered; without one the lab keeps the size it was scaled to.
    for (service, n) in [(FLINK_TM, args.taskmanagers), (SPARK_WORKER, args.spark_workers)] {
        if let Some(n) = n {
            state.replicas.insert(service.to_string(), n);
        }
    }
    for service in SCALABLE {
        let (now, initial) =
            (stack::replicas(&config, &state, service), stack::initial_replicas(&config, service));
        if now != initial {
            eprintln!("{service}: {now} replica(s), the size this lab was scaled to (the config's initial size is {initial}; `labctl scale {service} N` changes it)");
        }
    }
    let lab = Lab::new(config, state);
    let existing = rt.list_containers(&lab.stack.project).await?;

    check_ports(&lab, &existing)?;
    lab.state.save(&lab.stack.project)?;

    let multi = MultiProgress::new();
    let t_images = Instant::now();
    let tags = build_images(&rt, &lab, &multi, args.rebuild).await?;
    let images_secs = t_images.elapsed().as_secs_f64();

    rt.ensure_network(&lab.stack).await?;
    rt.ensure_volumes(&lab.stack).await?;
    remove_surplus(&rt, &lab, &existing).await?;

    let t_start = Instant::now();
    let mut changed = 0;
    // Services first, then what needs the lab set up (the generator needs the topic).
    for after_setup in [false, true] {
        if after_setup {
            wait_ready(&rt, &lab, &multi, false).await?;
            setup_lab(&lab, &multi).await?;
        }
        for svc in lab.stack.start_order().into_iter().filter(|s| s.after_setup == after_setup) {
            let tag = tags
                .iter()
                .find(|(n, _)| *n == svc.image.name)
                .map(|(_, t)| t.clone())
                .context("image tag")?;
            changed += ensure_replicas(&rt, &lab, svc, &tag, &existing).await?;
        }
    }
    wait_ready(&rt, &lab, &multi, true).await?;
    let secure = match lab.stack.published_port("broker_sasl_ssl") {
        Some(port) => Some(check_sasl_ssl_listener(&rt, &lab, port).await?),
        None => None,
    };
    let ready_secs = t_start.elapsed().as_secs_f64();

    let total = started.elapsed().as_secs_f64();
    let urls = [("Flink UI", lab.stack.url("flink_ui")), ("Spark UI", lab.stack.url("spark_ui"))];
    if args.json {
        let doc = serde_json::json!({
            "project": lab.stack.project,
            "containers_changed": changed,
            "ports": lab.state.ports,
            "flink_ui": urls[0].1, "spark_ui": urls[1].1,
            "broker_sasl_ssl": secure,
            "seconds": { "images": images_secs, "start_to_ready": ready_secs, "total": total },
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        eprintln!(
            "lab `{}` is up ({} container(s) changed) in {total:.1} s",
            lab.stack.project, changed
        );
        for (what, url) in urls {
            if let Some(u) = url {
                eprintln!("  {what:<9} {u}");
            }
        }
        let p = &lab.state.ports;
        let (bind, c) = (&lab.stack.bind_address, &lab.config);
        let topic = &c.broker.topic;
        match lab.stack.external_for(stack::BROKER) {
            Some(e) => eprintln!("  broker    {} (external; topic `{topic}`)", e.address),
            None => eprintln!("  broker    {} (topic `{topic}`)", lab.broker()?.bootstrap),
        }
        if let Some(s) = &secure {
            eprintln!(
                "  broker    SASL_SSL {} (lab network: {}), user `{}`, SCRAM-SHA-256/512 (password: `labctl status --show-secrets`), CA {}",
                s["bootstrap"].as_str().unwrap_or_default(),
                s["cluster_bootstrap"].as_str().unwrap_or_default(),
                s["user"].as_str().unwrap_or_default(),
                s["ca_file"].as_str().unwrap_or_default()
            );
        }
        match lab.stack.external_for(stack::DATABASE) {
            Some(e) => eprintln!("  database  {} (external)", e.address),
            None => eprintln!(
                "  database  postgresql://{}@{bind}:{}/{} (password: `labctl status --show-secrets`)",
                c.database.user, p.database, c.database.name
            ),
        }
        match lab.stack.external_for(stack::AZURITE) {
            Some(e) => eprintln!("  lake      {} (external)", e.address),
            None => eprintln!("  azurite   http://{bind}:{}/devstoreaccount1", p.azurite),
        }
        for e in lab
            .stack
            .external
            .iter()
            .filter(|e| matches!(e.part, topology::Part::Flink | topology::Part::Spark))
        {
            eprintln!("  {:<9} {} (external)", e.name, e.address);
        }
        if c.ingest.enabled && lab.stack.service(stack::INGEST).is_none() {
            eprintln!("  no generator service: the external broker wants SASL, whose password stays out of containers; feed it with `labctl ingest`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `broker.sasl_ssl_listener`: copies the CA the broker made on its first start next to the
/// state file (what clients of the listener name as their CA file) and logs in through the host
/// listener as a client would: TLS verified against that CA, SCRAM-SHA-512 as `lab`.
async fn check_sasl_ssl_listener(rt: &Runtime, lab: &Lab, port: u16) -> Result<serde_json::Value> {
    let container = lab.stack.container_name(stack::BROKER, 1);
    let ca = rt.read_file(&container, stack::BROKER_CA_PATH).await.with_context(|| {
        format!("the broker made no CA certificate at {}", stack::BROKER_CA_PATH)
    })?;
    let ca_path = crate::stack::state::broker_ca_path(&lab.stack.project);
    std::fs::write(&ca_path, &ca).with_context(|| format!("writing {}", ca_path.display()))?;
    let bootstrap = format!("{}:{port}", stack::host_address(&lab.stack.bind_address));
    let ca_file = ca_path.display().to_string();
    let security = [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", stack::BROKER_SASL_USER),
        ("sasl.password", lab.state.broker_password.as_str()),
        ("ssl.ca.location", ca_file.as_str()),
    ];
    let client = crate::clients::kafka::Broker {
        bootstrap: bootstrap.clone(),
        security: security.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    // The listener opens with the broker; the login can trail it by a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.ping(Duration::from_secs(5)).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!(
                    "the broker's SASL_SSL listener {bootstrap} refused labctl's login (a broker volume formatted before broker.sasl_ssl_listener was set has no SCRAM user: `labctl down --volumes` makes a new one)"
                )))
            }
            Err(e) => tracing::debug!("SASL_SSL listener not ready yet: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(serde_json::json!({
        "bootstrap": bootstrap,
        "cluster_bootstrap": format!("{}:{}", stack::BROKER, stack::BROKER_SASL_SSL_PORT),
        "user": stack::BROKER_SASL_USER,
        "mechanisms": ["SCRAM-SHA-256", "SCRAM-SHA-512"],
        "ca_file": ca_file,
    }))
}

/// Refuses before changing anything when a host port the lab needs is held by something else
/// (a port our own running container already publishes is fine: it stays).
fn check_ports(lab: &Lab, existing: &[ContainerInfo]) -> Result<()> {
    for svc in &lab.stack.services {
        for p in &svc.ports {
            let ours = existing
                .iter()
                .any(|c| c.service == svc.name && c.running() && c.host_ports.contains(&p.host));
            if ours {
                continue;
            }
            if let Err(e) = std::net::TcpListener::bind((lab.stack.bind_address.as_str(), p.host)) {
                bail!(
                    "port {} on {} ({}, config key ports.{}) is already in use: {e}. Free it, or pick another port in \
                     labctl.toml [ports] or with LABCTL_PORTS_{}=<port> (0 picks a free one)",
                    p.host,
                    lab.stack.bind_address,
                    svc.name,
                    p.key,
                    p.key.to_ascii_uppercase()
                );
            }
        }
    }
    Ok(())
}

/// Base image first, then the images the stack uses (see `cli::build_images`).
async fn build_images(
    rt: &Runtime,
    lab: &Lab,
    multi: &MultiProgress,
    force: bool,
) -> Result<Vec<(&'static str, String)>> {
    let pb = spinner(multi, "images");
    rt.ensure_base(&pb).await?;
    let specs: Vec<&'static stack::ImageSpec> = IMAGES
        .iter()
        .filter(|i| lab.stack.services.iter().any(|s| s.image.name == i.name))
        .collect();
    let results = super::build_images(rt, &specs, force, multi).await?;
    let built: Vec<&str> = results.iter().filter(|r| r.2).map(|r| r.0).collect();
    finish(
        &pb,
        if built.is_empty() { "all cached".into() } else { format!("built {}", built.join(", ")) },
    );
    Ok(results.into_iter().map(|(name, tag, _)| (name, tag)).collect())
}

/// Creates, starts or keeps replicas 1..=N of one service (N from the stack, i.e. the lab's
/// remembered size); returns how many containers changed. `up` and `scale` both start
/// replicas through here.
pub(crate) async fn ensure_replicas(
    rt: &Runtime,
    lab: &Lab,
    svc: &Service,
    tag: &str,
    existing: &[ContainerInfo],
) -> Result<usize> {
    let (password, broker_password) =
        (lab.state.db_password.clone(), lab.state.broker_password.clone());
    let secrets = move |s: Secret| match s {
        Secret::DbPassword => password.clone(),
        Secret::BrokerPassword => broker_password.clone(),
    };
    let mut changed = 0;
    for replica in 1..=svc.replicas {
        let name = lab.stack.container_name(svc.name, replica);
        let current = existing.iter().find(|c| c.name == name);
        let action = rt.ensure_container(&lab.stack, svc, replica, tag, &secrets, current).await?;
        if action != Action::Kept {
            changed += 1;
            tracing::info!("{name}: {}", action.verb());
        }
    }
    Ok(changed)
}

/// Removes containers of replicas beyond the lab's count, or of services no longer defined,
/// highest replica number first, each stopped gracefully within its service's stop timeout.
/// Returns the names removed. `up` and `scale` both stop replicas through here.
pub(crate) async fn remove_surplus(
    rt: &Runtime,
    lab: &Lab,
    existing: &[ContainerInfo],
) -> Result<Vec<String>> {
    let mut surplus: Vec<&ContainerInfo> = existing
        .iter()
        .filter(|c| {
            !lab.stack
                .service(&c.service)
                .is_some_and(|s| c.replica >= 1 && c.replica <= s.replicas)
        })
        .collect();
    surplus.sort_by_key(|c| std::cmp::Reverse(c.replica));
    let mut removed = Vec::new();
    for c in surplus {
        let timeout = lab.stack.service(&c.service).map_or(20, |s| s.stop_timeout);
        tracing::info!("removing {} (scaled down or no longer defined)", c.name);
        rt.remove_container(&c.name, timeout as i64).await?;
        removed.push(c.name.clone());
    }
    Ok(removed)
}

/// Polls every service's probe concurrently until it passes or the timeout ends.
async fn wait_ready(
    rt: &Runtime,
    lab: &Lab,
    multi: &MultiProgress,
    after_setup: bool,
) -> Result<()> {
    let timeout = Duration::from_secs(lab.config.ready_timeout_secs);
    let mut tasks = tokio::task::JoinSet::new();
    // External services get the same probes as the managed ones they replace.
    let mut checks: Vec<(&'static str, Probe, String)> = lab
        .stack
        .services
        .iter()
        .filter(|s| !matches!(s.probe, Probe::CoveredBy { .. }) && s.after_setup == after_setup)
        .map(|s| (s.name, s.probe.clone(), String::new()))
        .collect();
    if !after_setup {
        checks.extend(
            lab.stack
                .external
                .iter()
                .map(|e| (e.name, e.probe.clone(), format!("external {}: ", e.address))),
        );
    }
    for (name, probe, label) in checks {
        let pb = spinner(multi, name);
        let lab = lab.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            let mut last_err;
            loop {
                match lab.probe(&probe, Duration::from_secs(3)).await {
                    Ok(detail) => {
                        finish(
                            &pb,
                            format!(
                                "{label}ready in {:.1} s: {detail}",
                                start.elapsed().as_secs_f64()
                            ),
                        );
                        return Ok::<_, (&'static str, String)>(());
                    }
                    Err(e) => {
                        last_err = format!("{e:#}");
                        pb.set_message(format!("waiting: {last_err}"));
                        // Refused credentials or certificates do not get better by waiting.
                        if e.downcast_ref::<crate::clients::kafka::SecurityFailure>().is_some() {
                            pb.abandon_with_message(format!("{label}refused: {last_err}"));
                            return Err((name, last_err));
                        }
                    }
                }
                if start.elapsed() > timeout {
                    pb.abandon_with_message(format!(
                        "{label}NOT READY after {timeout:?}: {last_err}"
                    ));
                    return Err((name, last_err));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(res) = tasks.join_next().await {
        if let Err((svc, why)) = res.context("readiness task")? {
            failures.push((svc, why));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let mut msg = String::new();
    for (name, why) in &failures {
        if let Some(e) = lab.stack.external_for(name) {
            msg.push_str(&format!(
                "\nthe external {name} at {} ({}) is not ready: {why}\n  labctl expects there: {}",
                e.address,
                e.part.key(),
                topology::requirement(e.part)
            ));
            continue;
        }
        msg.push_str(&format!("\n{name} never became ready: {why}"));
        // Show the logs of the service and of those whose readiness it stands for.
        let related: HashSet<&str> = lab
            .stack
            .services
            .iter()
            .filter(|s| s.name == *name || s.probe == Probe::CoveredBy { service: name })
            .map(|s| s.name)
            .collect();
        for s in lab.stack.services.iter().filter(|s| related.contains(s.name)) {
            for r in 1..=s.replicas {
                let name = lab.stack.container_name(s.name, r);
                let logs =
                    rt.tail_logs(&name, 25).await.unwrap_or_else(|e| format!("(no logs: {e})"));
                msg.push_str(&format!(
                    "\n--- last log lines of {name} ---\n{}",
                    tail_lines(&logs, 25)
                ));
            }
        }
    }
    bail!(
        "{} service(s) not ready; the containers are left running for inspection (`labctl logs SERVICE`, `labctl down`):{msg}",
        failures.len()
    )
}

/// What the lab needs beyond running services: the topic, the schema, the lake's container.
async fn setup_lab(lab: &Lab, multi: &MultiProgress) -> Result<()> {
    let pb = spinner(multi, "setup");
    let topic = &lab.config.broker.topic;
    let created = lab.broker()?.ensure_topic(topic, lab.config.broker.partitions).await?;
    pb.set_message(format!("topic {topic} {}", if created { "created" } else { "present" }));
    let tables = lab.database()?.apply_schema().await?;
    let container = &lab.config.lake.container;
    lab.blob(Duration::from_secs(5))?.create_container(container).await?;
    finish(
        &pb,
        format!(
            "topic `{topic}` ({} partitions), hypertables {}, blob container `{container}`",
            lab.config.broker.partitions,
            tables.join(" + ")
        ),
    );
    Ok(())
}
