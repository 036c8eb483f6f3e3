//! Kafka-protocol access to the lab's broker from the host: readiness, topic creation, offsets.

pub mod quorum;
pub mod records;
pub mod resolve;

use std::{sync::Mutex, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::KafkaError,
    topic_partition_list::{Offset, TopicPartitionList},
    types::RDKafkaErrorCode,
    ClientConfig, ClientContext,
};

use crate::{
    model::config::PortKey,
    stack::{host_address, Stack, BROKER_NODES},
};

/// How labctl on the host reaches the broker.
#[derive(Clone)]
pub struct Broker {
    /// Bootstrap list as passed to librdkafka.
    pub bootstrap: String,
    /// security.protocol and SASL settings of an external broker (empty: plaintext).
    pub security: Vec<(String, String)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// Without the SASL password: the client is logged at debug level.
impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let security: Vec<_> = self
            .security
            .iter()
            .map(|(k, v)| (k.as_str(), if k.contains("password") { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("Broker")
            .field("bootstrap", &self.bootstrap)
            .field("security", &security)
            .finish()
    }
}

impl Broker {
    /// The lab's own broker nodes, through their host listeners (advertised as the published
    /// ports).
    pub fn for_stack(stack: &Stack) -> Result<Self> {
        // Only the plaintext listeners: the SASL_SSL one (if any) needs credentials.
        let bootstrap: Vec<String> = BROKER_NODES
            .iter()
            .filter_map(|n| stack.service(*n))
            .flat_map(|s| &s.ports)
            .filter(|p| p.key != PortKey::BrokerSaslSsl)
            .map(|p| format!("{}:{}", host_address(stack.port_bind(p)), p.host))
            .collect();
        anyhow::ensure!(!bootstrap.is_empty(), "the stack has no broker port");
        Ok(Self { bootstrap: bootstrap.join(","), security: vec![] })
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            // Fail fast when the broker is down instead of retrying for minutes.
            .set("socket.timeout.ms", "5000")
            .set("reconnect.backoff.max.ms", "2000")
            // librdkafka's own printer (used while a client is being destroyed, when its log
            // queue is gone) would write raw `%3|...|FAIL|` lines: say nothing of closed
            // connections, which is all a destroyed client's brokers report.
            .set("log.connection.close", "false")
            .set("log_level", "3");
        for (k, v) in &self.security {
            c.set(k, v);
        }
        c
    }

    fn consumer(&self) -> Result<BaseConsumer<ErrorCapture>> {
        let config = self
            .client_config()
            .set("group.id", "labctl-inspect")
            .set("enable.auto.commit", "false")
            .clone();
        let capture = ErrorCapture::for_config(&config);
        config.create_with_context(capture).context("creating a Kafka client")
    }

    /// Number of brokers in the cluster metadata; errors when the broker does not answer.
    pub async fn ping(&self, timeout: Duration) -> Result<usize> {
        Ok(self.broker_ids(timeout).await?.len())
    }

    /// Node ids of the brokers in the cluster metadata, sorted.
    pub async fn broker_ids(&self, timeout: Duration) -> Result<Vec<i32>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let c = me.consumer()?;
            let md = c.fetch_metadata(None, timeout).map_err(|e| {
                explain_consumer(&c, anyhow!("broker {} did not answer: {e}", me.bootstrap))
            })?;
            let mut ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
            ids.sort_unstable();
            Ok(ids)
        })
        .await?
    }

    /// Partition count of `topic`, or None if it does not exist.
    pub async fn partitions(&self, topic: &str, timeout: Duration) -> Result<Option<usize>> {
        let me = self.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            Ok(partition_ids(&me.consumer()?, &topic, timeout)?.map(|p| p.len()))
        })
        .await?
    }

    /// Creates the topic if missing; an existing topic with another partition count is an error
    /// the user must resolve (partitions cannot shrink, and growing would move keys).
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<bool> {
        let timeout = Duration::from_secs(10);
        if let Some(n) = self.partitions(topic, timeout).await? {
            if n as i32 != partitions {
                bail!("topic `{topic}` exists with {n} partitions but the config asks for {partitions}; set broker.partitions = {n} or remove the lab's data with `labctl down --volumes`");
            }
            return Ok(false);
        }
        let config = self.client_config();
        let admin: AdminClient<ErrorCapture> = config
            .create_with_context(ErrorCapture::for_config(&config))
            .context("creating a Kafka admin client")?;
        // -1: the cluster's `default.replication.factor` (the lab's brokers set it from their
        // node count; an external cluster keeps its own policy).
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        let opts = AdminOptions::new().operation_timeout(Some(timeout));
        // While a cluster of several nodes forms, librdkafka replaces the handle of a broker it
        // knew from the bootstrap list by the one the metadata names, and a request in flight on
        // the old handle fails with DestroyBroker (seen with three nodes right after they all
        // registered). The request is safe to repeat: an existing topic counts as created.
        let mut attempt = 1;
        let res = loop {
            match admin.create_topics([&new], &opts).await {
                Err(KafkaError::AdminOp(code)) if attempt < 5 && transient_admin_error(code) => {
                    tracing::debug!("creating topic {topic}: {code}; trying again");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => break other.with_context(|| format!("creating topic {topic}"))?,
            }
        };
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => bail!("creating topic {t} failed: {code}"),
            }
        }
        // Metadata can lag the creation; clients started right after must find the partitions.
        let start = std::time::Instant::now();
        while self.partitions(topic, timeout).await? != Some(partitions as usize) {
            if start.elapsed() > timeout {
                bail!("topic {topic} was created but its {partitions} partitions do not show in the metadata");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(true)
    }

    /// Deletes topics (a benchmark's scratch topics); a topic already gone is not an error.
    pub async fn delete_topics(&self, topics: &[String]) -> Result<()> {
        let config = self.client_config();
        let admin: AdminClient<ErrorCapture> = config
            .create_with_context(ErrorCapture::for_config(&config))
            .context("creating a Kafka admin client")?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let res = admin
            .delete_topics(
                &names,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .context("deleting topics")?;
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, code)) => bail!("deleting topic {t} failed: {code}"),
            }
        }
        Ok(())
    }

    /// Hands every message of `topic` in `[low, high)` of each given partition to `visit`
    /// (state, partition, offset, payload), partition by partition in offset order, and returns
    /// the state; the client
    /// joins no group and commits nothing. Errors when a partition stops short of `high` for
    /// `timeout` (a broker gone mid-read), never returns a partial read as complete.
    pub async fn scan<S, F>(
        &self,
        topic: &str,
        ranges: Vec<PartitionOffsets>,
        timeout: Duration,
        mut state: S,
        mut visit: F,
    ) -> Result<S>
    where
        S: Send + 'static,
        F: FnMut(&mut S, i32, i64, Option<&[u8]>) + Send + 'static,
    {
        use rdkafka::Message;
        let (me, topic) = (self.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            // Large fetches: this is a bulk read of the whole topic.
            let c = me.bounded_consumer(
                "labctl-verify",
                &[("fetch.max.bytes", "16777216"), ("max.partition.fetch.bytes", "4194304")],
            )?;
            for r in ranges.iter().filter(|r| r.high > r.low) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, r.partition, Offset::Offset(r.low))?;
                c.assign(&tpl).with_context(|| format!("assigning {topic}/{}", r.partition))?;
                let mut next = r.low;
                let mut last_progress = std::time::Instant::now();
                while next < r.high {
                    match c.poll(Duration::from_millis(200)) {
                        None => {
                            if last_progress.elapsed() > timeout {
                                return Err(explain_consumer(&c, anyhow!("reading {topic}/{} stopped at offset {next} of {} for {} s", r.partition, r.high, timeout.as_secs())));
                            }
                        }
                        Some(Err(KafkaError::PartitionEOF(p))) if p == r.partition => break,
                        Some(Err(KafkaError::PartitionEOF(_))) => {}
                        Some(Err(e)) => return Err(explain_consumer(&c, anyhow!("reading {topic}/{} at offset {next}: {e}", r.partition))),
                        Some(Ok(m)) => {
                            last_progress = std::time::Instant::now();
                            if m.partition() == r.partition && m.offset() >= next && m.offset() < r.high {
                                visit(&mut state, m.partition(), m.offset(), m.payload());
                            }
                            // Offsets of a compacted or transactional partition may skip.
                            next = next.max(m.offset() + 1);
                        }
                    }
                }
            }
            c.unassign().ok();
            Ok(state)
        })
        .await?
    }

    /// Low and high watermarks of every partition of `topic`.
    pub async fn offsets(&self, topic: &str, timeout: Duration) -> Result<Vec<PartitionOffsets>> {
        Ok(self
            .activity(topic, None, timeout)
            .await?
            .partitions
            .into_iter()
            .map(|p| p.offsets)
            .collect())
    }

    /// Offsets of every partition of `topic` now and at `since` (by message timestamp): what
    /// `status` needs for the ingest rate. When the broker does not answer the lookup by time,
    /// `at_since` stays None instead of failing the whole.
    pub async fn activity(
        &self,
        topic: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
        timeout: Duration,
    ) -> Result<TopicActivity> {
        let ids = {
            let (me, topic) = (self.clone(), topic.to_string());
            tokio::task::spawn_blocking(move || partition_ids(&me.consumer()?, &topic, timeout))
                .await??
        }
        .ok_or_else(|| anyhow!("no topic {topic} on the broker"))?;
        // Each lookup is a round trip of its own; run them side by side, each on its own client.
        let lookup = |what: Lookup| {
            let (me, topic, ids) = (self.clone(), topic.to_string(), ids.clone());
            tokio::task::spawn_blocking(move || -> Result<Vec<Option<i64>>> {
                let t = std::time::Instant::now();
                let c = me.consumer()?;
                let _timing = Timing(t, format!("{what:?} offsets of {topic}"));
                let at = |o: Offset| {
                    let mut tpl = TopicPartitionList::new();
                    for id in &ids {
                        tpl.add_partition_offset(&topic, *id, o).ok();
                    }
                    tpl
                };
                let explain = |e: KafkaError| {
                    explain_consumer(&c, anyhow!("{what:?} offsets of {topic}: {e}"))
                };
                let found = match what {
                    // ListOffsets with timestamp -2 / -1 answers every partition's start / end at once.
                    Lookup::Low => pick(
                        &c.offsets_for_times(at(Offset::Beginning), timeout).map_err(explain)?,
                        &topic,
                        &ids,
                    ),
                    Lookup::End => pick(
                        &c.offsets_for_times(at(Offset::End), timeout).map_err(explain)?,
                        &topic,
                        &ids,
                    ),
                    Lookup::Since(ms) => pick(
                        &c.offsets_for_times(at(Offset::Offset(ms)), timeout).map_err(explain)?,
                        &topic,
                        &ids,
                    ),
                };
                Ok(found
                    .into_iter()
                    .map(|o| if let Offset::Offset(o) = o { Some(o) } else { None })
                    .collect())
            })
        };
        let none = || vec![None; ids.len()];
        let (low, end, at_since) = tokio::join!(lookup(Lookup::Low), lookup(Lookup::End), async {
            if let Some(t) = since {
                lookup(Lookup::Since(t.timestamp_millis())).await
            } else {
                Ok(Ok(none()))
            }
        },);
        let (low, end) = (low??, end??);
        let optional =
            |r: Result<Result<Vec<Option<i64>>>, tokio::task::JoinError>, what: &str| match r {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    tracing::debug!("{what} of {topic}: {e:#}");
                    none()
                }
                Err(e) => {
                    tracing::debug!("{what} of {topic}: {e}");
                    none()
                }
            };
        let at_since = optional(at_since, "offsets by time");
        let partitions = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let high = end[i].with_context(|| format!("no end offset for {topic}/{id}"))?;
                let low = low[i].unwrap_or(0);
                Ok(PartitionActivity {
                    offsets: PartitionOffsets { partition: *id, low, high },
                    messages: high - low,
                    // No message at or after `since`: the partition has nothing newer.
                    at_since: since
                        .map(|_| at_since[i].unwrap_or(high))
                        .filter(|_| at_since.iter().any(Option::is_some)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TopicActivity { partitions })
    }
}

/// The partition Kafka's default partitioner (the Java client's, and librdkafka's
/// `murmur2_random` that the generator sets) gives a keyed record: murmur2 of the key, sign bit
/// cleared, modulo the partition count.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// A login or TLS handshake the broker's side refused: waiting does not help, the config must
/// change. The text names the cause and the fix on one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecurityFailure(pub String);

/// A client context that remembers the last error librdkafka reported (its error callback), so
/// a request that then fails or times out can say why. Wrong SASL credentials or a broker
/// certificate the CA does not verify otherwise show only as "timed out" or "all brokers down".
pub struct ErrorCapture {
    bootstrap: String,
    user: String,
    mechanism: String,
    ca_file: String,
    last: Mutex<Option<String>>,
}

impl ErrorCapture {
    /// For a client of `config` (its bootstrap and security settings name the cause in messages).
    pub fn for_config(config: &ClientConfig) -> Self {
        let get = |k: &str| config.get(k).unwrap_or_default().to_string();
        Self {
            bootstrap: get("bootstrap.servers"),
            user: get("sasl.username"),
            mechanism: get("sasl.mechanism"),
            ca_file: get("ssl.ca.location"),
            last: Mutex::new(None),
        }
    }

    /// The last error the client reported, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last.lock().ok().and_then(|g| g.clone())
    }

    /// `err` replaced by a one-line cause and fix (a [`SecurityFailure`]) when the client
    /// reported a security failure.
    pub fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        match self.last_error().and_then(|reason| {
            explain_security_failure(
                &reason,
                &self.bootstrap,
                &self.user,
                &self.mechanism,
                &self.ca_file,
            )
        }) {
            Some(text) => SecurityFailure(text).into(),
            None => err,
        }
    }
}

/// `err` explained from what `consumer` reported. A consumer's error events wait in its queue
/// until it is polled (requests such as metadata do not serve them), so this polls briefly first.
pub fn explain_consumer(
    consumer: &BaseConsumer<ErrorCapture>,
    err: anyhow::Error,
) -> anyhow::Error {
    for _ in 0..5 {
        if consumer.context().last_error().is_some() {
            break;
        }
        let _ = consumer.poll(Duration::from_millis(100));
    }
    consumer.context().explain(err)
}

/// librdkafka's log lines through `tracing` (target `librdkafka`, RUST_LOG=librdkafka=debug):
/// what a client says about connections it retries is noise at the default level; the errors
/// that matter reach the caller through `error` and the delivery reports.
pub fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::warn!(target: "librdkafka", "{fac}: {message}")
        }
        _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
    }
}

/// librdkafka's own log lines go through `tracing` too, at debug level: the callers turn a
/// broker that does not answer into one error with its fix, so the per-connection complaints
/// (`1/1 brokers are down` every few seconds while `up` waits for a starting broker) would only
/// be noise.
impl ClientContext for ErrorCapture {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!("kafka client error: {error}: {reason}");
        if let Ok(mut g) = self.last.lock() {
            *g = Some(format!("{error}: {reason}"));
        }
    }
}

impl ConsumerContext for ErrorCapture {}

/// What librdkafka's error text means for the user, for the failures a config can cause:
/// credentials the broker refuses, a certificate the configured CA does not verify, TLS spoken
/// to a plaintext listener or plaintext to a TLS one. None for anything else.
pub fn explain_security_failure(
    reason: &str,
    bootstrap: &str,
    user: &str,
    mechanism: &str,
    ca_file: &str,
) -> Option<String> {
    let r = reason.to_ascii_lowercase();
    if r.contains("authentication failed")
        || r.contains("invalid credentials")
        || r.contains("sasl authentication error")
    {
        return Some(format!(
            "broker {bootstrap}: SASL authentication failed for user \"{user}\" ({mechanism}): the broker refused the credentials; \
             set LABCTL_BROKER_SASL_PASSWORD to that user's password (and check broker.sasl_username and broker.sasl_mechanism)"
        ));
    }
    if r.contains("certificate verify failed") || r.contains("certificate could not be verified") {
        let fix = if ca_file.is_empty() {
            "it is not signed by a CA this system trusts; set broker.ssl_ca_file to the PEM file of the CA that signed it".to_string()
        } else {
            format!("it is not signed by the CA in broker.ssl_ca_file ({ca_file:?}) or does not name the address; point broker.ssl_ca_file at the CA that signed the broker's certificate")
        };
        return Some(format!(
            "broker {bootstrap}: TLS handshake failed: certificate verify failed: {fix}"
        ));
    }
    if r.contains("ssl handshake failed")
        || r.contains("wrong version number")
        || r.contains("packet length too long")
    {
        let detail = reason.split(": ").skip(1).collect::<Vec<_>>().join(": ");
        return Some(format!("broker {bootstrap}: TLS handshake failed ({detail}); is that address a TLS listener? broker.security_protocol must match the listener (ssl/sasl_ssl for TLS)"));
    }
    if r.contains("connecting to a ssl listener") || r.contains("incorrect security.protocol") {
        return Some(format!("broker {bootstrap}: the listener disconnected at once, as a TLS listener does with a plaintext client; broker.security_protocol must match the listener (ssl/sasl_ssl for TLS)"));
    }
    None
}

impl Broker {
    /// The cluster as the broker's metadata describes it (brokers, and every partition's
    /// leader, replicas and in-sync replicas of `topic`), and the KRaft quorum: its leader is
    /// the active controller (see `quorum` for why the metadata's controller id is not used).
    /// The quorum is only asked over a plaintext listener; otherwise, or when it does not
    /// answer, `quorum` holds the reason.
    pub async fn cluster(&self, topic: &str, timeout: Duration) -> Result<ClusterFacts> {
        let metadata = {
            let (me, topic) = (self.clone(), topic.to_string());
            tokio::task::spawn_blocking(move || -> Result<_> {
                let c = me.consumer()?;
                let md = c
                    .fetch_metadata(Some(&topic), timeout)
                    .map_err(|e| anyhow!("metadata for {topic}: {e}"))?;
                let mut brokers: Vec<BrokerNode> = md
                    .brokers()
                    .iter()
                    .map(|b| BrokerNode { id: b.id(), host: b.host().to_string(), port: b.port() })
                    .collect();
                brokers.sort_by_key(|b| b.id);
                let t =
                    md.topics().iter().find(|t| t.name() == topic).filter(|t| t.error().is_none());
                let mut partitions: Vec<PartitionReplicas> = t
                    .map(|t| {
                        t.partitions()
                            .iter()
                            .map(|p| PartitionReplicas {
                                partition: p.id(),
                                leader: p.leader(),
                                replicas: p.replicas().to_vec(),
                                isr: p.isr().to_vec(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                partitions.sort_by_key(|p| p.partition);
                Ok((brokers, partitions))
            })
        };
        let quorum = async {
            if !self.security.is_empty() {
                return Err(
                    "not asked: DescribeQuorum is only sent over a plaintext listener".to_string()
                );
            }
            let address = self.bootstrap.split(',').next().unwrap_or_default().trim().to_string();
            quorum::describe(&address, timeout).await.map_err(|e| format!("{e:#}"))
        };
        let (metadata, quorum) = tokio::join!(metadata, quorum);
        let (brokers, partitions) = metadata??;
        Ok(ClusterFacts { brokers, partitions, quorum })
    }

    /// The offsets consumer group `group` has committed for every partition of `topic` (None
    /// where it has none), read with OffsetFetch. The client never subscribes, so it never
    /// joins the group, and it never commits (auto-commit and offset store off).
    pub async fn committed(
        &self,
        group: &str,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<(i32, Option<i64>)>> {
        let (me, group, topic) = (self.clone(), group.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let config = me
                .client_config()
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .clone();
            let c: BaseConsumer<ErrorCapture> = config
                .create_with_context(ErrorCapture::for_config(&config))
                .context("creating a Kafka client")?;
            let ids = partition_ids(&c, &topic, timeout)?
                .ok_or_else(|| anyhow!("no topic {topic} on the broker"))?;
            let mut tpl = TopicPartitionList::new();
            for id in &ids {
                tpl.add_partition(&topic, *id);
            }
            let got = c
                .committed_offsets(tpl, timeout)
                .map_err(|e| anyhow!("committed offsets of group {group}: {e}"))?;
            Ok(ids
                .iter()
                .map(|id| {
                    let o = got.find_partition(&topic, *id).map(|e| e.offset());
                    (*id, if let Some(Offset::Offset(o)) = o { Some(o) } else { None })
                })
                .collect())
        })
        .await?
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerNode {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionReplicas {
    pub partition: i32,
    /// -1: no leader, the partition is offline.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

impl PartitionReplicas {
    pub fn under_replicated(&self) -> bool {
        self.isr.len() < self.replicas.len()
    }
}

#[derive(Debug, Clone)]
pub struct ClusterFacts {
    pub brokers: Vec<BrokerNode>,
    pub partitions: Vec<PartitionReplicas>,
    pub quorum: std::result::Result<quorum::Quorum, String>,
}

/// Logs how long a lookup took when dropped (RUST_LOG=labctl=debug).
struct Timing(std::time::Instant, String);

impl Drop for Timing {
    fn drop(&mut self) {
        tracing::debug!("{} took {} ms", self.1, self.0.elapsed().as_millis());
    }
}

#[derive(Debug, Clone, Copy)]
enum Lookup {
    Low,
    End,
    Since(i64),
}

/// The offsets of `ids` in a broker's answer, in the order of `ids`.
fn pick(tpl: &TopicPartitionList, topic: &str, ids: &[i32]) -> Vec<Offset> {
    ids.iter()
        .map(|id| tpl.find_partition(topic, *id).map(|e| e.offset()).unwrap_or(Offset::Invalid))
        .collect()
}

/// Partition ids of `topic` from the broker's metadata, None if the topic does not exist.
fn partition_ids(
    c: &BaseConsumer<ErrorCapture>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<Vec<i32>>> {
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| explain_consumer(c, anyhow!("metadata for {topic}: {e}")))?;
    Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| {
        if t.error().is_some() || t.partitions().is_empty() {
            return None;
        }
        let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Some(ids)
    }))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionActivity {
    #[serde(flatten)]
    pub offsets: PartitionOffsets,
    /// Messages the partition holds: end offset minus start offset (what retention has not
    /// deleted; a transaction's commit markers would count too, the lab writes none).
    pub messages: i64,
    /// First offset with a timestamp at or after the `since` instant asked for.
    pub at_since: Option<i64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicActivity {
    pub partitions: Vec<PartitionActivity>,
}

impl TopicActivity {
    pub fn end_offsets(&self) -> i64 {
        self.partitions.iter().map(|p| p.offsets.high).sum()
    }
    /// Messages appended since the instant asked for, if the broker answered for every partition.
    pub fn appended_since(&self) -> Option<i64> {
        self.partitions.iter().map(|p| p.at_since.map(|o| p.offsets.high - o)).sum()
    }
}

/// An admin request that failed on the way (a broker handle replaced, a connection dropped),
/// not because the cluster refused it.
fn transient_admin_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::DestroyBroker
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::NotController
    )
}

#[cfg(test)]
mod partition_tests {
    use super::*;

    /// Values the Java client's `Utils.murmur2` gives (Kafka's own UtilsTest vectors).
    #[test]
    fn murmur2_matches_the_java_client() {
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    /// The default lab (one machine of each type, three partitions): every partition carries
    /// one machine, so each of the job's three source readers has a third of the work.
    #[test]
    fn the_default_fleet_fills_every_partition() {
        let fleet = crate::model::fleet::Fleet::default_fleet(0);
        let partitions = crate::model::config::Config::default().broker.partitions;
        let mut used: Vec<i32> =
            fleet.machines.iter().map(|m| partition_for_key(m.id.as_bytes(), partitions)).collect();
        used.sort_unstable();
        assert_eq!(used, (0..partitions).collect::<Vec<_>>());
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;

    fn creates(security: &[(&str, &str)]) -> std::result::Result<(), String> {
        let b = Broker {
            bootstrap: "127.0.0.1:1".into(),
            security: security.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        b.consumer().map(|_| ()).map_err(|e| format!("{e:#}"))
    }

    /// What this build's librdkafka (with OpenSSL) can do: every protocol and mechanism
    /// `endpoints::validate` lets through builds a client; GSSAPI (not built in) and a CA file
    /// that is not there fail at once.
    #[test]
    fn every_allowed_protocol_and_mechanism_builds() {
        creates(&[]).unwrap();
        for protocol in crate::model::security::PROTOCOLS {
            let p = protocol.to_ascii_uppercase();
            if !protocol.starts_with("sasl_") {
                creates(&[("security.protocol", &p)]).unwrap_or_else(|e| panic!("{p}: {e}"));
                continue;
            }
            for m in crate::model::security::MECHANISMS {
                creates(&[
                    ("security.protocol", &p),
                    ("sasl.mechanism", m),
                    ("sasl.username", "u"),
                    ("sasl.password", "p"),
                ])
                .unwrap_or_else(|e| panic!("{p} {m}: {e}"));
            }
        }
        // Kerberos is not built in (no libsasl2), and validate does not offer it.
        let gssapi = creates(&[("security.protocol", "SASL_SSL"), ("sasl.mechanism", "GSSAPI")]);
        assert!(gssapi.is_err_and(|e| e.contains("No provider for SASL mechanism GSSAPI")));
        let missing =
            creates(&[("security.protocol", "SSL"), ("ssl.ca.location", "/nonexistent/ca.pem")]);
        assert!(missing.is_err(), "a missing CA file was accepted");
    }

    #[test]
    fn security_failures_are_explained() {
        let auth = explain_security_failure(
            "Local: Authentication failure: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
            "127.0.0.1:9096", "lab", "SCRAM-SHA-512", "/ca.pem").unwrap();
        assert!(
            auth.contains("SASL authentication failed")
                && auth.contains("LABCTL_BROKER_SASL_PASSWORD")
                && !auth.contains('\n'),
            "{auth}"
        );
        let tls = explain_security_failure(
            "Local: SSL error: ssl://127.0.0.1:9096/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured",
            "127.0.0.1:9096", "lab", "SCRAM-SHA-512", "/other-ca.pem").unwrap();
        assert!(
            tls.contains("certificate verify failed")
                && tls.contains("broker.ssl_ca_file")
                && tls.contains("/other-ca.pem"),
            "{tls}"
        );
        assert!(explain_security_failure(
            "Local: Broker transport failure: Connection refused",
            "h:1",
            "",
            "",
            ""
        )
        .is_none());
    }
}
