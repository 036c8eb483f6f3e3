//! Delivery: an idempotent, acks=all producer that counts every delivery report, keeps
//! retrying while the broker is away (logging once per state change) and never drops a
//! reading silently.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use rdkafka::{
    error::KafkaError,
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
    types::RDKafkaErrorCode,
    ClientConfig, ClientContext, Message,
};

/// Counters shared between the generating thread, the delivery callbacks and the reporter.
#[derive(Debug, Default)]
pub struct Counters {
    pub produced: AtomicU64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Default)]
pub struct DeliveryContext {
    pub counters: Arc<Counters>,
    /// Whether the last thing we heard from the broker was an error; logs once per change.
    broker_down: AtomicBool,
    last_failure: Mutex<Option<String>>,
}

impl DeliveryContext {
    fn broker_state(&self, down: bool, why: &str) {
        if self.broker_down.swap(down, Ordering::Relaxed) != down {
            if down {
                tracing::warn!("broker unreachable, readings are kept and retried: {why}");
                eprintln!("ingest: broker unreachable, readings are kept and retried ({why})");
            } else {
                tracing::info!("broker reachable again, delivering");
                eprintln!("ingest: broker reachable again, delivering");
            }
        }
    }

    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().ok().and_then(|g| g.clone())
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::clients::kafka::log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let transport = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::Resolve
            )
        );
        if transport {
            self.broker_state(true, reason);
        } else {
            tracing::error!("kafka client error: {error}: {reason}");
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                self.broker_state(false, "");
            }
            Err((e, msg)) => {
                // With idempotence and an infinite message timeout this only happens for fatal
                // errors; each is counted and the first few are logged with their key.
                let n = self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let key =
                    msg.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                if n < 5 {
                    tracing::error!("reading of {key} not delivered: {e}");
                }
                if let Ok(mut g) = self.last_failure.lock() {
                    *g = Some(e.to_string());
                }
            }
        }
    }
}

/// Producer settings: idempotent, acks=all, batching tuned for throughput, lz4 (the cheapest
/// codec to compress here and to decompress in Flink's reader; JSON readings shrink about 4x),
/// Java-compatible key hashing so other clients agree on partitions.
pub fn producer_config(base: &ClientConfig) -> ClientConfig {
    let mut c = base.clone();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        // A bounded queue: a backfill waits for the broker instead of buffering a week in memory.
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "65536")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random")
        // 0 = no limit: while the broker is away, readings wait and are retried, never expire.
        .set("message.timeout.ms", "0");
    c
}

pub struct Sender {
    pub producer: Arc<BaseProducer<DeliveryContext>>,
    pub topic: String,
    poller: Option<thread::JoinHandle<()>>,
    polling: Arc<AtomicBool>,
}

impl Sender {
    pub fn new(base: &ClientConfig, topic: &str) -> Result<Self> {
        let ctx = DeliveryContext::default();
        let producer: BaseProducer<DeliveryContext> = producer_config(base)
            .create_with_context(ctx)
            .context("creating the Kafka producer")?;
        let producer = Arc::new(producer);
        let polling = Arc::new(AtomicBool::new(true));
        // Delivery reports are served by a thread of their own so producing never waits on them.
        let poller = {
            let (p, run) = (producer.clone(), polling.clone());
            thread::Builder::new()
                .name("ingest-poll".into())
                .spawn(move || {
                    while run.load(Ordering::Relaxed) {
                        p.poll(Duration::from_millis(100));
                    }
                })
                .context("starting the delivery thread")?
        };
        Ok(Self { producer, topic: topic.to_string(), poller: Some(poller), polling })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.producer.context().counters.clone()
    }

    /// Queues one reading, waiting while librdkafka's queue is full (backpressure, not loss).
    pub fn send(&self, key: &[u8], payload: &[u8], stop: &AtomicBool) -> bool {
        let mut record = BaseRecord::to(&self.topic).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.producer.context().counters.produced.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    record = r;
                    thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    // Not queued: counted as failed so the summary cannot hide it.
                    self.producer.context().counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("reading not queued: {e}");
                    return true;
                }
            }
        }
    }

    /// Waits until everything queued is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer.flush(timeout).context("flushing queued readings")
    }

    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.polling.store(false, Ordering::Relaxed);
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
    }
}
