//! The judgement of each hop from what the readers counted: pure, so every rule is tested
//! without a lab.

use super::{Cell, Facts, LAKE_IN_FLIGHT_SECS};

/// Problems listed per hop (all of them are counted).
const PROBLEMS_SHOWN: usize = 12;

/// One hop of the pipeline and whether it agrees.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hop {
    pub name: &'static str,
    pub ok: bool,
    /// False when there was nothing to check yet (no window, no Delta table): not a failure.
    pub checked: bool,
    /// One line: what was compared and the totals.
    pub summary: String,
    /// What is still in flight and how it is bounded.
    pub in_flight: String,
    /// The cells that disagree, first ones; `problem_count` counts all.
    pub problems: Vec<String>,
    pub problem_count: usize,
    /// What to do about the problems, when there is a remedy.
    pub hint: Option<String>,
}

fn cell_name(c: &Cell) -> String {
    format!("{} {} {}", c.day, c.machine_id, c.sensor_type)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", num(n), if n == 1 { one } else { many })
}

fn num(n: u64) -> String {
    crate::ops::numbers::count(n as i64)
}

fn hop(
    name: &'static str,
    checked: bool,
    summary: String,
    in_flight: String,
    problems: Vec<String>,
) -> Hop {
    let problem_count = problems.len();
    Hop {
        name,
        ok: problems.is_empty(),
        checked,
        summary,
        in_flight,
        problems: problems.into_iter().take(PROBLEMS_SHOWN).collect(),
        problem_count,
        hint: None,
    }
}

pub fn judge(cells: &[Cell], ctx: &Facts) -> Vec<Hop> {
    vec![topic_to_raw(cells, ctx), raw_to_windows(cells, ctx), raw_to_lake(cells, ctx)]
}

fn sum(cells: &[Cell], f: impl Fn(&Cell) -> u64) -> u64 {
    cells.iter().map(f).sum()
}

fn topic_to_raw(cells: &[Cell], ctx: &Facts) -> Hop {
    let mut problems = Vec::new();
    for c in cells {
        if c.lost > 0 {
            problems.push(format!(
                "{}: {} of the topic's settled readings not in machine_sensors",
                cell_name(c),
                c.lost
            ));
        }
        // Retention may have removed the messages of old rows: then they cannot be matched.
        if c.not_in_topic > 0 && !ctx.topic_trimmed {
            problems.push(format!(
                "{}: {} in machine_sensors that no message of the topic holds",
                cell_name(c),
                plural(c.not_in_topic, "row", "rows")
            ));
        }
    }
    if ctx.unaccounted_settled > 0 {
        problems.push(format!(
            "{} below the committed offsets neither stored as a reading nor in rejected_readings",
            plural(ctx.unaccounted_settled, "message", "messages")
        ));
    }
    let messages: i64 = ctx.partitions.iter().map(|p| p.high - p.low).sum();
    let summary = format!(
        "{} messages in {} partitions: {} distinct readings, {} rejected by the job; machine_sensors {} rows, {} lost, {} not from the topic",
        num(messages.max(0) as u64),
        ctx.partitions.len(),
        num(sum(cells, |c| c.topic)),
        num(ctx.rejected),
        num(sum(cells, |c| c.raw)),
        num(sum(cells, |c| c.lost)),
        num(sum(cells, |c| c.not_in_topic)),
    );
    let no_commit =
        ctx.partitions.iter().filter(|p| p.committed.is_none() && p.high > p.low).count();
    let mut in_flight = format!(
        "{} past the committed offsets of group {}",
        plural(ctx.in_flight_messages, "message", "messages"),
        ctx.group
    );
    if no_commit > 0 {
        in_flight.push_str(&format!(" ({no_commit} partitions with no committed offset: is the Flink job running? `labctl submit flink`)"));
    }
    if ctx.topic_trimmed {
        in_flight.push_str(
            "; retention removed the start of the topic: rows older than it are not matched",
        );
    }
    hop("topic -> machine_sensors", true, summary, in_flight, problems)
}

fn raw_to_windows(cells: &[Cell], ctx: &Facts) -> Hop {
    let Some(until) = ctx.windows_closed_until else {
        return hop(
            "machine_sensors -> sensor_aggregates",
            false,
            "no window written yet".into(),
            "every window is still open".into(),
            vec![],
        );
    };
    let mut problems = Vec::new();
    for c in cells {
        let mut what = Vec::new();
        if c.windows_wrong > 0 {
            what.push(format!(
                "{} whose count, min, max or avg differ from the raw rows",
                plural(c.windows_wrong, "window", "windows")
            ));
        }
        if c.windows_missing > 0 {
            what.push(format!(
                "{} with raw rows but no window",
                plural(c.windows_missing, "minute", "minutes")
            ));
        }
        if c.windows_extra > 0 {
            what.push(format!("{} without raw rows", plural(c.windows_extra, "window", "windows")));
        }
        if what.is_empty() && c.window_count != c.window_rows {
            what.push(format!(
                "reading_count adds up to {} but the closed windows hold {} raw rows",
                c.window_count, c.window_rows
            ));
        }
        if !what.is_empty() {
            problems.push(format!("{}: {}", cell_name(c), what.join(", ")));
        }
    }
    let summary = format!(
        "{} closed windows recomputed from {} raw rows: {} differ, {} missing, {} without raw rows",
        num(sum(cells, |c| c.windows)),
        num(sum(cells, |c| c.window_rows)),
        num(sum(cells, |c| c.windows_wrong)),
        num(sum(cells, |c| c.windows_missing)),
        num(sum(cells, |c| c.windows_extra)),
    );
    let in_flight = format!("windows ending after {} (a window before the newest one written) are open or may be in flight", until.format("%Y-%m-%d %H:%M:%S UTC"));
    let mut h = hop("machine_sensors -> sensor_aggregates", true, summary, in_flight, problems);
    if sum(cells, |c| c.windows_wrong + c.windows_missing) > 0 {
        h.hint = Some("windows written before their raw rows changed (readings that reached the job after their window closed: a producer's clock behind, a machine back from offline; or rows edited since) disagree with them; `labctl verify --repair` rewrites those windows from the raw rows".into());
    }
    h
}

fn raw_to_lake(cells: &[Cell], ctx: &Facts) -> Hop {
    let name = "machine_sensors -> lake";
    let Some(version) = ctx.lake_version else {
        return hop(
            name,
            false,
            format!("no Delta table {} yet", ctx.lake_table),
            "nothing exported yet (`labctl submit spark`)".into(),
            vec![],
        );
    };
    let mut problems = Vec::new();
    for c in cells {
        let mut what = Vec::new();
        if c.lake_missing > 0 {
            what.push(format!(
                "{} of the database not in the lake",
                plural(c.lake_missing, "row", "rows")
            ));
        }
        if c.lake_duplicates > 0 {
            what.push(format!("{} twice", plural(c.lake_duplicates, "reading", "readings")));
        }
        if c.lake_extra > 0 {
            what.push(format!(
                "{} the database does not have",
                plural(c.lake_extra, "row", "rows")
            ));
        }
        if !what.is_empty() {
            problems.push(format!("{}: {}", cell_name(c), what.join(", ")));
        }
    }
    let missing = sum(cells, |c| c.lake_missing) > 0;
    let summary = format!(
        "{} version {}: {} rows, {} due from the database, {} missing, {} twice, {} not in the database",
        ctx.lake_table,
        version,
        num(sum(cells, |c| c.lake.unwrap_or(0))),
        num(sum(cells, |c| c.lake_due)),
        num(sum(cells, |c| c.lake_missing)),
        num(sum(cells, |c| c.lake_duplicates)),
        num(sum(cells, |c| c.lake_extra)),
    );
    let in_flight = match (ctx.lake_as_of, ctx.lake_due_before) {
        (Some(as_of), Some(before)) => format!(
            "{} stamped after {} ({} s before the last export compared, at {}) not exported yet",
            plural(ctx.lake_pending, "row", "rows"),
            before.format("%Y-%m-%d %H:%M:%S UTC"),
            LAKE_IN_FLIGHT_SECS,
            as_of.format("%H:%M:%S")
        ),
        _ => format!(
            "no export by labctl in the table's log: {} of the database not checked for presence",
            plural(ctx.lake_pending, "row", "rows")
        ),
    };
    let mut h = hop(name, true, summary, in_flight, problems);
    if missing {
        h.hint = Some("rows reached the database after the last export, or the export missed them: `labctl submit spark` rewrites the days that differ".into());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(f: impl FnOnce(&mut Cell)) -> Cell {
        let mut c = Cell {
            machine_id: "CNC-1".into(),
            sensor_type: "temperature".into(),
            day: "2026-11-30".into(),
            topic: 10,
            topic_settled: 10,
            raw: 10,
            ..Cell::default()
        };
        f(&mut c);
        c
    }

    fn ctx() -> Facts {
        Facts {
            group: "g".into(),
            partitions: vec![super::super::PartitionRead {
                partition: 0,
                low: 0,
                high: 10,
                committed: Some(10),
            }],
            windows_closed_until: Some(chrono::DateTime::from_timestamp(600, 0).unwrap()),
            lake_table: "machine_sensors".into(),
            lake_version: Some(3),
            lake_as_of: chrono::DateTime::from_timestamp(900, 0),
            lake_due_before: chrono::DateTime::from_timestamp(840, 0),
            ..Facts::default()
        }
    }

    fn oks(cells: &[Cell], ctx: &Facts) -> Vec<bool> {
        judge(cells, ctx).iter().map(|h| h.ok).collect()
    }

    #[test]
    fn agreeing_cells_pass_every_hop() {
        let c = cell(|c| {
            c.window_rows = 10;
            c.window_count = 10;
            c.windows = 1;
            c.lake = Some(10);
            c.lake_due = 10;
        });
        assert_eq!(oks(&[c], &ctx()), [true, true, true]);
    }

    #[test]
    fn late_windows_point_to_repair_and_other_faults_do_not() {
        let hint = |c: Cell| judge(&[c], &ctx())[1].hint.clone();
        assert!(hint(cell(|c| c.windows_wrong = 1)).unwrap().contains("verify --repair"));
        assert!(hint(cell(|c| c.windows_missing = 2)).unwrap().contains("verify --repair"));
        assert_eq!(hint(cell(|c| c.windows_extra = 1)), None);
        assert_eq!(hint(cell(|c| c.lost = 1)), None);
    }

    #[test]
    fn each_kind_of_loss_fails_its_own_hop() {
        assert_eq!(oks(&[cell(|c| c.lost = 1)], &ctx()), [false, true, true]);
        assert_eq!(oks(&[cell(|c| c.not_in_topic = 1)], &ctx()), [false, true, true]);
        assert_eq!(oks(&[cell(|c| c.windows_wrong = 1)], &ctx()), [true, false, true]);
        assert_eq!(oks(&[cell(|c| c.windows_missing = 1)], &ctx()), [true, false, true]);
        assert_eq!(
            oks(&[cell(|c| c.window_rows = 3)], &ctx()),
            [true, false, true],
            "counts that do not add up"
        );
        assert_eq!(oks(&[cell(|c| c.lake_missing = 1)], &ctx()), [true, true, false]);
        assert_eq!(oks(&[cell(|c| c.lake_duplicates = 1)], &ctx()), [true, true, false]);
        assert_eq!(oks(&[cell(|c| c.lake_extra = 1)], &ctx()), [true, true, false]);
        let mut lost_messages = ctx();
        lost_messages.unaccounted_settled = 2;
        assert_eq!(oks(&[cell(|_| ())], &lost_messages), [false, true, true]);
    }

    #[test]
    fn what_is_in_flight_or_not_there_yet_is_no_failure() {
        let mut c = ctx();
        c.in_flight_messages = 500;
        c.unaccounted_in_flight = 3;
        c.windows_closed_until = None;
        c.lake_version = None;
        let hops = judge(&[cell(|c| c.topic = 510)], &c);
        assert_eq!(
            hops.iter().map(|h| (h.ok, h.checked)).collect::<Vec<_>>(),
            [(true, true), (true, false), (true, false)]
        );
        assert!(
            hops[0].in_flight.starts_with("500 messages past the committed offsets"),
            "{}",
            hops[0].in_flight
        );
        // Rows whose messages retention removed cannot be matched.
        let mut trimmed = ctx();
        trimmed.topic_trimmed = true;
        assert_eq!(oks(&[cell(|c| c.not_in_topic = 5)], &trimmed), [true, true, true]);
    }

    #[test]
    fn problems_name_the_cell_and_are_capped() {
        let cells: Vec<Cell> = (0..20)
            .map(|i| {
                cell(|c| {
                    c.lost = 1;
                    c.machine_id = format!("M-{i}");
                })
            })
            .collect();
        let h = &judge(&cells, &ctx())[0];
        assert_eq!(h.problem_count, 20);
        assert_eq!(h.problems.len(), PROBLEMS_SHOWN);
        assert_eq!(
            h.problems[0],
            "2026-11-30 M-0 temperature: 1 of the topic's settled readings not in machine_sensors"
        );
    }
}
