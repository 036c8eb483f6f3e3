//! Which parts of the lab labctl runs itself (**managed**) and which it only connects to
//! (**external**, wherever the config says), and the checks of the external-service keys.
//! Secrets of external services come from the environment (`config::SECRET_*`); the stack
//! decides which services stand for each part (`stack::endpoints`).

use anyhow::{bail, Result};
use reqwest::Url;

use crate::model::{
    address::{parse_bootstrap, parse_host_port, parse_http_url, parse_pg_url},
    config::{Config, InvalidValue},
    security::{read_ca_certificates, uses_tls, MECHANISMS, PROTOCOLS},
};

/// Azurite's well-known development account and key (public, documented by Microsoft).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The parts of the lab a config can mark external, each with the stack services it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Broker,
    Database,
    Flink,
    Spark,
    Lake,
}

impl Part {
    pub const ALL: [Part; 5] = [Part::Broker, Part::Database, Part::Flink, Part::Spark, Part::Lake];

    /// The config section that makes it external.
    pub fn key(self) -> &'static str {
        match self {
            Part::Broker => "broker.bootstrap",
            Part::Database => "database.url",
            Part::Flink => "flink.url",
            Part::Spark => "spark.master_url",
            Part::Lake => "lake.endpoint",
        }
    }

    pub fn is_external(self, config: &Config) -> bool {
        !match self {
            Part::Broker => &config.broker.bootstrap,
            Part::Database => &config.database.url,
            Part::Flink => &config.flink.url,
            Part::Spark => &config.spark.master_url,
            Part::Lake => &config.lake.endpoint,
        }
        .is_empty()
    }

    /// Where labctl reaches an external part, for messages and `status`.
    pub fn external_address(self, config: &Config) -> String {
        match self {
            Part::Broker => config.broker.bootstrap.clone(),
            Part::Database => {
                let pg = parse_pg_url("database.url", &config.database.url).ok();
                pg.map(|a| format!("{}:{}/{}", a.host, a.port, database_name(config)))
                    .unwrap_or_default()
            }
            Part::Flink => config.flink.url.clone(),
            Part::Spark => format!("{} (REST {})", config.spark.master_url, config.spark.rest_url),
            Part::Lake => config.lake.endpoint.clone(),
        }
    }
}

fn invalid(key: &str, value: &str, reason: &str) -> anyhow::Error {
    InvalidValue { key: key.into(), value: value.into(), reason: reason.into() }.into()
}

/// The database user: `database.url`'s when it names one, else `database.user`.
pub fn database_user(config: &Config) -> String {
    parse_pg_url("database.url", &config.database.url)
        .ok()
        .and_then(|a| a.user)
        .unwrap_or_else(|| config.database.user.clone())
}

/// Who connects to the database, and what for. In the lab's own database each is a role of its
/// own with only the rights its work needs: a password handed to a cluster (the Flink job's, the
/// export's) is never the owner's, which is a superuser (`COPY ... PROGRAM` gives it a shell).
/// An external database is used with its one configured user for all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbRole {
    /// labctl itself: sets up the schema and the roles, checks and verifies.
    Owner,
    /// The Flink job: SELECT, INSERT and UPDATE on the lab's three tables (its sinks upsert).
    Writer,
    /// The Spark export: SELECT on the lab's three tables.
    Reader,
}

impl DbRole {
    /// The role's name in the lab's own database.
    pub fn lab_role(self, config: &Config) -> String {
        match self {
            DbRole::Owner => database_user(config),
            DbRole::Writer => "labctl_writer".into(),
            DbRole::Reader => "labctl_reader".into(),
        }
    }
}

/// The database name: `database.url`'s when it names one, else `database.name`.
pub fn database_name(config: &Config) -> String {
    parse_pg_url("database.url", &config.database.url)
        .ok()
        .and_then(|a| a.dbname)
        .unwrap_or_else(|| config.database.name.clone())
}

/// Checks the external-service keys; `Config::validate` calls this.
pub fn validate(config: &Config) -> Result<()> {
    let b = &config.broker;
    if !b.bootstrap.is_empty() {
        parse_bootstrap("broker.bootstrap", &b.bootstrap)?;
    }
    for (key, value, needs) in [
        ("broker.cluster_bootstrap", &b.cluster_bootstrap, &b.bootstrap),
        ("database.cluster_url", &config.database.cluster_url, &config.database.url),
        ("lake.cluster_endpoint", &config.lake.cluster_endpoint, &config.lake.endpoint),
        ("lake.account", &config.lake.account, &config.lake.endpoint),
        ("flink.state_dir", &config.flink.state_dir, &config.flink.url),
        ("spark.python", &config.spark.python, &config.spark.master_url),
        ("spark.jdbc_jar", &config.spark.jdbc_jar, &config.spark.master_url),
    ] {
        if !value.is_empty() && needs.is_empty() {
            bail!(invalid(
                key,
                value,
                "applies to an external service only: set the service's address first"
            ));
        }
    }
    if !b.cluster_bootstrap.is_empty() {
        parse_bootstrap("broker.cluster_bootstrap", &b.cluster_bootstrap)?;
    }
    for (from, to) in &b.address_map {
        parse_host_port("broker.address_map (advertised address)", from)?;
        parse_host_port(&format!("broker.address_map.\"{from}\""), to)?;
    }
    if !PROTOCOLS.contains(&b.security_protocol.as_str()) {
        bail!(invalid(
            "broker.security_protocol",
            &b.security_protocol,
            &format!("use one of {}", PROTOCOLS.join(", "))
        ));
    }
    let sasl = b.security_protocol.starts_with("sasl_");
    if b.security_protocol != "plaintext" && b.bootstrap.is_empty() {
        bail!(invalid("broker.security_protocol", &b.security_protocol, "labctl reaches the lab's own broker in plaintext; security settings are for an external broker (broker.bootstrap); broker.sasl_ssl_listener gives the lab's broker a SASL_SSL listener for other clients"));
    }
    if b.sasl_ssl_listener && !b.bootstrap.is_empty() {
        bail!(invalid("broker.sasl_ssl_listener", "true", "configures the lab's own broker; with broker.bootstrap the broker is external and labctl starts none"));
    }
    if sasl {
        if !MECHANISMS.contains(&b.sasl_mechanism.as_str()) {
            bail!(invalid(
                "broker.sasl_mechanism",
                &b.sasl_mechanism,
                &format!("a sasl_* protocol needs one of {}", MECHANISMS.join(", "))
            ));
        }
        // The user name goes into a JAAS line of the Flink job: keep it to characters that need no quoting there.
        let ok = !b.sasl_username.is_empty()
            && b.sasl_username.len() <= 255
            && b.sasl_username
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | ';' | '=' | ','));
        if !ok {
            bail!(invalid("broker.sasl_username", &b.sasl_username, "a sasl_* protocol needs a user name of printable characters without quotes, backslash, ';', '=' or ','"));
        }
    } else {
        for (key, value) in [
            ("broker.sasl_mechanism", &b.sasl_mechanism),
            ("broker.sasl_username", &b.sasl_username),
        ] {
            if !value.is_empty() {
                bail!(invalid(
                    key,
                    value,
                    "SASL settings need security_protocol sasl_plaintext or sasl_ssl"
                ));
            }
        }
    }
    for (key, value) in [
        ("broker.ssl_ca_file", &b.ssl_ca_file),
        ("broker.cluster_ssl_ca_file", &b.cluster_ssl_ca_file),
    ] {
        if !value.is_empty() && !uses_tls(&b.security_protocol) {
            bail!(invalid(key, value, "a CA file needs security_protocol ssl or sasl_ssl"));
        }
    }
    if !b.ssl_ca_file.is_empty() {
        read_ca_certificates(&b.ssl_ca_file).map_err(|why| {
            invalid("broker.ssl_ca_file", &b.ssl_ca_file, &format!("{why}: give the PEM file of the CA that signed the broker's certificate, or leave the key out to use the system's CAs"))
        })?;
    }
    if !b.cluster_ssl_ca_file.is_empty() {
        let f = &b.cluster_ssl_ca_file;
        let ok = f.starts_with('/')
            && f.len() <= 4096
            && f.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\'));
        if !ok {
            bail!(invalid(
                "broker.cluster_ssl_ca_file",
                f,
                "an absolute path (on the Flink cluster's hosts) without quotes or backslashes"
            ));
        }
    }
    if !config.database.url.is_empty() {
        parse_pg_url("database.url", &config.database.url)?;
    }
    if !config.database.cluster_url.is_empty() {
        parse_pg_url("database.cluster_url", &config.database.cluster_url)?;
    }
    if !config.flink.url.is_empty() {
        parse_http_url("flink.url", &config.flink.url)?;
    }
    if !config.flink.state_dir.is_empty() {
        let d = &config.flink.state_dir;
        let ok = Url::parse(d)
            .is_ok_and(|u| u.scheme().len() > 1 && u.query().is_none() && u.password().is_none())
            && d.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\'));
        if !ok {
            bail!(invalid("flink.state_dir", d, "use a URI the cluster's file systems know, e.g. s3://bucket/flink or file:///var/lib/flink"));
        }
    }
    let s = &config.spark;
    let spark_keys = [
        ("spark.master_url", &s.master_url),
        ("spark.rest_url", &s.rest_url),
        ("spark.ui_url", &s.ui_url),
    ];
    let given: Vec<_> = spark_keys.iter().filter(|(_, v)| !v.is_empty()).collect();
    if let Some((key, value)) = given.first().filter(|_| given.len() != 3) {
        bail!(invalid(key, value, "an external Spark cluster needs all of spark.master_url, spark.rest_url and spark.ui_url"));
    }
    let given = given.len();
    if given == 3 {
        let master_ok = s
            .master_url
            .strip_prefix("spark://")
            .is_some_and(|hp| parse_host_port("spark.master_url", hp).is_ok());
        if !master_ok {
            bail!(invalid("spark.master_url", &s.master_url, "use spark://host:7077"));
        }
        parse_http_url("spark.rest_url", &s.rest_url)?;
        parse_http_url("spark.ui_url", &s.ui_url)?;
        // Both reach the driver's command line and Spark's properties: plain paths and URIs only.
        let plain = |v: &str| {
            v.chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\' | '$' | '`' | ';'))
        };
        let python_ok = s.python.is_empty() || (s.python.starts_with('/') && plain(&s.python));
        if !python_ok {
            bail!(invalid(
                "spark.python",
                &s.python,
                "use the absolute path of the workers' Python, e.g. /opt/venv/bin/python"
            ));
        }
        let jar_ok =
            s.jdbc_jar.is_empty() || (Url::parse(&s.jdbc_jar).is_ok() && plain(&s.jdbc_jar));
        if !jar_ok {
            bail!(invalid("spark.jdbc_jar", &s.jdbc_jar, "use a URI Spark can fetch, e.g. file:/usr/share/java/postgresql.jar or https://…/postgresql-42.7.3.jar"));
        }
    }
    if !config.lake.endpoint.is_empty() {
        parse_http_url("lake.endpoint", &config.lake.endpoint)?;
        if !config.lake.cluster_endpoint.is_empty() {
            parse_http_url("lake.cluster_endpoint", &config.lake.cluster_endpoint)?;
        }
        let account = lake_account(config);
        let ok = (3..=64).contains(&account.len())
            && account.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            bail!(invalid(
                "lake.account",
                &account,
                "a storage account name is 3-24 lowercase letters and digits; set lake.account"
            ));
        }
    }
    Ok(())
}

/// The storage account of the lake.
pub fn lake_account(config: &Config) -> String {
    let l = &config.lake;
    if l.endpoint.is_empty() {
        return DEV_ACCOUNT.into();
    }
    if !l.account.is_empty() {
        return l.account.clone();
    }
    let Ok(u) = Url::parse(&l.endpoint) else { return String::new() };
    let host = u.host_str().unwrap_or_default();
    match host.strip_suffix(".blob.core.windows.net") {
        Some(account) => account.to_string(),
        None => u.path().trim_matches('/').split('/').next().unwrap_or_default().to_string(),
    }
}

/// What an external part needs on its side, for the error when it lacks it.
pub fn requirement(part: Part) -> &'static str {
    match part {
        Part::Broker => "a Kafka-API broker",
        Part::Database => "PostgreSQL with the timescaledb extension preloaded",
        Part::Flink => "a Flink 2.x session cluster (the lab runs 2.2.1) with the Kafka and JDBC (PostgreSQL) connectors in lib/",
        Part::Spark => "a Spark 4.0 standalone master with the REST server enabled; workers with Python 3 and pyspark, delta-spark 4.0 and hadoop-azure 3.4.1 (with azure-storage) on the class path, and the PostgreSQL JDBC driver",
        Part::Lake => "Azure Blob storage (or Azurite) with Shared Key access",
    }
}

/// Context for an error of an external part.
pub fn context_for(config: &Config, part: Part) -> Option<String> {
    part.is_external(config).then(|| {
        format!(
            "external {} at {} ({})",
            part_name(part),
            part.external_address(config),
            part.key()
        )
    })
}

fn part_name(part: Part) -> &'static str {
    match part {
        Part::Broker => "broker",
        Part::Database => "database",
        Part::Flink => "Flink cluster",
        Part::Spark => "Spark cluster",
        Part::Lake => "lake storage",
    }
}

/// The external parts of a config, for messages.
pub fn external_parts(config: &Config) -> Vec<Part> {
    Part::ALL.into_iter().filter(|p| p.is_external(config)).collect()
}

/// Refuses what only works on a part labctl runs itself; `fix` says what to do instead.
pub fn ensure_managed(config: &Config, part: Part, what: &str, fix: &str) -> Result<()> {
    if part.is_external(config) {
        bail!(
            "{what} needs the lab's own {}; this lab's is external ({} = {:?}): {fix}",
            part_name(part),
            part.key(),
            part.external_address(config)
        );
    }
    Ok(())
}
