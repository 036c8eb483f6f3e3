//! `labctl plot`: a picture of the data. The last hours of Flink's 1-minute windows from
//! `sensor_aggregates`, per machine and sensor, read in one ordered query and drawn by
//! `crate::ops::plot` into an SVG file (`crate::ops::windows` reads them).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    model::{config::Config, fleet},
    ops::{
        lab::Lab,
        plot,
        windows::{self, WindowQuery},
    },
};

/// Longest range `--hours` accepts: a week, the generator's default backfill.
const MAX_HOURS: u32 = 168;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hours of windows to draw, counted back from the newest window (not from the wall
    /// clock, so a lab fed only with a backfill still plots its data).
    #[arg(long, default_value_t = 6, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_HOURS as i64))]
    hours: u32,
    /// Only this machine, e.g. CNC-1 (repeatable).
    #[arg(long = "machine", value_name = "ID", value_parser = parse_machine)]
    machines: Vec<String>,
    /// Only this sensor type: temperature, pressure or vibration (repeatable).
    #[arg(long = "sensor", value_name = "TYPE", value_parser = parse_sensor)]
    sensors: Vec<String>,
    /// The SVG file to write.
    #[arg(long, short, default_value = "labctl-plot.svg", value_name = "FILE")]
    output: PathBuf,
    /// Print a JSON summary (file, panels, points per series) on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_machine(s: &str) -> Result<String, String> {
    fleet::check_machine_id(s).map(|()| s.to_string())
}

fn parse_sensor(s: &str) -> Result<String, String> {
    fleet::check_sensor(s)
}

#[derive(Debug, Serialize)]
struct SeriesSummary {
    machine_id: String,
    sensor_type: String,
    unit: Option<String>,
    points: usize,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct Summary {
    file: String,
    lab: String,
    hours: u32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    panels: usize,
    /// Windows read (rows of sensor_aggregates).
    points: usize,
    /// Points drawn (fewer than `points` when a long range is thinned).
    points_drawn: usize,
    series: Vec<SeriesSummary>,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let db = lab.database()?;
    let client = db.connect(Duration::from_secs(5)).await.map_err(|e| {
        e.context(format!(
            "the lab's database is not reachable at {}:{}; start the lab with `labctl up` (`labctl status` shows what is down)",
            db.host, db.port
        ))
    })?;

    let query = WindowQuery {
        hours: args.hours,
        machines: args.machines.clone(),
        sensors: args.sensors.clone(),
    };
    let series = windows::read_series(&client, &query).await?;

    let newest_end = series
        .iter()
        .filter_map(|s| s.windows.last())
        .map(|w| w.start)
        .max()
        .expect("series are not empty")
        + chrono::Duration::seconds(60);
    let from = newest_end - chrono::Duration::hours(i64::from(args.hours));
    let rendered = plot::render(&plot::Chart {
        lab: &lab.stack.project,
        from,
        to: newest_end,
        series: &series,
    })?;
    std::fs::write(&args.output, &rendered.svg)
        .with_context(|| format!("cannot write {}", args.output.display()))?;

    let summary = Summary {
        file: args.output.display().to_string(),
        lab: lab.stack.project.clone(),
        hours: args.hours,
        from,
        to: newest_end,
        panels: rendered.panels,
        points: series.iter().map(|s| s.windows.len()).sum(),
        points_drawn: rendered.points_drawn,
        series: series
            .iter()
            .map(|s| SeriesSummary {
                machine_id: s.machine_id.clone(),
                sensor_type: s.sensor_type.clone(),
                unit: s.unit.clone(),
                points: s.windows.len(),
                first: s.windows[0].start,
                last: s.windows[s.windows.len() - 1].start,
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "wrote {}: {} panel(s), {} window(s), {}",
            summary.file,
            summary.panels,
            summary.points,
            plot::range_text(from, newest_end)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_validated() {
        assert_eq!(parse_machine("CNC-1").unwrap(), "CNC-1");
        assert!(parse_machine("x'; DROP TABLE sensor_aggregates; --").is_err());
        assert!(parse_machine("").is_err());
        assert!(parse_machine(&"A".repeat(65)).is_err());
        assert_eq!(parse_sensor("Temperature").unwrap(), "temperature");
        let e = parse_sensor("humidity").unwrap_err();
        assert!(e.contains("temperature, pressure, vibration"), "{e}");
    }
}
