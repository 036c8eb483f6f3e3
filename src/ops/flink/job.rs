//! The streaming job: rendered from `templates/flink/sensor_aggregation.sql.tera` with every
//! column list derived from `schema`, split into statements for the SQL runner.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::clients::kafka::partition_for_key;
use crate::model::fleet::{Fleet, MACHINE_TYPES};
use crate::model::security;
use crate::stack::endpoints;
use crate::stack::endpoints::DbCredentials;
use crate::{
    model::{
        config::Config,
        schema::{
            flink_ident, ColumnType, MACHINE_SENSORS, MESSAGE_FIELDS, REJECTED_READINGS,
            SENSOR_AGGREGATES,
        },
    },
    ops::render::render_template,
};

pub const TEMPLATE: &str = "templates/flink/sensor_aggregation.sql.tera";
pub const RUNNER_JAR_NAME: &str = "labctl-sql-runner.jar";
pub const RUNNER_ENTRY_CLASS: &str = "lab.SqlRunner";

/// Where the flink-data volume is mounted in the JobManager and TaskManager containers.
pub const FLINK_DATA: &str = "/var/lib/flink";
/// The lab job's own folder under `checkpoints/` and `savepoints/` of the flink-data volume: its
/// retained checkpoints and savepoints are found there and nowhere else (benchmark and `--file`
/// jobs write elsewhere), so "the newest one there" is the lab job's latest state.
pub const LAB_STATE_SUBDIR: &str = "sensor-aggregation";

/// Folder (inside the Flink containers) of the lab job's checkpoints: `<job id>/chk-N/_metadata`.
pub fn lab_checkpoint_dir() -> String {
    format!("{FLINK_DATA}/checkpoints/{LAB_STATE_SUBDIR}")
}

/// Folder (inside the Flink containers) of the lab job's savepoints: `savepoint-…/_metadata`.
pub fn lab_savepoint_dir() -> String {
    format!("{FLINK_DATA}/savepoints/{LAB_STATE_SUBDIR}")
}

/// Where the cluster keeps checkpoints and savepoints, as a URI: the flink-data volume of the
/// lab's own cluster, or `flink.state_dir` of an external one (storage all its JobManagers and
/// TaskManagers share, e.g. `s3://bucket/flink`).
pub fn state_root(config: &Config) -> String {
    if config.flink.state_dir.is_empty() {
        format!("file://{FLINK_DATA}")
    } else {
        config.flink.state_dir.trim_end_matches('/').to_string()
    }
}

/// The lab job's folder name under `checkpoints/` and `savepoints/`. On a cluster other labs
/// share it carries the project, so no lab restores another lab's state (the lab's own cluster
/// lists its folder from the inside and takes the newest snapshot there).
fn lab_state_subdir(config: &Config) -> String {
    if crate::model::topology::Part::Flink.is_external(config) {
        format!("{}-{LAB_STATE_SUBDIR}", config.project)
    } else {
        LAB_STATE_SUBDIR.to_string()
    }
}

/// URI of the lab job's checkpoint folder.
pub fn lab_checkpoint_uri(config: &Config) -> String {
    format!("{}/checkpoints/{}", state_root(config), lab_state_subdir(config))
}

/// URI of the lab job's savepoint folder.
pub fn lab_savepoint_uri(config: &Config) -> String {
    format!("{}/savepoints/{}", state_root(config), lab_state_subdir(config))
}

/// Settings of the job that are not part of the stack.
#[derive(Debug, Clone, Serialize)]
pub struct JobSettings {
    pub watermark_delay_secs: u32,
    pub window_secs: u32,
    pub checkpoint_interval_secs: u32,
    /// A partition without records for this long stops holding back event time (an empty
    /// partition would otherwise stop every window from closing). See `idle_timeout_for`.
    pub idle_timeout_secs: u32,
    /// Restarts in a row before the job fails for good, exponentially spaced up to
    /// `restart_max_backoff_secs` apart.
    pub restart_attempts: u32,
    pub restart_max_backoff_secs: u32,
    pub parallelism: u32,
    /// How far a reading's timestamp may be ahead of its message's produce time (clock skew
    /// between producer hosts); further ahead it is rejected instead of moving event time.
    pub max_future_secs: u32,
}

impl JobSettings {
    pub fn for_lab(config: &Config) -> Self {
        Self {
            watermark_delay_secs: 5,
            window_secs: 60,
            checkpoint_interval_secs: 10,
            idle_timeout_secs: idle_timeout_for(&empty_partitions(config)),
            // 1+2+4+8+16 s, then 30 s apart: 20 attempts cover about 8 minutes; a failure that
            // heals (a TaskManager back) is retried within 30 s.
            restart_attempts: 20,
            restart_max_backoff_secs: 30,
            // One reader per partition: a reader owning several interleaves them as the broker
            // answers its fetches, and during a catch-up event time of one races past another.
            parallelism: config.broker.partitions as u32,
            max_future_secs: 3600,
        }
    }
}

/// Idle timeout when every partition carries a machine of the lab's fleet. Idleness is then
/// only a safety net, and a short one does harm: after a pause longer than the timeout (the
/// broker down, the generator stopped) every reader is idle, the first to get the catch-up
/// backlog alone sets event time to "now", and the backlog of the others reaches the windows
/// late (measured: windows missing after a 3-minute broker outage with 30 s). Pauses shorter
/// than this lose nothing.
pub const IDLE_TIMEOUT_SECS: u32 = 600;
/// Idle timeout when some partition gets no machine of the fleet: it must not hold back event
/// time for long, so pauses longer than this can make readings late (`submit flink` warns).
pub const IDLE_TIMEOUT_EMPTY_PARTITION_SECS: u32 = 30;

fn idle_timeout_for(empty: &[i32]) -> u32 {
    if empty.is_empty() {
        IDLE_TIMEOUT_SECS
    } else {
        IDLE_TIMEOUT_EMPTY_PARTITION_SECS
    }
}

/// Partitions of the lab's topic that no machine of the lab's generator fleet is keyed to.
pub fn empty_partitions(config: &Config) -> Vec<i32> {
    let partitions = config.broker.partitions.max(1);
    let mut used = vec![false; partitions as usize];
    // The config's checks bound `machines` to what `Fleet::new` accepts.
    if let Ok(fleet) =
        Fleet::new(&MACHINE_TYPES.map(|t| (t, config.ingest.machines)), config.ingest.seed)
    {
        for m in &fleet.machines {
            used[partition_for_key(m.id.as_bytes(), partitions) as usize] = true;
        }
    }
    (0..partitions).filter(|p| !used[*p as usize]).collect()
}

pub fn job_name(project: &str) -> String {
    format!("{project}: sensor aggregation")
}

/// Expression producing each aggregate column; a column of `SENSOR_AGGREGATES` without one
/// fails `render` (and a unit test), so the table and the job cannot disagree on names.
fn aggregate_expr(column: &str) -> Option<&'static str> {
    Some(match column {
        "window_start" => "window_start",
        "window_end" => "window_end",
        "machine_id" => "machine_id",
        "sensor_type" => "sensor_type",
        "avg_value" => "AVG(`value`)",
        "min_value" => "MIN(`value`)",
        "max_value" => "MAX(`value`)",
        "reading_count" => "COUNT(*)",
        _ => return None,
    })
}

/// Expression producing each raw column from the source table.
fn raw_expr(column: &str) -> String {
    match column {
        "timestamp" => "event_time".into(),
        other => flink_ident(other),
    }
}

/// SQL string literal for Flink ('' escapes a quote).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Where the job reads and writes; the lab's own names by default, scratch names in benchmarks.
#[derive(Debug, Clone)]
pub struct Target {
    pub topic: String,
    pub group_id: String,
    pub raw_table: String,
    pub agg_table: String,
    pub rejected_table: String,
    pub job_name: String,
    /// URI of the folder the job's checkpoints go to.
    pub checkpoint_dir: String,
    /// Keep the last checkpoint when the job is cancelled, fails or its JobManager goes away,
    /// so a later submit can restore from it.
    pub retain_checkpoints: bool,
}

impl Target {
    pub fn lab(config: &Config) -> Self {
        Self {
            topic: config.broker.topic.clone(),
            group_id: format!("labctl-{}-flink", config.project),
            raw_table: MACHINE_SENSORS.name.into(),
            agg_table: SENSOR_AGGREGATES.name.into(),
            rejected_table: REJECTED_READINGS.name.into(),
            job_name: job_name(&config.project),
            checkpoint_dir: lab_checkpoint_uri(config),
            retain_checkpoints: true,
        }
    }
}

pub fn render(config: &Config, db: &DbCredentials, settings: &JobSettings) -> Result<String> {
    render_for(config, db, settings, &Target::lab(config))
}

/// The job's SQL. Broker and database addresses are the ones the Flink cluster reaches
/// (`endpoints`), which for an external cluster can differ from labctl's own.
pub fn render_for(
    config: &Config,
    db: &DbCredentials,
    settings: &JobSettings,
    target: &Target,
) -> Result<String> {
    crate::model::config::check_identifier("raw table", &target.raw_table)?;
    crate::model::config::check_identifier("aggregate table", &target.agg_table)?;
    crate::model::config::check_identifier("rejected table", &target.rejected_table)?;
    let message = MessageParsing::from_schema();
    let raw_select: Vec<String> =
        MACHINE_SENSORS.columns.iter().map(|c| raw_expr(c.name)).collect();
    let mut agg_select = Vec::new();
    for c in SENSOR_AGGREGATES.columns {
        match aggregate_expr(c.name) {
            Some(e) => agg_select.push(format!("{e} AS {}", flink_ident(c.name))),
            None => bail!(
                "the Flink job has no expression for column {}.{}",
                SENSOR_AGGREGATES.name,
                c.name
            ),
        }
    }
    let jdbc_url = endpoints::jdbc_param(
        &endpoints::cluster_jdbc_url(config),
        "reWriteBatchedInserts",
        "true",
    );
    let kafka_properties: Vec<String> = security::flink_kafka_properties(config)?
        .iter()
        .map(|(k, v)| format!("{} = {},", lit(k), lit(v)))
        .collect();
    let mut ctx = tera::Context::new();
    ctx.insert("job_name", &lit(&target.job_name));
    ctx.insert("s", settings);
    ctx.insert("topic", &lit(&target.topic));
    ctx.insert("bootstrap", &lit(&endpoints::cluster_bootstrap(config)));
    ctx.insert("kafka_properties", &kafka_properties);
    ctx.insert("group_id", &lit(&target.group_id));
    ctx.insert("checkpoint_dir", &lit(&target.checkpoint_dir));
    ctx.insert(
        "checkpoint_retention",
        &lit(if target.retain_checkpoints {
            "RETAIN_ON_CANCELLATION"
        } else {
            "DELETE_ON_CANCELLATION"
        }),
    );
    ctx.insert("field_names", &lit(&message.names));
    ctx.insert("timestamp_index", &message.index("timestamp")?);
    ctx.insert("field_select", &message.select.join(",\n  "));
    ctx.insert("field_checks", &message.checks.join("\n    "));
    ctx.insert("machine_id_index", &message.index("machine_id")?);
    ctx.insert("sensor_type_index", &message.index("sensor_type")?);
    ctx.insert("rejected_table", &target.rejected_table);
    ctx.insert("rejected_columns", &REJECTED_READINGS.flink_sink_columns());
    ctx.insert("jdbc_url", &lit(&jdbc_url));
    ctx.insert("db_user", &lit(&db.user));
    ctx.insert("db_password", &lit(&db.password));
    ctx.insert("raw_table", &target.raw_table);
    ctx.insert("raw_columns", &MACHINE_SENSORS.flink_sink_columns());
    ctx.insert("raw_select", &raw_select.join(", "));
    ctx.insert("agg_table", &target.agg_table);
    ctx.insert("agg_columns", &SENSOR_AGGREGATES.flink_sink_columns());
    ctx.insert("agg_select", &agg_select.join(",\n  "));
    render_template(TEMPLATE, &ctx)
}

/// How the job turns a message's text into the reading's columns, from `MESSAGE_FIELDS`: the
/// field list handed to `json_fields`, one typed expression per field, and one check per field
/// naming what is wrong with a message that lacks it.
struct MessageParsing {
    names: String,
    select: Vec<String>,
    checks: Vec<String>,
}

impl MessageParsing {
    fn from_schema() -> Self {
        let (mut select, mut checks) = (Vec::new(), Vec::new());
        for (i, c) in MESSAGE_FIELDS.iter().enumerate() {
            let field = format!("f[{}]", i + 1);
            let name = c.name;
            match c.ty {
                ColumnType::Double => {
                    let value = format!("TRY_CAST({field} AS DOUBLE)");
                    checks.push(format!(
                        "WHEN {value} IS NULL THEN '{name} missing or not a number'"
                    ));
                    // NaN fails every comparison, so this also catches it.
                    checks.push(format!("WHEN NOT (ABS({value}) <= 1.7976931348623157E308) THEN '{name} is not a finite number'"));
                    select.push(format!("{value} AS {}", flink_ident(name)));
                }
                _ => {
                    checks.push(format!("WHEN {field} IS NULL THEN '{name} missing'"));
                    // PostgreSQL text cannot hold NUL: the sink would fail on it and restart forever.
                    checks.push(format!("WHEN POSITION(CHR(0) IN {field}) > 0 THEN '{name} contains a NUL character'"));
                    select.push(format!("{field} AS {}", flink_ident(name)));
                }
            }
        }
        let names = MESSAGE_FIELDS.iter().map(|c| c.name).collect::<Vec<_>>().join(",");
        Self { names, select, checks }
    }

    /// 1-based position of a field in the `json_fields` array.
    fn index(&self, name: &str) -> Result<usize> {
        match MESSAGE_FIELDS.iter().position(|c| c.name == name) {
            Some(i) => Ok(i + 1),
            None => bail!("the message has no field {name}, which the job checks"),
        }
    }
}

/// Splits a script into statements at `;` outside quotes and comments; drops comments-only parts.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = script.chars().peekable();
    let (mut in_single, mut in_backtick) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\'' if !in_backtick => in_single = !in_single,
            '`' if !in_single => in_backtick = !in_backtick,
            '-' if !in_single && !in_backtick && chars.peek() == Some(&'-') => {
                // A comment runs to the end of the line; it is not part of any statement.
                for c2 in chars.by_ref() {
                    if c2 == '\n' {
                        break;
                    }
                }
                cur.push('\n');
                continue;
            }
            ';' if !in_single && !in_backtick => {
                push_statement(&mut out, &cur);
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    push_statement(&mut out, &cur);
    out
}

fn push_statement(out: &mut Vec<String>, s: &str) {
    let lines: Vec<&str> = s.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    if !lines.is_empty() {
        out.push(lines.join("\n"));
    }
}

/// What a statement is, for the local checks before submitting.
pub fn kind(statement: &str) -> &'static str {
    let first = statement.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    match first.as_str() {
        "SET" => "SET",
        "INSERT" => "INSERT",
        "CREATE" => "CREATE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let c = Config::default();
        let db = DbCredentials { user: "labctl_writer".into(), password: "pw'x".into() };
        render(&c, &db, &JobSettings::for_lab(&c)).unwrap()
    }

    /// The default lab fills its three partitions, so idleness is only a safety net; a fleet
    /// of welders alone on three partitions leaves two empty and gets the short timeout.
    #[test]
    fn the_idle_timeout_follows_the_partitions_the_fleet_fills() {
        let c = Config::default();
        assert!(empty_partitions(&c).is_empty());
        assert_eq!(JobSettings::for_lab(&c).idle_timeout_secs, IDLE_TIMEOUT_SECS);
        assert!(rendered().contains("SET 'table.exec.source.idle-timeout' = '600 s';"));

        let mut wide = Config::default();
        wide.broker.partitions = 8;
        let empty = empty_partitions(&wide);
        assert!(!empty.is_empty() && empty.len() <= 5, "3 machines on 8 partitions: {empty:?}");
        assert!(empty.iter().all(|p| (0..8).contains(p)));
        assert_eq!(
            JobSettings::for_lab(&wide).idle_timeout_secs,
            IDLE_TIMEOUT_EMPTY_PARTITION_SECS
        );

        let mut single = Config::default();
        single.broker.partitions = 1;
        assert!(empty_partitions(&single).is_empty());
    }

    #[test]
    fn every_aggregate_column_has_an_expression() {
        for c in SENSOR_AGGREGATES.columns {
            assert!(aggregate_expr(c.name).is_some(), "{}", c.name);
        }
        assert!(aggregate_expr("avg_val").is_none());
    }

    #[test]
    fn rendered_job_uses_schema_names_and_the_t_fix() {
        let sql = rendered();
        assert!(
            sql.contains("TO_TIMESTAMP(REPLACE(json_fields(`payload`, 'machine_id,machine_type,sensor_type,value,unit,timestamp')[6], 'T', ' '), 'yyyy-MM-dd HH:mm:ss[.SSS]')"),
            "{sql}"
        );
        assert!(sql.contains("json_fields(`payload`, 'machine_id,machine_type,sensor_type,value,unit,timestamp')"), "{sql}");
        assert!(sql.contains("TRY_CAST(f[4] AS DOUBLE) AS `value`"), "{sql}");
        assert!(sql.contains("REGEXP(f[1], "), "{sql}");
        assert!(sql.contains("`avg_value` DOUBLE"));
        assert!(sql.contains("AVG(`value`) AS `avg_value`"));
        assert!(
            sql.contains("PRIMARY KEY (`machine_id`, `sensor_type`, `window_start`) NOT ENFORCED")
        );
        assert!(sql.contains("'pw''x'"), "password quoted as a literal");
        assert!(sql.contains("'username' = 'labctl_writer'"), "{sql}");
        assert!(sql.contains("SET 'execution.checkpointing.externalized-checkpoint-retention' = 'RETAIN_ON_CANCELLATION'"), "{sql}");
        assert!(sql.contains("SET 'execution.checkpointing.dir' = 'file:///var/lib/flink/checkpoints/sensor-aggregation'"), "{sql}");
        let stmts = split_statements(&sql);
        assert_eq!(stmts.iter().filter(|s| kind(s) == "INSERT").count(), 3);
        // The four functions, the source, two views and three sinks.
        assert_eq!(stmts.iter().filter(|s| kind(s) == "CREATE").count(), 10);
        // The timestamp is parsed in one place, only when the thread has not just parsed it.
        assert_eq!(sql.matches("TO_TIMESTAMP(").count(), 1, "{sql}");
        let event_time = &sql[sql.find("event_time AS").unwrap()..];
        let event_time = &event_time[..event_time.find("\n  WATERMARK").unwrap()];
        assert!(
            event_time.starts_with("event_time AS CASE\n    WHEN recall_time("),
            "{event_time}"
        );
        assert!(event_time.contains("THEN remember_time("), "{event_time}");
        // The watermark names the event time once (each mention would parse it again).
        let source = stmts.iter().find(|s| s.contains("CREATE TABLE sensor_readings")).unwrap();
        let watermark = &source[source.find("WATERMARK FOR").unwrap()..];
        assert_eq!(watermark.matches("event_time").count(), 2, "{watermark}");
        assert!(stmts.iter().all(|s| !s.trim_start().starts_with("--")));
    }

    #[test]
    fn splitting_respects_quotes_and_comments() {
        let s =
            split_statements("-- c; x\nSET 'a' = 'b;c';\nCREATE TABLE `t;` (x INT); -- tail\n\n");
        assert_eq!(s, vec!["SET 'a' = 'b;c'", "CREATE TABLE `t;` (x INT)"]);
    }
}
