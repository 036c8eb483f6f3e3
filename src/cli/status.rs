//! `labctl status`: the pipeline at a glance (see `crate::ops::status` for what is gathered and how
//! each line is judged). This module only presents it: a table, JSON, or a refreshing screen.

use std::{fmt::Write as _, io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::Result;

use crate::{
    clients::docker::Runtime,
    model::config::Config,
    ops::{
        lab::Lab,
        status::{self, Health, Light, Report},
    },
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON document on stdout instead of the table (schema: docs/status.schema.json).
    #[arg(long)]
    json: bool,
    /// Include the database password and connection string.
    #[arg(long)]
    show_secrets: bool,
    /// Seconds each check may take.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    timeout: f64,
    /// Refresh in place every SECS seconds until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2", conflicts_with = "json")]
    watch: Option<f64>,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let lab = Lab::existing(config)?;
    let rt = Runtime::connect().await?;
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.1, 60.0));
    let color = std::io::stdout().is_terminal();
    if let Some(every) = args.watch {
        let every = Duration::from_secs_f64(every.clamp(0.5, 3600.0));
        loop {
            let report = status::report(&lab, &rt, timeout).await?;
            // Home and clear, then the whole screen at once, so it does not flicker.
            println!(
                "\x1b[H\x1b[2J{}(refreshing every {:.1} s; Ctrl-C to stop)",
                render(&report, color),
                every.as_secs_f64()
            );
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    }
    let mut report = status::report(&lab, &rt, timeout).await?;
    if args.show_secrets {
        let db = lab.database()?;
        let password = lab.db_password()?;
        let mut secrets = serde_json::json!({
            "db_password": password,
            "db_url": format!("postgresql://{}:{password}@{}:{}/{}", db.user, db.host, db.port, db.name),
        });
        if !lab.state.broker_password.is_empty()
            && lab.stack.published_port(crate::model::config::PortKey::BrokerSaslSsl).is_some()
        {
            secrets["broker_sasl_password"] = lab.state.broker_password.clone().into();
        }
        report.secrets = Some(secrets);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, color));
    }
    Ok(if report.healthy { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

fn dot(h: Health, color: bool) -> String {
    match (color, h) {
        (true, Health::Green) => "\x1b[32m●\x1b[0m".into(),
        (true, Health::Yellow) => "\x1b[33m●\x1b[0m".into(),
        (true, Health::Red) => "\x1b[31m●\x1b[0m".into(),
        (false, Health::Green) => "[ok]  ".into(),
        (false, Health::Yellow) => "[warn]".into(),
        (false, Health::Red) => "[FAIL]".into(),
    }
}

pub use crate::ops::numbers::count;

/// The Flink job's own lag beside the one its committed offsets give.
fn broker_lag(b: &status::BrokerSection) -> String {
    let flink = b
        .flink_consumer_lag
        .map(|l| format!("Flink lag {} (pendingRecords)", count(l)))
        .unwrap_or_else(|| "Flink lag: no running lab job".into());
    let g = &b.consumer_group;
    let group = match (&g.error, g.lag) {
        (Some(e), _) => format!("unknown ({e})"),
        (None, _) if g.partitions.iter().all(|p| p.committed.is_none()) => {
            "nothing committed yet (the job commits on each completed checkpoint)".into()
        }
        (None, lag) => {
            let parts: Vec<String> = g
                .partitions
                .iter()
                .map(|p| {
                    format!(
                        "p{}={}{}",
                        p.partition,
                        count(p.lag),
                        if p.committed.is_none() { " (none committed)" } else { "" }
                    )
                })
                .collect();
            format!("{} [{}]", lag.map(count).unwrap_or_else(|| "unknown".into()), parts.join(" "))
        }
    };
    format!("{flink}; group `{}` committed lag {group}", g.group)
}

/// Brokers, the active controller and the replication of the topic's partitions.
fn cluster(c: &status::ClusterStatus, partitions: usize) -> String {
    if let Some(e) = &c.error {
        return format!("cluster unknown ({e})");
    }
    let brokers: Vec<String> =
        c.brokers.iter().map(|b| format!("{}={}:{}", b.id, b.host, b.port)).collect();
    let controller = match (&c.quorum, &c.quorum_error) {
        (Some(q), None) => format!(
            "controller {} (KRaft quorum leader, epoch {}, {} voter(s))",
            q.leader_id,
            q.leader_epoch,
            q.voters.len()
        ),
        (_, e) => format!("controller unknown ({})", e.as_deref().unwrap_or("no answer")),
    };
    let n = c.partitions.len().max(partitions);
    let ids = |v: &[i32]| v.iter().map(|p| format!("p{p}")).collect::<Vec<_>>().join(" ");
    let replication = match (c.offline.is_empty(), c.under_replicated.is_empty()) {
        (true, true) => format!("all {n} partitions fully in sync"),
        (true, false) => format!("under-replicated {} of {n} partitions", ids(&c.under_replicated)),
        (false, _) => format!(
            "offline {}, under-replicated {} of {n} partitions",
            ids(&c.offline),
            ids(&c.under_replicated)
        ),
    };
    format!("{} broker(s) [{}], {controller}, {replication}", c.brokers.len(), brokers.join(" "))
}

/// What the job's sources emitted and each sink took in, as Flink's operator metrics say.
fn records(j: &status::FlinkJobStatus) -> String {
    if let Some(e) = &j.metrics_error {
        return format!("records unknown ({e})");
    }
    // Flink registers an operator's metrics some seconds after its tasks start (and again
    // after a restore), and its REST answers refresh every 10 s: an operator not listed yet
    // is said so, not shown as a count of 0.
    let op =
        |o: &status::OperatorStatus| format!("{} {} ({:.0}/s)", o.name, count(o.records), o.per_s);
    let list = |ops: &[status::OperatorStatus]| {
        if ops.is_empty() {
            "not reported yet".to_string()
        } else {
            ops.iter().map(op).collect::<Vec<_>>().join(", ")
        }
    };
    let (sources, sinks) = (list(&j.sources), list(&j.sinks));
    format!("source {sources} -> sinks {sinks}")
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

pub fn render(r: &Report, color: bool) -> String {
    let mut o = String::new();
    let overall = match r.health {
        Health::Green => "all green",
        Health::Yellow => "needs a look",
        Health::Red => "something is down",
    };
    let _ = writeln!(
        o,
        "{} lab `{}`: {overall}   ({} UTC, {} ms)",
        dot(r.health, color),
        r.project,
        r.at.format("%Y-%m-%d %H:%M:%S"),
        r.elapsed_ms
    );
    let _ = writeln!(o, "\nSERVICES");
    for s in &r.services {
        let n = s.containers.len();
        let state = if n > 1 { format!("{} x{n}", s.state) } else { s.state.clone() };
        let _ = writeln!(
            o,
            "{} {:<18} {:<11} {:<24} {}",
            dot(s.light.health, color),
            s.service,
            state,
            s.url.clone().unwrap_or_default(),
            s.light.reason
        );
    }
    let _ = writeln!(o, "\nPIPELINE");
    let line = |o: &mut String, name: &str, light: &Light, text: String| {
        let text = if light.health == Health::Green || text.is_empty() {
            if text.is_empty() {
                light.reason.clone()
            } else {
                text
            }
        } else {
            format!("{text}  <- {}", light.reason)
        };
        let _ = writeln!(
            o,
            "{} {:<9} {}",
            dot(light.health, color),
            name,
            text.trim_start_matches("  <- ")
        );
    };

    let b = &r.broker;
    let mut text = String::new();
    if b.end_offsets.is_some() {
        let parts: Vec<String> = b
            .partitions
            .iter()
            .map(|p| format!("p{}={}", p.offsets.partition, count(p.messages)))
            .collect();
        let total: i64 = b.partitions.iter().map(|p| p.messages).sum();
        text = format!("topic `{}`: {} messages [{}]", b.topic, count(total), parts.join(" "));
        if let Some(rate) = b.ingest_per_s {
            let _ = write!(text, ", {rate:.1}/s last min");
        }
    }
    line(&mut o, "broker", &b.light, text);
    if b.end_offsets.is_some() {
        let _ = writeln!(o, "          {}", broker_lag(b));
    }
    let _ = writeln!(o, "          {}", cluster(&b.cluster, b.partitions.len()));

    let f = &r.flink;
    let mut text = String::new();
    if let Some(tm) = f.taskmanagers {
        text = format!(
            "{tm} TM, {}/{} slots free",
            f.slots_available.unwrap_or(0),
            f.slots_total.unwrap_or(0)
        );
    }
    line(&mut o, "flink", &f.light, text);
    for j in &f.jobs {
        let cp = j
            .last_checkpoint_age_secs
            .map(|a| format!("checkpoint {} ago", age(a)))
            .unwrap_or_else(|| "no checkpoint".into());
        let _ = writeln!(
            o,
            "          {} {} up {}, {cp}, restores {}, late {}{}",
            &j.id[..j.id.len().min(8)],
            j.state,
            age(j.uptime_secs),
            j.restarts.unwrap_or(0),
            j.late_records_dropped,
            if j.lab_job { String::new() } else { format!("  ({})", j.name) }
        );
        let _ = writeln!(o, "            {}", records(j));
    }

    let d = &r.database;
    let tables: Vec<String> = d
        .tables
        .iter()
        .map(|t| {
            let fresh = t
                .freshness_secs
                .map(|s| format!(", newest {} old", age(s.max(0))))
                .unwrap_or_default();
            format!(
                "{} {}{} rows/{} chunks{fresh}",
                t.table,
                if t.rows_exact { "" } else { "~" },
                count(t.rows),
                t.chunks
            )
        })
        .collect();
    let mut text = tables.join(" | ");
    if let Some(r) = d.rejected.as_ref().filter(|r| r.count > 0) {
        let _ = write!(text, " | rejected {}", count(r.count));
    }
    if let Some(last) = &d.repairs.last {
        let _ = write!(
            text,
            " | late windows repaired {} ({} late readings, last {} by {})",
            count(d.repairs.windows as i64),
            count(d.repairs.late_readings),
            last.at.format("%Y-%m-%d %H:%M UTC"),
            match last.trigger {
                crate::ops::verify::repair::Trigger::Verify => "verify --repair",
                crate::ops::verify::repair::Trigger::Export => "an export",
            }
        );
    }
    line(&mut o, "database", &d.light, text);

    let s = &r.spark;
    let mut text = String::new();
    if let Some(m) = &s.master {
        let alive = s
            .workers
            .iter()
            .filter(|w| w.state == crate::clients::spark::WorkerState::Alive)
            .count();
        text = format!(
            "master {m}, {alive} worker(s), {}/{} cores used",
            s.cores_used.unwrap_or(0),
            s.cores.unwrap_or(0)
        );
        if let Some(last) = s.drivers.first() {
            let _ = write!(text, "; last driver {} {}", last.id, last.state);
            if let Some(e) = &last.export {
                let _ = write!(text, " in {:.1} s", e.seconds);
                if let Some(n) = e.rows_written {
                    let _ = write!(text, ", {} rows written", count(n as i64));
                }
                if let Some(v) = e.delta_version {
                    let _ = write!(text, ", Delta v{v}");
                }
            }
        }
    }
    line(&mut o, "spark", &s.light, text);

    let l = &r.lake;
    let tables: Vec<String> = l
        .tables
        .iter()
        .map(|t| {
            let rows = t.rows.map(|r| format!("{} rows, ", count(r as i64))).unwrap_or_default();
            let when = t
                .last_commit
                .map(|c| format!(", exported {} ago", age((r.at - c).num_seconds().max(0))))
                .unwrap_or_default();
            format!(
                "{} v{}: {rows}{} partitions, {} files{when}",
                t.table,
                t.version.unwrap_or(0),
                t.partitions,
                t.data_files
            )
        })
        .collect();
    let mut text = tables.join(" | ");
    if let Some(c) = &l.currency {
        match (&c.error, c.due_before) {
            (Some(e), _) => text.push_str(&format!("; currency unknown: {e}")),
            (None, Some(b)) if c.days_behind.is_empty() && c.days_differing.is_empty() => text
                .push_str(&format!(
                    "; current with the database on {} days (rows stamped before {})",
                    c.days_compared,
                    b.format("%H:%M:%S UTC")
                )),
            _ => {}
        }
    }
    line(&mut o, "lake", &l.light, text);

    if let Some(sec) = &r.secrets {
        let _ = writeln!(o, "\ndatabase password: {}", sec["db_password"].as_str().unwrap_or(""));
        let _ = writeln!(o, "database url:      {}", sec["db_url"].as_str().unwrap_or(""));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_at_a_glance() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_088_640), "1,088,640");
        assert_eq!(count(-1234), "-1,234");
    }
}
