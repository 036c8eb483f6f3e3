//! Where the lab's services are as the Flink and Spark clusters see them, whose jobs connect to
//! the broker, the database and the lake themselves: a managed service by its name on the lab's
//! network, an external one wherever the config says for the cluster's view (a broker that
//! advertises in-cluster names, a database behind a proxy on this host). Also which stack
//! services stand for each part of the topology.

use anyhow::{bail, Result};

use crate::{
    model::{
        address::{parse_http_url, parse_pg_url, SslMode},
        config::{Config, InvalidValue, SECRET_DATABASE_PASSWORD, SECRET_LAKE_KEY},
        security::secret,
        topology::{database_name, lake_account, DbRole, Part, DEV_KEY},
    },
    stack::{
        state::State, ServiceId, AZURITE, AZURITE_ACCOUNT_HOST, BROKER_NODES, DATABASE,
        DATABASE_PORT, FLINK_JM, FLINK_TM, SPARK_MASTER, SPARK_MASTER_PORT, SPARK_WORKER,
    },
};

impl Part {
    /// The stack's services that run it when it is managed; the first is the one whose probe
    /// and name stand for the part.
    pub fn services(self) -> &'static [ServiceId] {
        match self {
            Part::Broker => &BROKER_NODES,
            Part::Database => &[DATABASE],
            Part::Flink => &[FLINK_JM, FLINK_TM],
            Part::Spark => &[SPARK_MASTER, SPARK_WORKER],
            Part::Lake => &[AZURITE],
        }
    }

    pub fn of_service(service: ServiceId) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.services().contains(&service))
    }
}

fn invalid(key: &str, value: &str, reason: &str) -> anyhow::Error {
    InvalidValue { key: key.into(), value: value.into(), reason: reason.into() }.into()
}

/// The database password: generated for the lab's own database (kept in its state file),
/// from LABCTL_DATABASE_PASSWORD for an external one.
pub fn database_password(config: &Config, state: &State) -> Result<String> {
    if Part::Database.is_external(config) {
        secret(SECRET_DATABASE_PASSWORD, "the external database's password")
    } else {
        Ok(state.db_password.clone())
    }
}

/// A database user and its password.
#[derive(Clone)]
pub struct DbCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for DbCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCredentials").field("user", &self.user).finish_non_exhaustive()
    }
}

/// Who connects as `role`: in the lab's own database the role's own name and generated password
/// (kept in the state file); an external database's one user for every role.
pub fn database_credentials(config: &Config, state: &State, role: DbRole) -> Result<DbCredentials> {
    if Part::Database.is_external(config) {
        return Ok(DbCredentials {
            user: database_user_for(config, role),
            password: database_password(config, state)?,
        });
    }
    let password = match role {
        DbRole::Owner => state.db_password.clone(),
        DbRole::Writer => state.db_writer_password.clone(),
        DbRole::Reader => state.db_reader_password.clone(),
    };
    if password.is_empty() {
        bail!("the lab's state has no password for the database role {}: run `labctl up` (it creates the role)", role.lab_role(config));
    }
    Ok(DbCredentials { user: role.lab_role(config), password })
}

/// The user `role` connects as (no state needed: for what is rendered before a lab exists).
pub fn database_user_for(config: &Config, role: DbRole) -> String {
    if Part::Database.is_external(config) {
        crate::model::topology::database_user(config)
    } else {
        role.lab_role(config)
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
    // The lab's own database: plain TCP on the lab's network, as labctl reaches it too (the
    // driver's default `prefer` would spend a TLS handshake and encryption on every row).
    let params = addr
        .as_ref()
        .map(|a| a.ssl_params())
        .unwrap_or_else(|| vec![("sslmode", SslMode::Disable.as_str().to_string())]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{address::*, config::SECRET_BROKER_PASSWORD, security::*, topology::*};

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
        assert_eq!(cluster_jdbc_url(&c), "jdbc:postgresql://timescaledb:5432/iiot?sslmode=disable");
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
        assert_eq!(
            cluster_jdbc_url(&c),
            "jdbc:postgresql://db.example.net:6543/plant?sslmode=disable"
        );
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
            "jdbc:postgresql://timescaledb:5432/iiot?sslmode=disable&reWriteBatchedInserts=true"
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
