//! Kafka client security, derived once from `broker.security_protocol` and friends: the
//! librdkafka settings labctl's own clients use and the `properties.*` of Flink's Kafka
//! connector, plus the secrets both read from the environment.

use anyhow::{bail, Result};

use crate::model::{
    config::{Config, PortKey, SECRET_BROKER_PASSWORD, SECRET_DATABASE_PASSWORD, SECRET_LAKE_KEY},
    topology::Part,
};

/// What labctl's Kafka client (librdkafka with OpenSSL) and the Flink job's (the Java client)
/// both speak; `kafka::security_tests` checks that labctl's client builds with each.
pub const PROTOCOLS: &[&str] = &["plaintext", "sasl_plaintext", "ssl", "sasl_ssl"];
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

pub(crate) fn uses_tls(protocol: &str) -> bool {
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

/// What each part the lab runs needs before its ports may face other hosts: each runs code or
/// takes data from whoever reaches it, unless the setting puts authentication in front.
const AUTHENTICATION: [(Part, &str, &str); 3] = [
    (Part::Flink, "flink.rest_mutual_tls = true", "Flink's REST API runs any uploaded jar"),
    (Part::Spark, "spark.rest_tokens = true", "Spark's REST server runs any submitted program"),
    (
        Part::Broker,
        "broker.sasl_ssl_listener = true",
        "the broker takes and serves data from anyone on its plaintext listeners",
    ),
];

fn authenticated(config: &Config, part: Part) -> bool {
    match part {
        Part::Flink => config.flink.rest_mutual_tls,
        Part::Spark => config.spark.rest_tokens,
        Part::Broker => config.broker.sasl_ssl_listener,
        Part::Database | Part::Lake => true,
    }
}

/// Whether `bind_address` publishes beyond this host (a wildcard does).
pub fn beyond_loopback(config: &Config) -> bool {
    config.bind_address.parse::<std::net::IpAddr>().is_ok_and(|a| !a.is_loopback())
}

/// Refuses a `bind_address` beyond loopback while a part the lab runs lacks its
/// authentication (`AUTHENTICATION`), naming each missing setting: such an address would hand
/// code execution or the data to the whole network. A tunnel reaches a loopback-bound lab.
pub fn check_exposure(config: &Config) -> Result<()> {
    if !beyond_loopback(config) {
        return Ok(()); // `Config::validate` names a malformed address
    }
    let missing: Vec<(&str, &str)> = AUTHENTICATION
        .iter()
        .filter(|(part, _, _)| !part.is_external(config) && !authenticated(config, *part))
        .map(|(_, setting, why)| (*setting, *why))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let settings: Vec<&str> = missing.iter().map(|(s, _)| *s).collect();
    let whys: Vec<&str> = missing.iter().map(|(_, w)| *w).collect();
    bail!(
        "bind_address = \"{}\" publishes the lab to other hosts, and {}; set {} (or bind_address = \"127.0.0.1\" and reach the lab through an SSH tunnel, `ssh -L 8081:127.0.0.1:8081 ...`)",
        config.bind_address,
        whys.join("; "),
        settings.join(", ")
    )
}

/// The host address a published port binds to: `bind_address`, except that with an address
/// beyond loopback only the ports that authenticate their clients face it (the database's
/// password login, the broker's SASL_SSL listener, Flink's REST API with mutual TLS, Spark's
/// REST server with tokens); the others (the broker's plaintext listeners, Azurite with its
/// well-known key, Spark's web UI, which can kill applications) stay on 127.0.0.1.
pub fn port_bind_address(config: &Config, key: PortKey) -> &str {
    if !beyond_loopback(config) {
        return &config.bind_address;
    }
    let authenticates = match key {
        PortKey::Database | PortKey::BrokerSaslSsl => true,
        PortKey::FlinkUi => config.flink.rest_mutual_tls,
        PortKey::SparkRest => config.spark.rest_tokens,
        PortKey::Broker
        | PortKey::Broker2
        | PortKey::Broker3
        | PortKey::SparkUi
        | PortKey::Azurite => false,
    };
    if authenticates {
        &config.bind_address
    } else {
        "127.0.0.1"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_every_part_the_lab_runs_needs_its_authentication() {
        let mut c = Config::default();
        assert!(check_exposure(&c).is_ok());
        c.bind_address = "::1".into();
        assert!(check_exposure(&c).is_ok());
        c.bind_address = "0.0.0.0".into();
        let e = check_exposure(&c).unwrap_err().to_string();
        for setting in [
            "flink.rest_mutual_tls = true",
            "spark.rest_tokens = true",
            "broker.sasl_ssl_listener = true",
        ] {
            assert!(e.contains(setting), "{e}");
        }
        assert!(e.contains("bind_address = \"127.0.0.1\""), "{e}");
        c.flink.rest_mutual_tls = true;
        c.broker.sasl_ssl_listener = true;
        let e = check_exposure(&c).unwrap_err().to_string();
        assert!(e.contains("spark.rest_tokens") && !e.contains("flink."), "{e}");
        c.spark.rest_tokens = true;
        assert!(check_exposure(&c).is_ok());
        // Only what the lab itself runs counts.
        let mut c = Config { bind_address: "192.168.1.20".into(), ..Default::default() };
        c.flink.url = "http://flink.example:8081".into();
        c.spark.master_url = "spark://spark.example:7077".into();
        c.broker.bootstrap = "kafka.example:9092".into();
        assert!(check_exposure(&c).is_ok());
    }

    #[test]
    fn beyond_loopback_only_authenticating_ports_face_the_address() {
        let mut c = Config { bind_address: "192.168.1.20".into(), ..Default::default() };
        c.flink.rest_mutual_tls = true;
        c.spark.rest_tokens = true;
        c.broker.sasl_ssl_listener = true;
        let facing: Vec<PortKey> =
            PortKey::ALL.into_iter().filter(|k| port_bind_address(&c, *k) != "127.0.0.1").collect();
        assert_eq!(
            facing,
            [PortKey::Database, PortKey::FlinkUi, PortKey::SparkRest, PortKey::BrokerSaslSsl]
        );
        c.bind_address = "127.0.0.1".into();
        assert!(PortKey::ALL.iter().all(|k| port_bind_address(&c, *k) == "127.0.0.1"));
    }
}
