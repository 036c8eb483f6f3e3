//! `labctl verify`: presents `crate::ops::verify`'s report as a table of counts per machine, sensor
//! and UTC day with the disagreeing cells marked, then one verdict per hop.

use std::{fmt::Write as _, io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::Result;

use super::status::count;
use crate::{
    model::config::Config,
    ops::{
        lab::Lab,
        verify::{self, repair, Cell, Report},
    },
};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when every hop agrees (up to what is in flight), 1 when one does not, \
                        2 when a service could not be read. In flight: messages past the Flink group's committed \
                        offsets; windows after the newest one written; rows stamped within 60 s before the last \
                        export compared."
)]
pub struct Args {
    /// One JSON document on stdout (every cell, every hop) instead of the table.
    #[arg(long)]
    json: bool,
    /// Print only the cells that disagree (the hop verdicts always).
    #[arg(long)]
    problems_only: bool,
    /// First rewrite, from the raw rows, every closed window that disagrees with them (late
    /// readings: stored after their window was written), then verify.
    #[arg(long)]
    repair: bool,
    /// Seconds a service may stay silent while it is read.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    timeout: f64,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let timeout = Duration::from_secs_f64(args.timeout.clamp(1.0, 600.0));
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message("reading the topic, the hypertables and the lake");
    pb.enable_steady_tick(Duration::from_millis(120));
    let started = std::time::Instant::now();
    let repaired = if args.repair {
        pb.set_message("rewriting late windows from the raw rows");
        match repair::repair(&lab, timeout, repair::Trigger::Verify).await {
            Ok(r) => Some(r),
            Err(e) => {
                pb.finish_and_clear();
                eprintln!("error: verify --repair could not repair the windows: {e:#}");
                return Ok(ExitCode::from(2));
            }
        }
    } else {
        None
    };
    pb.set_message("reading the topic, the hypertables and the lake");
    let report = verify::run(&lab, timeout).await;
    pb.finish_and_clear();
    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: verify could not read the lab: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    report.repaired = repaired;
    tracing::info!("verify took {:.1} s", started.elapsed().as_secs_f64());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, args.problems_only, std::io::stdout().is_terminal()));
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn bad(c: &Cell) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |n: u64, what: &str| {
        if n > 0 {
            out.push(format!("{n} {what}"));
        }
    };
    note(c.lost, "lost");
    note(c.not_in_topic, "not from topic");
    note(c.windows_wrong, "windows wrong");
    note(c.windows_missing, "windows missing");
    note(c.windows_extra, "windows extra");
    note(c.lake_missing, "not in lake");
    note(c.lake_duplicates, "twice in lake");
    note(c.lake_extra, "only in lake");
    if c.window_count != c.window_rows && c.windows_wrong + c.windows_missing + c.windows_extra == 0
    {
        out.push("window counts".into());
    }
    out
}

/// One line on what `--repair` rewrote.
pub fn repaired_line(rep: &repair::RepairRecord) -> String {
    if rep.windows() == 0 {
        return "repair: every closed window already agreed with its raw rows".into();
    }
    let first = rep
        .windows
        .first()
        .map(|w| {
            format!(
                ", first {} {} {} ({} -> {} readings)",
                w.window_start.format("%Y-%m-%d %H:%M"),
                w.machine_id,
                w.sensor_type,
                w.count_before.map_or("none".into(), |n| n.to_string()),
                w.count_after
            )
        })
        .unwrap_or_default();
    format!(
        "repair: rewrote {} windows from the raw rows ({} recomputed, {} added; {} late readings now counted{first})",
        rep.windows(),
        rep.updated,
        rep.added,
        rep.late_readings
    )
}

pub fn render(r: &Report, problems_only: bool, color: bool) -> String {
    let (red, green, off) = if color { ("\x1b[31m", "\x1b[32m", "\x1b[0m") } else { ("", "", "") };
    let mut s = String::new();
    let lake = |c: &Cell| c.lake.map(|n| count(n as i64)).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        s,
        "{:<10}  {:<12} {:<12} {:>9} {:>9} {:>9} {:>9}  RESULT",
        "DAY", "MACHINE", "SENSOR", "TOPIC", "RAW", "WINDOWED", "LAKE"
    );
    if let Some(rep) = &r.repaired {
        let _ = writeln!(s, "{}", repaired_line(rep));
    }
    let mut hidden = 0;
    for c in &r.cells {
        let problems = bad(c);
        if problems_only && problems.is_empty() {
            hidden += 1;
            continue;
        }
        let result = if problems.is_empty() {
            format!("{green}ok{off}")
        } else {
            format!("{red}✗ {}{off}", problems.join(", "))
        };
        let _ = writeln!(
            s,
            "{:<10}  {:<12} {:<12} {:>9} {:>9} {:>9} {:>9}  {result}",
            c.day,
            c.machine_id,
            c.sensor_type,
            count(c.topic as i64),
            count(c.raw as i64),
            count(c.window_count as i64),
            lake(c)
        );
    }
    if hidden > 0 {
        let _ = writeln!(s, "({hidden} agreeing cells not shown)");
    }
    let _ = writeln!(s, "TOPIC: distinct readings in the topic; RAW: machine_sensors rows; WINDOWED: reading_count of closed windows; LAKE: rows of the Delta table's current version");
    s.push('\n');
    for h in &r.hops {
        let mark = match (h.ok, h.checked) {
            (true, true) => format!("{green}✓{off}"),
            (true, false) => "-".to_string(),
            (false, _) => format!("{red}✗{off}"),
        };
        let _ = writeln!(s, "{mark} {}: {}", h.name, h.summary);
        let _ = writeln!(s, "    in flight: {}", h.in_flight);
        for p in &h.problems {
            let _ = writeln!(s, "    {red}{p}{off}");
        }
        if h.problem_count > h.problems.len() {
            let _ = writeln!(
                s,
                "    ... and {} more (`labctl verify --json` lists every cell)",
                h.problem_count - h.problems.len()
            );
        }
        if let Some(hint) = &h.hint {
            let _ = writeln!(s, "    fix: {hint}");
        }
    }
    let failing: Vec<&str> = r.hops.iter().filter(|h| !h.ok).map(|h| h.name).collect();
    if failing.is_empty() {
        let _ = writeln!(s, "{green}verify: every hop agrees{off}");
    } else {
        let _ = writeln!(
            s,
            "{red}verify: {} of {} hops disagree: {}{off}",
            failing.len(),
            r.hops.len(),
            failing.join("; ")
        );
    }
    s
}
