//! A lab of its own for one test binary: unique project name, ports picked by labctl (0 =
//! free port), a private state folder, and `down --volumes` when dropped, so tests never
//! collide with each other, with a user's lab, or with leftovers of an earlier run.

#![allow(dead_code)]

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use labctl::{model::config::Config, ops::lab::Lab, stack::state::State};

pub struct TestLab {
    pub project: String,
    pub state_dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

/// The variable that sets a `[ports]` key, e.g. `LABCTL_PORTS_FLINK_UI`.
pub fn port_env(key: labctl::model::config::PortKey) -> String {
    format!("LABCTL_PORTS_{}", key.as_str().to_ascii_uppercase())
}

pub fn labctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_labctl"))
}

impl TestLab {
    pub fn new(prefix: &str) -> Self {
        let nonce: u32 = rand::random::<u32>() % 100_000;
        let project = format!("t-{prefix}-{}-{nonce}", std::process::id() % 100_000);
        let state_dir = tempfile::tempdir().expect("tempdir");
        let mut env = vec![("LABCTL_PROJECT".to_string(), project.clone())];
        for key in labctl::model::config::PortKey::ALL {
            env.push((port_env(key), "0".into()));
        }
        env.push(("LABCTL_STATE_DIR".into(), state_dir.path().display().to_string()));
        Self { project, state_dir, env }
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.set_env(key, value);
        self
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(labctl_bin());
        c.args(args)
            .envs(self.env.iter().cloned())
            .env_remove("LABCTL_CONFIG")
            .current_dir(self.state_dir.path());
        c
    }

    /// Runs labctl and returns its output, echoing stderr so CI logs show progress.
    pub fn run(&self, args: &[&str]) -> Output {
        let t = Instant::now();
        let out = self.command(args).output().expect("running labctl");
        eprintln!(
            "--- labctl {} ({:.1} s, {}) ---\n{}",
            args.join(" "),
            t.elapsed().as_secs_f64(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs labctl and fails the test unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "labctl {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("labctl {} printed no JSON ({e}):\n{out}", args.join(" ")))
    }

    /// The lab as labctl sees it (config from this lab's environment, state from its folder).
    pub fn lab(&self) -> Lab {
        // SAFETY of env use: the library reads LABCTL_STATE_DIR from the process environment.
        std::env::set_var("LABCTL_STATE_DIR", self.state_dir.path());
        let config = Config::load(None, self.env.iter().cloned()).expect("config");
        Lab::new(config.clone(), State::require(&config).expect("state"))
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let out = self.command(&["down", "--volumes", "--yes"]).output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!(
                    "cleanup of {} failed: {}",
                    self.project,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, timeout, f, String::new)
}

/// Like `wait_for`, but a timeout first prints what `explain` finds (a job's state, a
/// container's log): a CI run that fails once must say why, as there is no rerun to look at.
pub fn wait_for_explained<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            let why = explain();
            if !why.is_empty() {
                eprintln!("--- while waiting for {what} ---\n{why}");
            }
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What Flink and Docker say of a streaming job that does not get on: the job's and its tasks'
/// states, its newest failure, the TaskManagers the JobManager knows, the containers, and the
/// tail of each Flink container's log.
pub fn flink_diagnosis(t: &TestLab, rt: &tokio::runtime::Runtime, job_id: &str) -> String {
    let mut out = String::new();
    let lab = t.lab();
    match lab.flink(Duration::from_secs(10)) {
        Err(e) => out += &format!("no Flink client: {e:#}\n"),
        Ok(c) => {
            match rt.block_on(c.job(job_id)) {
                Ok(j) => {
                    out += &format!("job {job_id}: {:?}\n", j.state);
                    for v in &j.vertices {
                        out += &format!("  {}: {:?}\n", v.name, v.status);
                    }
                }
                Err(e) => out += &format!("job {job_id}: {e:#}\n"),
            }
            match rt.block_on(c.last_exception(job_id)) {
                Ok(Some((cause, full))) => {
                    let head: String = full.lines().take(30).collect::<Vec<_>>().join("\n");
                    out += &format!("newest failure: {cause}\n{head}\n");
                }
                Ok(None) => out += "no failure recorded\n",
                Err(e) => out += &format!("exceptions: {e:#}\n"),
            }
            match rt.block_on(c.taskmanagers()) {
                Ok(tms) => {
                    for tm in tms {
                        out += &format!(
                            "TaskManager {} at {}: {} slots, {} free\n",
                            tm.id, tm.path, tm.slots_number, tm.free_slots
                        );
                    }
                }
                Err(e) => out += &format!("taskmanagers: {e:#}\n"),
            }
            if let Ok(cp) = rt.block_on(c.checkpoints(job_id)) {
                out += &format!("checkpoints: {}\n", cp["counts"]);
            }
        }
    }
    out + &containers_diagnosis(t, &["flink-"])
}

/// `docker ps -a` of the lab, and the last 60 log lines of each container of a service whose
/// name starts with one of `services` (`broker` takes broker-2 and broker-3 too).
pub fn containers_diagnosis(t: &TestLab, services: &[&str]) -> String {
    let mut out = String::new();
    let ps = Command::new("docker")
        .args(["ps", "-a", "--filter", &format!("name={}-", t.project)])
        .args(["--format", "{{.Names}} {{.Status}}"])
        .output();
    if let Ok(ps) = ps {
        out += &String::from_utf8_lossy(&ps.stdout);
        for name in String::from_utf8_lossy(&ps.stdout).lines() {
            let name = name.split(' ').next().unwrap_or_default();
            if services.iter().any(|s| name.starts_with(&format!("{}-{s}", t.project))) {
                if let Ok(log) =
                    Command::new("docker").args(["logs", "--tail", "60", name]).output()
                {
                    out += &format!("--- docker logs --tail 60 {name} ---\n");
                    out += &String::from_utf8_lossy(&log.stdout);
                    out += &String::from_utf8_lossy(&log.stderr);
                }
            }
        }
    }
    out
}

/// GET a JSON document (Flink REST, the Spark master's UI); None when it does not answer.
pub fn get_json(rt: &tokio::runtime::Runtime, url: &str) -> Option<serde_json::Value> {
    rt.block_on(async { reqwest::get(url).await.ok()?.json::<serde_json::Value>().await.ok() })
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// Fails unless `doc` (a `labctl status --json` document) matches docs/status.schema.json.
pub fn assert_status_schema(doc: &serde_json::Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("reading the schema"))
            .expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> =
        validator.iter_errors(doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "status JSON does not match docs/status.schema.json: {errors:#?}\n{doc:#}"
    );
}

/// One message of the lab's topic as read back by a test.
pub struct TopicMessage {
    pub partition: i32,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Every message of the lab's topic, from each partition's low to its high offset as they were
/// when the call began.
pub fn read_topic(lab: &Lab, timeout: Duration) -> Vec<TopicMessage> {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        Message, Offset, TopicPartitionList,
    };
    let broker = lab.broker().expect("broker address");
    let topic = &lab.config.broker.topic;
    let offsets =
        rt().block_on(broker.offsets(topic, Duration::from_secs(5))).expect("end offsets");
    let consumer: BaseConsumer =
        broker.client_config().set("group.id", "labctl-test-read").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for p in &offsets {
        tpl.add_partition_offset(topic, p.partition, Offset::Offset(p.low))
            .expect("partition offset");
        if p.high > p.low {
            remaining.insert(p.partition, p.high);
        }
    }
    consumer.assign(&tpl).expect("assigning partitions");
    let mut out = Vec::new();
    let start = Instant::now();
    while !remaining.is_empty() {
        assert!(start.elapsed() < timeout, "reading the topic back timed out after {timeout:?}");
        let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
        let m = m.expect("a message");
        let Some(&end) = remaining.get(&m.partition()) else { continue };
        if m.offset() >= end {
            continue;
        }
        if m.offset() + 1 >= end {
            remaining.remove(&m.partition());
        }
        out.push(TopicMessage {
            partition: m.partition(),
            key: m.key().unwrap_or_default().to_vec(),
            payload: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

/// The lab job's entries of `labctl flink jobs --json` as (id, state), or None while the
/// JobManager does not answer.
pub fn lab_jobs(t: &TestLab) -> Option<Vec<(String, String)>> {
    let out = t.command(&["flink", "jobs", "--json"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let name = format!("{}: sensor aggregation", t.project);
    Some(
        jobs.as_array()?
            .iter()
            .filter(|j| j["name"] == name.as_str())
            .map(|j| {
                (
                    j["jid"].as_str().unwrap_or_default().to_string(),
                    j["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

/// Seconds between the generator's readings in the tests' labs (the default).
pub const INTERVAL: i64 = 5;

#[derive(serde::Deserialize)]
struct Msg<'a> {
    machine_id: &'a str,
    sensor_type: &'a str,
    timestamp: &'a str,
}

/// (machine, sensor, seconds) of every generator message in the topic, in partition order.
pub fn read_readings(lab: &Lab) -> Vec<(String, String, i64)> {
    read_topic(lab, Duration::from_secs(180))
        .iter()
        .map(|m| {
            let msg: Msg = serde_json::from_slice(&m.payload).expect("a generator message");
            let ts =
                labctl::ops::ingest::encode::parse_timestamp(msg.timestamp).expect("a timestamp");
            (msg.machine_id.to_string(), msg.sensor_type.to_string(), ts)
        })
        .collect()
}

/// Lost and duplicated readings, given what the generator must have produced: every tick from
/// `first_tick` to the newest tick in the topic, for each of the 9 (machine, sensor) pairs.
pub struct Audit {
    pub messages: usize,
    pub unique: usize,
    pub duplicated: usize,
    pub lost: i64,
    pub first_ticks: HashSet<i64>,
    pub last_tick: i64,
}

pub fn audit(readings: &[(String, String, i64)], first_tick_range: (i64, i64)) -> Audit {
    let mut seen: HashSet<(&str, &str, i64)> = HashSet::with_capacity(readings.len());
    let mut first: HashMap<(&str, &str), i64> = HashMap::new();
    let mut last: HashMap<(&str, &str), i64> = HashMap::new();
    let mut duplicated = 0;
    for (m, s, ts) in readings {
        if !seen.insert((m, s, *ts)) {
            duplicated += 1;
        }
        let k = (m.as_str(), s.as_str());
        let f = first.entry(k).or_insert(*ts);
        *f = (*f).min(*ts);
        let l = last.entry(k).or_insert(*ts);
        *l = (*l).max(*ts);
    }
    assert_eq!(first.len(), 9, "3 machines x 3 sensors: {:?}", first.keys());
    let first_ticks: HashSet<i64> = first.values().map(|ts| ts / INTERVAL).collect();
    for t in &first_ticks {
        assert!(
            (first_tick_range.0..=first_tick_range.1).contains(t),
            "the backfill starts at tick {t}, expected {first_tick_range:?} (the backfill before the generator's start)"
        );
    }
    // Lockstep: every pair is complete up to the newest tick except, at most, the one in flight.
    let last_tick = last.values().map(|ts| ts / INTERVAL).max().unwrap();
    let first_tick = *first_ticks.iter().min().unwrap();
    let expected: i64 = first.keys().map(|k| last[k] / INTERVAL - first_tick + 1).sum();
    for (k, l) in &last {
        assert!(
            last_tick - l / INTERVAL <= 1,
            "{k:?} ends at tick {}, others at {last_tick}",
            l / INTERVAL
        );
    }
    Audit {
        messages: readings.len(),
        unique: seen.len(),
        duplicated,
        lost: expected - seen.len() as i64,
        first_ticks,
        last_tick,
    }
}

/// Runs the docker CLI (faults are injected the way an operator would) and returns its stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("running docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// (partition, end offset) of every partition of the lab's topic, sorted; None while the
/// broker does not answer.
pub fn topic_ends(rt: &tokio::runtime::Runtime, lab: &Lab) -> Option<Vec<(i32, i64)>> {
    let o = rt
        .block_on(lab.broker().ok()?.offsets(&lab.config.broker.topic, Duration::from_secs(3)))
        .ok()?;
    let mut v: Vec<(i32, i64)> = o.iter().map(|p| (p.partition, p.high)).collect();
    v.sort();
    Some(v)
}

/// Messages in the lab's topic (the sum of its end offsets; the lab deletes nothing).
pub fn topic_total(rt: &tokio::runtime::Runtime, lab: &Lab) -> Option<i64> {
    topic_ends(rt, lab).map(|v| v.iter().map(|(_, h)| h).sum())
}

/// `labctl verify --json`: its exit code and the verdict (ok) of each hop, by name.
pub fn verify(t: &TestLab) -> (Option<i32>, Vec<(String, bool)>, serde_json::Value) {
    let out = t.run(&["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("verify printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    let hops = report["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap().to_string(), h["ok"].as_bool().unwrap()))
        .collect();
    (out.status.code(), hops, report)
}

/// `labctl verify` exits 0 and every hop had something to check.
pub fn assert_verified(t: &TestLab, after: &str) {
    let (code, hops, report) = verify(t);
    assert_eq!(code, Some(0), "labctl verify after {after}: {hops:?}\n{:#}", report["hops"]);
    assert!(
        report["hops"].as_array().unwrap().iter().all(|h| h["checked"] == true),
        "every hop had something to check after {after}: {:#}",
        report["hops"]
    );
}
