//! The sensor generator behind `labctl ingest`: a fleet model, a fast encoder, and a producer
//! that backfills history, resumes where the topic already is, then follows the wall clock.

pub mod encode;
pub mod feed;
pub mod producer;
pub mod resume;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::model::fleet::{Fleet, MachineRng, SENSORS};

/// Where one machine's stream continues: the first (tick, sensor) not yet on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub tick: i64,
    pub sensor: usize,
}

/// Calls `sink(machine index, key, payload)` for every reading of ticks `from..to` (each
/// machine starting no earlier than its own position), oldest first, machines in order within
/// a tick. Stops early when `sink` returns false or `stop` is set; returns messages emitted.
pub fn generate(
    fleet: &Fleet,
    interval_s: i64,
    starts: &[Position],
    to_tick: i64,
    stop: &AtomicBool,
    mut sink: impl FnMut(usize, &[u8], &[u8]) -> bool,
) -> u64 {
    let templates = encode::templates(fleet);
    let mut rngs: Vec<_> = fleet.machines.iter().map(|m| MachineRng::new(fleet.seed, m)).collect();
    let from = starts.iter().map(|p| p.tick).min().unwrap_or(to_tick);
    let mut buf = Vec::with_capacity(256);
    let mut n = 0u64;
    for tick in from..to_tick {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let secs = tick * interval_s;
        let ts = encode::format_timestamp(secs);
        for (i, m) in fleet.machines.iter().enumerate() {
            let start = starts[i];
            if tick < start.tick {
                continue;
            }
            let values = rngs[i].readings(m, tick, secs);
            let first = if tick == start.tick { start.sensor } else { 0 };
            for s in first..SENSORS.len() {
                buf.clear();
                templates[i][s].encode(values[s], &ts, &mut buf);
                n += 1;
                if !sink(i, m.id.as_bytes(), &buf) {
                    return n;
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_interval_apart_and_span_the_backfill() {
        let fleet = Fleet::default_fleet(1);
        let interval = 5;
        let end = 1_700_000_000 / interval;
        let start = end - 7 * 86_400 / interval;
        let starts = vec![Position { tick: start, sensor: 0 }; 3];
        let mut stamps = Vec::new();
        let n = generate(&fleet, interval, &starts, end, &AtomicBool::new(false), |i, _, p| {
            if i == 0 && p.windows(11).any(|w| w == b"temperature") {
                let v: serde_json::Value = serde_json::from_slice(p).unwrap();
                stamps.push(encode::parse_timestamp(v["timestamp"].as_str().unwrap()).unwrap());
            }
            true
        });
        assert_eq!(n, 1_088_640, "7 days x 3 machines x 3 sensors at 5 s");
        assert!(stamps.windows(2).all(|w| w[1] - w[0] == 5));
        assert_eq!(stamps.last().unwrap() - stamps[0], 7 * 86_400 - 5);
    }

    #[test]
    fn resume_skips_exactly_what_was_written() {
        let fleet = Fleet::default_fleet(9);
        let all = |starts: &[Position]| {
            let mut v = Vec::new();
            generate(&fleet, 5, starts, 110, &AtomicBool::new(false), |_, k, p| {
                v.push((k.to_vec(), p.to_vec()));
                true
            });
            v
        };
        let full = all(&[Position { tick: 100, sensor: 0 }; 3]);
        // Machine 0 wrote up to tick 104 sensor 1; others up to tick 103 entirely.
        let resumed = all(&[
            Position { tick: 104, sensor: 2 },
            Position { tick: 104, sensor: 0 },
            Position { tick: 104, sensor: 0 },
        ]);
        let written: Vec<_> = full.iter().take(4 * 9 + 2).cloned().collect();
        let mut joined = written;
        joined.extend(resumed);
        let mut a = joined.clone();
        let mut b = full.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "resumed run must complete the full run without duplicates or gaps");
    }
}
