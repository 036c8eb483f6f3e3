//! PostgreSQL/TimescaleDB over its own protocol: login, schema, and the queries `status` needs.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::schema;

#[derive(Debug, Clone)]
pub struct Database {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub name: String,
    password: String,
}

impl Database {
    pub fn new(host: String, port: u16, user: String, name: String, password: String) -> Self {
        Self { host, port, user, name, password }
    }

    pub async fn connect(&self, timeout: Duration) -> Result<Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.name)
            .password(&self.password)
            .application_name("labctl")
            .connect_timeout(timeout);
        let (client, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls))
            .await
            .map_err(|_| anyhow!("database {}:{} did not answer within {timeout:?}", self.host, self.port))?
            .with_context(|| format!("cannot log in to database {} at {}:{} as {}", self.name, self.host, self.port, self.user))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("database connection closed: {e}");
            }
        });
        Ok(client)
    }

    /// Readiness: login works and the server preloads TimescaleDB.
    pub async fn probe(&self, timeout: Duration) -> Result<()> {
        let c = self.connect(timeout).await?;
        let row = c.query_one("SHOW shared_preload_libraries", &[]).await?;
        let libs: String = row.get(0);
        if !libs.split(',').any(|l| l.trim() == "timescaledb") {
            bail!("the server does not preload timescaledb (shared_preload_libraries = {libs:?})");
        }
        Ok(())
    }

    /// Applies `init-db.sql` (idempotent) and checks that both hypertables exist.
    pub async fn apply_schema(&self) -> Result<Vec<String>> {
        let c = self.connect(Duration::from_secs(10)).await?;
        c.batch_execute(&schema::init_db_sql()).await.context("applying init-db.sql")?;
        let rows = c
            .query("SELECT hypertable_name::text FROM timescaledb_information.hypertables ORDER BY 1", &[])
            .await
            .context("reading timescaledb_information.hypertables")?;
        let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for t in schema::TABLES {
            if !found.iter().any(|f| f == t.name) {
                bail!("table {} is not a hypertable after applying init-db.sql (found: {found:?})", t.name);
            }
        }
        Ok(found)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TableStats {
    pub table: String,
    pub rows: i64,
    /// Whether `rows` was counted; above `EXACT_BELOW` rows it is TimescaleDB's estimate.
    pub rows_exact: bool,
    pub chunks: i64,
    pub newest: Option<chrono::DateTime<chrono::Utc>>,
}

/// `count(*)` over a week of readings takes ~150 ms, TimescaleDB's `approximate_row_count` ~10 ms
/// (within 0.1 % on analyzed chunks; 0 on chunks not analyzed yet, hence exact when small).
const EXACT_BELOW: i64 = 100_000;

/// Rows, chunks and newest time of a hypertable, cheap enough for `status`.
pub async fn table_stats(client: &Client, t: &schema::Table) -> Result<TableStats> {
    // Table and column names are compile-time constants from `schema`, not user input.
    let sql = format!(
        "SELECT approximate_row_count('{name}'), max({tc}), (SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = '{name}') FROM {name}",
        tc = schema::pg_ident(t.time_column),
        name = t.name
    );
    let row = client.query_one(&sql, &[]).await.with_context(|| format!("counting {}", t.name))?;
    let mut stats = TableStats { table: t.name.into(), rows: row.get(0), rows_exact: false, newest: row.get(1), chunks: row.get(2) };
    if stats.rows < EXACT_BELOW {
        stats.rows = client.query_one(&format!("SELECT count(*) FROM {}", t.name), &[]).await.with_context(|| format!("counting {}", t.name))?.get(0);
        stats.rows_exact = true;
    }
    Ok(stats)
}

/// What the streaming job rejected: how many messages, the newest one's time and reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedStats {
    pub count: i64,
    pub newest: Option<chrono::DateTime<chrono::Utc>>,
    pub last_reason: Option<String>,
}

pub async fn rejected_stats(client: &Client) -> Result<RejectedStats> {
    let t = schema::REJECTED_READINGS;
    let sql = format!(
        "SELECT count(*), max({tc}), (SELECT reason FROM {name} ORDER BY {tc} DESC, topic_offset DESC LIMIT 1) FROM {name}",
        tc = schema::pg_ident(t.time_column),
        name = t.name
    );
    let row = client.query_one(&sql, &[]).await.with_context(|| format!("counting {}", t.name))?;
    Ok(RejectedStats { count: row.get(0), newest: row.get(1), last_reason: row.get(2) })
}
