//! Addresses as the config writes them, parsed and checked once: `host:port`, bootstrap lists,
//! http(s) URLs and `postgresql://` URLs with their TLS settings. Pure: no I/O.

use anyhow::{bail, Result};
use reqwest::Url;

use crate::model::config::{InvalidValue, SECRET_DATABASE_PASSWORD};

/// Encryption of the connection, named as libpq names it (`sslmode` in `database.url`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP (the lab's own database on this host).
    #[default]
    Disable,
    /// Encrypted; the server's certificate is not checked (libpq's meaning of `require`).
    Require,
    /// Encrypted, and the certificate must be valid for the host name: signed by a public CA
    /// or by `sslrootcert`.
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "disable" => Some(Self::Disable),
            "require" => Some(Self::Require),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
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
    /// `sslmode` always: both clients default to `prefer`, which negotiates TLS with a server
    /// that offers it (the lab's does) although the config did not ask for it.
    pub fn ssl_params(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("sslmode", self.ssl.as_str().to_string())];
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
            crate::model::config::check_identifier(&format!("{key} ({what})"), v)?;
        }
    }
    Ok(PgAddress { host, port: u.port().unwrap_or(5432), user, dbname, ssl, root_cert })
}
