//! Late readings: a reading that reaches Flink after its window closed (a producer whose clock
//! is behind, a machine that was offline) is stored in `machine_sensors`, but the window it
//! belongs to was already written without it. Such windows are found the way `verify` checks
//! them (a closed window recomputed from its raw rows differs, or is missing) and rewritten from
//! the raw rows, through the role the Flink job writes with. Every run that changed something
//! goes as one line into the state folder, which `status` sums up.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::closed_windows_sql;
use crate::{
    model::{schema, topology::DbRole},
    ops::lab::Lab,
    stack::{journal, state},
};

const KEEP: usize = 200;

/// Windows listed in one record (all are counted).
const WINDOWS_LISTED: usize = 20;

/// What started a repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// `labctl verify --repair`
    Verify,
    /// `labctl submit spark`, before the export reads the database.
    Export,
}

/// One window rewritten: the reading count Flink had written (None: no window) and the raw
/// rows' count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairedWindow {
    pub machine_id: String,
    pub sensor_type: String,
    pub window_start: DateTime<Utc>,
    pub count_before: Option<i64>,
    pub count_after: i64,
}

/// One repair run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepairRecord {
    pub at: DateTime<Utc>,
    pub trigger: Trigger,
    /// Windows whose values were rewritten, and minutes that had raw rows but no window.
    pub updated: u64,
    pub added: u64,
    /// Readings the rewritten windows count now that they did not before.
    pub late_readings: i64,
    /// The first windows, oldest first.
    pub windows: Vec<RepairedWindow>,
}

impl RepairRecord {
    pub fn windows(&self) -> u64 {
        self.updated + self.added
    }
}

/// Every repair so far, summed for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepairTotals {
    pub runs: u64,
    pub windows: u64,
    pub late_readings: i64,
    pub last: Option<RepairRecord>,
}

/// Rewrites every closed window that disagrees with its raw rows, in one statement (one
/// snapshot); records the run when it changed something.
pub async fn repair(lab: &Lab, timeout: Duration, trigger: Trigger) -> Result<RepairRecord> {
    let db = lab
        .database_as(DbRole::Writer)?
        .connect(timeout)
        .await
        .context("connecting as the job's writer role to repair windows")?;
    let window_secs = crate::ops::flink::job::JobSettings::for_lab(&lab.config).window_secs;
    let rows = db
        .query(&repair_sql(window_secs), &[])
        .await
        .context("recomputing late windows from the raw rows")?;
    let mut rec = RepairRecord {
        at: Utc::now(),
        trigger,
        updated: 0,
        added: 0,
        late_readings: 0,
        windows: Vec::new(),
    };
    for r in &rows {
        let w = RepairedWindow {
            machine_id: r.try_get(0)?,
            sensor_type: r.try_get(1)?,
            window_start: r.try_get(2)?,
            count_before: r.try_get(3)?,
            count_after: r.try_get(4)?,
        };
        match w.count_before {
            Some(n) => {
                rec.updated += 1;
                rec.late_readings += w.count_after - n;
            }
            None => {
                rec.added += 1;
                rec.late_readings += w.count_after;
            }
        }
        if rec.windows.len() < WINDOWS_LISTED {
            rec.windows.push(w);
        }
    }
    if rec.windows() > 0 {
        tracing::info!(
            "repaired {} windows ({} late readings) from the raw rows",
            rec.windows(),
            rec.late_readings
        );
        journal::append(&state::repairs_path(&lab.stack.project), &rec, KEEP)?;
    }
    Ok(rec)
}

/// The closed windows that differ from their raw rows, upserted from them; returns each
/// rewritten window with its count before and after, oldest first.
fn repair_sql(window_secs: u32) -> String {
    let agg = schema::SENSOR_AGGREGATES.name;
    let w = window_secs;
    format!(
        r#"{closed},
fix AS (SELECT r.machine_id, r.sensor_type, r.w, r.n, r.lo, r.hi, r.av, a.reading_count AS before
          FROM r LEFT JOIN {agg} a ON a.machine_id = r.machine_id AND a.sensor_type = r.sensor_type AND a.window_start = r.w
         WHERE a.window_start IS NULL OR r.n <> a.reading_count OR r.lo <> a.min_value OR r.hi <> a.max_value
            OR abs(r.av - a.avg_value) > 1e-9 * greatest(1, abs(r.av))),
up AS (INSERT INTO {agg} (window_start, window_end, machine_id, sensor_type, avg_value, min_value, max_value, reading_count)
       SELECT w, w + interval '{w} seconds', machine_id, sensor_type, av, lo, hi, n FROM fix
       ON CONFLICT (machine_id, sensor_type, window_start) DO UPDATE
          SET window_end = EXCLUDED.window_end, avg_value = EXCLUDED.avg_value, min_value = EXCLUDED.min_value,
              max_value = EXCLUDED.max_value, reading_count = EXCLUDED.reading_count
       RETURNING machine_id, sensor_type, window_start)
SELECT f.machine_id, f.sensor_type, f.w, f.before, f.n
  FROM up JOIN fix f ON f.machine_id = up.machine_id AND f.sensor_type = up.sensor_type AND f.w = up.window_start
 ORDER BY f.w, f.machine_id, f.sensor_type"#,
        closed = closed_windows_sql(w),
    )
}

/// Every recorded repair of `project`, summed.
pub fn totals(project: &str) -> Result<RepairTotals> {
    let all: Vec<RepairRecord> = journal::read_all(&state::repairs_path(project))?;
    Ok(sum(all))
}

fn sum(all: Vec<RepairRecord>) -> RepairTotals {
    RepairTotals {
        runs: all.len() as u64,
        windows: all.iter().map(RepairRecord::windows).sum(),
        late_readings: all.iter().map(|r| r.late_readings).sum(),
        last: all.into_iter().last(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(updated: u64, added: u64, late: i64) -> RepairRecord {
        RepairRecord {
            at: Utc::now(),
            trigger: Trigger::Verify,
            updated,
            added,
            late_readings: late,
            windows: vec![],
        }
    }

    #[test]
    fn totals_add_up_every_run_and_keep_the_last() {
        let t = sum(vec![rec(2, 1, 5), rec(0, 1, 3)]);
        assert_eq!((t.runs, t.windows, t.late_readings), (2, 4, 8));
        assert_eq!(t.last.unwrap().added, 1);
        assert_eq!(sum(vec![]), RepairTotals::default());
    }

    #[test]
    fn the_statement_only_rewrites_closed_windows_that_differ() {
        let sql = repair_sql(60);
        assert!(sql.contains("interval '60 seconds'"));
        assert!(sql.contains("ON CONFLICT (machine_id, sensor_type, window_start) DO UPDATE"));
        assert!(sql.contains("WHERE a.window_start IS NULL OR r.n <> a.reading_count"));
    }
}
