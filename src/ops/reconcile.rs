//! Bringing the lab to its described state (`labctl up`, and `labctl scale` through the same
//! replica functions): images, network, volumes, containers in dependency order, then real
//! readiness of every service, then the lab's own setup (topic, schema, lake container). Safe to
//! run again at any time: what already runs is kept, what is missing or changed is repaired.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::{
    clients::{
        db::{Access, LabRole},
        docker::{images::tail_lines, Action, ContainerInfo, Runtime},
        kafka::{Broker, SecurityFailure},
    },
    model::{
        config::{Config, PortKey},
        schema, security, topology,
        topology::{DbRole, Part},
    },
    ops::{
        flink::{self, job as flink_job, Script, SubmitRequest, Submitted},
        lab::{lock_lab, Lab, Refusal},
        lost_state,
    },
    progress::{Progress, Tasks, TasksNote},
    stack::{
        self,
        state::{self, State},
        ImageSpec, Probe, Secret, Service, ServiceId, FLINK_TM, IMAGES, SCALABLE, SPARK_WORKER,
    },
    wait::{poll_until, Check, Every, Waited},
};

/// Images built at once. Most build time is waiting on package downloads and unpacking, not on
/// the CPU (only TimescaleDB compiles), so on two cores three builds overlap well.
const PARALLEL_BUILDS: usize = 3;

/// Builds the images that are missing, a few at a time with a task each; returns (name, tag,
/// whether it was built) in the order given. The base image must exist.
pub async fn build_images(
    rt: &Runtime,
    specs: &[&'static ImageSpec],
    force: bool,
    tasks: &dyn Tasks,
) -> Result<Vec<(&'static str, String, bool)>> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(specs.iter().copied())
        .map(|spec| {
            let task = tasks.task(spec.name);
            async move {
                let t = Instant::now();
                let (tag, built) = rt.ensure_image(spec, force, task.as_ref()).await?;
                if built {
                    let line = format!("built {tag} in {:.0} s", t.elapsed().as_secs_f64());
                    tracing::info!("{line}");
                    task.done(&line);
                } else {
                    task.clear();
                }
                Ok::<_, anyhow::Error>((spec.name, tag, built))
            }
        })
        .buffered(PARALLEL_BUILDS)
        .try_collect()
        .await
}

/// What `up` may change besides the config.
#[derive(Debug, Clone, Default)]
pub struct UpRequest {
    /// A size for the Flink TaskManagers, remembered like `labctl scale`.
    pub taskmanagers: Option<u32>,
    /// A size for the Spark workers, remembered like `labctl scale`.
    pub spark_workers: Option<u32>,
    /// Do not start the generator.
    pub no_ingest: bool,
    /// Rebuild every image even if one with the same inputs exists.
    pub rebuild: bool,
}

/// The broker's SASL_SSL host listener, as a client of it connects.
#[derive(Debug, Clone, Serialize)]
pub struct SaslSslListener {
    pub bootstrap: String,
    pub cluster_bootstrap: String,
    pub user: &'static str,
    pub mechanisms: [&'static str; 2],
    pub ca_file: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpSeconds {
    pub images: f64,
    pub start_to_ready: f64,
    pub total: f64,
}

/// A lab that is up.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub project: String,
    pub containers_changed: usize,
    pub ports: crate::model::config::Ports,
    pub flink_ui: Option<String>,
    pub spark_ui: Option<String>,
    pub broker_sasl_ssl: Option<SaslSslListener>,
    /// Flink's REST API with mutual TLS: where labctl put a copy of its client certificate.
    pub flink_client: Option<FlinkClientFiles>,
    /// The lab's Flink job, when `up` found it missing and brought it back.
    pub flink_job_restored: Option<Submitted>,
    pub seconds: UpSeconds,
}

/// The files a client of Flink's mutually authenticated REST API names (`curl --cert
/// certificate --cacert ca_file`).
#[derive(Debug, Clone, Serialize)]
pub struct FlinkClientFiles {
    /// labctl's client key and certificate, one PEM file.
    pub certificate: String,
    pub ca_file: String,
}

/// Copies labctl's client certificate and the lab CA next to the state file (mode 0600).
fn write_flink_client_files(lab: &Lab) -> Result<Option<FlinkClientFiles>> {
    let Some(tls) = lab.state.flink_rest_tls.as_ref().filter(|_| lab.config.flink.rest_mutual_tls)
    else {
        return Ok(None);
    };
    let (cert, ca) = crate::stack::state::flink_client_paths(&lab.stack.project);
    for (path, text) in [(&cert, tls.client_identity()), (&ca, tls.ca.clone())] {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Some(FlinkClientFiles {
        certificate: cert.display().to_string(),
        ca_file: ca.display().to_string(),
    }))
}

/// Builds what is missing, starts every service and waits until each really works.
pub async fn up(mut config: Config, req: &UpRequest, tasks: &dyn Tasks) -> Result<(Lab, UpReport)> {
    if let Some(n) = req.taskmanagers {
        config.flink.taskmanagers = n;
    }
    if let Some(n) = req.spark_workers {
        config.spark.workers = n;
    }
    if req.no_ingest {
        config.ingest.enabled = false;
    }
    config.validate()?;
    security::check_secrets(&config)?;
    security::check_exposure(&config)?;
    let started = Instant::now();
    let rt = Runtime::connect().await?;
    let _lock = lock_lab(&config.project, "up", &TasksNote(tasks)).await?;
    let mut existing = rt.list_containers(&config.project).await?;
    let state_lost = State::load(&config.project)?.is_none() && !existing.is_empty();
    let mut state = if state_lost {
        let r = lost_state::from_containers(&rt, &config, &existing).await?;
        tasks.note(&format!(
            "the state file of lab `{}` ({}) was missing; rebuilt from the lab's containers: {}",
            config.project,
            state::state_path(&config.project).display(),
            if r.found.is_empty() { "nothing to take".to_string() } else { r.found.join(", ") }
        ));
        r.state
    } else {
        State::load_or_init(&config)?
    };
    // An explicit size is remembered; without one the lab keeps the size it was scaled to.
    for (service, n) in [(FLINK_TM, req.taskmanagers), (SPARK_WORKER, req.spark_workers)] {
        if let Some(n) = n {
            state.replicas.insert(service.to_string(), n);
        }
    }
    for service in SCALABLE {
        let (now, initial) = (
            stack::replicas(&config, &state, *service),
            stack::initial_replicas(&config, *service),
        );
        if now != initial {
            tasks.note(&format!("{service}: {now} replica(s), the size this lab was scaled to (the config's initial size is {initial}; `labctl scale {service} N` changes it)"));
        }
    }
    let lab = Lab::new(config, state);
    // A container the engine is still starting (a labctl killed mid-`up` asked for it) holds its
    // ports before it shows as running: give such a one a moment before calling the port taken.
    let patience = Instant::now() + Duration::from_secs(10);
    while let Some(taken) = taken_port(&lab, &existing) {
        let starting = existing.iter().any(|c| c.service == taken.service && !c.running());
        if !starting || Instant::now() > patience {
            bail!("{taken}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        existing = rt.list_containers(&lab.stack.project).await?;
    }
    lab.state.save(&lab.stack.project)?;

    let t_images = Instant::now();
    let tags = lab_images(&rt, &lab, tasks, req.rebuild).await?;
    let images_secs = t_images.elapsed().as_secs_f64();

    rt.ensure_network(&lab.stack).await?;
    rt.ensure_volumes(&lab.stack).await?;
    remove_surplus(&rt, &lab, &existing).await?;

    let t_start = Instant::now();
    let mut changed = 0;
    // Services first, then what needs the lab set up (the generator needs the topic).
    for after_setup in [false, true] {
        if after_setup {
            wait_ready(&rt, &lab, tasks, false).await?;
            setup_lab(&lab, tasks).await?;
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
    wait_ready(&rt, &lab, tasks, true).await?;
    let secure = match lab.stack.published_port(PortKey::BrokerSaslSsl) {
        Some(port) => Some(check_sasl_ssl_listener(&rt, &lab, port).await?),
        None => None,
    };
    let flink_client = write_flink_client_files(&lab)?;
    let flink_job_restored = restore_lab_job(&lab, tasks, state_lost).await?;
    let report = UpReport {
        project: lab.stack.project.clone(),
        containers_changed: changed,
        ports: lab.state.ports.clone(),
        flink_ui: lab.stack.url(PortKey::FlinkUi),
        spark_ui: lab.stack.url(PortKey::SparkUi),
        broker_sasl_ssl: secure,
        flink_client,
        flink_job_restored,
        seconds: UpSeconds {
            images: images_secs,
            start_to_ready: t_start.elapsed().as_secs_f64(),
            total: started.elapsed().as_secs_f64(),
        },
    };
    Ok((lab, report))
}

/// The lab's Flink job is part of the lab: when it should run (`State::flink_job`) but the
/// cluster has no running copy (a JobManager without HA loses its jobs when it dies), it is
/// submitted again and restores from its newest retained checkpoint.
///
/// After a lost state file (`state_lost`) the job roles have new passwords, so a running lab
/// job is replaced through a savepoint: its connections would fail at their next login.
async fn restore_lab_job(
    lab: &Lab,
    tasks: &dyn Tasks,
    state_lost: bool,
) -> Result<Option<Submitted>> {
    if !lab.state.flink_job && !state_lost {
        return Ok(None);
    }
    let client = lab.flink(Duration::from_secs(10))?;
    let name = flink_job::job_name(&lab.config.project);
    let running = client.jobs().await?.iter().any(|j| j.name == name && j.state.is_active());
    if running != state_lost {
        return Ok(None);
    }
    let task = tasks.task("flink job");
    task.note(&if running {
        format!("the lab's job `{name}` logs in with the writer's former password: replacing it through a savepoint")
    } else {
        format!("the lab's job `{name}` is not running: submitting it again")
    });
    let req = SubmitRequest {
        replace: running,
        fresh: false,
        allow_non_restored_state: false,
        timeout: Duration::from_secs(120),
        verbose: false,
    };
    let prepared = flink::prepare(lab, &Script::Lab)?;
    match flink::submit_holding_lock(lab, &prepared, &req, task.as_ref()).await {
        Ok(done) => {
            let from = done.restored_from.as_ref().map_or("without saved state".to_string(), |r| {
                format!("from {} {}", r.kind, r.path)
            });
            task.done(&format!("job {} running again, {from}", done.job_id));
            Ok(Some(done))
        }
        Err(e) => {
            task.failed("not brought back");
            Err(e.context(if running {
                format!("the lab's Flink job `{name}` could not be replaced to log in with the writer's new password; `labctl submit flink --replace` tries again")
            } else {
                format!("the lab's Flink job `{name}` was lost and could not be brought back; `labctl submit flink --fresh` starts it without its saved state")
            }))
        }
    }
}

/// `broker.sasl_ssl_listener`: copies the CA the broker made on its first start next to the
/// state file (what clients of the listener name as their CA file) and logs in through the host
/// listener as a client would: TLS verified against that CA, SCRAM-SHA-512 as `lab`.
async fn check_sasl_ssl_listener(rt: &Runtime, lab: &Lab, port: u16) -> Result<SaslSslListener> {
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
    let client = Broker {
        bootstrap: bootstrap.clone(),
        security: security.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    // The listener opens with the broker; the login can trail it by a moment.
    let waited = poll_until(
        Every::millis(500).within(Duration::from_secs(30)),
        || async {
            Ok(match client.ping(Duration::from_secs(5)).await {
                Ok(_) => Check::Ready(()),
                Err(e) => {
                    tracing::debug!("SASL_SSL listener not ready yet: {e:#}");
                    Check::NotYet(format!("{e:#}"))
                }
            })
        },
        |_| {},
    )
    .await?;
    if let Waited::TimedOut { last, .. } = waited {
        return Err(anyhow!("{last}").context(format!(
            "the broker's SASL_SSL listener {bootstrap} refused labctl's login (a broker volume formatted before broker.sasl_ssl_listener was set has no SCRAM user: `labctl down --volumes` makes a new one)"
        )));
    }
    Ok(SaslSslListener {
        bootstrap,
        cluster_bootstrap: format!("{}:{}", stack::BROKER, stack::BROKER_SASL_SSL_PORT),
        user: stack::BROKER_SASL_USER,
        mechanisms: ["SCRAM-SHA-256", "SCRAM-SHA-512"],
        ca_file,
    })
}

/// A host port the lab needs that something else holds.
#[derive(Debug)]
struct PortTaken {
    service: String,
    port: u16,
    bind: String,
    key: String,
    error: std::io::Error,
}

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "port {} on {} ({}, config key ports.{}) is already in use: {}. Free it, or pick another port in \
             labctl.toml [ports] or with LABCTL_PORTS_{}=<port> (0 picks a free one)",
            self.port,
            self.bind,
            self.service,
            self.key,
            self.error,
            self.key.to_ascii_uppercase()
        )
    }
}

/// The first host port the lab needs that is held by something else, checked before anything
/// changes (a port our own running container already publishes is fine: it stays).
fn taken_port(lab: &Lab, existing: &[ContainerInfo]) -> Option<PortTaken> {
    for svc in &lab.stack.services {
        for p in &svc.ports {
            let ours = existing
                .iter()
                .any(|c| c.service == svc.name && c.running() && c.host_ports.contains(&p.host));
            if ours {
                continue;
            }
            let bind = lab.stack.port_bind(p);
            if let Err(error) = std::net::TcpListener::bind((bind, p.host)) {
                return Some(PortTaken {
                    service: svc.name.to_string(),
                    port: p.host,
                    bind: bind.to_string(),
                    key: p.key.as_str().to_string(),
                    error,
                });
            }
        }
    }
    None
}

/// Base image first, then the images the stack uses.
async fn lab_images(
    rt: &Runtime,
    lab: &Lab,
    tasks: &dyn Tasks,
    force: bool,
) -> Result<Vec<(&'static str, String)>> {
    let task = tasks.task("images");
    rt.ensure_base(task.as_ref()).await?;
    let specs: Vec<&'static ImageSpec> = IMAGES
        .iter()
        .filter(|i| lab.stack.services.iter().any(|s| s.image.name == i.name))
        .collect();
    let results = build_images(rt, &specs, force, tasks).await?;
    let built: Vec<&str> = results.iter().filter(|r| r.2).map(|r| r.0).collect();
    task.done(&if built.is_empty() {
        "all cached".into()
    } else {
        format!("built {}", built.join(", "))
    });
    Ok(results.into_iter().map(|(name, tag, _)| (name, tag)).collect())
}

/// Creates, starts or keeps replicas 1..=N of one service (N from the stack, i.e. the lab's
/// remembered size); returns how many containers changed. `up` and `scale` both start
/// replicas through here.
pub async fn ensure_replicas(
    rt: &Runtime,
    lab: &Lab,
    svc: &Service,
    tag: &str,
    existing: &[ContainerInfo],
) -> Result<usize> {
    let state = lab.state.clone();
    let secrets = move |s: Secret| state.secret(s);
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
pub async fn remove_surplus(
    rt: &Runtime,
    lab: &Lab,
    existing: &[ContainerInfo],
) -> Result<Vec<String>> {
    let mut surplus: Vec<&ContainerInfo> = existing
        .iter()
        .filter(|c| {
            !lab.stack
                .service_named(&c.service)
                .is_some_and(|s| c.replica >= 1 && c.replica <= s.replicas)
        })
        .collect();
    surplus.sort_by_key(|c| std::cmp::Reverse(c.replica));
    let mut removed = Vec::new();
    for c in surplus {
        let timeout = lab.stack.service_named(&c.service).map_or(20, |s| s.stop_timeout);
        tracing::info!("removing {} (scaled down or no longer defined)", c.name);
        rt.remove_container(&c.name, timeout as i64).await?;
        removed.push(c.name.clone());
    }
    Ok(removed)
}

/// How waiting on one probe ended.
enum ProbeEnd {
    Ready(String),
    /// Credentials or certificates refused: waiting won't fix it.
    Refused(String),
    TimedOut(String),
}

/// Waits on one service's probe until it passes, refuses labctl, or `timeout` ends.
async fn wait_probe(
    lab: &Lab,
    probe: &Probe,
    timeout: Duration,
    task: &dyn Progress,
) -> Result<ProbeEnd> {
    let waited = poll_until(
        Every::millis(500).within(timeout),
        || async {
            Ok(match lab.probe(probe, Duration::from_secs(3)).await {
                Ok(detail) => Check::Ready(ProbeEnd::Ready(detail)),
                Err(e)
                    if e.downcast_ref::<SecurityFailure>().is_some()
                        || e.downcast_ref::<Refusal>().is_some() =>
                {
                    Check::Ready(ProbeEnd::Refused(format!("{e:#}")))
                }
                Err(e) => Check::NotYet(format!("{e:#}")),
            })
        },
        |why| task.set(&format!("waiting: {why}")),
    )
    .await?;
    Ok(match waited {
        Waited::Ready(end) => end,
        Waited::TimedOut { last, .. } => ProbeEnd::TimedOut(last),
    })
}

/// Waits on every service's probe at once until each passes or the timeout ends; the error
/// names each service that did not, with its last log lines.
async fn wait_ready(rt: &Runtime, lab: &Lab, tasks: &dyn Tasks, after_setup: bool) -> Result<()> {
    let timeout = Duration::from_secs(lab.config.ready_timeout_secs);
    let mut set = tokio::task::JoinSet::new();
    // External services get the same probes as the managed ones they replace.
    let mut checks: Vec<(ServiceId, Probe, String)> = lab
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
        let task = tasks.task(name.as_str());
        let lab = lab.clone();
        set.spawn(async move {
            let start = Instant::now();
            match wait_probe(&lab, &probe, timeout, task.as_ref()).await {
                Ok(ProbeEnd::Ready(detail)) => {
                    let secs = start.elapsed().as_secs_f64();
                    task.done(&format!("{label}ready in {secs:.1} s: {detail}"));
                    Ok(())
                }
                Ok(ProbeEnd::Refused(why)) => {
                    task.failed(&format!("{label}refused: {why}"));
                    Err((name, why))
                }
                Ok(ProbeEnd::TimedOut(why)) => {
                    task.failed(&format!("{label}NOT READY after {timeout:?}: {why}"));
                    Err((name, why))
                }
                Err(e) => Err((name, format!("{e:#}"))),
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(res) = set.join_next().await {
        if let Err((svc, why)) = res.context("readiness task")? {
            failures.push((svc, why));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let mut msg = String::new();
    for (name, why) in &failures {
        if let Some(e) = lab.stack.external_for(*name) {
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
        let related: HashSet<ServiceId> = lab
            .stack
            .services
            .iter()
            .filter(|s| s.name == *name || s.probe == Probe::CoveredBy { service: *name })
            .map(|s| s.name)
            .collect();
        for s in lab.stack.services.iter().filter(|s| related.contains(&s.name)) {
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
async fn setup_lab(lab: &Lab, tasks: &dyn Tasks) -> Result<()> {
    let task = tasks.task("setup");
    let topic = &lab.config.broker.topic;
    let created = lab.broker()?.ensure_topic(topic, lab.config.broker.partitions).await?;
    task.set(&format!("topic {topic} {}", if created { "created" } else { "present" }));
    let db = lab.database()?;
    let tables = db.apply_schema().await?;
    if !lab.external(Part::Database) {
        let lab_tables: Vec<&str> = schema::ALL_TABLES.iter().map(|t| t.name).collect();
        for (role, access) in [(DbRole::Writer, Access::Write), (DbRole::Reader, Access::Read)] {
            let creds = lab.db_credentials(role)?;
            db.ensure_role(&LabRole {
                name: &creds.user,
                password: &creds.password,
                access,
                tables: &lab_tables,
            })
            .await?;
        }
    }
    let container = &lab.config.lake.container;
    lab.blob(Duration::from_secs(5))?.create_container(container).await?;
    task.done(&format!(
        "topic `{topic}` ({} partitions), hypertables {}, blob container `{container}`",
        lab.config.broker.partitions,
        tables.join(" + ")
    ));
    Ok(())
}
