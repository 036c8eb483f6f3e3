//! The ingest rate over the last minute from samples of the topic's end offsets that earlier
//! `status` calls left behind. A lookup of offsets by timestamp is a round trip per call
//! and was once far slower than the whole status budget, so it is only the fallback for a
//! first call.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub end_offsets: i64,
}

/// Samples older than this are dropped; a rate needs one at least `MIN_SPAN` old.
const KEEP_SECS: i64 = 600;
const MIN_SPAN_SECS: i64 = 30;

/// Beside the state file; `State::remove` (down --volumes) removes it too.
fn path(project: &str) -> PathBuf {
    crate::stack::state::samples_path(project)
}

pub fn load(project: &str) -> Vec<Sample> {
    std::fs::read(path(project))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Best effort: a status without a writable state folder just has no cached rate next time.
pub fn store(project: &str, samples: &[Sample]) {
    if let Ok(json) = serde_json::to_vec(samples) {
        if let Err(e) = std::fs::write(path(project), json) {
            tracing::debug!("keeping offset samples: {e}");
        }
    }
}

/// Whether `update` at `now` will find a sample to compute the rate against.
pub fn has_base(samples: &[Sample], now: DateTime<Utc>) -> bool {
    samples.iter().any(|s| (MIN_SPAN_SECS..=KEEP_SECS).contains(&(now - s.at).num_seconds()))
}

/// Adds `now` to `samples`, drops stale ones, and returns the rate per second against the
/// sample closest to one minute before `now` (at least 30 s before), if any.
pub fn update(samples: &mut Vec<Sample>, now: Sample) -> Option<f64> {
    samples.retain(|s| {
        (now.at - s.at).num_seconds() <= KEEP_SECS
            && s.at < now.at
            && s.end_offsets <= now.end_offsets
    });
    let best = samples
        .iter()
        .filter(|s| (now.at - s.at).num_seconds() >= MIN_SPAN_SECS)
        .min_by_key(|s| ((now.at - s.at).num_seconds() - 60).abs())
        .copied();
    // Thin out: one sample per 10 s is plenty.
    if samples.last().is_none_or(|l| (now.at - l.at).num_seconds() >= 10) {
        samples.push(now);
    }
    best.map(|b| {
        (now.end_offsets - b.end_offsets) as f64
            / ((now.at - b.at).num_milliseconds() as f64 / 1000.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs_ago: i64, end: i64, now: DateTime<Utc>) -> Sample {
        Sample { at: now - chrono::Duration::seconds(secs_ago), end_offsets: end }
    }

    #[test]
    fn rate_against_the_sample_nearest_a_minute_ago() {
        let now = Utc::now();
        let mut v = vec![s(700, 0, now), s(90, 100, now), s(58, 120, now), s(5, 170, now)];
        assert!(has_base(&v, now));
        let r = update(&mut v, s(0, 180, now)).unwrap();
        assert!((r - 60.0 / 58.0).abs() < 1e-6, "{r}");
        assert_eq!(
            v.len(),
            3,
            "the stale sample is dropped; the new one is within 10 s of the last, not kept"
        );
        update(&mut v, s(-20, 200, now));
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn no_rate_without_an_old_enough_sample_or_after_a_reset() {
        let now = Utc::now();
        let mut v = vec![s(10, 100, now)];
        assert!(!has_base(&v, now));
        assert_eq!(update(&mut v, s(0, 110, now)), None);
        // A recreated topic starts again at 0: older, larger samples are from before.
        let mut v = vec![s(60, 5000, now)];
        assert_eq!(update(&mut v, s(0, 10, now)), None);
    }
}
