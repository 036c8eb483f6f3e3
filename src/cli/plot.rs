//! `labctl plot`: a picture of the data. The last hours of Flink's 1-minute windows from
//! `sensor_aggregates`, per machine and sensor, read in one ordered query and drawn by
//! `crate::ops::plot` into an SVG file.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::{
    model::{
        config::Config,
        fleet::SENSORS,
        schema::{self, SENSOR_AGGREGATES},
    },
    ops::{
        lab::Lab,
        plot::{self, Series, Window},
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

/// A machine id as the generator makes them (`CNC-1`, `LATHE-12`); checked so that a typo
/// fails early with a clear message. The value only ever reaches SQL as a parameter.
fn parse_machine(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a machine id (letters, digits, `-`, `_`, `.`; at most 64), e.g. CNC-1"
        ))
    }
}

fn parse_sensor(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if SENSORS.iter().any(|k| k.name() == lower) {
        Ok(lower)
    } else {
        let known: Vec<_> = SENSORS.iter().map(|k| k.name()).collect();
        Err(format!("unknown sensor type `{s}`; known: {}", known.join(", ")))
    }
}

fn unit_of(sensor: &str) -> Option<String> {
    SENSORS.iter().find(|k| k.name() == sensor).map(|k| k.unit().to_string())
}

/// Every column this command reads; a test checks them against `schema`.
const COLUMNS: [&str; 8] = [
    "machine_id",
    "sensor_type",
    "window_start",
    "window_end",
    "avg_value",
    "min_value",
    "max_value",
    "reading_count",
];

/// One query, ordered by series then time: the newest window matching the filters, and every
/// matching window in the `$3` hours up to it. `$1`/`$2` are the machine and sensor filters
/// (an empty array means all).
fn query_sql() -> String {
    let filter = "(cardinality($1::text[]) = 0 OR machine_id = ANY($1::text[])) \
                  AND (cardinality($2::text[]) = 0 OR sensor_type = ANY($2::text[]))";
    let cols: Vec<String> = COLUMNS.iter().map(|c| format!("a.{}", schema::pg_ident(c))).collect();
    format!(
        "WITH newest AS (SELECT max(window_start) AS t FROM {table} WHERE {filter}) \
         SELECT {cols} FROM {table} a, newest \
         WHERE a.window_start > newest.t - make_interval(hours => $3::int) AND {filter} \
         ORDER BY a.machine_id, a.sensor_type, a.window_start",
        table = SENSOR_AGGREGATES.name,
        cols = cols.join(", "),
    )
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

    let series = read(&client, &args).await?;
    if series.is_empty() {
        bail!("{}", nothing_found(&client, &args).await?);
    }
    missing_filters(&client, &args, &series).await?;

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

/// The windows, grouped into series (the rows arrive ordered by machine, sensor, time).
async fn read(client: &Client, args: &Args) -> Result<Vec<Series>> {
    let hours = i32::try_from(args.hours).context("--hours is too large")?;
    let rows = client
        .query(&query_sql(), &[&args.machines, &args.sensors, &hours])
        .await
        .context("reading sensor_aggregates (`labctl up` creates the table)")?;
    let mut out: Vec<Series> = Vec::new();
    for r in rows {
        let machine: String = r.try_get(0)?;
        let sensor: String = r.try_get(1)?;
        let w = Window {
            start: r.try_get(2)?,
            avg: r.try_get(4)?,
            min: r.try_get(5)?,
            max: r.try_get(6)?,
            count: r.try_get(7)?,
        };
        match out.last_mut() {
            Some(s) if s.machine_id == machine && s.sensor_type == sensor => s.windows.push(w),
            _ => out.push(Series {
                unit: unit_of(&sensor),
                machine_id: machine,
                sensor_type: sensor,
                windows: vec![w],
            }),
        }
    }
    Ok(out)
}

/// What the table holds, by machine and sensor (only asked when the answer explains an error).
async fn known_series(client: &Client) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT machine_id, sensor_type FROM sensor_aggregates GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .context("listing the machines in sensor_aggregates")?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let mut v: Vec<String> = items.into_iter().collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Why the query found nothing: an empty table, or filters that match nothing in it.
async fn nothing_found(client: &Client, args: &Args) -> Result<String> {
    let known = known_series(client).await?;
    if known.is_empty() {
        return Ok("sensor_aggregates has no windows yet: submit the Flink job with `labctl submit flink` and wait a minute \
                   (a window is written when the next minute's readings arrive; `labctl status` shows the job)"
            .into());
    }
    let machines = list(known.iter().map(|k| k.0.clone()));
    if let Some(m) = args.machines.iter().find(|m| !known.iter().any(|k| &k.0 == *m)) {
        return Ok(format!("unknown machine `{m}`: sensor_aggregates has no windows for it (machines with windows: {machines})"));
    }
    if let Some(s) = args.sensors.iter().find(|s| !known.iter().any(|k| &k.1 == *s)) {
        return Ok(format!(
            "sensor_aggregates has no windows for sensor `{s}` (sensors with windows: {})",
            list(known.iter().map(|k| k.1.clone()))
        ));
    }
    Ok(format!(
        "no windows match --machine {} --sensor {} (series with windows: {})",
        list(args.machines.iter().cloned()),
        list(args.sensors.iter().cloned()),
        list(known.iter().map(|k| format!("{} {}", k.0, k.1)))
    ))
}

/// A machine or sensor asked for by name must be in the picture; otherwise say why not.
async fn missing_filters(client: &Client, args: &Args, series: &[Series]) -> Result<()> {
    let absent_m = args.machines.iter().find(|m| !series.iter().any(|s| &s.machine_id == *m));
    let absent_s = args.sensors.iter().find(|x| !series.iter().any(|s| &s.sensor_type == *x));
    if absent_m.is_none() && absent_s.is_none() {
        return Ok(());
    }
    let known = known_series(client).await?;
    if let Some(m) = absent_m {
        if !known.iter().any(|k| &k.0 == m) {
            bail!("unknown machine `{m}`: sensor_aggregates has no windows for it (machines with windows: {})", list(known.iter().map(|k| k.0.clone())));
        }
        bail!("machine `{m}` has no windows in the {} hour(s) up to the newest one; try a larger --hours", args.hours);
    }
    if let Some(x) = absent_s {
        bail!("sensor `{x}` has no windows in the {} hour(s) up to the newest one for the machines asked for", args.hours);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_exist_in_the_schema() {
        for c in COLUMNS {
            assert!(
                SENSOR_AGGREGATES.column(c).is_some(),
                "{c} is not a column of sensor_aggregates"
            );
        }
        let sql = query_sql();
        assert!(sql.contains("ORDER BY a.machine_id, a.sensor_type, a.window_start"));
        assert!(!sql.contains('\''), "no literals: filters are parameters");
    }

    #[test]
    fn inputs_are_validated() {
        assert_eq!(parse_machine("CNC-1").unwrap(), "CNC-1");
        assert!(parse_machine("x'; DROP TABLE sensor_aggregates; --").is_err());
        assert!(parse_machine("").is_err());
        assert!(parse_machine(&"A".repeat(65)).is_err());
        assert_eq!(parse_sensor("Temperature").unwrap(), "temperature");
        let e = parse_sensor("humidity").unwrap_err();
        assert!(e.contains("temperature, pressure, vibration"), "{e}");
        assert_eq!(unit_of("vibration").as_deref(), Some("mm/s"));
        assert_eq!(unit_of("humidity"), None);
    }
}
