//! Where the lab's services are, seen from two places: labctl on this host, and the Flink and
//! Spark clusters, whose jobs connect to the broker, the database and the lake themselves.
//!
//! A **managed** service (labctl builds, starts and stops it) is reached through its published
//! port from here and by its name on the lab's network from the clusters. An **external** one
//! (labctl only connects) is wherever the config says, once for each view, because the two can
//! differ: a broker that advertises in-cluster names, a database behind a proxy on this host.
//! Secrets of external services come from the environment (`config::SECRET_*`).

use anyhow::{bail, Result};
use reqwest::Url;

use crate::{
    config::{
        Config, InvalidValue, SECRET_BROKER_PASSWORD, SECRET_DATABASE_PASSWORD, SECRET_LAKE_KEY,
    },
    db::SslMode,
    lake::{DEV_ACCOUNT, DEV_KEY},
    stack::{
        AZURITE, AZURITE_ACCOUNT_HOST, BROKER_NODES, DATABASE, DATABASE_PORT, FLINK_JM, FLINK_TM,
        SPARK_MASTER, SPARK_MASTER_PORT, SPARK_WORKER,
    },
};

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

    /// The stack's services that run it when it is managed; the first is the one whose probe
    /// and name stand for the part.
    pub fn services(self) -> &'static [&'static str] {
        match self {
            Part::Broker => &BROKER_NODES,
            Part::Database => &[DATABASE],
            Part::Flink => &[FLINK_JM, FLINK_TM],
            Part::Spark => &[SPARK_MASTER, SPARK_WORKER],
            Part::Lake => &[AZURITE],
        }
    }

    pub fn of_service(service: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.services().contains(&service))
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

/// A host name or IP address: letters, digits, `.`, `-`, `_`, or a bracketed IPv6 address.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && (h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            || (h.starts_with('[')
                && h.ends_with(']')
                && h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().is_ok()))
}

/// `host:port`.
pub fn parse_host_port(key: &str, s: &str) -> Result<(String, u16)> {
    let bad = || invalid(key, s, "use host:port, e.g. kafka-1.example.net:9092");
    let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if !valid_host(host) || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// `host:port,host:port,…`, at least one.
pub fn parse_bootstrap(key: &str, s: &str) -> Result<Vec<(String, u16)>> {
    s.split(',').map(|one| parse_host_port(key, one)).collect()
}

/// An `http(s)://host[:port][/path]` address without credentials, query or fragment.
pub fn parse_http_url(key: &str, s: &str) -> Result<Url> {
    let u = Url::parse(s)
        .map_err(|e| invalid(key, s, &format!("not a URL ({e}); use e.g. http://host:8081")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        bail!(invalid(key, s, "use an http:// or https:// URL with a host"));
    }
    if !u.username().is_empty()
        || u.password().is_some()
        || u.query().is_some()
        || u.fragment().is_some()
    {
        bail!(invalid(
            key,
            s,
            "no user, password, query or fragment in the URL: secrets come from the environment"
        ));
    }
    Ok(u)
}

/// `database.url` taken apart.
#[derive(Debug, Clone, PartialEq)]
pub struct PgAddress {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub dbname: Option<String>,
    pub ssl: SslMode,
    /// `sslrootcert`: PEM file of the CA for verify-full (a path where the connecting side runs).
    pub root_cert: Option<String>,
}

impl PgAddress {
    /// The TLS parameters again, as libpq and the PostgreSQL JDBC driver both take them.
    pub fn ssl_params(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.ssl != SslMode::Disable {
            out.push(("sslmode", self.ssl.as_str().to_string()));
        }
        if let Some(c) = &self.root_cert {
            out.push(("sslrootcert", c.clone()));
        }
        out
    }
}

/// `postgresql://[user@]host[:port][/dbname][?sslmode=disable|require|verify-full][&sslrootcert=FILE]`.
/// No password (LABCTL_DATABASE_PASSWORD holds it) and no other parameters.
pub fn parse_pg_url(key: &str, s: &str) -> Result<PgAddress> {
    let u = Url::parse(s).map_err(|e| {
        invalid(key, s, &format!("not a URL ({e}); use postgresql://user@host:5432/dbname"))
    })?;
    if !matches!(u.scheme(), "postgresql" | "postgres") {
        bail!(invalid(key, s, "use postgresql://[user@]host[:port]/dbname"));
    }
    if u.password().is_some() {
        bail!(invalid(
            key,
            s,
            &format!("put no password in the URL; set {SECRET_DATABASE_PASSWORD}")
        ));
    }
    if u.fragment().is_some() {
        bail!(invalid(key, s, "no fragment (#…) in a database URL"));
    }
    let (mut ssl, mut root_cert) = (SslMode::Disable, None);
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                ssl = SslMode::parse(&v)
                    .ok_or_else(|| invalid(key, s, "sslmode is disable, require or verify-full"))?
            }
            "sslrootcert"
                if v.starts_with('/')
                    && v.chars()
                        .all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '&' | '\\')) =>
            {
                root_cert = Some(v.to_string())
            }
            "sslrootcert" => {
                bail!(invalid(key, s, "sslrootcert is an absolute path to a PEM file"))
            }
            other => bail!(invalid(
                key,
                s,
                &format!("unknown parameter `{other}`: only sslmode and sslrootcert")
            )),
        }
    }
    let host = u
        .host_str()
        .filter(|h| valid_host(h))
        .ok_or_else(|| invalid(key, s, "the URL needs a host"))?
        .to_string();
    let user = Some(u.username().to_string()).filter(|x| !x.is_empty());
    let dbname = Some(u.path().trim_start_matches('/').to_string()).filter(|x| !x.is_empty());
    for (what, v) in [("user", &user), ("database name", &dbname)] {
        if let Some(v) = v {
            crate::config::check_identifier(&format!("{key} ({what})"), v)?;
        }
    }
    Ok(PgAddress { host, port: u.port().unwrap_or(5432), user, dbname, ssl, root_cert })
}

/// The database user: `database.url`'s when it names one, else `database.user`.
pub fn database_user(config: &Config) -> String {
    parse_pg_url("database.url", &config.database.url)
        .ok()
        .and_then(|a| a.user)
        .unwrap_or_else(|| config.database.user.clone())
}

/// The database name: `database.url`'s when it names one, else `database.name`.
pub fn database_name(config: &Config) -> String {
    parse_pg_url("database.url", &config.database.url)
        .ok()
        .and_then(|a| a.dbname)
        .unwrap_or_else(|| config.database.name.clone())
}

/// What labctl's Kafka client (librdkafka with OpenSSL) and the Flink job's (the Java client)
/// both speak; `kafka::security_tests` checks that labctl's client builds with each.
pub const PROTOCOLS: &[&str] = &["plaintext", "sasl_plaintext", "ssl", "sasl_ssl"];
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

fn uses_tls(protocol: &str) -> bool {
    matches!(protocol, "ssl" | "sasl_ssl")
}

/// The certificates of a PEM file, each as one `-----BEGIN CERTIFICATE----- … -----END
/// CERTIFICATE-----` block on a single line (the form the Java client's PEM truststore takes in
/// `ssl.truststore.certificates`); an error says what is wrong with the file.
pub fn read_ca_certificates(path: &str) -> std::result::Result<Vec<String>, String> {
    use base64::Engine;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no such file".into()),
        Err(e) => return Err(format!("cannot read it ({e})")),
    };
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(BEGIN) {
        let after = &rest[i + BEGIN.len()..];
        let j = after.find(END).ok_or("a certificate block has no END line")?;
        let body: String = after[..j].chars().filter(|c| !c.is_whitespace()).collect();
        if base64::engine::general_purpose::STANDARD
            .decode(&body)
            .map_or(true, |der| der.len() < 100)
        {
            return Err("a certificate block is not valid base64 DER".into());
        }
        out.push(format!("{BEGIN} {body} {END}"));
        rest = &after[j + END.len()..];
    }
    if out.is_empty() {
        return Err("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(out)
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

/// Kafka client settings for security, under librdkafka's names (the Java client's are the
/// same but for the CA): empty for plaintext. The password is only read where it is needed.
pub fn kafka_security(config: &Config) -> Result<Vec<(String, String)>> {
    let b = &config.broker;
    if b.security_protocol == "plaintext" {
        return Ok(vec![]);
    }
    let mut out = vec![("security.protocol".to_string(), b.security_protocol.to_ascii_uppercase())];
    if b.security_protocol.starts_with("sasl_") {
        out.push(("sasl.mechanism".into(), b.sasl_mechanism.clone()));
        out.push(("sasl.username".into(), b.sasl_username.clone()));
        out.push((
            "sasl.password".into(),
            secret(SECRET_BROKER_PASSWORD, "the external broker's SASL password")?,
        ));
    }
    if !b.ssl_ca_file.is_empty() {
        out.push(("ssl.ca.location".into(), b.ssl_ca_file.clone()));
    }
    Ok(out)
}

/// The JAAS login module of a SASL mechanism, for the Java client.
fn login_module(mechanism: &str) -> &'static str {
    if mechanism.starts_with("SCRAM-") {
        "org.apache.kafka.common.security.scram.ScramLoginModule"
    } else {
        "org.apache.kafka.common.security.plain.PlainLoginModule"
    }
}

/// The same settings as `properties.*` options of Flink's Kafka connector: SASL credentials
/// as one JAAS line, and the CA as a PEM truststore: its certificates inline
/// (`ssl.truststore.certificates`, read from `broker.ssl_ca_file` on this host, so no file has
/// to reach the cluster), or the cluster's own copy named by `broker.cluster_ssl_ca_file`.
/// Without either the cluster's JVMs use their default truststore.
pub fn flink_kafka_properties(config: &Config) -> Result<Vec<(String, String)>> {
    let b = &config.broker;
    let mut out = Vec::new();
    let (mut user, mut password) = (None, None);
    for (k, v) in kafka_security(config)? {
        match k.as_str() {
            "sasl.username" => user = Some(v),
            "sasl.password" => password = Some(v),
            "ssl.ca.location" => {}
            _ => out.push((format!("properties.{k}"), v)),
        }
    }
    if let (Some(u), Some(p)) = (user, password) {
        if p.contains(['"', '\\']) {
            bail!("{SECRET_BROKER_PASSWORD} contains a '\"' or '\\', which a JAAS line cannot carry unescaped");
        }
        let module = login_module(&b.sasl_mechanism);
        out.push((
            "properties.sasl.jaas.config".into(),
            format!("{module} required username=\"{u}\" password=\"{p}\";"),
        ));
    }
    if !b.cluster_ssl_ca_file.is_empty() {
        out.push(("properties.ssl.truststore.type".into(), "PEM".into()));
        out.push(("properties.ssl.truststore.location".into(), b.cluster_ssl_ca_file.clone()));
    } else if !b.ssl_ca_file.is_empty() {
        let certs = read_ca_certificates(&b.ssl_ca_file)
            .map_err(|why| anyhow::anyhow!("broker.ssl_ca_file {:?}: {why}", b.ssl_ca_file))?;
        out.push(("properties.ssl.truststore.type".into(), "PEM".into()));
        // One line per certificate: the Java client's PEM parser reads a BEGIN/END pair per
        // line, and would skip all but the last of several on one line.
        out.push(("properties.ssl.truststore.certificates".into(), certs.join("\n")));
    }
    Ok(out)
}

/// A secret from the environment, with the fix in the error.
pub fn secret(var: &str, what: &str) -> Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => bail!("{what} is not set: export {var}=… (labctl reads it from the environment, never from a file it writes)"),
    }
}

/// Fails naming the variable when a secret an external part needs is not in the environment,
/// so `up` stops before it waits on a probe that cannot pass.
pub fn check_secrets(config: &Config) -> Result<()> {
    if Part::Database.is_external(config) {
        secret(SECRET_DATABASE_PASSWORD, "the external database's password (database.url)")?;
    }
    if Part::Lake.is_external(config) {
        secret(SECRET_LAKE_KEY, "the external lake's storage account key (lake.endpoint)")?;
    }
    if config.broker.security_protocol.starts_with("sasl_") {
        secret(
            SECRET_BROKER_PASSWORD,
            "the external broker's SASL password (broker.sasl_username)",
        )?;
    }
    Ok(())
}

/// The database password: generated for the lab's own database (kept in its state file),
/// from LABCTL_DATABASE_PASSWORD for an external one.
pub fn database_password(config: &Config, state: &crate::state::State) -> Result<String> {
    if Part::Database.is_external(config) {
        secret(SECRET_DATABASE_PASSWORD, "the external database's password")
    } else {
        Ok(state.db_password.clone())
    }
}

/// The broker's bootstrap list as the Flink cluster reaches it.
pub fn cluster_bootstrap(config: &Config) -> String {
    let b = &config.broker;
    match (b.cluster_bootstrap.is_empty(), b.bootstrap.is_empty()) {
        (false, _) => b.cluster_bootstrap.clone(),
        (true, false) => b.bootstrap.clone(),
        (true, true) => crate::stack::cluster_bootstrap(b.nodes),
    }
}

/// The database as the Flink and Spark clusters reach it, as JDBC URL:
/// `jdbc:postgresql://host:port/dbname`, plus the TLS parameters of `cluster_url` (or `url`).
/// Further JDBC parameters are appended with `jdbc_param`.
pub fn cluster_jdbc_url(config: &Config) -> String {
    let d = &config.database;
    let addr = [&d.cluster_url, &d.url]
        .into_iter()
        .find(|u| !u.is_empty())
        .and_then(|u| parse_pg_url("database.url", u).ok());
    let params = addr.as_ref().map(|a| a.ssl_params()).unwrap_or_default();
    let (host, port) =
        addr.map(|a| (a.host, a.port)).unwrap_or_else(|| (DATABASE.to_string(), DATABASE_PORT));
    let mut url = format!("jdbc:postgresql://{host}:{port}/{}", database_name(config));
    for (k, v) in params {
        url = jdbc_param(&url, k, &v);
    }
    url
}

/// `url` with one more query parameter.
pub fn jdbc_param(url: &str, key: &str, value: &str) -> String {
    format!("{url}{}{key}={value}", if url.contains('?') { '&' } else { '?' })
}

/// The Spark master as drivers and executors reach it.
pub fn spark_master_url(config: &Config) -> String {
    if config.spark.master_url.is_empty() {
        format!("spark://{SPARK_MASTER}:{SPARK_MASTER_PORT}")
    } else {
        config.spark.master_url.clone()
    }
}

/// Python of the Spark workers, for `spark.pyspark.python`.
pub fn spark_python(config: &Config) -> String {
    Some(config.spark.python.clone())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/opt/spark-venv/bin/python".into())
}

/// The PostgreSQL JDBC driver as a `spark.jars` entry.
pub fn spark_jdbc_jar(config: &Config) -> String {
    Some(config.spark.jdbc_jar.clone())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "file:/usr/share/java/postgresql.jar".into())
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

/// The lake's shared key: Azurite's public development key for the lab's own Azurite, from
/// LABCTL_LAKE_KEY for external storage.
pub fn lake_key(config: &Config) -> Result<String> {
    if Part::Lake.is_external(config) {
        secret(SECRET_LAKE_KEY, "the external lake's storage account key")
    } else {
        Ok(DEV_KEY.into())
    }
}

/// The lake's blob endpoint (with the account in the path where the service wants it there) as
/// the Spark cluster reaches it.
pub fn cluster_lake_endpoint(config: &Config) -> String {
    let l = &config.lake;
    match [&l.cluster_endpoint, &l.endpoint].into_iter().find(|e| !e.is_empty()) {
        Some(e) => e.trim_end_matches('/').to_string(),
        // The account's host name, an alias of the lab's Azurite on port 80: where the Spark
        // job's WASB driver looks for the account, and production-style for the SAS URLs too.
        None => format!("http://{AZURITE_ACCOUNT_HOST}"),
    }
}

/// The lake as Hadoop's WASB driver addresses it, from the cluster's endpoint: whether it speaks
/// https (`wasbs://`) and the authority `<account>.<domain>[:port]` of
/// `wasb[s]://<container>@<authority>/<path>`. WASB takes the account from the host name's first
/// label and knows no path-style endpoint (`http://host:10000/<account>`).
pub fn wasb_authority(config: &Config) -> Result<(bool, String)> {
    let endpoint = cluster_lake_endpoint(config);
    let key = if config.lake.cluster_endpoint.is_empty() {
        "lake.endpoint"
    } else {
        "lake.cluster_endpoint"
    };
    let u = parse_http_url(key, &endpoint)?;
    let account = lake_account(config);
    let host = u.host_str().unwrap_or_default();
    let first_label = host.split('.').next().unwrap_or_default();
    if !u.path().trim_matches('/').is_empty() || first_label != account || !host.contains('.') {
        bail!(invalid(
            key,
            &endpoint,
            &format!("the Spark export writes through Hadoop's WASB driver, which reaches a storage account by its host name: use http(s)://{account}.<domain> as the Spark cluster reaches it (the lab's own Azurite is http://{AZURITE_ACCOUNT_HOST} on the lab's network), not a path-style URL")
        ));
    }
    let authority = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok((u.scheme() == "https", authority))
}

/// Registers `broker.address_map` with labctl's Kafka clients (see `kafka::resolve`).
pub fn apply_address_map(config: &Config) -> Result<()> {
    for (from, to) in &config.broker.address_map {
        let (fh, fp) = parse_host_port("broker.address_map", from)?;
        let (th, tp) = parse_host_port("broker.address_map", to)?;
        crate::kafka::resolve::map_broker(&fh, fp, &th, tp);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        f(&mut c);
        c
    }

    #[test]
    fn managed_lab_uses_network_names() {
        let c = Config::default();
        assert!(external_parts(&c).is_empty());
        assert_eq!(cluster_bootstrap(&c), "broker:9092");
        assert_eq!(cluster_jdbc_url(&c), "jdbc:postgresql://timescaledb:5432/iiot");
        assert_eq!(cluster_lake_endpoint(&c), "http://devstoreaccount1.blob.core.windows.net");
        assert_eq!(
            wasb_authority(&c).unwrap(),
            (false, "devstoreaccount1.blob.core.windows.net".to_string())
        );
        assert_eq!(spark_master_url(&c), "spark://spark-master:7077");
        assert_eq!(lake_account(&c), "devstoreaccount1");
    }

    #[test]
    fn external_addresses_and_cluster_views() {
        let c = cfg(|c| {
            c.broker.bootstrap = "127.0.0.1:19092".into();
            c.broker.cluster_bootstrap = "broker:9092".into();
            c.database.url = "postgresql://ops@db.example.net:6543/plant".into();
            c.lake.endpoint = "https://plantlake.blob.core.windows.net".into();
        });
        c.validate().unwrap();
        assert_eq!(external_parts(&c), vec![Part::Broker, Part::Database, Part::Lake]);
        assert_eq!(cluster_bootstrap(&c), "broker:9092");
        assert_eq!(cluster_jdbc_url(&c), "jdbc:postgresql://db.example.net:6543/plant");
        assert_eq!((database_user(&c), database_name(&c)), ("ops".into(), "plant".into()));
        assert_eq!(lake_account(&c), "plantlake");
        assert_eq!(cluster_lake_endpoint(&c), "https://plantlake.blob.core.windows.net");
        assert_eq!(
            wasb_authority(&c).unwrap(),
            (true, "plantlake.blob.core.windows.net".to_string())
        );
        // A path-style endpoint for the cluster cannot be reached through WASB.
        let c = cfg(|c| {
            c.lake.endpoint = "http://127.0.0.1:10000/devstoreaccount1".into();
            c.lake.cluster_endpoint = "http://azurite:10000/devstoreaccount1".into();
        });
        let e = wasb_authority(&c).unwrap_err().to_string();
        assert!(
            e.contains("lake.cluster_endpoint") && e.contains("devstoreaccount1.<domain>"),
            "{e}"
        );
        let c = cfg(|c| {
            c.lake.endpoint = "http://127.0.0.1:10000/devstoreaccount1".into();
            c.lake.cluster_endpoint = "http://devstoreaccount1.blob.core.windows.net:10000".into();
        });
        assert_eq!(
            wasb_authority(&c).unwrap(),
            (false, "devstoreaccount1.blob.core.windows.net:10000".to_string())
        );
    }

    #[test]
    fn bad_external_values_name_their_key() {
        for (key, f) in [
            (
                "broker.bootstrap",
                Box::new(|c: &mut Config| c.broker.bootstrap = "kafka;rm -rf /:9092".into())
                    as Box<dyn Fn(&mut Config)>,
            ),
            ("broker.bootstrap", Box::new(|c: &mut Config| c.broker.bootstrap = "kafka".into())),
            (
                "broker.cluster_bootstrap",
                Box::new(|c: &mut Config| c.broker.cluster_bootstrap = "broker:9092".into()),
            ),
            (
                "database.url",
                Box::new(|c: &mut Config| c.database.url = "postgresql://u:secret@h/db".into()),
            ),
            (
                "database.url",
                Box::new(|c: &mut Config| c.database.url = "postgresql://h/Robert');DROP".into()),
            ),
            ("flink.url", Box::new(|c: &mut Config| c.flink.url = "ftp://x".into())),
            (
                "spark.master_url",
                Box::new(|c: &mut Config| c.spark.master_url = "spark://m:7077".into()),
            ),
            (
                "broker.security_protocol",
                Box::new(|c: &mut Config| c.broker.security_protocol = "sasl_plaintext".into()),
            ),
            (
                "lake.account",
                Box::new(|c: &mut Config| c.lake.endpoint = "http://127.0.0.1:10000/".into()),
            ),
            (
                "broker.security_protocol",
                Box::new(|c: &mut Config| {
                    c.broker.bootstrap = "k:9092".into();
                    c.broker.security_protocol = "tls".into();
                }),
            ),
            (
                "broker.sasl_mechanism",
                Box::new(|c: &mut Config| {
                    c.broker.bootstrap = "k:9092".into();
                    c.broker.security_protocol = "sasl_ssl".into();
                    c.broker.sasl_mechanism = "SCRAM-SHA-1".into();
                    c.broker.sasl_username = "lab".into();
                }),
            ),
            (
                "broker.ssl_ca_file",
                Box::new(|c: &mut Config| {
                    c.broker.bootstrap = "k:9092".into();
                    c.broker.security_protocol = "ssl".into();
                    c.broker.ssl_ca_file = "/nonexistent/ca.pem".into();
                }),
            ),
            (
                "broker.ssl_ca_file",
                Box::new(|c: &mut Config| {
                    c.broker.bootstrap = "k:9092".into();
                    c.broker.ssl_ca_file = "/etc/hostname".into();
                }),
            ),
            (
                "broker.cluster_ssl_ca_file",
                Box::new(|c: &mut Config| {
                    c.broker.bootstrap = "k:9092".into();
                    c.broker.security_protocol = "ssl".into();
                    c.broker.cluster_ssl_ca_file = "ca.pem' OR '1".into();
                }),
            ),
            (
                "broker.sasl_ssl_listener",
                Box::new(|c: &mut Config| {
                    c.broker.bootstrap = "k:9092".into();
                    c.broker.sasl_ssl_listener = true;
                }),
            ),
            ("spark.python", Box::new(|c: &mut Config| c.spark.python = "/usr/bin/python3".into())),
            (
                "spark.python",
                Box::new(|c: &mut Config| {
                    c.spark.master_url = "spark://m:7077".into();
                    c.spark.rest_url = "http://m:6066".into();
                    c.spark.ui_url = "http://m:8080".into();
                    c.spark.python = "python3; rm -rf /".into();
                }),
            ),
            (
                "flink.state_dir",
                Box::new(|c: &mut Config| {
                    c.flink.url = "http://f:8081".into();
                    c.flink.state_dir = "s3://b/x' OR '1".into();
                }),
            ),
        ] {
            let mut c = Config::default();
            f(&mut c);
            let err = format!("{:#}", c.validate().unwrap_err());
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn database_tls_reaches_both_views() {
        let c = cfg(|c| {
            c.database.url = "postgresql://ops@127.0.0.1:6543/plant?sslmode=require".into();
            c.database.cluster_url = "postgresql://db.internal:5432/plant?sslmode=verify-full&sslrootcert=/etc/ssl/plant-ca.pem".into();
        });
        c.validate().unwrap();
        let a = parse_pg_url("database.url", &c.database.url).unwrap();
        assert_eq!((a.ssl, a.root_cert), (SslMode::Require, None));
        assert_eq!(cluster_jdbc_url(&c), "jdbc:postgresql://db.internal:5432/plant?sslmode=verify-full&sslrootcert=/etc/ssl/plant-ca.pem");
        assert_eq!(
            jdbc_param(&cluster_jdbc_url(&Config::default()), "reWriteBatchedInserts", "true"),
            "jdbc:postgresql://timescaledb:5432/iiot?reWriteBatchedInserts=true"
        );
        for bad in [
            "postgresql://h/db?sslmode=prefer",
            "postgresql://h/db?sslrootcert=ca.pem",
            "postgresql://h/db?application_name=x",
        ] {
            let mut c = Config::default();
            c.database.url = bad.into();
            assert!(format!("{:#}", c.validate().unwrap_err()).contains("database.url"), "{bad}");
        }
    }

    /// A throwaway self-signed certificate (openssl req -x509), enough for the PEM checks.
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIUCa1NJ4h84/zc8zOQyIU3dOPG92YwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwObGFiY3RsIHRlc3QgY2EwHhcNMjYxMjAxMjExNTQyWhcNMzYx
MTI4MjExNTQyWjAZMRcwFQYDVQQDDA5sYWJjdGwgdGVzdCBjYTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABBATUs0RhdQtdwk6Z0gAmKb8TZUNMr36k9TwPKgOLlEX
IR2Je9ZGA9Z/A/TIWLYPFlkZ+ZIoCdFehOtWoojS2eWjUzBRMB0GA1UdDgQWBBS4
ZMZ0EIp7reYo0rUNYBSWe879nTAfBgNVHSMEGDAWgBS4ZMZ0EIp7reYo0rUNYBSW
e879nTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQDLSJ8T6LeN
P8Ijgf8sN9DXsqhGt1ZoDGzFim3+29lYFAIgamMFDrUlA7pgdgQD2sDS7Lb9B1tP
rla69pxugtqqqqw=
-----END CERTIFICATE-----
";

    #[test]
    fn tls_and_scram_reach_both_clients() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, format!("{TEST_CERT}{TEST_CERT}")).unwrap();
        let ca = ca.display().to_string();
        let c = cfg(|c| {
            c.broker.bootstrap = "kafka.example.net:9093".into();
            c.broker.security_protocol = "sasl_ssl".into();
            c.broker.sasl_mechanism = "SCRAM-SHA-512".into();
            c.broker.sasl_username = "lab".into();
            c.broker.ssl_ca_file = ca.clone();
        });
        c.validate().unwrap();
        std::env::set_var(SECRET_BROKER_PASSWORD, "pw");
        let own = kafka_security(&c).unwrap();
        assert!(
            own.contains(&("security.protocol".into(), "SASL_SSL".into()))
                && own.contains(&("ssl.ca.location".into(), ca.clone())),
            "{own:?}"
        );
        let props = flink_kafka_properties(&c).unwrap();
        let get = |k: &str| {
            props.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        assert_eq!(get("properties.sasl.mechanism"), "SCRAM-SHA-512");
        assert_eq!(get("properties.sasl.jaas.config"), "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"lab\" password=\"pw\";");
        assert_eq!(get("properties.ssl.truststore.type"), "PEM");
        // Both certificates inline, one per line, nothing of the CA file's path.
        let certs = get("properties.ssl.truststore.certificates");
        assert_eq!(certs.lines().count(), 2, "{certs}");
        assert!(
            certs.lines().all(|l| l.starts_with("-----BEGIN CERTIFICATE----- MIIBhzCC")
                && l.ends_with(" -----END CERTIFICATE-----")),
            "{certs}"
        );
        assert!(
            !props
                .iter()
                .any(|(k, _)| k.contains("ssl.ca.location") || k.contains("truststore.location")),
            "{props:?}"
        );
        // With the cluster's own copy, the job names that file instead.
        let mut c2 = c.clone();
        c2.broker.cluster_ssl_ca_file = "/etc/kafka/plant-ca.pem".into();
        c2.validate().unwrap();
        let props = flink_kafka_properties(&c2).unwrap();
        assert!(
            props.contains(&(
                "properties.ssl.truststore.location".into(),
                "/etc/kafka/plant-ca.pem".into()
            )),
            "{props:?}"
        );
        assert!(!props.iter().any(|(k, _)| k.ends_with("truststore.certificates")), "{props:?}");
        // ssl without a CA file: the system's CAs here, the JVM's default truststore there.
        let c3 = cfg(|c| {
            c.broker.bootstrap = "kafka.example.net:9093".into();
            c.broker.security_protocol = "ssl".into();
        });
        c3.validate().unwrap();
        assert_eq!(
            kafka_security(&c3).unwrap(),
            vec![("security.protocol".to_string(), "SSL".to_string())]
        );
        assert_eq!(
            flink_kafka_properties(&c3).unwrap(),
            vec![("properties.security.protocol".to_string(), "SSL".to_string())]
        );
        // A CA file that does not exist is named with its key, on one line.
        let mut bad = c.clone();
        bad.broker.ssl_ca_file = dir.path().join("nope.pem").display().to_string();
        let err = format!("{:#}", bad.validate().unwrap_err());
        assert!(
            err.contains("broker.ssl_ca_file")
                && err.contains("no such file")
                && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn sasl_becomes_a_jaas_line() {
        let c = cfg(|c| {
            c.broker.bootstrap = "k:9092".into();
            c.broker.security_protocol = "sasl_plaintext".into();
            c.broker.sasl_mechanism = "PLAIN".into();
            c.broker.sasl_username = "lab".into();
        });
        c.validate().unwrap();
        std::env::set_var(SECRET_BROKER_PASSWORD, "pw");
        let props = flink_kafka_properties(&c).unwrap();
        assert!(
            props.contains(&("properties.security.protocol".into(), "SASL_PLAINTEXT".into())),
            "{props:?}"
        );
        assert!(
            props.iter().any(|(k, v)| k == "properties.sasl.jaas.config"
                && v.contains("PlainLoginModule required username=\"lab\" password=\"pw\";")),
            "{props:?}"
        );
        assert!(!props.iter().any(|(k, _)| k == "properties.sasl.password"));
    }
}
