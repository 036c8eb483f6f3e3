//! The lab described once, as data. `Stack::new` turns a validated `Config` plus the lab's
//! `State` (generated password, chosen ports) into services; the Docker runtime creates
//! containers from them and `labctl render compose` renders `docker-compose.yml` from them,
//! so the two cannot drift apart.

pub mod assets;
pub mod endpoints;
pub mod journal;
pub mod rest_tls;
pub mod service_id;
pub mod state;

pub use service_id::ServiceId;

use serde::Serialize;

use crate::{
    model::config::MAX_BROKER_NODES,
    model::{
        config::{Config, PortKey, Ports},
        security,
        topology::{external_parts, Part},
    },
    stack::state::State,
};

/// Repository inputs of one image; its tag is a hash of these.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ImageSpec {
    /// Short name; the image is tagged `labctl/<name>:<hash>`.
    pub name: &'static str,
    pub dockerfile: &'static str,
    /// Repo-relative files or folders the Dockerfile COPYs (besides the CA bundle).
    pub inputs: &'static [&'static str],
    /// A binary prepared on the host and placed in the build context.
    pub host_binary: Option<HostBinary>,
    /// Jars resolved with Maven on the host, checked against pinned sums, placed in the build
    /// context as `.labctl/jars/`.
    pub jars: Option<JarSet>,
}

/// The pom and the committed SHA-256 sums of one image's jars (resolved by `docker::jars`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct JarSet {
    /// Repo-relative folder holding `pom.xml` and `jars.sha256`.
    pub folder: &'static str,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum HostBinary {
    /// labctl itself, for the ingest service.
    Labctl,
}

pub const BROKER_IMAGE: ImageSpec = ImageSpec {
    name: "broker",
    dockerfile: "docker/broker/Dockerfile",
    inputs: &["docker/broker"],
    host_binary: None,
    jars: Some(JarSet { folder: "docker/broker/maven" }),
};
pub const DATABASE_IMAGE: ImageSpec = ImageSpec {
    name: "timescaledb",
    dockerfile: "docker/timescaledb/Dockerfile",
    inputs: &["docker/timescaledb"],
    host_binary: None,
    jars: None,
};
pub const FLINK_IMAGE: ImageSpec = ImageSpec {
    name: "flink",
    dockerfile: "Dockerfile.flink",
    inputs: &["docker/flink", "flink-jobs/sql-runner"],
    host_binary: None,
    jars: Some(JarSet { folder: "docker/flink/maven" }),
};
pub const SPARK_IMAGE: ImageSpec = ImageSpec {
    name: "spark",
    dockerfile: "docker/spark/Dockerfile",
    inputs: &["docker/spark"],
    host_binary: None,
    // Delta Lake's Spark writer and the WASB file system, into $SPARK_HOME/jars.
    jars: Some(JarSet { folder: "docker/spark/maven" }),
};
/// The class-data archive the Spark image makes for the export's driver (see
/// docker/spark/Dockerfile, which names the same path).
pub const SPARK_DRIVER_ARCHIVE: &str = "/usr/lib/labctl/spark-driver.jsa";
pub const AZURITE_IMAGE: ImageSpec = ImageSpec {
    name: "azurite",
    dockerfile: "docker/azurite/Dockerfile",
    inputs: &["docker/azurite"],
    host_binary: None,
    jars: None,
};

pub const INGEST_IMAGE: ImageSpec = ImageSpec {
    name: "ingest",
    dockerfile: "docker/ingest/Dockerfile",
    inputs: &["docker/ingest"],
    host_binary: Some(HostBinary::Labctl),
    jars: None,
};

pub const IMAGES: &[ImageSpec] =
    &[BROKER_IMAGE, DATABASE_IMAGE, FLINK_IMAGE, SPARK_IMAGE, AZURITE_IMAGE, INGEST_IMAGE];

/// How `up` knows a service really works (not merely that its container runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Probe {
    /// Kafka metadata answered through the published port, listing this many brokers.
    KafkaMetadata { brokers: u32 },
    /// Password login succeeds and the `timescaledb` library is preloaded.
    PostgresLogin,
    /// Flink REST `/overview` lists this many TaskManagers with all their slots.
    FlinkTaskManagers { count: u32, slots: u32 },
    /// Spark master `/json/` lists this many ALIVE workers and the REST server answers.
    SparkWorkers { count: u32 },
    /// Azurite answers an authenticated container listing.
    BlobListing,
    /// Readiness is covered by another service's probe (e.g. workers by the master's).
    CoveredBy { service: ServiceId },
    /// A worker process with no port: ready while its containers run.
    Running,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublishedPort {
    /// Config key under `[ports]`.
    pub key: PortKey,
    pub container: u16,
    pub host: u16,
    /// What a person opens, if anything (e.g. the Flink UI).
    pub url_path: Option<&'static str>,
    /// The host address it binds to when that is not the stack's `bind_address` (see
    /// `security::port_bind_address`); left out of the definition's hash when unset, so a
    /// loopback lab's containers stay as they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Spoken over TLS (Flink's REST API with `flink.rest_mutual_tls`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub https: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mount {
    /// Volume name without the project prefix.
    pub volume: &'static str,
    pub path: &'static str,
}

/// A file placed into the container before it starts, so secrets never appear in the
/// container's environment or command line (`docker inspect` shows both).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SecretFile {
    pub path: String,
    pub secret: Secret,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Secret {
    DbPassword,
    /// The SCRAM password of the lab broker's SASL_SSL user (`broker.sasl_ssl_listener`).
    BrokerPassword,
    /// `flink.rest_mutual_tls`: the lab CA's certificate, the JobManager's certificate and
    /// key, and labctl's client certificate and key. The client's pair is kept there too, so a
    /// lost state file can be rebuilt from the container: whoever reads the JobManager's files
    /// controls Flink anyway.
    FlinkRestCa,
    FlinkRestServerCert,
    FlinkRestServerKey,
    FlinkRestClientCert,
    FlinkRestClientKey,
    /// `spark.rest_tokens`: the key the master checks the tokens of REST requests with.
    SparkRestKey,
}

impl Secret {
    /// Its file's name under /run/secrets (also its name in the rendered compose file).
    pub const fn name(self) -> &'static str {
        match self {
            Secret::DbPassword => "db-password",
            Secret::BrokerPassword => "broker-password",
            Secret::FlinkRestCa => "flink-rest-ca.pem",
            Secret::FlinkRestServerCert => "flink-rest-server.pem",
            Secret::FlinkRestServerKey => "flink-rest-server.key",
            Secret::FlinkRestClientCert => "flink-rest-client.pem",
            Secret::FlinkRestClientKey => "flink-rest-client.key",
            Secret::SparkRestKey => "spark-rest-key",
        }
    }

    /// What it is, for messages.
    pub const fn what(self) -> &'static str {
        match self {
            Secret::DbPassword => "the database password",
            Secret::BrokerPassword => "the SCRAM password of the broker user lab",
            Secret::FlinkRestCa => "the CA certificate of Flink's REST API",
            Secret::FlinkRestServerCert => "the certificate of Flink's REST API",
            Secret::FlinkRestServerKey => "the key of Flink's REST API",
            Secret::FlinkRestClientCert => "labctl's client certificate for Flink's REST API",
            Secret::FlinkRestClientKey => "labctl's client key for Flink's REST API",
            Secret::SparkRestKey => "the key of Spark's REST tokens",
        }
    }

    pub fn path(self) -> String {
        format!("/run/secrets/{}", self.name())
    }

    fn file(self) -> SecretFile {
        SecretFile { path: self.path(), secret: self }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceId,
    pub image: ImageSpec,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<PublishedPort>,
    pub mounts: Vec<Mount>,
    pub secrets: Vec<SecretFile>,
    pub probe: Probe,
    pub depends_on: Vec<ServiceId>,
    pub replicas: u32,
    pub stop_signal: Option<&'static str>,
    /// Seconds between the stop signal and SIGKILL.
    pub stop_timeout: u32,
    /// Started only after the lab is set up (topic, schema), because it needs them.
    pub after_setup: bool,
    /// On the host's network instead of the lab's: the generator beside an external broker,
    /// which it must reach the way labctl on this host does.
    pub host_network: bool,
    /// Names it answers to on the lab's network besides its service name (Azurite: the storage
    /// account's host name, where Hadoop's WASB driver looks for the account).
    pub aliases: Vec<&'static str>,
}

/// A part of the lab that runs elsewhere: labctl checks it with the probe its managed service
/// would have and never starts, stops or removes anything of it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExternalService {
    /// The managed service it replaces (`status` and `logs` know it by that name).
    pub name: ServiceId,
    pub part: Part,
    /// Where labctl reaches it.
    pub address: String,
    pub probe: Probe,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    pub project: String,
    pub network: String,
    pub bind_address: String,
    /// What labctl runs in containers.
    pub services: Vec<Service>,
    /// What the config points at instead.
    pub external: Vec<ExternalService>,
}

pub const BROKER: ServiceId = ServiceId::Broker;
/// The KRaft nodes' services; node 1 is `broker`, as in a single-node lab.
pub const BROKER_NODES: [ServiceId; MAX_BROKER_NODES as usize] =
    [ServiceId::Broker, ServiceId::Broker2, ServiceId::Broker3];
const BROKER_PORT_KEYS: [PortKey; MAX_BROKER_NODES as usize] =
    [PortKey::Broker, PortKey::Broker2, PortKey::Broker3];
const BROKER_VOLUMES: [&str; MAX_BROKER_NODES as usize] =
    ["broker-data", "broker-2-data", "broker-3-data"];
pub const DATABASE: ServiceId = ServiceId::Database;
pub const FLINK_JM: ServiceId = ServiceId::FlinkJobManager;
pub const FLINK_TM: ServiceId = ServiceId::FlinkTaskManager;
pub const SPARK_MASTER: ServiceId = ServiceId::SparkMaster;
pub const SPARK_WORKER: ServiceId = ServiceId::SparkWorker;
pub const AZURITE: ServiceId = ServiceId::Azurite;
pub const INGEST: ServiceId = ServiceId::Ingest;

/// Ports the services listen on inside the network.
pub const BROKER_PORT: u16 = 9092;
pub const BROKER_CONTROLLER_PORT: u16 = 9093;
/// The broker's listener for clients on the host, published and advertised as the host port.
pub const BROKER_HOST_LISTENER_PORT: u16 = 9094;
pub const DATABASE_PORT: u16 = 5432;
pub const FLINK_REST_PORT: u16 = 8081;
pub const SPARK_UI_PORT: u16 = 8080;
pub const SPARK_REST_PORT: u16 = 6066;
pub const SPARK_MASTER_PORT: u16 = 7077;
/// Azurite's blob port inside the network: 80, because the WASB driver reaches an account at
/// `http://<account>.blob.core.windows.net` without a port (see `AZURITE_ACCOUNT_HOST`).
pub const AZURITE_PORT: u16 = 80;
/// The lab Azurite's alias on the lab's network: the development account's production-style host
/// name. Requests to it carry the account in the host name, which Azurite understands, so the
/// Spark job's `wasb://<container>@devstoreaccount1.blob.core.windows.net/...` reaches it.
pub const AZURITE_ACCOUNT_HOST: &str = "devstoreaccount1.blob.core.windows.net";

/// The files of `flink.rest_mutual_tls` in the JobManager.
pub const FLINK_REST_TLS: [Secret; 5] = [
    Secret::FlinkRestCa,
    Secret::FlinkRestServerCert,
    Secret::FlinkRestServerKey,
    Secret::FlinkRestClientCert,
    Secret::FlinkRestClientKey,
];

/// The lab broker's SASL_SSL listeners (`broker.sasl_ssl_listener`): one on the lab's network,
/// advertised as `broker:9095`, and one for clients on the host, published as
/// `ports.broker_sasl_ssl` and advertised as that port.
pub const BROKER_SASL_SSL_PORT: u16 = 9095;
pub const BROKER_HOST_SASL_SSL_LISTENER_PORT: u16 = 9096;
/// The SCRAM user the lab broker's SASL_SSL listeners know.
pub const BROKER_SASL_USER: &str = "lab";
/// Where the broker keeps the CA certificate of its TLS listeners (made on its first start).
pub const BROKER_CA_PATH: &str = "/var/lib/kafka/tls/ca.pem";

/// Services `labctl scale` resizes: the replicated workers of the two clusters.
pub const SCALABLE: &[ServiceId] = &[FLINK_TM, SPARK_WORKER];

/// Replicas of a scalable service: the size the lab was scaled to (remembered in its state),
/// else the config's initial size.
pub fn replicas(config: &Config, state: &State, service: ServiceId) -> u32 {
    state
        .replicas
        .get(service.as_str())
        .copied()
        .unwrap_or_else(|| initial_replicas(config, service))
}

/// The config's size of a service: what a lab that was never scaled runs with.
pub fn initial_replicas(config: &Config, service: ServiceId) -> u32 {
    match service {
        FLINK_TM => config.flink.taskmanagers,
        SPARK_WORKER => config.spark.workers,
        _ => 1,
    }
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// The port `key` of the config, published from the container's `container` port.
fn port(
    ports: &Ports,
    key: PortKey,
    container: u16,
    url_path: Option<&'static str>,
) -> PublishedPort {
    PublishedPort { key, container, host: ports.get(key), url_path, bind: None, https: false }
}

/// The address host clients use for a port published on `bind_address`: a wildcard bind is
/// reached through loopback.
pub fn host_address(bind_address: &str) -> &str {
    match bind_address {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        other => other,
    }
}

/// The KRaft cluster id of a project's broker: derived from the project name, so every node of
/// the lab formats its storage with the same one without labctl remembering it.
pub fn kafka_cluster_id(project: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut id = [0u8; 16];
    id.copy_from_slice(
        &sha2::Sha256::digest(format!("labctl kafka cluster {project}").as_bytes())[..16],
    );
    // The top bit clear keeps the first character within A-Za-f: never `-`, which Kafka's own
    // tools read as an option (as Kafka's `Uuid.randomUuid` avoids too).
    id[0] &= 0x7f;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

/// One KRaft node, a combined broker and controller. Containers reach it by its service name
/// on the lab's network; host clients through its published port, which it advertises as
/// itself on a listener of its own, so neither side needs an address map. With several nodes
/// every one is a voter of the quorum and topics are replicated to three of them.
fn broker_service(config: &Config, ports: &Ports, node: usize) -> Service {
    let nodes = config.broker.nodes as usize;
    let name = BROKER_NODES[node];
    let host = host_address(security::port_bind_address(config, BROKER_PORT_KEYS[node]));
    let voters: Vec<String> = BROKER_NODES[..nodes]
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}@{n}:{BROKER_CONTROLLER_PORT}", i + 1))
        .collect();
    let (replication, min_isr) = broker_replication(config.broker.nodes);
    let properties = [
        format!("listeners=INTERNAL://:{BROKER_PORT},CONTROLLER://:{BROKER_CONTROLLER_PORT},HOST://:{BROKER_HOST_LISTENER_PORT}"),
        format!("advertised.listeners=INTERNAL://{name}:{BROKER_PORT},HOST://{host}:{}", ports.get(BROKER_PORT_KEYS[node])),
        "listener.security.protocol.map=INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT,HOST:PLAINTEXT".to_string(),
        format!("controller.quorum.voters={}", voters.join(",")),
        format!("offsets.topic.replication.factor={replication}"),
        format!("transaction.state.log.replication.factor={replication}"),
        format!("transaction.state.log.min.isr={min_isr}"),
        format!("default.replication.factor={replication}"),
        format!("min.insync.replicas={min_isr}"),
        format!("num.partitions={}", config.broker.partitions),
    ]
    .join("\n");
    let mut svc = Service {
        env: env(&[
            ("KAFKA_NODE_ID", (node + 1).to_string()),
            ("KAFKA_CLUSTER_ID", kafka_cluster_id(&config.project)),
            ("KAFKA_HEAP_OPTS", format!("-Xms{0} -Xmx{0}", config.broker.heap)),
            ("KAFKA_PROPERTIES", properties),
        ]),
        ports: vec![port(ports, BROKER_PORT_KEYS[node], BROKER_HOST_LISTENER_PORT, None)],
        mounts: vec![Mount { volume: BROKER_VOLUMES[node], path: "/var/lib/kafka" }],
        // Node 1 answers for the cluster: ready when every node is in its metadata.
        probe: if node == 0 {
            Probe::KafkaMetadata { brokers: config.broker.nodes }
        } else {
            Probe::CoveredBy { service: BROKER }
        },
        // A controlled shutdown moves leadership and flushes the logs; give it time.
        stop_timeout: 30,
        ..Service::base(name, BROKER_IMAGE)
    };
    if config.broker.sasl_ssl_listener {
        let secure_host = host_address(security::port_bind_address(config, PortKey::BrokerSaslSsl));
        add_sasl_ssl_listeners(&mut svc, secure_host, ports);
    }
    svc
}

/// `broker.sasl_ssl_listener`: two SASL_SSL listeners besides the plaintext ones, added to
/// whatever listener lines the broker has. TLS with a server certificate for `broker`,
/// `localhost`, 127.0.0.1 and the host address, signed by a CA the broker makes on its first
/// start (`docker/broker/entrypoint.sh`); SCRAM-SHA-256 and -512 for the user `lab`, created
/// when the storage is formatted, with the password labctl places in the container as a file.
fn add_sasl_ssl_listeners(svc: &mut Service, host: &str, ports: &Ports) {
    let host_port = ports.get(PortKey::BrokerSaslSsl);
    let names = ["SECURE", "HOST_SECURE"];
    let add = |line: &str| -> String {
        let Some((key, value)) = line.split_once('=') else { return line.to_string() };
        let extra = match key {
            "listeners" => format!(
                "{}://:{BROKER_SASL_SSL_PORT},{}://:{BROKER_HOST_SASL_SSL_LISTENER_PORT}",
                names[0], names[1]
            ),
            "advertised.listeners" => format!(
                "{}://{BROKER}:{BROKER_SASL_SSL_PORT},{}://{host}:{host_port}",
                names[0], names[1]
            ),
            "listener.security.protocol.map" => {
                format!("{}:SASL_SSL,{}:SASL_SSL", names[0], names[1])
            }
            _ => return line.to_string(),
        };
        format!("{key}={value},{extra}")
    };
    let mut extra = vec![
        "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512".to_string(),
        "ssl.keystore.type=PEM".to_string(),
        "ssl.keystore.location=/var/lib/kafka/tls/server.pem".to_string(),
    ];
    for name in names {
        for mechanism in ["scram-sha-256", "scram-sha-512"] {
            // The server side of SCRAM needs a login module, without credentials of its own.
            extra.push(format!("listener.name.{}.{mechanism}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;", name.to_ascii_lowercase()));
        }
    }
    let mut tls_names =
        vec!["DNS:broker".to_string(), "DNS:localhost".to_string(), "IP:127.0.0.1".to_string()];
    let host_name = if host.parse::<std::net::IpAddr>().is_ok() {
        format!("IP:{host}")
    } else {
        format!("DNS:{host}")
    };
    if !tls_names.contains(&host_name) {
        tls_names.push(host_name);
    }
    for (k, v) in svc.env.iter_mut() {
        if k == "KAFKA_PROPERTIES" {
            let lines: Vec<String> = v.lines().map(add).chain(extra.iter().cloned()).collect();
            *v = lines.join("\n");
        }
    }
    svc.env.push(("KAFKA_TLS_NAMES".into(), tls_names.join(",")));
    svc.env.push(("KAFKA_SCRAM_USER".into(), BROKER_SASL_USER.into()));
    svc.ports.push(port(ports, PortKey::BrokerSaslSsl, BROKER_HOST_SASL_SSL_LISTENER_PORT, None));
    svc.secrets.push(Secret::BrokerPassword.file());
}

/// Replication factor and `min.insync.replicas` of the lab's topics: with three nodes or more
/// one may die under an acks=all producer and nothing acknowledged is lost.
pub fn broker_replication(nodes: u32) -> (u32, u32) {
    let replication = nodes.min(3);
    (replication, if replication >= 3 { 2 } else { 1 })
}

/// The managed broker's nodes as containers on the lab's network reach them.
pub fn cluster_bootstrap(nodes: u32) -> String {
    BROKER_NODES[..nodes as usize]
        .iter()
        .map(|n| format!("{n}:{BROKER_PORT}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Service {
    /// A single replica with nothing published, mounted or secret, stopped with SIGTERM: what
    /// each service function below starts from.
    fn base(name: ServiceId, image: ImageSpec) -> Self {
        Service {
            name,
            image,
            command: vec![],
            env: vec![],
            ports: vec![],
            mounts: vec![],
            secrets: vec![],
            probe: Probe::Running,
            depends_on: vec![],
            replicas: 1,
            stop_signal: None,
            stop_timeout: 10,
            after_setup: false,
            host_network: false,
            aliases: vec![],
        }
    }
}

fn database_service(config: &Config, ports: &Ports) -> Service {
    Service {
        env: env(&[
            ("POSTGRES_USER", config.database.user.clone()),
            ("POSTGRES_DB", config.database.name.clone()),
            ("POSTGRES_PASSWORD_FILE", Secret::DbPassword.path()),
        ]),
        ports: vec![port(ports, PortKey::Database, DATABASE_PORT, None)],
        mounts: vec![Mount { volume: "db-data", path: "/var/lib/postgresql/data" }],
        secrets: vec![Secret::DbPassword.file()],
        probe: Probe::PostgresLogin,
        // SIGINT is PostgreSQL's fast shutdown: a checkpoint, no waiting for clients.
        stop_signal: Some("SIGINT"),
        stop_timeout: 30,
        ..Service::base(DATABASE, DATABASE_IMAGE)
    }
}

fn azurite_service(ports: &Ports) -> Service {
    Service {
        ports: vec![port(ports, PortKey::Azurite, AZURITE_PORT, None)],
        mounts: vec![Mount { volume: "lake-data", path: "/data" }],
        probe: Probe::BlobListing,
        stop_signal: Some("SIGINT"),
        aliases: vec![AZURITE_ACCOUNT_HOST],
        ..Service::base(AZURITE, AZURITE_IMAGE)
    }
}

/// The Flink session cluster: a JobManager and `taskmanagers` TaskManagers sharing one
/// configuration.
fn flink_services(config: &Config, ports: &Ports, taskmanagers: u32) -> [Service; 2] {
    let flink = &config.flink;
    let properties = [
        format!("jobmanager.rpc.address: {FLINK_JM}"),
        format!("rest.port: {FLINK_REST_PORT}"),
        format!("jobmanager.memory.process.size: {}", flink.jobmanager_memory),
        format!("taskmanager.memory.process.size: {}", flink.taskmanager_memory),
        format!("taskmanager.numberOfTaskSlots: {}", flink.slots_per_taskmanager),
        // The job keeps its state on the heap (hashmap backend); managed memory only holds the
        // window operators' buffers. Flink's default 40 % left the tasks 160 MiB of heap in a
        // 1280m TaskManager and the job 1.3x slower (`labctl bench flink`, README).
        "taskmanager.memory.managed.fraction: 0.1".to_string(),
        format!("parallelism.default: {}", config.broker.partitions),
        // How long the REST API serves a job's state from its cache (default 3 s): a job whose
        // tasks all ran 0.5 s after its submission showed as starting for 2.5 s more to `submit`,
        // `status` and the fault tests' recovery waits.
        "web.refresh-interval: 500 ms".to_string(),
        "state.checkpoints.dir: file:///var/lib/flink/checkpoints".to_string(),
        "state.savepoints.dir: file:///var/lib/flink/savepoints".to_string(),
    ]
    .join("\n");
    // Checkpoints are written by TaskManagers and read back by the JobManager on recovery, so
    // both see the same volume.
    let data = Mount { volume: "flink-data", path: "/var/lib/flink" };
    let mut rest = port(ports, PortKey::FlinkUi, FLINK_REST_PORT, Some("/"));
    // The entrypoint turns these files into Flink's keystore and truststore, and REST into
    // mutually authenticated TLS (docker/flink/entrypoint.sh).
    let rest_tls: Vec<SecretFile> = if flink.rest_mutual_tls {
        rest.https = true;
        FLINK_REST_TLS.iter().map(|s| s.file()).collect()
    } else {
        vec![]
    };
    [
        Service {
            command: vec!["jobmanager".into()],
            env: env(&[("FLINK_PROPERTIES", properties.clone())]),
            ports: vec![rest],
            mounts: vec![data.clone()],
            secrets: rest_tls,
            probe: Probe::FlinkTaskManagers {
                count: taskmanagers,
                slots: taskmanagers * flink.slots_per_taskmanager,
            },
            stop_timeout: 20,
            ..Service::base(FLINK_JM, FLINK_IMAGE)
        },
        Service {
            command: vec!["taskmanager".into()],
            env: env(&[("FLINK_PROPERTIES", properties)]),
            mounts: vec![data],
            probe: Probe::CoveredBy { service: FLINK_JM },
            depends_on: vec![FLINK_JM],
            replicas: taskmanagers,
            stop_timeout: 20,
            ..Service::base(FLINK_TM, FLINK_IMAGE)
        },
    ]
}

/// The Spark standalone cluster: a master (UI and REST submission) and `workers` workers.
fn spark_services(config: &Config, ports: &Ports, workers: u32) -> [Service; 2] {
    [
        Service {
            command: vec!["master".into()],
            env: env(&[("SPARK_MASTER_HOST", SPARK_MASTER.to_string())]),
            ports: vec![
                port(ports, PortKey::SparkUi, SPARK_UI_PORT, Some("/")),
                port(ports, PortKey::SparkRest, SPARK_REST_PORT, None),
            ],
            probe: Probe::SparkWorkers { count: workers },
            // The entrypoint puts Spark's JWSFilter in front of the REST server with this key.
            secrets: if config.spark.rest_tokens {
                vec![Secret::SparkRestKey.file()]
            } else {
                vec![]
            },
            ..Service::base(SPARK_MASTER, SPARK_IMAGE)
        },
        Service {
            command: vec!["worker".into(), format!("spark://{SPARK_MASTER}:{SPARK_MASTER_PORT}")],
            env: env(&[
                ("SPARK_WORKER_CORES", config.spark.worker_cores.to_string()),
                ("SPARK_WORKER_MEMORY", config.spark.worker_memory.clone()),
            ]),
            mounts: vec![Mount { volume: "spark-work", path: "/var/lib/spark/work" }],
            probe: Probe::CoveredBy { service: SPARK_MASTER },
            depends_on: vec![SPARK_MASTER],
            replicas: workers,
            ..Service::base(SPARK_WORKER, SPARK_IMAGE)
        },
    ]
}

/// The generator, if the lab runs one. Beside an external broker it runs on the host's network
/// with labctl's own view of the broker (bootstrap and address map). A broker that wants SASL
/// gets no generator service: its password would have to go into the container; `labctl
/// ingest` on this host does the same.
fn ingest_service(config: &Config, broker_external: bool) -> Option<Service> {
    if !config.ingest.enabled || (broker_external && config.broker.security_protocol != "plaintext")
    {
        return None;
    }
    let i = &config.ingest;
    let bootstrap = if broker_external {
        config.broker.bootstrap.clone()
    } else {
        cluster_bootstrap(config.broker.nodes)
    };
    let mut command: Vec<String> = vec!["ingest".into(), "--bootstrap".into(), bootstrap];
    if broker_external {
        for (from, to) in &config.broker.address_map {
            command.extend(["--address-map".to_string(), format!("{from}={to}")]);
        }
    }
    command.extend(
        [
            "--topic",
            &config.broker.topic,
            "--machines",
            &i.machines.to_string(),
            "--seed",
            &i.seed.to_string(),
            "--interval",
            &i.interval_secs.to_string(),
            "--backfill",
            &i.backfill,
            "--rate",
            &i.backfill_rate.to_string(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    Some(Service {
        command,
        env: env(&[("RUST_LOG", "info".into())]),
        depends_on: if broker_external {
            vec![]
        } else {
            BROKER_NODES[..config.broker.nodes as usize].to_vec()
        },
        // SIGTERM: flush what is in flight, print the summary, exit 0.
        stop_timeout: 40,
        after_setup: true,
        host_network: broker_external,
        ..Service::base(INGEST, INGEST_IMAGE)
    })
}

/// A part the config points elsewhere, checked with the probe its managed service would have.
fn external_service(config: &Config, part: Part) -> ExternalService {
    ExternalService {
        name: part.services()[0],
        part,
        address: part.external_address(config),
        probe: match part {
            Part::Broker => Probe::KafkaMetadata { brokers: 1 },
            Part::Database => Probe::PostgresLogin,
            // Any size will do: the job asks for its slots when it is submitted.
            Part::Flink => Probe::FlinkTaskManagers { count: 1, slots: 1 },
            Part::Spark => Probe::SparkWorkers { count: 1 },
            Part::Lake => Probe::BlobListing,
        },
    }
}

impl Stack {
    pub fn new(config: &Config, state: &State) -> Self {
        let ports = &state.ports;
        let external = external_parts(config);
        let mut services: Vec<Service> = (0..config.broker.nodes as usize)
            .map(|node| broker_service(config, ports, node))
            .chain([database_service(config, ports), azurite_service(ports)])
            .chain(flink_services(config, ports, replicas(config, state, FLINK_TM)))
            .chain(spark_services(config, ports, replicas(config, state, SPARK_WORKER)))
            .collect();
        services.retain(|s| !Part::of_service(s.name).is_some_and(|p| external.contains(&p)));
        services.extend(ingest_service(config, external.contains(&Part::Broker)));
        for p in services.iter_mut().flat_map(|s| &mut s.ports) {
            let bind = security::port_bind_address(config, p.key);
            if bind != config.bind_address {
                p.bind = Some(bind.to_string());
            }
        }
        Stack {
            project: config.project.clone(),
            network: format!("{}-net", config.project),
            bind_address: config.bind_address.clone(),
            services,
            external: external.into_iter().map(|part| external_service(config, part)).collect(),
        }
    }

    pub fn service(&self, id: ServiceId) -> Option<&Service> {
        self.services.iter().find(|s| s.name == id)
    }

    /// The service a name read from Docker (a container's label) stands for, if the lab runs it.
    pub fn service_named(&self, name: &str) -> Option<&Service> {
        ServiceId::parse(name).and_then(|id| self.service(id))
    }

    /// The external part standing for a service, if the config made it external.
    pub fn external_for(&self, id: ServiceId) -> Option<&ExternalService> {
        let part = Part::of_service(id)?;
        self.external.iter().find(|e| e.part == part)
    }

    /// Looks a service up by the name a user typed, listing the valid names when it is wrong.
    pub fn require(&self, name: &str) -> anyhow::Result<&Service> {
        let unknown = || {
            let names: Vec<_> = self.services.iter().map(|s| s.name.as_str()).collect();
            anyhow::anyhow!(
                "unknown service `{name}`; the lab's services are: {}",
                names.join(", ")
            )
        };
        let id = ServiceId::parse(name).ok_or_else(unknown)?;
        if let Some(e) = self.external_for(id) {
            anyhow::bail!("`{name}` is external in this lab ({} = {:?}): labctl does not run it; look at it where it runs", e.part.key(), e.address);
        }
        self.service(id).ok_or_else(unknown)
    }

    pub fn container_name(&self, service: ServiceId, replica: u32) -> String {
        format!("{}-{}-{}", self.project, service, replica)
    }

    pub fn volume_name(&self, volume: &str) -> String {
        format!("{}-{}", self.project, volume)
    }

    /// All volume names of the project, deduplicated, in declaration order.
    pub fn volumes(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for m in self.services.iter().flat_map(|s| &s.mounts) {
            if !out.contains(&m.volume) {
                out.push(m.volume);
            }
        }
        out
    }

    /// Services in an order where every service comes after those it depends on.
    pub fn start_order(&self) -> Vec<&Service> {
        let mut done: Vec<ServiceId> = Vec::new();
        let mut out = Vec::new();
        while out.len() < self.services.len() {
            let before = out.len();
            for s in &self.services {
                if !done.contains(&s.name) && s.depends_on.iter().all(|d| done.contains(d)) {
                    done.push(s.name);
                    out.push(s);
                }
            }
            assert!(out.len() > before, "dependency cycle in the stack definition");
        }
        out
    }

    pub fn published_port(&self, key: PortKey) -> Option<u16> {
        self.services.iter().flat_map(|s| &s.ports).find(|p| p.key == key).map(|p| p.host)
    }

    fn port_of(&self, key: PortKey) -> Option<&PublishedPort> {
        self.services.iter().flat_map(|s| &s.ports).find(|p| p.key == key)
    }

    /// The host address a port is published on (see `PublishedPort::bind`).
    pub fn port_bind<'a>(&'a self, p: &'a PublishedPort) -> &'a str {
        p.bind.as_deref().unwrap_or(&self.bind_address)
    }

    /// The address this host's clients reach a published port at.
    pub fn port_host(&self, key: PortKey) -> Option<&str> {
        self.port_of(key).map(|p| host_address(self.port_bind(p)))
    }

    pub fn url(&self, key: PortKey) -> Option<String> {
        let p = self.port_of(key)?;
        let scheme = if p.https { "https" } else { "http" };
        Some(format!("{scheme}://{}:{}", host_address(self.port_bind(p)), p.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Stack {
        Stack::new(&Config::default(), &State::for_tests(&Config::default()))
    }

    #[test]
    fn azurite_answers_under_the_accounts_host_name_on_port_80() {
        let s = stack();
        let a = s.service(AZURITE).unwrap();
        assert_eq!(
            AZURITE_ACCOUNT_HOST,
            format!("{}.blob.core.windows.net", crate::model::topology::DEV_ACCOUNT)
        );
        assert_eq!(a.aliases, vec![AZURITE_ACCOUNT_HOST]);
        assert_eq!(a.ports[0].container, 80);
        assert!(s.services.iter().filter(|x| x.name != AZURITE).all(|x| x.aliases.is_empty()));
    }

    #[test]
    fn dependencies_exist_and_order_respects_them() {
        let s = stack();
        let order: Vec<_> = s.start_order().iter().map(|s| s.name).collect();
        for svc in &s.services {
            for d in &svc.depends_on {
                assert!(s.service(*d).is_some());
                let (a, b) =
                    (order.iter().position(|n| n == d), order.iter().position(|n| *n == svc.name));
                assert!(a < b, "{d} must start before {}", svc.name);
            }
        }
    }

    #[test]
    fn every_port_is_configurable_and_unique() {
        let s = stack();
        let mut keys: Vec<_> = s.services.iter().flat_map(|s| &s.ports).map(|p| p.key).collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
        let cfg = toml::Value::try_from(crate::model::config::Ports::default()).unwrap();
        for k in keys {
            assert!(cfg.get(k.as_str()).is_some(), "[ports] has no key {k}");
        }
        let all: Vec<&str> = PortKey::ALL.iter().map(|k| k.as_str()).collect();
        let fields: Vec<&str> = cfg.as_table().unwrap().keys().map(String::as_str).collect();
        assert_eq!(all.len(), fields.len(), "PortKey::ALL and [ports] differ: {all:?} {fields:?}");
        for k in PortKey::ALL {
            let mut ports = crate::model::config::Ports::default();
            let v = toml::Value::try_from(&ports).unwrap();
            assert_eq!(v[k.as_str()].as_integer(), Some(i64::from(ports.get(k))));
            ports = toml::from_str(&format!("{k} = 4242")).unwrap();
            assert_eq!(ports.get(k), 4242, "Ports::get({k}) reads another field");
        }
    }

    #[test]
    fn no_secret_in_environment_or_command() {
        let st = State::for_tests(&Config::default());
        let s = Stack::new(&Config::default(), &st);
        for svc in &s.services {
            for (k, v) in &svc.env {
                assert!(!v.contains(&st.db_password), "{}: {k}", svc.name);
            }
            assert!(!svc.command.iter().any(|c| c.contains(&st.db_password)));
        }
    }

    #[test]
    fn sasl_ssl_listeners_are_added_with_the_password_as_a_file() {
        let mut c = Config::default();
        c.broker.sasl_ssl_listener = true;
        let st = State::for_tests(&c);
        let s = Stack::new(&c, &st);
        let b = s.service(BROKER).unwrap();
        let props = &b.env.iter().find(|(k, _)| k == "KAFKA_PROPERTIES").unwrap().1;
        let line = |key: &str| {
            props.lines().filter(|l| l.starts_with(&format!("{key}="))).collect::<Vec<_>>()
        };
        assert_eq!(line("listeners"), ["listeners=INTERNAL://:9092,CONTROLLER://:9093,HOST://:9094,SECURE://:9095,HOST_SECURE://:9096"]);
        assert_eq!(line("advertised.listeners"), [format!("advertised.listeners=INTERNAL://broker:9092,HOST://127.0.0.1:{0},SECURE://broker:9095,HOST_SECURE://127.0.0.1:{1}", c.ports.broker, c.ports.broker_sasl_ssl)]);
        assert!(
            line("listener.security.protocol.map")[0]
                .ends_with(",SECURE:SASL_SSL,HOST_SECURE:SASL_SSL"),
            "{props}"
        );
        assert!(props.contains("listener.name.host_secure.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"), "{props}");
        assert!(b.ports.iter().any(|p| p.key == PortKey::BrokerSaslSsl
            && p.container == 9096
            && p.host == c.ports.broker_sasl_ssl));
        assert_eq!(b.secrets, [Secret::BrokerPassword.file()]);
        for (k, v) in &b.env {
            assert!(!v.contains(&st.broker_password), "{k} carries the broker password");
        }
        // Off by default: the broker has its plaintext listeners only.
        let plain = stack();
        assert!(
            plain.service(BROKER).unwrap().secrets.is_empty()
                && plain.published_port(PortKey::BrokerSaslSsl).is_none()
        );
    }

    #[test]
    fn remembered_size_wins_over_config() {
        let c = Config::default();
        let mut st = State::for_tests(&c);
        st.replicas.insert(FLINK_TM.to_string(), 2);
        let s = Stack::new(&c, &st);
        assert_eq!(s.service(FLINK_TM).unwrap().replicas, 2);
        assert_eq!(s.service(SPARK_WORKER).unwrap().replicas, c.spark.workers);
        assert_eq!(
            s.service(FLINK_JM).unwrap().probe,
            Probe::FlinkTaskManagers { count: 2, slots: 2 * c.flink.slots_per_taskmanager }
        );
        for name in SCALABLE {
            assert!(s.service(*name).is_some(), "{name}");
        }
    }

    #[test]
    fn external_parts_start_no_container() {
        let mut c = Config::default();
        c.flink.url = "http://127.0.0.1:18081".into();
        c.broker.bootstrap = "127.0.0.1:19092".into();
        let s = Stack::new(&c, &State::for_tests(&c));
        for name in [FLINK_JM, FLINK_TM, BROKER] {
            assert!(s.service(name).is_none(), "{name} would be started");
        }
        // The generator follows the broker onto the host's network, with labctl's view of it.
        let ingest = s.service(INGEST).unwrap();
        assert!(ingest.host_network && ingest.depends_on.is_empty());
        assert!(
            ingest.command.windows(2).any(|w| w[0] == "--bootstrap" && w[1] == "127.0.0.1:19092"),
            "{:?}",
            ingest.command
        );
        assert!(s.service(DATABASE).is_some() && s.service(SPARK_WORKER).is_some());
        let names: Vec<_> = s.external.iter().map(|e| e.name).collect();
        assert_eq!(names, [BROKER, FLINK_JM]);
        assert!(s.require(FLINK_TM.as_str()).unwrap_err().to_string().contains("external"));
    }

    #[test]
    fn kafka_cluster_ids_are_stable_valid_and_never_start_with_a_dash() {
        assert_eq!(kafka_cluster_id("a"), kafka_cluster_id("a"));
        for i in 0..2000 {
            let id = kafka_cluster_id(&format!("t-lab-{i}"));
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-') && !id.starts_with('_'), "{id}");
        }
        // The project the suite once drew, whose id began with `-`.
        assert!(!kafka_cluster_id("t-lab-15301-19614").starts_with('-'));
    }

    #[test]
    fn unknown_service_lists_names() {
        let err = stack().require("kafka").unwrap_err().to_string();
        assert!(err.contains("unknown service `kafka`") && err.contains("broker"), "{err}");
    }
}
