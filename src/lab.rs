//! One lab as the commands see it: its config, remembered state and stack, plus typed clients
//! for each of its services as reached from the host.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    config::Config,
    db::Database,
    flink, kafka::Broker,
    lake::BlobClient,
    spark,
    stack::{Probe, Stack},
    state::State,
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

    fn url(&self, key: &str) -> Result<String> {
        self.stack.url(key).with_context(|| format!("the stack publishes no `{key}` port"))
    }

    pub fn broker(&self) -> Result<Broker> {
        Broker::for_stack(&self.stack)
    }

    pub fn database(&self) -> Result<Database> {
        Database::for_lab(&self.config, &self.state, &self.stack)
    }

    pub fn flink(&self, timeout: Duration) -> Result<flink::Client> {
        flink::Client::new(self.url("flink_ui")?, timeout)
    }

    pub fn spark(&self, timeout: Duration) -> Result<spark::Client> {
        spark::Client::new(self.url("spark_ui")?, self.url("spark_rest")?, timeout)
    }

    pub fn blob(&self, timeout: Duration) -> Result<BlobClient> {
        let port = self.stack.published_port("azurite").context("the stack publishes no azurite port")?;
        BlobClient::azurite(&self.stack.bind_address, port, timeout)
    }

    /// Runs one readiness check once. Ok(detail) when ready, Err(why not) otherwise.
    pub async fn probe(&self, probe: &Probe, timeout: Duration) -> Result<String> {
        match probe {
            Probe::KafkaMetadata => {
                let n = self.broker()?.ping(timeout).await?;
                Ok(format!("{n} broker(s) in metadata"))
            }
            Probe::PostgresLogin => {
                self.database()?.probe(timeout).await?;
                Ok("login ok, timescaledb preloaded".into())
            }
            Probe::FlinkTaskManagers { count, slots } => {
                let o = self.flink(timeout)?.overview().await?;
                anyhow::ensure!(o.taskmanagers >= *count, "{} of {count} TaskManagers registered", o.taskmanagers);
                anyhow::ensure!(o.slots_total >= *slots, "{} of {slots} task slots registered", o.slots_total);
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
                Ok(format!("topic `{topic}` end offsets [{}] = {}", ends.join(", "), offsets.iter().map(|p| p.high).sum::<i64>()))
            }
        }
    }
}
