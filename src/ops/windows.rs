//! Flink's 1-minute windows as series per machine and sensor: one ordered query over
//! `sensor_aggregates` for the hours up to the newest window, and, when it finds nothing or
//! misses a filter, the reason in words. `labctl plot` draws them (`ops::plot`).

use anyhow::{bail, Context, Result};
use tokio_postgres::Client;

use crate::{
    model::{
        fleet::SENSORS,
        schema::{self, SENSOR_AGGREGATES},
    },
    ops::plot::{Series, Window},
};

/// Which windows to read: the `hours` up to the newest matching window, of these machines and
/// sensors (empty: all). The values only ever reach SQL as parameters.
#[derive(Debug, Clone)]
pub struct WindowQuery {
    pub hours: u32,
    pub machines: Vec<String>,
    pub sensors: Vec<String>,
}

/// The windows matching `q`, grouped into series; an error says why there are none, or why a
/// machine or sensor asked for by name is missing.
pub async fn read_series(client: &Client, q: &WindowQuery) -> Result<Vec<Series>> {
    let series = read(client, q).await?;
    if series.is_empty() {
        bail!("{}", nothing_found(client, q).await?);
    }
    missing_filters(client, q, &series).await?;
    Ok(series)
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

/// The windows, grouped into series (the rows arrive ordered by machine, sensor, time).
async fn read(client: &Client, q: &WindowQuery) -> Result<Vec<Series>> {
    let hours = i32::try_from(q.hours).context("--hours is too large")?;
    let rows = client
        .query(&query_sql(), &[&q.machines, &q.sensors, &hours])
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
async fn nothing_found(client: &Client, q: &WindowQuery) -> Result<String> {
    let known = known_series(client).await?;
    if known.is_empty() {
        return Ok("sensor_aggregates has no windows yet: submit the Flink job with `labctl submit flink` and wait a minute \
                   (a window is written when the next minute's readings arrive; `labctl status` shows the job)"
            .into());
    }
    let machines = list(known.iter().map(|k| k.0.clone()));
    if let Some(m) = q.machines.iter().find(|m| !known.iter().any(|k| &k.0 == *m)) {
        return Ok(format!("unknown machine `{m}`: sensor_aggregates has no windows for it (machines with windows: {machines})"));
    }
    if let Some(s) = q.sensors.iter().find(|s| !known.iter().any(|k| &k.1 == *s)) {
        return Ok(format!(
            "sensor_aggregates has no windows for sensor `{s}` (sensors with windows: {})",
            list(known.iter().map(|k| k.1.clone()))
        ));
    }
    Ok(format!(
        "no windows match --machine {} --sensor {} (series with windows: {})",
        list(q.machines.iter().cloned()),
        list(q.sensors.iter().cloned()),
        list(known.iter().map(|k| format!("{} {}", k.0, k.1)))
    ))
}

/// A machine or sensor asked for by name must be in the picture; otherwise say why not.
async fn missing_filters(client: &Client, q: &WindowQuery, series: &[Series]) -> Result<()> {
    let absent_m = q.machines.iter().find(|m| !series.iter().any(|s| &s.machine_id == *m));
    let absent_s = q.sensors.iter().find(|x| !series.iter().any(|s| &s.sensor_type == *x));
    if absent_m.is_none() && absent_s.is_none() {
        return Ok(());
    }
    let known = known_series(client).await?;
    if let Some(m) = absent_m {
        if !known.iter().any(|k| &k.0 == m) {
            bail!("unknown machine `{m}`: sensor_aggregates has no windows for it (machines with windows: {})", list(known.iter().map(|k| k.0.clone())));
        }
        bail!("machine `{m}` has no windows in the {} hour(s) up to the newest one; try a larger --hours", q.hours);
    }
    if let Some(x) = absent_s {
        bail!("sensor `{x}` has no windows in the {} hour(s) up to the newest one for the machines asked for", q.hours);
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
    fn units_come_from_the_fleet() {
        assert_eq!(unit_of("vibration").as_deref(), Some("mm/s"));
        assert_eq!(unit_of("humidity"), None);
    }
}
