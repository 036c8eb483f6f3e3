//! The certificates of Flink's mutually authenticated REST API (`flink.rest_mutual_tls`): a CA
//! of the lab's own, made by labctl, that signs the JobManager's server certificate and
//! labctl's client certificate. The JobManager trusts only clients of that CA, and labctl
//! only that CA for the JobManager. The CA's key is dropped once both are signed: a new name
//! for the server means a new set, and the JobManager's container is made again anyway then.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

use crate::stack::{Secret, ServiceId};

/// One set of PEM files, as labctl keeps it in the lab's state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestTls {
    /// What the server certificate is for (DNS names and IP addresses).
    pub names: Vec<String>,
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// The names the JobManager's certificate carries: its name on the lab's network, loopback,
/// and the address labctl reaches the published port at (a `bind_address` beyond loopback).
pub fn server_names(host: &str) -> Vec<String> {
    let mut names =
        vec![ServiceId::FlinkJobManager.to_string(), "localhost".into(), "127.0.0.1".into()];
    if !names.iter().any(|n| n == host) {
        names.push(host.to_string());
    }
    names
}

fn validity(params: &mut CertificateParams) {
    // Ten years from the start of this year: a lab outlives a session, not a decade.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let year = 1970 + (now / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 12, 31);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

fn named(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A new CA and the two certificates it signs.
pub fn issue(project: &str, names: Vec<String>) -> Result<RestTls> {
    let ca_key = KeyPair::generate().context("making the lab CA's key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("the lab CA")?;
    ca.distinguished_name = named(&format!("labctl lab {project} CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca = ca.self_signed(&ca_key).context("signing the lab CA")?;

    let server_key = KeyPair::generate().context("making the JobManager's key")?;
    let mut server = CertificateParams::new(names.clone())
        .with_context(|| format!("a certificate for {names:?}"))?;
    server.distinguished_name = named(ServiceId::FlinkJobManager.as_str());
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server);
    let server = server.signed_by(&server_key, &ca, &ca_key).context("signing the server's")?;

    let client_key = KeyPair::generate().context("making labctl's client key")?;
    let mut client = CertificateParams::new(Vec::<String>::new()).context("a client")?;
    client.distinguished_name = named("labctl");
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client);
    let client = client.signed_by(&client_key, &ca, &ca_key).context("signing labctl's")?;

    Ok(RestTls {
        names,
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    })
}

impl RestTls {
    /// The file of `secret` (one of `FLINK_REST_TLS`).
    pub fn file(&self, secret: Secret) -> Option<&str> {
        Some(match secret {
            Secret::FlinkRestCa => &self.ca,
            Secret::FlinkRestServerCert => &self.server_cert,
            Secret::FlinkRestServerKey => &self.server_key,
            Secret::FlinkRestClientCert => &self.client_cert,
            Secret::FlinkRestClientKey => &self.client_key,
            _ => return None,
        })
    }

    pub fn file_mut(&mut self, secret: Secret) -> Option<&mut String> {
        Some(match secret {
            Secret::FlinkRestCa => &mut self.ca,
            Secret::FlinkRestServerCert => &mut self.server_cert,
            Secret::FlinkRestServerKey => &mut self.server_key,
            Secret::FlinkRestClientCert => &mut self.client_cert,
            Secret::FlinkRestClientKey => &mut self.client_key,
            _ => return None,
        })
    }

    /// labctl's identity: its key and certificate in one PEM text, as an HTTP client takes it.
    pub fn client_identity(&self) -> String {
        format!("{}\n{}", self.client_key.trim_end(), self.client_cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_three_pem_certificates_and_two_keys_for_the_names_given() {
        let t = issue("t", server_names("192.0.2.7")).unwrap();
        assert_eq!(t.names, ["flink-jobmanager", "localhost", "127.0.0.1", "192.0.2.7"]);
        for cert in [&t.ca, &t.server_cert, &t.client_cert] {
            assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        }
        for key in [&t.server_key, &t.client_key] {
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        }
        assert_ne!(t.server_key, t.client_key);
        assert_eq!(server_names("127.0.0.1").len(), 3);
        // reqwest (rustls) takes the identity and the CA as they are.
        reqwest::Identity::from_pem(t.client_identity().as_bytes()).unwrap();
        reqwest::Certificate::from_pem(t.ca.as_bytes()).unwrap();
    }
}
