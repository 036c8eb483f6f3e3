//! Kafka client security, derived once from `broker.security_protocol` and friends: the
//! librdkafka settings labctl's own clients use and the `properties.*` of Flink's Kafka
//! connector, plus the secrets both read from the environment.

use anyhow::{bail, Result};

use crate::model::{
    config::{Config, SECRET_BROKER_PASSWORD, SECRET_DATABASE_PASSWORD, SECRET_LAKE_KEY},
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

/// What the lab would publish to other hosts with no authentication in front of it: each of
/// these runs code or takes data from whoever reaches its port.
const UNAUTHENTICATED: [(Part, &str); 3] = [
    (Part::Flink, "Flink's REST API (runs any uploaded jar)"),
    (Part::Spark, "Spark's REST submission server (runs any submitted program)"),
    (Part::Broker, "the broker's plaintext listeners"),
];

/// Refuses a `bind_address` beyond loopback while the lab runs a service from
/// `UNAUTHENTICATED`: the lab has no mutual TLS for Flink's REST API, no signed tokens for
/// Spark's submissions and keeps plaintext broker listeners, so such an address would hand
/// code execution to its whole network. A tunnel reaches a loopback-bound lab safely.
pub fn check_exposure(config: &Config) -> Result<()> {
    let Ok(addr) = config.bind_address.parse::<std::net::IpAddr>() else {
        return Ok(()); // `Config::validate` names a malformed address
    };
    if addr.is_loopback() {
        return Ok(());
    }
    let exposed: Vec<&str> = UNAUTHENTICATED
        .iter()
        .filter(|(part, _)| !part.is_external(config))
        .map(|(_, what)| *what)
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    bail!(
        "bind_address = \"{addr}\" would publish {} to other hosts without authentication; set bind_address = \"127.0.0.1\" (LABCTL_BIND_ADDRESS) and reach the lab from another host through an SSH tunnel (`ssh -L 8081:127.0.0.1:8081 ...`)",
        exposed.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_publishes_the_unauthenticated_services() {
        let mut c = Config::default();
        assert!(check_exposure(&c).is_ok());
        c.bind_address = "::1".into();
        assert!(check_exposure(&c).is_ok());
        c.bind_address = "0.0.0.0".into();
        let e = check_exposure(&c).unwrap_err().to_string();
        assert!(
            e.contains("Flink's REST API") && e.contains("Spark's REST") && e.contains("broker")
        );
        assert!(e.contains("bind_address = \"127.0.0.1\""), "{e}");
        // Only what the lab itself runs counts.
        c.bind_address = "192.168.1.20".into();
        c.flink.url = "http://flink.example:8081".into();
        c.spark.master_url = "spark://spark.example:7077".into();
        c.broker.bootstrap = "kafka.example:9092".into();
        assert!(check_exposure(&c).is_ok());
        c.spark.master_url.clear();
        let e = check_exposure(&c).unwrap_err().to_string();
        assert!(e.contains("Spark's REST") && !e.contains("Flink"), "{e}");
    }
}
