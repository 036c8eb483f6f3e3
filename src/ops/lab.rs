//! One lab as the commands see it: its config, remembered state and stack, plus typed clients
//! for each of its services as reached from the host.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::clients::kafka::resolve;
use crate::model::address;
use crate::model::security;
use crate::model::topology;
use crate::stack::endpoints;
use crate::{
    clients::{
        db::{Database, PasswordRefused},
        flink,
        kafka::Broker,
        lake::BlobClient,
        spark,
    },
    model::{
        config::{Config, PortKey},
        topology::{DbRole, Part},
    },
    progress::Progress,
    stack::{
        state::{LabLock, LockHolder, State},
        Probe, Stack,
    },
    wait::{poll_until, Check, Every},
};

#[derive(Debug, Clone)]
pub struct Lab {
    pub config: Config,
    pub state: State,
    pub stack: Stack,
}

impl Lab {
    pub fn new(config: Config, state: State) -> Self {
        let stack = Stack::new(&config, &state);
        Self { config, state, stack }
    }

    /// A lab that `up` started before (its state file exists).
    pub fn existing(config: Config) -> Result<Self> {
        let state = State::require(&config)?;
        Ok(Self::new(config, state))
    }

    fn url(&self, key: PortKey) -> Result<String> {
        self.stack.url(key).with_context(|| format!("the stack publishes no `{key}` port"))
    }

    pub fn external(&self, part: Part) -> bool {
        part.is_external(&self.config)
    }

    pub fn broker(&self) -> Result<Broker> {
        if self.external(Part::Broker) {
            resolve::apply_address_map(&self.config)?;
            return Ok(Broker {
                bootstrap: self.config.broker.bootstrap.clone(),
                security: security::kafka_security(&self.config)?,
            });
        }
        Broker::for_stack(&self.stack)
    }

    /// The database password (generated for the lab's own database, from the environment for
    /// an external one).
    pub fn db_password(&self) -> Result<String> {
        endpoints::database_password(&self.config, &self.state)
    }

    /// The credentials of a database role (see `DbRole`).
    pub fn db_credentials(&self, role: DbRole) -> Result<endpoints::DbCredentials> {
        endpoints::database_credentials(&self.config, &self.state, role)
    }

    /// A refused database password, with what to do: for the lab's own database that means the
    /// state file no longer belongs to its volume (lost, or replaced by a new one).
    fn password_refused(&self, e: anyhow::Error) -> anyhow::Error {
        let why = if self.external(Part::Database) {
            format!(
                "{e:#}; set LABCTL_DATABASE_PASSWORD to the password of the user in database.url"
            )
        } else {
            format!(
                "{e:#}: the database in volume `{}` has another password than the state file {} (the file was replaced); put that lab's state file back, or `labctl down` (data volumes are kept) and `labctl up`: a new database container takes the state file's password",
                self.stack.volume_name("db-data"),
                crate::stack::state::state_path(&self.config.project).display()
            )
        };
        Refusal(why).into()
    }

    /// The database as labctl itself uses it: its owner.
    pub fn database(&self) -> Result<Database> {
        self.database_as(DbRole::Owner)
    }

    /// The database as `role` (what the Flink job or the export may do, seen from here).
    pub fn database_as(&self, role: DbRole) -> Result<Database> {
        let creds = self.db_credentials(role)?;
        let (user, name, password) =
            (creds.user, topology::database_name(&self.config), creds.password);
        if self.external(Part::Database) {
            let a = address::parse_pg_url("database.url", &self.config.database.url)?;
            return Ok(Database::new(a.host, a.port, user, name, password)
                .with_tls(a.ssl, a.root_cert.map(Into::into)));
        }
        let port = self
            .stack
            .published_port(PortKey::Database)
            .context("the stack has no database port")?;
        let host = self.stack.port_host(PortKey::Database).unwrap_or("127.0.0.1").to_string();
        Ok(Database::new(host, port, user, name, password))
    }

    pub fn flink(&self, timeout: Duration) -> Result<flink::Client> {
        let url = if self.external(Part::Flink) {
            self.config.flink.url.trim_end_matches('/').to_string()
        } else {
            self.url(PortKey::FlinkUi)?
        };
        let tls = match &self.state.flink_rest_tls {
            Some(t) if self.config.flink.rest_mutual_tls => {
                Some(flink::MutualTls { ca: t.ca.clone(), identity: t.client_identity() })
            }
            _ => None,
        };
        flink::Client::with_tls(url, timeout, tls.as_ref())
    }

    pub fn spark(&self, timeout: Duration) -> Result<spark::Client> {
        if self.external(Part::Spark) {
            let s = &self.config.spark;
            return spark::Client::new(
                s.ui_url.trim_end_matches('/'),
                s.rest_url.trim_end_matches('/'),
                timeout,
            );
        }
        let client = spark::Client::new(
            self.url(PortKey::SparkUi)?,
            self.url(PortKey::SparkRest)?,
            timeout,
        )?;
        if self.config.spark.rest_tokens {
            return client.with_token_key(&self.state.spark_rest_key);
        }
        Ok(client)
    }

    pub fn blob(&self, timeout: Duration) -> Result<BlobClient> {
        if self.external(Part::Lake) {
            let c = &self.config;
            return BlobClient::new(
                &c.lake.endpoint,
                &topology::lake_account(c),
                &endpoints::lake_key(c)?,
                timeout,
            );
        }
        let port = self
            .stack
            .published_port(PortKey::Azurite)
            .context("the stack publishes no azurite port")?;
        let host = self.stack.port_host(PortKey::Azurite).unwrap_or("127.0.0.1");
        BlobClient::azurite(host, port, timeout)
    }

    /// Runs one readiness check once. Ok(detail) when ready, Err(why not) otherwise.
    pub async fn probe(&self, probe: &Probe, timeout: Duration) -> Result<String> {
        match probe {
            Probe::KafkaMetadata { brokers } => {
                let ids = self.broker()?.broker_ids(timeout).await?;
                let n = ids.len();
                if n < *brokers as usize {
                    if self.external(Part::Broker) {
                        anyhow::bail!("{n} of {brokers} brokers in the cluster's metadata");
                    }
                    // The lab's node k has node id k: name the ones that are missing.
                    let missing: Vec<&str> = (1..=*brokers as i32)
                        .filter(|id| !ids.contains(id))
                        .filter_map(|id| {
                            crate::stack::BROKER_NODES.get(id as usize - 1).map(|s| s.as_str())
                        })
                        .collect();
                    anyhow::bail!(
                        "{n} of {brokers} broker nodes registered; {} not joined: a node still formatting its storage joins within seconds, one that stays out cannot reach the KRaft quorum (see `labctl logs {}`; storage formatted for another cluster: `labctl down --volumes`)",
                        missing.join(", "),
                        missing.first().unwrap_or(&"broker")
                    );
                }
                Ok(format!("{n} broker(s) in metadata"))
            }
            Probe::PostgresLogin => {
                match self.database()?.probe(timeout).await {
                    Err(e) if e.chain().any(|c| c.is::<PasswordRefused>()) => {
                        return Err(self.password_refused(e))
                    }
                    other => other?,
                }
                Ok("login ok, timescaledb preloaded".into())
            }
            Probe::FlinkTaskManagers { count, slots } => {
                let o = self.flink(timeout)?.overview().await?;
                anyhow::ensure!(
                    o.taskmanagers >= *count,
                    "{} of {count} TaskManagers registered",
                    o.taskmanagers
                );
                anyhow::ensure!(
                    o.slots_total >= *slots,
                    "{} of {slots} task slots registered",
                    o.slots_total
                );
                Ok(format!("{} TaskManager(s), {} slots", o.taskmanagers, o.slots_total))
            }
            Probe::SparkWorkers { count } => {
                let client = self.spark(timeout)?;
                let m = client.master().await?;
                let alive = spark::Client::alive_workers(&m);
                anyhow::ensure!(alive >= *count as usize, "{alive} of {count} workers ALIVE");
                client.rest_answers().await?;
                Ok(format!("{alive} worker(s) ALIVE, {} cores, REST up", m.cores))
            }
            Probe::BlobListing => {
                let n = self.blob(timeout)?.list_containers().await?.len();
                Ok(format!("{n} container(s)"))
            }
            Probe::CoveredBy { service } => Ok(format!("checked with {service}")),
            Probe::Running => {
                let topic = &self.config.broker.topic;
                let offsets = self.broker()?.offsets(topic, timeout).await?;
                let ends: Vec<String> = offsets.iter().map(|p| p.high.to_string()).collect();
                Ok(format!(
                    "topic `{topic}` end offsets [{}] = {}",
                    ends.join(", "),
                    offsets.iter().map(|p| p.high).sum::<i64>()
                ))
            }
        }
    }
}

/// Takes the lab's lock for `command` (see `LabLock`), waiting while another labctl holds it:
/// two `up`s, or an `up` and a `scale`, take turns. Gives up after half an hour (an `up` that
/// builds every image takes minutes, not that).
pub async fn lock_lab(project: &str, command: &str, progress: &dyn Progress) -> Result<LabLock> {
    let mut told = false;
    poll_until(
        Every::millis(250).within(Duration::from_secs(1800)),
        || async {
            Ok(match LabLock::try_acquire(project, command)? {
                Ok(lock) => Check::Ready(lock),
                Err(holder) => Check::NotYet(describe_holder(&holder)),
            })
        },
        |why| {
            if !told {
                progress.note(&format!("waiting: {why} is changing lab `{project}`"));
                told = true;
            }
        },
    )
    .await?
    .or_else(|last, after| {
        anyhow::anyhow!("{last} has held lab `{project}` for {} min; wait for it, or stop it and run this again", after.as_secs() / 60)
    })
}

fn describe_holder(h: &LockHolder) -> String {
    let command =
        if h.command.is_empty() { "labctl".to_string() } else { format!("`labctl {}`", h.command) };
    match h.pid {
        Some(pid) => format!("{command} (pid {pid})"),
        None => command,
    }
}

/// A probe's answer that waiting will not change (a wrong password, a refused login): `up` stops
/// waiting on the service and says why at once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Whether a process of this host still runs (a submit's or an export's owner).
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
