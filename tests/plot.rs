//! `labctl plot` against a real lab: known windows inserted into `sensor_aggregates`, the SVG
//! and the JSON summary checked against them, and the errors a user meets on the way.

mod common;

use std::{collections::HashMap, time::Duration};

use bollard::container::{ListContainersOptions, StopContainerOptions};
use chrono::{DateTime, TimeZone, Utc};
use common::{rt, TestLab};

/// 2026-01-01 10:00 UTC: the data is in the past, as after a backfill.
fn at(min: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_261_600 + min * 60, 0).unwrap()
}

/// A window's start and average.
type Avg = (DateTime<Utc>, f64);

/// The contents of an SVG document's `<text>` elements.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .map(|t| t.split_once('>').unwrap().1.split("</text>").next().unwrap().trim().to_string())
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn plot_draws_what_the_table_holds() {
    let t = TestLab::new("plot").with_env("LABCTL_INGEST_ENABLED", "false");
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("p.svg");
    let svg_arg = svg_path.to_str().unwrap();

    // --- before `up`: no lab -------------------------------------------------------------------
    let none = t.run(&["plot", "-o", svg_arg]);
    assert!(!none.status.success());
    assert!(stderr(&none).contains("labctl up"), "{}", stderr(&none));

    t.ok(&["up"]);
    let lab = t.lab();
    let rt = rt();

    // --- an empty table: the Flink job has not written anything yet ---------------------------
    let empty = t.run(&["plot", "-o", svg_arg]);
    assert!(!empty.status.success());
    assert!(stderr(&empty).contains("labctl submit flink"), "{}", stderr(&empty));
    assert!(!svg_path.exists(), "no file without data");

    // --- known windows: 90 min of CNC-1 temperature and vibration, 30 min of WELDER-1
    // pressure ending at the same minute, and one CNC-1 temperature window 8 h earlier ------
    let mut inserted: HashMap<(&str, &str), Vec<Avg>> = HashMap::new();
    for m in 0..90 {
        inserted.entry(("CNC-1", "temperature")).or_default().push((at(m), 70.0 + (m % 5) as f64));
        inserted
            .entry(("CNC-1", "vibration"))
            .or_default()
            .push((at(m), 0.8 + (m % 3) as f64 * 0.05));
    }
    for m in 60..90 {
        inserted
            .entry(("WELDER-1", "pressure"))
            .or_default()
            .push((at(m), 2.0 + (m % 4) as f64 * 0.1));
    }
    let old = (at(-8 * 60), 65.0);
    rt.block_on(async {
        let db = lab.database().unwrap().connect(Duration::from_secs(10)).await.unwrap();
        let stmt = db
            .prepare("INSERT INTO sensor_aggregates (window_start, window_end, machine_id, sensor_type, avg_value, min_value, max_value, reading_count) VALUES ($1, $2, $3, $4, $5, $6, $7, 12)")
            .await
            .unwrap();
        let mut rows: Vec<(&str, &str, DateTime<Utc>, f64)> =
            inserted.iter().flat_map(|((m, s), ws)| ws.iter().map(move |(t, v)| (*m, *s, *t, *v))).collect();
        rows.push(("CNC-1", "temperature", old.0, old.1));
        for (m, s, start, v) in rows {
            let end = start + chrono::Duration::minutes(1);
            db.execute(&stmt, &[&start, &end, &m, &s, &v, &(v - 0.5), &(v + 0.5)]).await.unwrap();
        }
    });

    // --- the default: 6 hours up to the newest window -------------------------------------------
    let j = t.json(&["plot", "-o", svg_arg, "--json"]);
    assert_eq!(j["file"], svg_arg);
    assert_eq!(j["lab"], t.project.as_str());
    assert_eq!(j["hours"], 6);
    assert_eq!(j["panels"], 3, "{j:#}");
    assert_eq!(j["points"], 90 + 90 + 30, "the window 8 h back is out of range: {j:#}");
    assert_eq!(j["to"], "2026-01-01T11:30:00Z", "{j:#}");
    assert_eq!(j["from"], "2026-01-01T05:30:00Z", "{j:#}");
    let series = j["series"].as_array().unwrap();
    assert_eq!(series.len(), 3);
    for s in series {
        let key = (s["machine_id"].as_str().unwrap(), s["sensor_type"].as_str().unwrap());
        let want = &inserted[&key];
        assert_eq!(s["points"].as_u64().unwrap() as usize, want.len(), "{key:?}");
        assert_eq!(
            s["first"].as_str().unwrap(),
            want[0].0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "{key:?}"
        );
    }
    assert_eq!(series[0]["unit"], "C");

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let tx = texts(&svg);
    let mut panel_titles: Vec<&str> = tx
        .iter()
        .map(String::as_str)
        .filter(|x| x.starts_with("CNC-1 ") || x.starts_with("WELDER-1 "))
        .collect();
    panel_titles.sort();
    assert_eq!(
        panel_titles,
        [
            "CNC-1 pressure: no windows",
            "CNC-1 temperature",
            "CNC-1 vibration",
            "WELDER-1 pressure",
            "WELDER-1 temperature: no windows",
            "WELDER-1 vibration: no windows",
        ],
        "one panel per inserted series, in a machines x sensors grid"
    );
    assert!(!tx.iter().any(|x| x.starts_with("LATHE-1")), "no row for a machine without windows");
    assert_eq!(svg.matches("<polygon").count(), 3, "one min-max band per series (no gaps)");
    assert!(tx.contains(&format!("{}: 2026-01-01 05:30 to 11:30 UTC", t.project)), "title: {tx:?}");
    for label in ["temperature (C)", "pressure (bar)", "vibration (mm/s)", "time (UTC)", "11:00"] {
        assert!(tx.iter().any(|x| x == label), "no label {label}: {tx:?}");
    }

    // --- a longer range reaches the old window; filters pick panels ---------------------------
    let j = t.json(&["plot", "-o", svg_arg, "--json", "--hours", "12"]);
    assert_eq!(j["points"], 211, "{j:#}");
    let j =
        t.json(&["plot", "-o", svg_arg, "--json", "--machine", "WELDER-1", "--sensor", "pressure"]);
    assert_eq!((j["panels"].as_u64(), j["points"].as_u64()), (Some(1), Some(30)), "{j:#}");
    assert_eq!(j["from"], "2026-01-01T05:30:00Z", "newest window of the filtered series");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(texts(&svg).iter().any(|x| x == "WELDER-1 pressure"));
    assert!(!texts(&svg).iter().any(|x| x.starts_with("CNC-1")));

    // --- bad input ----------------------------------------------------------------------------
    let unknown = t.run(&["plot", "-o", svg_arg, "--machine", "CNC-1", "--machine", "NOPE-99"]);
    assert!(!unknown.status.success());
    let e = stderr(&unknown);
    assert!(e.contains("unknown machine `NOPE-99`") && e.contains("CNC-1, WELDER-1"), "{e}");
    let bad = t.run(&["plot", "--machine", "x'; DROP TABLE sensor_aggregates; --"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("is not a machine id"),
        "{}",
        stderr(&bad)
    );
    let bad = t.run(&["plot", "--sensor", "humidity"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("unknown sensor type `humidity`"),
        "{}",
        stderr(&bad)
    );
    let bad = t.run(&["plot", "--hours", "0"]);
    assert!(!bad.status.success());

    // --- the database down: a clear message, not a hang ---------------------------------------
    rt.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("labctl.project={}", t.project), "labctl.service=timescaledb".to_string()],
        )]);
        let cs = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(cs.len(), 1);
        docker
            .stop_container(cs[0].id.as_deref().unwrap(), Some(StopContainerOptions { t: 10 }))
            .await
            .unwrap();
    });
    let down = t.run(&["plot", "-o", svg_arg]);
    assert!(!down.status.success());
    let e = stderr(&down);
    assert!(e.contains("database is not reachable") && e.contains("labctl up"), "{e}");
}
