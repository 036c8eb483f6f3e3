//! The one definition of the lab's data: the reading message, the raw table and the aggregate
//! table. `init-db.sql`, the Flink DDL and the generator's message fields are all derived from
//! here, so a column renamed in one place cannot silently break another hop (the original lab
//! broke on `avg_val` vs `avg_value`).

use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int,
    Double,
    BigInt,
    /// A UTC instant: `TIMESTAMPTZ` in PostgreSQL, `TIMESTAMP(3)` in Flink.
    Instant,
}

impl ColumnType {
    pub fn postgres(self) -> &'static str {
        match self {
            ColumnType::Text => "TEXT",
            ColumnType::Int => "INTEGER",
            ColumnType::Double => "DOUBLE PRECISION",
            ColumnType::BigInt => "BIGINT",
            ColumnType::Instant => "TIMESTAMPTZ",
        }
    }

    pub fn flink(self) -> &'static str {
        match self {
            ColumnType::Text => "STRING",
            ColumnType::Int => "INT",
            ColumnType::Double => "DOUBLE",
            ColumnType::BigInt => "BIGINT",
            ColumnType::Instant => "TIMESTAMP(3)",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty }
}

#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// The time column; the hypertable's partitioning column where `hypertable` is set.
    pub time_column: &'static str,
    pub hypertable: bool,
    /// Unique key; sinks upsert on it so replays do not duplicate rows.
    pub primary_key: &'static [&'static str],
    pub comment: &'static str,
}

use ColumnType::*;

/// One sensor value of one machine at one instant, as stored.
pub const MACHINE_SENSORS: Table = Table {
    name: "machine_sensors",
    columns: &[
        col("timestamp", Instant),
        col("machine_id", Text),
        col("machine_type", Text),
        col("sensor_type", Text),
        col("value", Double),
        col("unit", Text),
    ],
    time_column: "timestamp",
    hypertable: true,
    primary_key: &["machine_id", "sensor_type", "timestamp"],
    comment: "Raw sensor readings, one row per machine, sensor and instant",
};

/// One tumbling window of one sensor of one machine.
pub const SENSOR_AGGREGATES: Table = Table {
    name: "sensor_aggregates",
    columns: &[
        col("window_start", Instant),
        col("window_end", Instant),
        col("machine_id", Text),
        col("sensor_type", Text),
        col("avg_value", Double),
        col("min_value", Double),
        col("max_value", Double),
        col("reading_count", BigInt),
    ],
    time_column: "window_start",
    hypertable: true,
    primary_key: &["machine_id", "sensor_type", "window_start"],
    comment: "Per-window AVG/MIN/MAX/COUNT of each machine's sensors",
};

/// Messages of the topic the streaming job could not use (not JSON, a field missing, a timestamp
/// that does not parse, ...), one row per message, so a bad record is counted and kept instead of
/// killing the job or vanishing. Keyed by its place in the topic: a replay writes the same rows.
/// A plain table: it stays small, and a hypertable would need the time in its key.
pub const REJECTED_READINGS: Table = Table {
    name: "rejected_readings",
    columns: &[
        col("topic_partition", Int),
        col("topic_offset", BigInt),
        col("produced_at", Instant),
        col("reason", Text),
        col("payload", Text),
    ],
    time_column: "produced_at",
    hypertable: false,
    primary_key: &["topic_partition", "topic_offset"],
    comment: "Messages the streaming job rejected, with the reason",
};

/// The hypertables: what the Flink job fills and the Spark job exports.
pub const TABLES: &[Table] = &[MACHINE_SENSORS, SENSOR_AGGREGATES];

/// Every table of `init-db.sql`.
pub const ALL_TABLES: &[Table] = &[MACHINE_SENSORS, SENSOR_AGGREGATES, REJECTED_READINGS];

/// Fields of the JSON message on the topic, in order. The timestamp travels as a string
/// (`2023-10-10T10:00:00`, UTC, no zone suffix) and becomes event time in the Flink source.
pub const MESSAGE_FIELDS: &[Column] = &[
    col("machine_id", Text),
    col("machine_type", Text),
    col("sensor_type", Text),
    col("value", Double),
    col("unit", Text),
    col("timestamp", Text),
];

/// Double-quotes an identifier for PostgreSQL (the names here are constants, but `timestamp`
/// is a keyword and quoting everywhere keeps the rule simple).
pub fn pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Backtick-quotes an identifier for Flink SQL.
pub fn flink_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// `CREATE TABLE IF NOT EXISTS` plus the hypertable call; safe to run on every `up`.
    pub fn postgres_ddl(&self) -> String {
        let mut s = format!("-- {}\nCREATE TABLE IF NOT EXISTS {} (\n", self.comment, self.name);
        for c in self.columns {
            let _ = writeln!(s, "    {:<15} {} NOT NULL,", pg_ident(c.name), c.ty.postgres());
        }
        let pk: Vec<_> = self.primary_key.iter().map(|c| pg_ident(c)).collect();
        let _ = writeln!(s, "    PRIMARY KEY ({})\n);", pk.join(", "));
        if !self.hypertable {
            return s;
        }
        let _ = writeln!(
            s,
            "SELECT create_hypertable('{}', '{}', if_not_exists => TRUE, migrate_data => TRUE);",
            self.name, self.time_column
        );
        s
    }

    /// Column list of a Flink JDBC sink table for this table, with its upsert key.
    pub fn flink_sink_columns(&self) -> String {
        let mut s = String::new();
        for c in self.columns {
            let _ = writeln!(s, "  {} {},", flink_ident(c.name), c.ty.flink());
        }
        let pk: Vec<_> = self.primary_key.iter().map(|c| flink_ident(c)).collect();
        let _ = write!(s, "  PRIMARY KEY ({}) NOT ENFORCED", pk.join(", "));
        s
    }

    pub fn column_names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.name).collect()
    }
}

/// The whole `init-db.sql`, as committed at the top of the repository.
pub fn init_db_sql() -> String {
    let mut s = String::from(
        "-- Generated by `labctl render init-db` from src/schema.rs; do not edit by hand.\n\
         -- Idempotent: labctl applies it on every `up`.\n\
         CREATE EXTENSION IF NOT EXISTS timescaledb;\n\n",
    );
    for t in ALL_TABLES {
        s.push_str(&t.postgres_ddl());
        s.push('\n');
    }
    s.push_str(
        "CREATE INDEX IF NOT EXISTS machine_sensors_machine_time_idx\n    ON machine_sensors (machine_id, \"timestamp\" DESC);\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_fields_match_raw_table() {
        // Every message field except the timestamp string lands in a raw column of the same name.
        for f in MESSAGE_FIELDS {
            let c =
                MACHINE_SENSORS.column(f.name).unwrap_or_else(|| panic!("no column {}", f.name));
            if f.name != "timestamp" {
                assert_eq!(c.ty, f.ty, "{}", f.name);
            }
        }
    }

    #[test]
    fn primary_keys_are_columns_and_contain_time() {
        for t in ALL_TABLES {
            for k in t.primary_key {
                assert!(t.column(k).is_some(), "{}.{k}", t.name);
            }
            // TimescaleDB requires the partitioning column in every unique index.
            assert!(!t.hypertable || t.primary_key.contains(&t.time_column), "{}", t.name);
            assert!(t.column(t.time_column).is_some(), "{}", t.name);
        }
    }

    #[test]
    fn init_db_is_idempotent_sql() {
        let sql = init_db_sql();
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS machine_sensors"));
        assert!(sql.contains("if_not_exists => TRUE"));
        assert!(sql.contains("\"avg_value\""));
    }
}
