//! Spark: the lab's export job (`labctl submit spark`'s submission, job and config template) on
//! a scratch hypertable of its own, against a read-only baseline in the same run: the same
//! submission reading the same rows over JDBC into the tasks and counting them, writing and
//! committing nothing. So the ratio shows what writing the Delta table costs on top of reading.
//! Also the job's own phases and submit-to-FINISHED against the target, and the fixed
//! cost against the same export whose driver loads its classes from the jars instead of the
//! image's class-data archive.
//!
//! The scratch table and the scratch Delta path are removed afterwards, also when a run fails.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{fill_table, median, Measurement};
use crate::{
    model::{
        schema::{pg_ident, MACHINE_SENSORS},
        topology::DbRole,
    },
    ops::{
        lab::Lab,
        spark::{self, ExportRequest, Outcome, Overrides, Sizing},
    },
    progress::Progress,
};

/// The target: a 7-day table exported within this many seconds, submit to FINISHED.
const TARGET_SECS: f64 = 15.0;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Days of history in the scratch table (7 = 1,088,640 readings).
    pub days: f64,
    /// Parallel JDBC reads (as `labctl submit spark --partitions`).
    pub partitions: u32,
    /// Runs of each (baseline, export, the export with a driver without the class-data archive,
    /// the same export again with nothing to change), alternating; the median of each is
    /// reported.
    pub runs: u32,
}

/// One submission of the export job, waited for; fails unless it FINISHED.
/// What one submission does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Case {
    /// Read over JDBC and count; write nothing.
    ReadOnly,
    Export,
    /// The export with a driver that loads every class from the jars.
    ExportWithoutArchive,
}

async fn run_once(
    lab: &Lab,
    table: &str,
    delta_path: &str,
    partitions: u32,
    case: Case,
) -> Result<(Outcome, Sizing)> {
    // An explicit end: the default stops 60 s before now, and the scratch table reaches now.
    let to = Some(
        (chrono::Utc::now() + chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let req = ExportRequest { to, partitions, ..Default::default() };
    let over = Overrides {
        table: Some(table.into()),
        delta_path: Some(delta_path.into()),
        read_only: case == Case::ReadOnly,
        vacuum: None,
        without_driver_archive: case == Case::ExportWithoutArchive,
    };
    // The previous run's application may still be releasing its cores.
    let spark = lab.spark(Duration::from_secs(10))?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        let m = spark.master().await?;
        if m.activedrivers.is_empty() && m.workers.iter().all(|w| w.coresused == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (started, outcome) =
        spark::run(lab, &req, &over, Duration::from_secs(900), &crate::progress::Quiet).await?;
    Ok((outcome, started.sizing))
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(f64::NAN)
}

/// Where the time of one run went, in seconds (from the job's result and the submit clock).
#[derive(Debug, Clone, Copy)]
struct Phases {
    total: f64,
    /// Submit until the driver's JVM started, plus the JVM's exit and the polling after the
    /// result line (the submit clock minus the driver's own count).
    outside_driver: f64,
    /// Driver JVM start to the job's Python code.
    jvm_to_python: f64,
    /// The comparison: per-day figures of the database, and of the lake from its Delta log
    /// (before any SparkContext).
    compare: f64,
    /// SparkContext (with executor registration) and session; 0 when nothing had to change.
    spark_start: f64,
    /// The read-only run's JDBC read of the differing days (every row and column, kept nowhere).
    read: f64,
    /// The export's tasks: JDBC read and Parquet write in one pass.
    write: f64,
    commit: f64,
}

impl Phases {
    fn of(o: &Outcome) -> Self {
        let r = &o.result;
        let t = &r["tables"][0];
        let p = |k: &str| {
            let x = num(t, &["phases", k]);
            if x.is_nan() {
                0.0
            } else {
                x
            }
        };
        let driver = num(r, &["seconds"]);
        Self {
            total: o.seconds,
            outside_driver: o.seconds - driver,
            jvm_to_python: num(r, &["startup", "jvm_to_python"]),
            compare: p("compare_db") + p("compare_lake"),
            spark_start: p("spark_start"),
            read: p("read"),
            write: p("write"),
            commit: p("commit"),
        }
    }

    fn median_of(all: &[Phases]) -> Self {
        let m = |f: fn(&Phases) -> f64| median(all.iter().map(f).collect());
        Self {
            total: m(|p| p.total),
            outside_driver: m(|p| p.outside_driver),
            jvm_to_python: m(|p| p.jvm_to_python),
            compare: m(|p| p.compare),
            spark_start: m(|p| p.spark_start),
            read: m(|p| p.read),
            write: m(|p| p.write),
            commit: m(|p| p.commit),
        }
    }

    /// Submit until the tasks start reading, and the exit: all but the read, write and commit.
    fn fixed(&self) -> f64 {
        self.total - self.read - self.write - self.commit
    }

    fn describe(&self) -> String {
        format!(
            "driver start {:.1} s (submit->JVM + exit {:.1}, JVM->python {:.1}), compare {:.1} s, Spark start {:.1} s, read {:.1} s, write {:.1} s, commit {:.1} s",
            self.outside_driver + self.jvm_to_python,
            self.outside_driver,
            self.jvm_to_python,
            self.compare,
            self.spark_start,
            self.read,
            self.write,
            self.commit
        )
    }
}

pub async fn run(lab: &Lab, bench: &Settings, progress: &dyn Progress) -> Result<Vec<Measurement>> {
    if bench.runs == 0 || bench.runs > 20 {
        bail!("--runs must be between 1 and 20");
    }
    let blob = lab.blob(Duration::from_secs(30))?;
    let container = lab.config.lake.container.clone();
    blob.list_containers()
        .await
        .context("the lake's storage (Azurite) is not up; start the lab with `labctl up`")?;
    lab.spark(Duration::from_secs(10))?
        .master()
        .await
        .context("the Spark master is not up; start the lab with `labctl up`")?;
    let db = lab.database()?.connect(Duration::from_secs(10)).await?;
    let nonce = chrono::Utc::now().format("%H%M%S").to_string();
    let table = format!("bench_spark_{nonce}");
    let prefix = format!("bench-spark-{nonce}");
    db.batch_execute(&format!(
        "CREATE TABLE {t} (LIKE {like} INCLUDING ALL); SELECT create_hypertable('{t}', '{time}');",
        t = table,
        like = MACHINE_SENSORS.name,
        time = MACHINE_SENSORS.time_column
    ))
    .await
    .with_context(|| format!("creating scratch table {table}"))?;
    // The export reads as the lab database's read-only role, which sees only the lab's tables.
    let reader = lab.db_credentials(DbRole::Reader)?.user;
    if reader != lab.database()?.user {
        db.batch_execute(&format!("GRANT SELECT ON {table} TO {}", pg_ident(&reader)))
            .await
            .with_context(|| format!("letting {reader} read scratch table {table}"))?;
    }

    let result = measure(lab, bench, &db, &table, &prefix, progress).await;

    // Clean up whatever happened above.
    let mut cleanup = Vec::new();
    if let Err(e) = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await {
        cleanup.push(format!("dropping scratch table {table}: {e}"));
    }
    match blob.delete_prefix(&container, &format!("{prefix}/")).await {
        Ok(n) => tracing::debug!("deleted {n} scratch blobs under {prefix}/"),
        Err(e) => cleanup.push(format!("deleting scratch blobs {container}/{prefix}/: {e:#}")),
    }
    if !cleanup.is_empty() {
        progress.note(&format!("warning: clean-up incomplete: {}", cleanup.join("; ")));
    }
    result
}

async fn measure(
    lab: &Lab,
    bench: &Settings,
    db: &tokio_postgres::Client,
    table: &str,
    prefix: &str,
    progress: &dyn Progress,
) -> Result<Vec<Measurement>> {
    progress.note(&format!(
        "filling scratch table {table} with {} days of the default fleet (binary COPY) …",
        bench.days
    ));
    let t = Instant::now();
    let n = fill_table(db, table, bench.days, |_| {}).await?;
    db.batch_execute(&format!("ANALYZE {table}")).await?;
    let fill_secs = t.elapsed().as_secs_f64();
    progress.note(&format!("{n} rows in {fill_secs:.1} s"));

    let blob = lab.blob(Duration::from_secs(30))?;
    let container = &lab.config.lake.container;
    let (mut base, mut export, mut noop, mut plain) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sizing = None;
    for i in 0..bench.runs {
        // Alternating order, so that neither case always runs first on a fresh cluster; the
        // export with nothing to change needs the export's table, so it follows it.
        let steps = if i % 2 == 0 {
            [Case::ReadOnly, Case::Export, Case::ExportWithoutArchive, Case::Export]
        } else {
            [Case::ExportWithoutArchive, Case::Export, Case::Export, Case::ReadOnly]
        };
        let mut exported = false;
        for case in steps {
            let again = case == Case::Export && exported;
            let (path, what) = match case {
                Case::ReadOnly => (
                    format!("{prefix}/base-{i}"),
                    "the baseline (read over JDBC and count, write nothing)",
                ),
                Case::Export if again => {
                    (format!("{prefix}/export-{i}"), "the same export again (nothing to change)")
                }
                Case::Export => (format!("{prefix}/export-{i}"), "the export"),
                Case::ExportWithoutArchive => (
                    format!("{prefix}/plain-{i}"),
                    "the export, its driver without the class-data archive,",
                ),
            };
            progress.note(&format!("run {}/{}: {what} to {container}/{path} …", i + 1, bench.runs));
            let (o, s) = run_once(lab, table, &path, bench.partitions, case).await?;
            let (committed, written) =
                (o.result["committed"].clone(), o.result["rows_written"].as_u64().unwrap_or(0));
            match case {
                Case::ReadOnly => {
                    let read = o.result["rows_read"].as_u64().unwrap_or(0);
                    if read != n || committed != false {
                        bail!(
                            "{what} read {read} of {n} rows (committed: {committed}): {}",
                            o.result
                        );
                    }
                }
                _ if again => {
                    if committed != false || o.result["days_rewritten"].as_u64() != Some(0) {
                        bail!("{what} rewrote {} days: {}", o.result["days_rewritten"], o.result);
                    }
                }
                _ => {
                    if written != n || committed != true {
                        bail!(
                            "{what} wrote {written} of {n} rows (committed: {committed}): {}",
                            o.result
                        );
                    }
                    // What `labctl status` will say about it: the row count from the Delta log.
                    let summary = blob.delta_summary(container, &path).await?;
                    if summary.rows != Some(n) {
                        bail!(
                            "the Delta log of {path} counts {:?} rows, {what} wrote {n}",
                            summary.rows
                        );
                    }
                }
            }
            progress.note(&format!(
                "  {:.1} s submit->FINISHED; {}",
                o.seconds,
                Phases::of(&o).describe()
            ));
            match case {
                Case::ReadOnly => base.push(Phases::of(&o)),
                Case::ExportWithoutArchive => plain.push(Phases::of(&o)),
                Case::Export if again => noop.push(Phases::of(&o)),
                Case::Export => {
                    export.push(Phases::of(&o));
                    sizing = Some(s);
                    exported = true;
                }
            }
        }
    }
    let (b, e, z) =
        (Phases::median_of(&base), Phases::median_of(&export), Phases::median_of(&noop));
    let plain = Phases::median_of(&plain);
    let sizing = sizing.map(|s| s.describe()).unwrap_or_default();
    let conditions = format!(
        "{n} rows ({} days), {} JDBC partitions; {sizing}; median of {} run(s)",
        bench.days, bench.partitions, bench.runs
    );
    let rate = |secs: f64| n as f64 / secs;
    let target = if bench.days == 7.0 {
        format!(
            "target: 7-day table within {TARGET_SECS:.0} s submit->FINISHED: {}",
            if e.total <= TARGET_SECS { "met" } else { "NOT met" }
        )
    } else {
        format!("target ({TARGET_SECS:.0} s) applies to --days 7")
    };
    const BASE: &str = "read-only (JDBC -> count)";
    const PLAIN: &str = "fixed cost, driver without class-data archive";
    Ok(vec![
        Measurement::new("spark", BASE, rate(b.total), "rows/s")
            .note(format!("{:.1} s submit->FINISHED; {conditions}", b.total)),
        Measurement::new("spark", "export -> Delta (submit->FINISHED)", rate(e.total), "rows/s")
            .against(BASE, b.total / e.total)
            .note(format!("{:.1} s; {target}", e.total)),
        Measurement::new("spark", "export submit -> FINISHED", e.total, "s")
            .against(BASE, b.total / e.total)
            .note(e.describe()),
        Measurement::new("spark", "read-only: JDBC read in tasks", rate(b.read), "rows/s")
            .note(format!("{:.1} s of {:.1} s; {}", b.read, b.total, b.describe())),
        Measurement::new(
            "spark",
            "export: JDBC read + Parquet write in tasks",
            rate(e.write),
            "rows/s",
        )
        .against("read-only: JDBC read in tasks", b.read / e.write)
        .note(format!("{:.1} s, one pass; then the commit {:.1} s", e.write, e.commit)),
        Measurement::new("spark", "export with nothing to change", z.total, "s")
            .against("export -> Delta (submit->FINISHED)", e.total / z.total)
            .note(format!("{}; the comparison is {:.1} s of it", z.describe(), z.compare)),
        Measurement::new("spark", PLAIN, plain.fixed(), "s").note(format!(
            "export {:.1} s submit->FINISHED; {}",
            plain.total,
            plain.describe()
        )),
        Measurement::new("spark", "fixed cost: submit -> tasks start", e.fixed(), "s")
            .against(PLAIN, plain.fixed() / e.fixed())
            .note(format!(
                "driver start, compare, Spark start, exit; {:.1} s in the read-only baseline",
                b.total - b.read
            )),
        Measurement::new("spark", "scratch table fill (binary COPY)", rate(fill_secs), "rows/s")
            .note(format!("{fill_secs:.1} s, not part of any ratio")),
    ])
}
