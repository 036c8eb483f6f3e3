//! The exports this machine's labctl followed to their end, one JSON line each in the state
//! folder: what the Spark master forgets (it lists drivers with a state and a start, and only
//! until it restarts) and the lake does not say per driver (duration, rows, the version it
//! made). `status` and the console join them to the master's drivers by submission id.

use std::collections::HashMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::{
    clients::spark::DriverState,
    stack::{journal, state},
};

/// Lines kept: the file is rewritten to the newest ones when it grows past twice as many.
const KEEP: usize = 200;

/// One export as it ended. No config, URL or password: only figures from the job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRecord {
    pub driver: String,
    pub ended_at: DateTime<Utc>,
    pub state: DriverState,
    /// Submission to end state, as `submit spark` measured it.
    pub seconds: f64,
    pub rows_read: Option<u64>,
    pub rows_written: Option<u64>,
    /// The first table's Delta version after the run; None when the table does not exist.
    pub delta_version: Option<u64>,
    pub days_rewritten: Option<u64>,
    /// Whether the run committed anything (false: the lake already equalled the database).
    pub committed: Option<bool>,
    /// The job's error, first line.
    pub error: Option<String>,
}

impl ExportRecord {
    pub fn of(outcome: &Outcome, ended_at: DateTime<Utc>) -> Self {
        let r = &outcome.result;
        let n = |k: &str| r[k].as_u64();
        Self {
            driver: outcome.id.clone(),
            ended_at,
            state: outcome.state,
            seconds: (outcome.seconds * 10.0).round() / 10.0,
            rows_read: n("rows_read"),
            rows_written: n("rows_written"),
            delta_version: n("delta_version"),
            days_rewritten: n("days_rewritten"),
            committed: r["committed"].as_bool(),
            error: r["error"].as_str().and_then(|e| e.lines().next()).map(str::to_string),
        }
    }
}

/// Appends one record.
pub fn record(project: &str, rec: &ExportRecord) -> Result<()> {
    journal::append(&state::exports_path(project), rec, KEEP)
}

/// The newest record of each driver id.
pub fn by_driver(project: &str) -> Result<HashMap<String, ExportRecord>> {
    Ok(journal::read_all::<ExportRecord>(&state::exports_path(project))?
        .into_iter()
        .map(|r| (r.driver.clone(), r))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: serde_json::Value, state: DriverState) -> Outcome {
        Outcome { id: "driver-1".into(), state, seconds: 12.345, result, output: None }
    }

    #[test]
    fn a_record_takes_the_figures_of_the_result_and_nothing_else() {
        let at = Utc::now();
        let o = outcome(
            serde_json::json!({"rows_read": 10, "rows_written": 8, "delta_version": 3,
                "days_rewritten": 2, "committed": true, "tables": [{"delta_uri": "abfss://x"}]}),
            DriverState::Finished,
        );
        let r = ExportRecord::of(&o, at);
        assert_eq!(r.seconds, 12.3);
        assert_eq!((r.rows_read, r.rows_written, r.delta_version), (Some(10), Some(8), Some(3)));
        assert_eq!(
            (r.days_rewritten, r.committed, r.error.as_deref()),
            (Some(2), Some(true), None)
        );
        assert!(!serde_json::to_string(&r).unwrap().contains("abfss"));
        let failed = ExportRecord::of(
            &outcome(serde_json::json!({"error": "JobError: no\ntraceback"}), DriverState::Failed),
            at,
        );
        assert_eq!(failed.error.as_deref(), Some("JobError: no"));
        assert_eq!(failed.rows_written, None);
    }
}
