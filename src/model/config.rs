//! What the user can change: defaults compiled in, then `labctl.toml`, then `LABCTL_*`
//! environment variables. Every value that later reaches a container command, a file path or
//! SQL is validated here, once, so the rest of the code can trust a `Config`.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Environment variables that configure labctl itself rather than the lab.
const NON_CONFIG_VARS: &[&str] = &[
    "LABCTL_CONFIG",
    "LABCTL_STATE_DIR",
    "LABCTL_JAR_CACHE",
    "LABCTL_LOG",
    SECRET_DATABASE_PASSWORD,
    SECRET_BROKER_PASSWORD,
    SECRET_LAKE_KEY,
];

/// Secrets of external services: read from these environment variables when needed, never from
/// the config file, never written to the state file.
/// Largest KRaft quorum a lab runs (`broker.nodes`).
pub const MAX_BROKER_NODES: u32 = 3;
/// Largest replica count of a scalable service (as `flink.taskmanagers` / `spark.workers`).
pub const MAX_REPLICAS: u32 = 8;

pub const SECRET_DATABASE_PASSWORD: &str = "LABCTL_DATABASE_PASSWORD";
pub const SECRET_BROKER_PASSWORD: &str = "LABCTL_BROKER_SASL_PASSWORD";
pub const SECRET_LAKE_KEY: &str = "LABCTL_LAKE_KEY";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Prefix of every container, network and volume; two labs with different names never collide.
    pub project: String,
    /// Host address the published ports bind to.
    pub bind_address: String,
    pub ports: Ports,
    pub broker: BrokerConfig,
    pub database: DatabaseConfig,
    pub flink: FlinkConfig,
    pub spark: SparkConfig,
    pub lake: LakeConfig,
    pub ingest: IngestConfig,
    /// Seconds `up` waits for one service to become ready.
    pub ready_timeout_secs: u64,
}

/// Host ports. 0 means "pick a free one on first `up` and keep it" (tests use this).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub broker: u16,
    /// The host listeners of broker nodes 2 and 3 (with `broker.nodes = 3`).
    pub broker_2: u16,
    pub broker_3: u16,
    pub database: u16,
    pub flink_ui: u16,
    pub spark_ui: u16,
    pub spark_rest: u16,
    pub azurite: u16,
    /// The lab broker's SASL_SSL listener on the host (with `broker.sasl_ssl_listener`).
    pub broker_sasl_ssl: u16,
}

/// A published port, named by its key under `[ports]` (and `LABCTL_PORTS_<KEY>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKey {
    Broker,
    #[serde(rename = "broker_2")]
    Broker2,
    #[serde(rename = "broker_3")]
    Broker3,
    Database,
    FlinkUi,
    SparkUi,
    SparkRest,
    Azurite,
    BrokerSaslSsl,
}

impl PortKey {
    pub const ALL: [PortKey; 9] = [
        PortKey::Broker,
        PortKey::Broker2,
        PortKey::Broker3,
        PortKey::Database,
        PortKey::FlinkUi,
        PortKey::SparkUi,
        PortKey::SparkRest,
        PortKey::Azurite,
        PortKey::BrokerSaslSsl,
    ];

    /// The key under `[ports]`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PortKey::Broker => "broker",
            PortKey::Broker2 => "broker_2",
            PortKey::Broker3 => "broker_3",
            PortKey::Database => "database",
            PortKey::FlinkUi => "flink_ui",
            PortKey::SparkUi => "spark_ui",
            PortKey::SparkRest => "spark_rest",
            PortKey::Azurite => "azurite",
            PortKey::BrokerSaslSsl => "broker_sasl_ssl",
        }
    }
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Ports {
    pub fn get(&self, key: PortKey) -> u16 {
        match key {
            PortKey::Broker => self.broker,
            PortKey::Broker2 => self.broker_2,
            PortKey::Broker3 => self.broker_3,
            PortKey::Database => self.database,
            PortKey::FlinkUi => self.flink_ui,
            PortKey::SparkUi => self.spark_ui,
            PortKey::SparkRest => self.spark_rest,
            PortKey::Azurite => self.azurite,
            PortKey::BrokerSaslSsl => self.broker_sasl_ssl,
        }
    }

    pub fn set(&mut self, key: PortKey, port: u16) {
        let slot = match key {
            PortKey::Broker => &mut self.broker,
            PortKey::Broker2 => &mut self.broker_2,
            PortKey::Broker3 => &mut self.broker_3,
            PortKey::Database => &mut self.database,
            PortKey::FlinkUi => &mut self.flink_ui,
            PortKey::SparkUi => &mut self.spark_ui,
            PortKey::SparkRest => &mut self.spark_rest,
            PortKey::Azurite => &mut self.azurite,
            PortKey::BrokerSaslSsl => &mut self.broker_sasl_ssl,
        };
        *slot = port;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub topic: String,
    pub partitions: i32,
    /// KRaft nodes of the lab's broker, each a broker and a voter of the controller quorum:
    /// 1, or 3 for a replicated topic (replication factor 3, `min.insync.replicas` 2).
    pub nodes: u32,
    /// JVM heap of each broker node, e.g. `512m`.
    pub heap: String,
    /// An external broker (labctl starts none): its bootstrap list as labctl reaches it,
    /// `host:port,host:port`. Empty: the lab's own broker.
    pub bootstrap: String,
    /// The same brokers as the Flink cluster reaches them (default: `bootstrap`).
    pub cluster_bootstrap: String,
    /// Advertised broker address -> address labctl connects to instead, e.g.
    /// `{ "kafka-0.internal:9092" = "127.0.0.1:19092" }`, for brokers that advertise names
    /// only their own network resolves.
    pub address_map: std::collections::BTreeMap<String, String>,
    /// An external broker's security: `plaintext`, `sasl_plaintext`, `ssl` or `sasl_ssl`.
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with sasl_*); the password comes from
    /// LABCTL_BROKER_SASL_PASSWORD.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// With ssl / sasl_ssl: PEM file of the CA that signed the broker's certificate, on this
    /// host (default: the system's CAs). labctl verifies the broker with it and hands its
    /// certificates to the Flink job inline, so the cluster needs no copy of the file.
    pub ssl_ca_file: String,
    /// The same CA as a PEM file already on every Flink JobManager and TaskManager (an
    /// absolute path there): the job then names it (`ssl.truststore.location`) instead of
    /// carrying the certificates.
    pub cluster_ssl_ca_file: String,
    /// The lab's own broker: add SASL_SSL listeners (SCRAM-SHA-256 and -512, user `lab`, TLS
    /// with a CA made on its first start), one on the lab's network (`broker:9095`) and one
    /// published on this host (`ports.broker_sasl_ssl`). The plaintext ones stay.
    pub sasl_ssl_listener: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub user: String,
    pub name: String,
    /// An external PostgreSQL with TimescaleDB: `postgresql://[user@]host[:port]/dbname` as
    /// labctl reaches it (user and dbname, when given, replace `user` and `name`); the password
    /// comes from LABCTL_DATABASE_PASSWORD. Empty: the lab's own database.
    pub url: String,
    /// The same database as the Flink and Spark clusters reach it (default: `url`).
    pub cluster_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlinkConfig {
    /// An external Flink session cluster's REST address, e.g. `http://flink:8081`. Empty: the
    /// lab's own cluster.
    pub url: String,
    /// Checkpoints and savepoints of the lab's job on an external cluster: a URI all its
    /// JobManagers and TaskManagers reach, e.g. `s3://bucket/flink` (default: `file:///var/lib/flink`).
    pub state_dir: String,
    pub taskmanagers: u32,
    pub slots_per_taskmanager: u32,
    pub jobmanager_memory: String,
    pub taskmanager_memory: String,
    /// The lab's Flink REST API (and web UI) over TLS that asks every client for a certificate
    /// of the lab's own CA, which only labctl holds: what a `bind_address` beyond loopback
    /// requires, because whoever reaches that API runs any jar.
    pub rest_mutual_tls: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SparkConfig {
    /// An external Spark standalone master as its workers and drivers reach it,
    /// `spark://host:7077`. Empty: the lab's own cluster (then `rest_url`/`ui_url` are empty too).
    pub master_url: String,
    /// Its REST submission server (`spark.master.rest.enabled`), e.g. `http://host:6066`.
    pub rest_url: String,
    /// Its web UI, whose `/json/` reports workers and cores, e.g. `http://host:8080`.
    pub ui_url: String,
    /// Python with pyspark on its workers (default: the lab image's
    /// `/opt/spark-venv/bin/python`).
    pub python: String,
    /// The PostgreSQL JDBC driver on its workers, as a `spark.jars` entry (default: the lab
    /// image's `file:/usr/share/java/postgresql.jar`).
    pub jdbc_jar: String,
    pub workers: u32,
    pub worker_cores: u32,
    pub worker_memory: String,
    /// The lab's Spark REST submission server only takes requests carrying a token signed with
    /// the lab's key (Spark 4's JWSFilter), which only labctl holds: what a `bind_address`
    /// beyond loopback requires, because whoever reaches that server runs any program.
    pub rest_tokens: bool,
}

/// The generator that `up` starts as a service of the lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Start it with `up` (`up --no-ingest` overrides).
    pub enabled: bool,
    /// Machines per type (CNC, Lathe, Welder).
    pub machines: u32,
    pub seed: u64,
    pub interval_secs: u32,
    /// History produced on a first start, e.g. `7d`, `12h`, `0`.
    pub backfill: String,
    /// Readings per second the backfill is held to (0: as fast as the broker takes them).
    pub backfill_rate: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            machines: 1,
            seed: 20231010,
            interval_secs: 5,
            backfill: "7d".into(),
            backfill_rate: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Blob container holding the Delta tables.
    pub container: String,
    /// External blob storage, path-style with the account as labctl reaches it: e.g.
    /// `https://myaccount.blob.core.windows.net` or `http://host:10000/devstoreaccount1`; the
    /// key comes from LABCTL_LAKE_KEY. Empty: the lab's own Azurite.
    pub endpoint: String,
    /// The same storage as the Spark cluster reaches it (default: `endpoint`).
    pub cluster_endpoint: String,
    /// Storage account name (default with an endpoint: its first host label for
    /// `*.blob.core.windows.net`, else the endpoint's path).
    pub account: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            project: "iiot-lab".into(),
            bind_address: "127.0.0.1".into(),
            ports: Ports::default(),
            broker: BrokerConfig::default(),
            database: DatabaseConfig::default(),
            flink: FlinkConfig::default(),
            spark: SparkConfig::default(),
            lake: LakeConfig::default(),
            ingest: IngestConfig::default(),
            ready_timeout_secs: 240,
        }
    }
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            broker: 9092,
            broker_2: 9093,
            broker_3: 9094,
            database: 5432,
            flink_ui: 8081,
            spark_ui: 8080,
            spark_rest: 6066,
            azurite: 10000,
            broker_sasl_ssl: 9096,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            topic: "sensors".into(),
            partitions: 3,
            nodes: 1,
            heap: "512m".into(),
            bootstrap: String::new(),
            cluster_bootstrap: String::new(),
            address_map: Default::default(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            ssl_ca_file: String::new(),
            cluster_ssl_ca_file: String::new(),
            sasl_ssl_listener: false,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            user: "lab".into(),
            name: "iiot".into(),
            url: String::new(),
            cluster_url: String::new(),
        }
    }
}

impl Default for FlinkConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            state_dir: String::new(),
            taskmanagers: 1,
            slots_per_taskmanager: 3,
            jobmanager_memory: "1024m".into(),
            taskmanager_memory: "1280m".into(),
            rest_mutual_tls: false,
        }
    }
}

impl Default for SparkConfig {
    fn default() -> Self {
        Self {
            master_url: String::new(),
            rest_url: String::new(),
            ui_url: String::new(),
            python: String::new(),
            jdbc_jar: String::new(),
            workers: 1,
            worker_cores: 2,
            worker_memory: "2g".into(),
            rest_tokens: false,
        }
    }
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            container: "lake".into(),
            endpoint: String::new(),
            cluster_endpoint: String::new(),
            account: String::new(),
        }
    }
}

/// A config value that failed validation; names the key so the user knows what to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for `{key}`: {value:?}: {reason}")]
pub struct InvalidValue {
    pub key: String,
    pub value: String,
    pub reason: String,
}

fn invalid(key: &str, value: impl fmt::Display, reason: &str) -> anyhow::Error {
    InvalidValue { key: key.into(), value: value.to_string(), reason: reason.into() }.into()
}

/// Lowercase DNS-label style name: safe in container names, SQL identifiers (after quoting) and paths.
pub fn check_name(key: &str, value: &str, max: usize) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.ends_with('-');
    if !ok {
        bail!(invalid(
            key,
            value,
            &format!("use 1-{max} characters a-z, 0-9 and '-', starting with a letter")
        ));
    }
    Ok(())
}

/// A plain SQL identifier (no quoting needed, nothing to inject).
pub fn check_identifier(key: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!(invalid(
            key,
            value,
            "use a lowercase SQL identifier: a-z, 0-9 and '_', starting with a letter or '_'"
        ));
    }
    Ok(())
}

fn check_range<T: PartialOrd + fmt::Display + Copy>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<()> {
    if value < lo || value > hi {
        bail!(invalid(key, value, &format!("must be between {lo} and {hi}")));
    }
    Ok(())
}

/// JVM-style memory size such as `1024m` or `2g`.
fn check_memory(key: &str, value: &str) -> Result<()> {
    // strip_suffix, not split_at: a value ending in a multi-byte character must not panic.
    let digits = value.strip_suffix('m').or_else(|| value.strip_suffix('g'));
    let ok = digits
        .is_some_and(|d| !d.is_empty() && d.len() <= 7 && d.chars().all(|c| c.is_ascii_digit()));
    if !ok {
        bail!(invalid(key, value, "use a whole number followed by m or g, e.g. 1024m or 2g"));
    }
    Ok(())
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        check_name("project", &self.project, 40)?;
        let addr: std::net::IpAddr = self.bind_address.parse().map_err(|_| {
            invalid("bind_address", &self.bind_address, "must be an IP address such as 127.0.0.1")
        })?;
        if addr.is_unspecified() {
            tracing::warn!(
                "bind_address {addr} publishes the lab's ports on every interface of this host"
            );
        }
        let topic_ok = !self.broker.topic.is_empty()
            && self.broker.topic.len() <= 200
            && self
                .broker
                .topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && self.broker.topic != "."
            && self.broker.topic != "..";
        if !topic_ok {
            bail!(invalid(
                "broker.topic",
                &self.broker.topic,
                "use 1-200 characters a-z, A-Z, 0-9, '.', '_' and '-'"
            ));
        }
        check_range("broker.partitions", self.broker.partitions, 1, 64)?;
        check_range("broker.nodes", self.broker.nodes, 1, MAX_BROKER_NODES)?;
        if self.broker.sasl_ssl_listener && self.broker.nodes != 1 {
            bail!(invalid("broker.sasl_ssl_listener", true, "is available with broker.nodes = 1 only (its listeners and certificate are made for one node); set broker.nodes = 1 or sasl_ssl_listener = false"));
        }
        if self.flink.rest_mutual_tls && !self.flink.url.is_empty() {
            bail!(invalid("flink.rest_mutual_tls", true, "applies to the lab's own Flink cluster, and flink.url names an external one; remove one of the two"));
        }
        if self.spark.rest_tokens && !self.spark.master_url.is_empty() {
            bail!(invalid("spark.rest_tokens", true, "applies to the lab's own Spark cluster, and spark.master_url names an external one; remove one of the two"));
        }
        for (i, a) in PortKey::ALL.iter().enumerate() {
            let port = self.ports.get(*a);
            if let Some(b) =
                PortKey::ALL[i + 1..].iter().find(|b| port != 0 && self.ports.get(**b) == port)
            {
                bail!(invalid(
                    &format!("ports.{a}"),
                    port,
                    &format!("is ports.{b} too; give each its own port (0 picks a free one)")
                ));
            }
        }
        check_identifier("database.user", &self.database.user)?;
        check_identifier("database.name", &self.database.name)?;
        check_range("flink.taskmanagers", self.flink.taskmanagers, 1, MAX_REPLICAS)?;
        check_range("flink.slots_per_taskmanager", self.flink.slots_per_taskmanager, 1, 16)?;
        check_memory("broker.heap", &self.broker.heap)?;
        check_memory("flink.jobmanager_memory", &self.flink.jobmanager_memory)?;
        check_memory("flink.taskmanager_memory", &self.flink.taskmanager_memory)?;
        check_range("spark.workers", self.spark.workers, 1, MAX_REPLICAS)?;
        check_range("spark.worker_cores", self.spark.worker_cores, 1, 64)?;
        check_memory("spark.worker_memory", &self.spark.worker_memory)?;
        // Azure container names: 3-63 lowercase letters, digits and single dashes.
        check_name("lake.container", &self.lake.container, 63)?;
        if self.lake.container.len() < 3 || self.lake.container.contains("--") {
            bail!(invalid(
                "lake.container",
                &self.lake.container,
                "Azure needs 3-63 characters and no '--'"
            ));
        }
        check_range("ingest.machines", self.ingest.machines, 1, 1000)?;
        check_range("ingest.interval_secs", self.ingest.interval_secs, 1, 86_400)?;
        crate::model::duration::parse_duration(&self.ingest.backfill)
            .map_err(|e| invalid("ingest.backfill", &self.ingest.backfill, &e.to_string()))?;
        check_range("ready_timeout_secs", self.ready_timeout_secs, 5, 3600)?;
        crate::model::topology::validate(self)?;
        Ok(())
    }

    /// Loads defaults, then the file (explicit path, or `labctl.toml` in the working directory
    /// if present), then `LABCTL_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut value = toml::Value::try_from(Config::default()).context("serialising defaults")?;
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("labctl.toml")).filter(|p| p.exists()),
        };
        if let Some(file) = &file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read config file {}", file.display()))?;
            let overlay: toml::Value = parse_toml(file, &text)?;
            // Every field has a default, so the file alone deserialises as a Config: unknown keys
            // and wrong types are reported with positions in the file the user wrote.
            // The key's path goes into the message: toml's own type errors name only the position.
            serde_path_to_error::deserialize::<_, Config>(toml::Deserializer::new(&text)).map_err(
                |e| {
                    let key = e.path().to_string();
                    let key = if key.is_empty() || key == "." { None } else { Some(key) };
                    file_error(file, &text, e.inner(), key.as_deref())
                },
            )?;
            merge(&mut value, overlay);
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("LABCTL_") else { continue };
            if NON_CONFIG_VARS.contains(&name.as_str()) {
                continue;
            }
            apply_env(&mut value, &name, rest, &raw)?;
        }
        let merged = toml::to_string(&value).context("re-serialising config")?;
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(&merged))
            .map_err(|e| {
                anyhow::anyhow!(
                    "config key `{}` (LABCTL_{} or the file): {}",
                    e.path(),
                    e.path().to_string().replace('.', "_").to_ascii_uppercase(),
                    e.inner().message()
                )
            })?;
        config.validate().with_context(|| match &file {
            Some(f) => format!("configuration from {} and LABCTL_* variables", f.display()),
            None => "configuration from LABCTL_* variables".to_string(),
        })?;
        Ok(config)
    }
}

fn parse_toml(file: &Path, text: &str) -> Result<toml::Value> {
    // Parse as a table, not as `Config`, so the file may set only some keys.
    toml::from_str::<toml::Table>(text)
        .map(toml::Value::Table)
        .map_err(|e| file_error(file, text, &e, None))
}

/// Formats a TOML error as `file:line:column: [key: ]message`, the shape editors jump to.
fn file_error(file: &Path, text: &str, e: &toml::de::Error, key: Option<&str>) -> anyhow::Error {
    let (line, col) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            (line, col)
        }
        None => (1, 1),
    };
    let key = key.map(|k| format!("config key `{k}`: ")).unwrap_or_default();
    anyhow::anyhow!("{}:{line}:{col}: {key}{}", file.display(), e.message().trim())
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `LABCTL_FLINK_TASKMANAGERS=2` sets `flink.taskmanagers`; `LABCTL_PROJECT=x` sets `project`.
fn apply_env(value: &mut toml::Value, name: &str, rest: &str, raw: &str) -> Result<()> {
    let root = value.as_table_mut().expect("config is a table");
    let lower = rest.to_ascii_lowercase();
    // Top-level keys first (they contain underscores too: ready_timeout_secs, bind_address).
    let (table, key) = if root.get(&lower).is_some_and(|v| !v.is_table()) {
        (root, lower)
    } else {
        let Some((section, key)) = lower.split_once('_') else {
            bail!("unknown environment variable {name}: no config key `{lower}`; see `labctl config --help`")
        };
        match root.get_mut(section).and_then(|v| v.as_table_mut()) {
            Some(t) if t.contains_key(key) => (t, key.to_string()),
            _ => bail!("unknown environment variable {name}: no config key `{section}.{key}`; see `labctl config show`"),
        }
    };
    let old = table.get(&key).expect("checked above");
    let new = match old {
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim().parse().map_err(|_| invalid(name, raw, "must be a whole number"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.trim().parse().map_err(|_| invalid(name, raw, "must be true or false"))?,
        ),
        _ => toml::Value::String(raw.to_string()),
    };
    table.insert(key, new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labctl.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn one_port_for_two_services_is_refused() {
        let err = format!("{:#}", load_str("[ports]\ndatabase = 9092\n", &[]).unwrap_err());
        assert!(err.contains("ports.broker") && err.contains("ports.database"), "{err}");
        let zeros = load_str("[ports]\nbroker = 0\ndatabase = 0\n", &[]).unwrap();
        zeros.validate().expect("0 is a free port each, not one port");
    }

    #[test]
    fn file_then_env_override() {
        let c = load_str(
            "project = \"lab-a\"\n[flink]\ntaskmanagers = 2\n",
            &[("LABCTL_FLINK_TASKMANAGERS", "3"), ("LABCTL_PORTS_BROKER", "0")],
        )
        .unwrap();
        assert_eq!(c.project, "lab-a");
        assert_eq!(c.flink.taskmanagers, 3);
        assert_eq!(c.ports.broker, 0);
        assert_eq!(c.flink.slots_per_taskmanager, 3, "untouched keys keep defaults");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err =
            load_str("project = \"x\"\n[flink]\ntaskmanager = 2\n", &[]).unwrap_err().to_string();
        assert!(err.contains("labctl.toml:"), "{err}");
        assert!(err.contains("taskmanager"), "{err}");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = load_str("project = \n", &[]).unwrap_err().to_string();
        assert!(err.contains("labctl.toml:1:"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = load_str("[flink]\ntaskmanagers = \"two\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("taskmanagers") || err.contains("invalid type"), "{err}");
    }

    #[test]
    fn hostile_values_are_rejected() {
        for (k, v) in [
            ("LABCTL_PROJECT", "lab; rm -rf /"),
            ("LABCTL_PROJECT", "../etc"),
            ("LABCTL_PROJECT", "$(id)"),
            ("LABCTL_BROKER_TOPIC", "a'b"),
            ("LABCTL_DATABASE_USER", "x\"; drop table t; --"),
            ("LABCTL_DATABASE_NAME", "Robert'); DROP"),
            ("LABCTL_FLINK_JOBMANAGER_MEMORY", "1g -XX:+Evil"),
            ("LABCTL_LAKE_CONTAINER", "../../x"),
            ("LABCTL_BIND_ADDRESS", "localhost; id"),
        ] {
            let err = load_str("", &[(k, v)]).unwrap_err();
            let text = format!("{err:#}");
            let key = k.trim_start_matches("LABCTL_").to_ascii_lowercase();
            let dotted = key.replacen('_', ".", 1);
            assert!(text.contains(&key) || text.contains(&dotted), "{k}={v}: {text}");
        }
    }

    #[test]
    fn impossible_counts_are_rejected() {
        for (k, v) in [
            ("LABCTL_FLINK_TASKMANAGERS", "0"),
            ("LABCTL_SPARK_WORKERS", "99"),
            ("LABCTL_BROKER_PARTITIONS", "-1"),
            ("LABCTL_FLINK_TASKMANAGERS", "two"),
        ] {
            assert!(load_str("", &[(k, v)]).is_err(), "{k}={v} accepted");
        }
    }

    #[test]
    fn unknown_env_var_is_an_error() {
        let err = load_str("", &[("LABCTL_FLINK_TASKMANAGER", "2")]).unwrap_err().to_string();
        assert!(err.contains("LABCTL_FLINK_TASKMANAGER"), "{err}");
    }
}
