//! `labctl plot` without the services: 1-minute windows of each machine's sensors in, one SVG
//! document out. A grid of small multiples, one row per machine and one column per sensor
//! type, so every panel has a y scale of its own (a welder runs at 320 C, a lathe at 55 C) and
//! the panels of one column share a unit. Each panel shows the windows' average as a line over
//! a shaded band from the windows' minimum to their maximum, on a UTC time axis shared by all
//! panels. Missing windows break the line and the band rather than being bridged.
//!
//! Text is written as SVG `<text>` elements: plotters is built without its font features, so
//! it only estimates text extents and the viewer renders the glyphs.

use std::{collections::BTreeSet, ops::Range};

use anyhow::{anyhow, ensure, Result};
use chrono::{DateTime, TimeZone, Utc};
use plotters::{
    coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter},
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// One 1-minute window of one sensor of one machine (a row of `sensor_aggregates`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    pub count: i64,
}

/// The windows of one machine's sensor, oldest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Series {
    pub machine_id: String,
    pub sensor_type: String,
    /// Shown in the y axis label, e.g. `C`, `bar`, `mm/s`.
    pub unit: Option<String>,
    pub windows: Vec<Window>,
}

/// What to draw: the lab's name goes into the title, `from..to` is the time axis of every panel.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    pub lab: &'a str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub series: &'a [Series],
}

/// The rendered document and what it contains.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub svg: String,
    /// Panels drawn (one per series).
    pub panels: usize,
    /// Points drawn in all panels (less than the windows when long ranges are thinned).
    pub points_drawn: usize,
}

/// Size of one panel in pixels, and of the title above the grid.
pub const PANEL_WIDTH: u32 = 440;
pub const PANEL_HEIGHT: u32 = 230;
const TITLE_HEIGHT: u32 = 64;
/// The step of the windows Flink writes.
const WINDOW_SECS: i64 = 60;
/// More points than this per panel are thinned to this many buckets (about two per pixel).
pub const MAX_POINTS_PER_PANEL: usize = 720;

/// Sensor columns in the fleet's order; types the generator does not know come after, by name.
const SENSOR_ORDER: [&str; 3] = ["temperature", "pressure", "vibration"];

fn sensor_rank(s: &str) -> (usize, &str) {
    (SENSOR_ORDER.iter().position(|k| *k == s).unwrap_or(SENSOR_ORDER.len()), s)
}

fn sensor_color(s: &str) -> RGBColor {
    match s {
        "temperature" => RGBColor(214, 39, 40),
        "pressure" => RGBColor(31, 119, 180),
        "vibration" => RGBColor(44, 160, 44),
        _ => RGBColor(148, 103, 189),
    }
}

/// The text of a panel's caption; also what tests look for.
pub fn panel_caption(machine_id: &str, sensor_type: &str) -> String {
    format!("{machine_id} {sensor_type}")
}

/// The y axis label: the sensor and its unit.
pub fn axis_label(sensor_type: &str, unit: Option<&str>) -> String {
    match unit {
        Some(u) if !u.is_empty() => format!("{sensor_type} ({u})"),
        _ => sensor_type.to_string(),
    }
}

/// `2026-01-01 06:00 to 12:00 UTC`, or with both dates when the range crosses midnight.
pub fn range_text(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    if from.date_naive() == to.date_naive() {
        format!("{} to {} UTC", from.format("%Y-%m-%d %H:%M"), to.format("%H:%M"))
    } else {
        format!("{} to {} UTC", from.format("%Y-%m-%d %H:%M"), to.format("%Y-%m-%d %H:%M"))
    }
}

/// The title line above the grid.
pub fn title(lab: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!("{lab}: {}", range_text(from, to))
}

/// The time axis in seconds since the epoch, with key points on round minutes, hours or days.
#[derive(Debug, Clone, Copy)]
struct TimeAxis {
    from: i64,
    to: i64,
}

/// Tick steps, in seconds.
const STEPS: [i64; 15] =
    [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400, 172800, 604800];

impl TimeAxis {
    fn ticks(&self, max: usize) -> Vec<i64> {
        if max == 0 {
            return vec![];
        }
        for step in STEPS {
            let first = self.from.div_euclid(step) + i64::from(self.from.rem_euclid(step) != 0);
            let last = self.to.div_euclid(step);
            let n = (last - first + 1).max(0) as usize;
            if n <= max {
                return (first..=last).map(|k| k * step).collect();
            }
        }
        vec![]
    }
}

impl Ranged for TimeAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = i64;

    fn map(&self, value: &i64, limit: (i32, i32)) -> i32 {
        let span = (self.to - self.from).max(1) as f64;
        let frac = (*value - self.from) as f64 / span;
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<i64> {
        self.ticks(hint.max_num_points())
    }

    fn range(&self) -> Range<i64> {
        self.from..self.to
    }
}

impl ValueFormatter<i64> for TimeAxis {
    fn format(value: &i64) -> String {
        match Utc.timestamp_opt(*value, 0).single() {
            // A tick at midnight shows the date, every other one the time of day.
            Some(t) if value.rem_euclid(86400) == 0 => t.format("%m-%d").to_string(),
            Some(t) => t.format("%H:%M").to_string(),
            None => value.to_string(),
        }
    }
}

/// Merges windows into buckets of `bucket_secs` (aligned to `origin`): the count-weighted mean
/// of the averages, the minimum of the minima, the maximum of the maxima, the sum of the counts.
pub fn thin(windows: &[Window], origin: i64, bucket_secs: i64) -> Vec<Window> {
    let mut out: Vec<(i64, Window, f64)> = Vec::new();
    for w in windows {
        let key = (w.start.timestamp() - origin).div_euclid(bucket_secs);
        let weight = w.count.max(1) as f64;
        match out.last_mut() {
            Some((k, acc, wsum)) if *k == key => {
                acc.avg += w.avg * weight;
                acc.min = acc.min.min(w.min);
                acc.max = acc.max.max(w.max);
                acc.count += w.count;
                *wsum += weight;
            }
            _ => {
                let start =
                    Utc.timestamp_opt(origin + key * bucket_secs, 0).single().unwrap_or(w.start);
                out.push((key, Window { start, avg: w.avg * weight, ..*w }, weight));
            }
        }
    }
    out.into_iter()
        .map(|(_, mut w, wsum)| {
            w.avg /= wsum;
            w
        })
        .collect()
}

/// Runs of windows without gaps: a step longer than 1.5 `step_secs` starts a new run.
pub fn segments(windows: &[Window], step_secs: i64) -> Vec<&[Window]> {
    let mut out = Vec::new();
    let mut begin = 0;
    for i in 1..=windows.len() {
        let gap = i == windows.len()
            || (windows[i].start - windows[i - 1].start).num_seconds() * 2 > step_secs * 3;
        if gap {
            out.push(&windows[begin..i]);
            begin = i;
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The y range of a panel: the band's extent with 5 % headroom (never empty).
fn y_range(windows: &[Window]) -> Range<f64> {
    let lo = windows.iter().map(|w| w.min.min(w.avg)).fold(f64::INFINITY, f64::min);
    let hi = windows.iter().map(|w| w.max.max(w.avg)).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { (lo.abs() * 0.05).max(0.5) };
    (lo - pad)..(hi + pad)
}

/// Tick labels with as many decimals as a fifth of the span needs.
fn y_format(span: f64) -> impl Fn(&f64) -> String {
    let decimals = (-(span / 5.0).log10().floor()).clamp(0.0, 4.0) as usize;
    move |v: &f64| format!("{v:.decimals$}")
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// Draws the chart. Each series gets a panel in its machine's row and its sensor's column;
/// windows outside `from..=to` are left out.
pub fn render(chart: &Chart) -> Result<Rendered> {
    ensure!(!chart.series.is_empty(), "nothing to plot: no series");
    let from = chart.from.timestamp();
    let to = chart.to.timestamp().max(from + WINDOW_SECS);
    let axis = TimeAxis { from, to };

    let mut machines: Vec<&str> = chart
        .series
        .iter()
        .map(|s| s.machine_id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    machines.sort();
    let mut sensors: Vec<&str> = chart
        .series
        .iter()
        .map(|s| s.sensor_type.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    sensors.sort_by_key(|s| sensor_rank(s));

    let width = (sensors.len() as u32 * PANEL_WIDTH).max(720);
    let height = TITLE_HEIGHT + machines.len() as u32 * PANEL_HEIGHT;
    // Longer ranges are thinned to about two points per pixel column of a panel.
    let bucket_secs = {
        let per_point = ((to - from) as f64 / MAX_POINTS_PER_PANEL as f64).ceil() as i64;
        (per_point.max(WINDOW_SECS) + WINDOW_SECS - 1) / WINDOW_SECS * WINDOW_SECS
    };

    let mut svg = String::new();
    let mut points_drawn = 0;
    let mut panels = 0;
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (head, grid) = root.split_vertically(TITLE_HEIGHT);
        let centre = (width / 2) as i32;
        head.draw(&Text::new(
            title(chart.lab, chart.from, chart.to),
            (centre, 10),
            ("sans-serif", 26).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;
        let note = if bucket_secs > WINDOW_SECS {
            format!(
                "sensor_aggregates in {}-minute buckets: line = average, band = min to max",
                bucket_secs / 60
            )
        } else {
            "sensor_aggregates: line = 1-minute average, band = min to max of each minute"
                .to_string()
        };
        head.draw(&Text::new(
            note,
            (centre, 40),
            ("sans-serif", 16)
                .into_font()
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;

        let cells = grid.split_evenly((machines.len(), sensors.len()));
        for (row, machine) in machines.iter().enumerate() {
            for (col, sensor) in sensors.iter().enumerate() {
                let area = &cells[row * sensors.len() + col];
                let Some(series) = chart
                    .series
                    .iter()
                    .find(|s| s.machine_id == *machine && s.sensor_type == *sensor)
                else {
                    let (w, h) = area.dim_in_pixel();
                    area.draw(&Text::new(
                        format!("{machine} {sensor}: no windows"),
                        ((w / 2) as i32, (h / 2) as i32),
                        ("sans-serif", 16)
                            .into_font()
                            .color(&RGBColor(150, 150, 150))
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))
                    .map_err(err)?;
                    continue;
                };
                let inside: Vec<Window> = series
                    .windows
                    .iter()
                    .copied()
                    .filter(|w| (from..=to).contains(&w.start.timestamp()))
                    .collect();
                let windows = if bucket_secs > WINDOW_SECS {
                    thin(&inside, from, bucket_secs)
                } else {
                    inside
                };
                points_drawn += windows.len();
                panels += 1;
                let color = sensor_color(sensor);
                let yr = y_range(&windows);
                let yfmt = y_format(yr.end - yr.start);
                let last_row = row + 1 == machines.len();

                let mut c = ChartBuilder::on(area)
                    .caption(panel_caption(machine, sensor), ("sans-serif", 18))
                    .margin(8)
                    .margin_right(16)
                    .x_label_area_size(if last_row { 40 } else { 24 })
                    .y_label_area_size(64)
                    .build_cartesian_2d(axis, yr)
                    .map_err(err)?;
                let mut mesh = c.configure_mesh();
                mesh.x_labels(7)
                    .y_labels(5)
                    .y_label_formatter(&yfmt)
                    .y_desc(axis_label(sensor, series.unit.as_deref()))
                    .x_max_light_lines(1)
                    .y_max_light_lines(1)
                    .light_line_style(RGBColor(238, 238, 238))
                    .bold_line_style(RGBColor(215, 215, 215))
                    .label_style(("sans-serif", 13));
                if last_row {
                    mesh.x_desc("time (UTC)");
                }
                mesh.draw().map_err(err)?;

                let runs = segments(&windows, bucket_secs);
                let band = color.mix(0.22).filled();
                c.draw_series(runs.iter().filter(|r| r.len() > 1).map(|r| {
                    let upper = r.iter().map(|w| (w.start.timestamp(), w.max));
                    let lower = r.iter().rev().map(|w| (w.start.timestamp(), w.min));
                    Polygon::new(upper.chain(lower).collect::<Vec<_>>(), band)
                }))
                .map_err(err)?;
                // A window alone (between gaps) is a whisker from min to max with a dot.
                c.draw_series(runs.iter().filter(|r| r.len() == 1).map(|r| {
                    let w = r[0];
                    PathElement::new(
                        vec![(w.start.timestamp(), w.min), (w.start.timestamp(), w.max)],
                        color.mix(0.5).stroke_width(3),
                    )
                }))
                .map_err(err)?;
                c.draw_series(
                    runs.iter().filter(|r| r.len() == 1).map(|r| {
                        Circle::new((r[0].start.timestamp(), r[0].avg), 2, color.filled())
                    }),
                )
                .map_err(err)?;
                for r in runs.iter().filter(|r| r.len() > 1) {
                    c.draw_series(LineSeries::new(
                        r.iter().map(|w| (w.start.timestamp(), w.avg)),
                        color.stroke_width(1),
                    ))
                    .map_err(err)?;
                }
            }
        }
        root.present().map_err(err)?;
    }
    Ok(Rendered { svg, panels, points_drawn })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(min: i64) -> DateTime<Utc> {
        // 2026-01-01 06:00 UTC + min minutes
        Utc.timestamp_opt(1_767_247_200 + min * 60, 0).unwrap()
    }

    fn series(
        machine: &str,
        sensor: &str,
        unit: &str,
        minutes: impl IntoIterator<Item = i64>,
        base: f64,
    ) -> Series {
        let windows = minutes
            .into_iter()
            .map(|m| {
                let avg = base + (m as f64 / 10.0).sin();
                Window { start: t(m), avg, min: avg - 1.0, max: avg + 1.0, count: 12 }
            })
            .collect();
        Series {
            machine_id: machine.into(),
            sensor_type: sensor.into(),
            unit: Some(unit.into()),
            windows,
        }
    }

    fn fleet() -> Vec<Series> {
        let mut v = Vec::new();
        for (m, base) in [("CNC-1", 70.0), ("LATHE-1", 55.0), ("WELDER-1", 320.0)] {
            v.push(series(m, "temperature", "C", 0..360, base));
            v.push(series(m, "pressure", "bar", 0..360, base / 10.0));
            v.push(series(m, "vibration", "mm/s", 0..360, base / 100.0));
        }
        v
    }

    fn count(hay: &str, needle: &str) -> usize {
        hay.matches(needle).count()
    }

    /// `LABCTL_PLOT_SAMPLES=DIR cargo test --lib plot::` keeps the test charts to look at.
    fn keep(name: &str, svg: &str) {
        if let Some(dir) = std::env::var_os("LABCTL_PLOT_SAMPLES") {
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.svg")), svg).unwrap();
        }
    }

    /// The contents of the document's `<text>` elements, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .map(|t| {
                t.split_once('>').unwrap().1.split("</text>").next().unwrap().trim().to_string()
            })
            .collect()
    }

    fn has_text(svg: &str, text: &str) -> usize {
        texts(svg).iter().filter(|t| *t == text).count()
    }

    #[test]
    fn one_panel_per_series_with_band_line_and_labels() {
        let s = fleet();
        let r = render(&Chart { lab: "iiot-lab", from: t(0), to: t(360), series: &s }).unwrap();
        assert_eq!(r.panels, 9);
        keep("fleet", &r.svg);
        assert_eq!(r.points_drawn, 9 * 360);
        assert!(r.svg.starts_with("<svg"), "{}", &r.svg[..100]);
        assert!(r.svg.trim_end().ends_with("</svg>"));
        for m in ["CNC-1", "LATHE-1", "WELDER-1"] {
            for sensor in ["temperature", "pressure", "vibration"] {
                assert_eq!(has_text(&r.svg, &panel_caption(m, sensor)), 1, "{m} {sensor}");
            }
        }
        // One band polygon and one average polyline per panel (no gaps in the data).
        assert_eq!(count(&r.svg, "<polygon"), 9);
        assert!(count(&r.svg, "<polyline") >= 9);
        // Units in the y labels, one per panel; the time axis once per column, at the bottom.
        assert_eq!(has_text(&r.svg, "temperature (C)"), 3);
        assert_eq!(has_text(&r.svg, "pressure (bar)"), 3);
        assert_eq!(has_text(&r.svg, "vibration (mm/s)"), 3);
        assert_eq!(has_text(&r.svg, "time (UTC)"), 3);
        // Title with the lab and the range; hour ticks in UTC.
        assert_eq!(has_text(&r.svg, "iiot-lab: 2026-01-01 06:00 to 12:00 UTC"), 1, "title");
        // Hour ticks in UTC under every panel.
        assert_eq!(has_text(&r.svg, "08:00"), 9);
        assert_eq!(has_text(&r.svg, "10:00"), 9);
    }

    #[test]
    fn band_polygon_follows_max_then_min() {
        let s = vec![Series {
            machine_id: "CNC-1".into(),
            sensor_type: "pressure".into(),
            unit: Some("bar".into()),
            windows: (0..3)
                .map(|m| Window {
                    start: t(m),
                    avg: 5.0,
                    min: 4.0 + m as f64 * 0.1,
                    max: 6.0,
                    count: 12,
                })
                .collect(),
        }];
        let r = render(&Chart { lab: "x", from: t(0), to: t(3), series: &s }).unwrap();
        let poly = r.svg.split("<polygon").nth(1).unwrap();
        let pts: Vec<(i32, i32)> = poly
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(pts.len(), 6, "{pts:?}");
        // Upper edge left to right at one height (max), lower edge right to left below it.
        assert!(pts[0].0 < pts[1].0 && pts[1].0 < pts[2].0);
        assert!(pts[0].1 == pts[1].1 && pts[1].1 == pts[2].1);
        assert!(pts[3].0 > pts[4].0 && pts[4].0 > pts[5].0);
        assert!(pts[3].1 > pts[0].1 && pts[5].1 > pts[3].1, "min rises to the right: {pts:?}");
    }

    #[test]
    fn gaps_split_line_and_band_and_missing_cells_say_so() {
        // Two runs of windows with a 10-minute hole, plus a lone window.
        let mut a = series("CNC-1", "temperature", "C", (0..20).chain(30..50).chain([55]), 70.0);
        a.windows.sort_by_key(|w| w.start);
        let b = series("LATHE-1", "pressure", "bar", 0..50, 4.5);
        let s = vec![a, b];
        let r = render(&Chart { lab: "lab", from: t(0), to: t(60), series: &s }).unwrap();
        keep("gaps", &r.svg);
        assert_eq!(r.panels, 2);
        assert_eq!(count(&r.svg, "<polygon"), 2 + 1, "two runs of CNC-1, one of LATHE-1");
        assert_eq!(has_text(&r.svg, "CNC-1 pressure: no windows"), 1);
        assert_eq!(has_text(&r.svg, "LATHE-1 temperature: no windows"), 1);
        assert_eq!(count(&r.svg, "<circle"), 1, "the lone window is a dot");
    }

    #[test]
    fn segments_and_thinning() {
        let s = series("M", "temperature", "C", (0..5).chain(7..9), 1.0);
        let runs = segments(&s.windows, 60);
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), vec![5, 2]);
        assert!(segments(&[], 60).is_empty());

        let ws: Vec<Window> = (0..10)
            .map(|m| Window {
                start: t(m),
                avg: m as f64,
                min: m as f64 - 1.0,
                max: m as f64 + 1.0,
                count: if m == 0 { 3 } else { 1 },
            })
            .collect();
        let th = thin(&ws, t(0).timestamp(), 300);
        assert_eq!(th.len(), 2);
        assert_eq!(th[0].start, t(0));
        assert_eq!(th[1].start, t(5));
        assert_eq!(th[0].count, 7);
        assert_eq!(th[0].min, -1.0);
        assert_eq!(th[0].max, 5.0);
        // (0*3 + 1 + 2 + 3 + 4) / 7
        assert!((th[0].avg - 10.0 / 7.0).abs() < 1e-12);
        assert_eq!(th[1].avg, 7.0);
    }

    #[test]
    fn long_ranges_are_thinned_and_ticks_are_round() {
        let s = vec![series("CNC-1", "vibration", "mm/s", 0..(48 * 60), 0.8)];
        let r = render(&Chart { lab: "lab", from: t(0), to: t(48 * 60), series: &s }).unwrap();
        keep("thinned", &r.svg);
        assert!(r.points_drawn <= MAX_POINTS_PER_PANEL, "{}", r.points_drawn);
        assert!(r.svg.contains("in 4-minute buckets"), "note about the buckets");
        // The range crosses midnight: that tick shows the date.
        assert_eq!(has_text(&r.svg, "01-02"), 1, "{:?}", texts(&r.svg));

        let axis = TimeAxis { from: t(0).timestamp() + 30, to: t(360).timestamp() };
        let ticks = axis.ticks(7);
        assert!(ticks.iter().all(|x| x % 3600 == 0), "{ticks:?}");
        assert_eq!(ticks.len(), 6);
        assert!(axis.ticks(0).is_empty());
    }

    #[test]
    fn labels_are_escaped_and_empty_input_refused() {
        let s = vec![series("A<&>", "temperature", "C", 0..3, 1.0)];
        let r = render(&Chart { lab: "l", from: t(0), to: t(3), series: &s }).unwrap();
        assert_eq!(has_text(&r.svg, "A&lt;&amp;&gt; temperature"), 1);
        assert!(render(&Chart { lab: "l", from: t(0), to: t(3), series: &[] }).is_err());
        assert_eq!(axis_label("x", None), "x");
        assert_eq!(range_text(t(0), t(24 * 60 + 5)), "2026-01-01 06:00 to 2026-01-02 06:05 UTC");
    }
}
