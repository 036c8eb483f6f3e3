//! Feeding the topic: history first (resumed from what the topic already holds, never
//! repeated), then one reading per sensor and machine every interval, on the wall clock.

use std::{
    io::Write,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

use super::{generate, producer::Sender, resume, Position};
use crate::{clients::kafka::ErrorCapture, model::fleet::Fleet, progress::Progress};

/// What to produce.
#[derive(Debug, Clone)]
pub struct Feed {
    pub fleet: Fleet,
    /// Seconds between readings of a sensor.
    pub interval: i64,
    /// History to backfill on a first start, in seconds.
    pub backfill_secs: i64,
    /// Readings per second at most during the backfill (0: as fast as the broker takes them).
    pub rate: u64,
    /// Stop after the backfill instead of following the clock.
    pub no_live: bool,
    /// Stop after this many readings.
    pub count: Option<u64>,
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub produced: u64,
    pub delivered: u64,
    pub failed: u64,
    pub seconds: f64,
    pub rate_per_s: f64,
    pub resumed: bool,
}

/// Writes the readings as JSON lines to stdout instead of producing them (`--dry-run`).
pub fn dry_run(feed: &Feed, stop: &AtomicBool) -> Result<u64> {
    let (fleet, backfill, interval) = (&feed.fleet, feed.backfill_secs, feed.interval);
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out.lock());
    let now_tick = now_secs() / interval;
    let starts =
        vec![Position { tick: now_tick - backfill / interval, sensor: 0 }; fleet.machines.len()];
    let limit = feed.count.unwrap_or(u64::MAX);
    let mut n = 0u64;
    let mut err = None;
    generate(fleet, interval, &starts, now_tick + 1, stop, |_, _, payload| {
        if let Err(e) = out.write_all(payload).and_then(|_| out.write_all(b"\n")) {
            err = Some(e);
            return false;
        }
        n += 1;
        n < limit
    });
    match err {
        // A closed pipe (`| head`) is a normal way to stop reading.
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("writing to stdout")
        }
        _ => {}
    }
    let _ = out.flush();
    Ok(n)
}

pub fn produce(
    feed: &Feed,
    topic: &str,
    base: &rdkafka::ClientConfig,
    stop: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Summary> {
    let (fleet, backfill) = (&feed.fleet, feed.backfill_secs);
    use rdkafka::consumer::BaseConsumer;
    let interval = feed.interval;
    // Where the topic already is: a restart continues, it does not backfill again.
    let config = base
        .clone()
        .set("group.id", "labctl-ingest-resume")
        .set("enable.auto.commit", "false")
        .clone();
    let consumer: BaseConsumer<ErrorCapture> = config
        .create_with_context(ErrorCapture::for_config(&config))
        .context("creating a Kafka consumer")?;
    // A refused login or certificate is said as such, not as an unreadable topic.
    let found = resume::positions(&consumer, topic, fleet, interval, Duration::from_secs(10))
        .map_err(|e| {
            crate::clients::kafka::explain_consumer(
                &consumer,
                e.context(format!(
                    "cannot read topic `{topic}` (is the broker up? `labctl status`)"
                )),
            )
        })?;
    drop(consumer);
    let resumed = found.iter().any(Option::is_some);
    let now_tick = now_secs() / interval;
    let first = now_tick - backfill / interval;
    let starts: Vec<Position> =
        found.iter().map(|p| p.unwrap_or(Position { tick: first, sensor: 0 })).collect();
    let behind: i64 = starts.iter().map(|p| (now_tick + 1 - p.tick).max(0)).sum::<i64>() * 3;
    if resumed {
        progress.note(&format!("ingest: resuming; {behind} reading(s) to catch up to now"));
    }

    let sender = Sender::new(base, topic)?;
    let counters = sender.counters();
    let limit = feed.count.unwrap_or(u64::MAX);
    let t0 = Instant::now();
    let behind = behind.max(0) as u64;
    let sent = std::cell::Cell::new(0u64);
    // A reading the broker refused for good is gone from this run; carrying on would put later
    // readings after the hole. Stop instead: the exit status is non-zero, and a restart (the
    // service's restart policy, or the user) resumes from what the topic really holds.
    let lost = || counters.failed.load(Ordering::Relaxed) > 0;
    let pace = Pace::new(feed.rate);
    let mut send = |_: usize, key: &[u8], payload: &[u8]| -> bool {
        if sent.get() >= limit || lost() || !sender.send(key, payload, stop) {
            return false;
        }
        sent.set(sent.get() + 1);
        pace.wait(sent.get(), stop);
        if sent.get().is_multiple_of(8192) {
            progress.advance(sent.get(), behind);
        }
        sent.get() < limit
    };
    // Backfill up to the current tick; the clock moves on during a long backfill, so repeat
    // until caught up.
    let mut starts = starts;
    loop {
        let now_tick = now_secs() / interval;
        let to = now_tick + 1;
        if starts.iter().all(|p| p.tick >= to)
            || stop.load(Ordering::Relaxed)
            || sent.get() >= limit
            || lost()
        {
            break;
        }
        generate(fleet, interval, &starts, to, stop, &mut send);
        starts = starts
            .iter()
            .map(|p| if p.tick < to { Position { tick: to, sensor: 0 } } else { *p })
            .collect();
    }
    progress.clear();
    let backfill_secs = t0.elapsed().as_secs_f64();
    tracing::info!("backfill done: {} readings queued in {backfill_secs:.1} s", sent.get());

    if !feed.no_live && !stop.load(Ordering::Relaxed) && sent.get() < limit && !lost() {
        progress.note(&format!("ingest: live, one reading per sensor every {interval} s"));
        let mut last_report = Instant::now();
        let mut last_count = counters.delivered.load(Ordering::Relaxed);
        while !stop.load(Ordering::Relaxed) && sent.get() < limit {
            if lost() {
                progress.note(&format!("ingest: the broker refused {} reading(s) for good; stopping so that a restart resumes from the topic without a hole", counters.failed.load(Ordering::Relaxed)));
                break;
            }
            let tick = starts.iter().map(|p| p.tick).min().unwrap_or(now_secs() / interval);
            // Sleep to the wall-clock instant of the tick, computed afresh each time: no drift.
            let due = tick * interval;
            while now_secs() < due && !stop.load(Ordering::Relaxed) {
                let ms = (due as f64
                    - SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0))
                    * 1000.0;
                std::thread::sleep(Duration::from_millis((ms.clamp(1.0, 200.0)) as u64));
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            generate(fleet, interval, &starts, tick + 1, stop, &mut send);
            starts = starts
                .iter()
                .map(|p| if p.tick <= tick { Position { tick: tick + 1, sensor: 0 } } else { *p })
                .collect();
            if last_report.elapsed() >= Duration::from_secs(60) {
                let d = counters.delivered.load(Ordering::Relaxed);
                progress.note(&format!(
                    "ingest: live at {}, delivered {d} ({:.1}/s over the last minute), failed {}, in flight {}",
                    String::from_utf8_lossy(&crate::ops::ingest::encode::format_timestamp(tick * interval)),
                    (d - last_count) as f64 / last_report.elapsed().as_secs_f64(),
                    counters.failed.load(Ordering::Relaxed),
                    sender.in_flight()
                ));
                last_report = Instant::now();
                last_count = d;
            }
        }
    }
    // Deliver what is queued. On a stop request give the broker a bounded time; otherwise wait.
    let flush_for = if stop.load(Ordering::Relaxed) {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(600)
    };
    if let Err(e) = sender.flush(flush_for) {
        progress.note(&format!(
            "ingest: {} reading(s) still in flight after {flush_for:?}: {e:#}",
            sender.in_flight()
        ));
    }
    let seconds = t0.elapsed().as_secs_f64();
    let produced = counters.produced.load(Ordering::Relaxed);
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed) + sender.in_flight().max(0) as u64;
    let summary = Summary {
        produced,
        delivered,
        failed,
        seconds,
        rate_per_s: delivered as f64 / seconds.max(1e-9),
        resumed,
    };
    progress.note(&format!(
        "ingest: produced {produced}, delivered {delivered}, failed {failed} in {seconds:.1} s ({:.0} msg/s)",
        summary.rate_per_s
    ));
    Ok(summary)
}

/// Holds a backfill to a rate: after `n` readings it sleeps until `n / rate` seconds have
/// passed since the start (checked every 64 readings, so an unlimited run pays nothing).
struct Pace {
    rate: u64,
    start: Instant,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Self { rate, start: Instant::now() }
    }

    fn due(&self, n: u64) -> Option<Duration> {
        (self.rate > 0).then(|| Duration::from_secs_f64(n as f64 / self.rate as f64))
    }

    fn wait(&self, n: u64, stop: &AtomicBool) {
        if !n.is_multiple_of(64) {
            return;
        }
        if let Some(due) = self.due(n) {
            while self.start.elapsed() < due && !stop.load(Ordering::Relaxed) {
                std::thread::sleep((due - self.start.elapsed()).min(Duration::from_millis(200)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_spreads_readings_over_time() {
        assert_eq!(Pace::new(0).due(1_000_000), None);
        assert_eq!(Pace::new(5_000).due(10_000), Some(Duration::from_secs(2)));
        let (p, stop) = (Pace::new(6_400), AtomicBool::new(false));
        p.wait(640, &stop);
        assert!(p.start.elapsed() >= Duration::from_millis(100));
    }
}
