//! PostgreSQL/TimescaleDB over its own protocol: login, schema, and the queries `status` needs.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::model::{address::SslMode, schema};

/// The server refused the user's password (SQLSTATE 28P01): the password is wrong, so waiting
/// or retrying does not help.
#[derive(Debug, thiserror::Error)]
#[error("the server refused the password of user {user}")]
pub struct PasswordRefused {
    pub user: String,
}

/// What a lab role may do on the lab's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read them, insert and update rows (an upsert sink); never delete, truncate or alter.
    Write,
    /// Read them.
    Read,
}

impl Access {
    fn privileges(self) -> &'static str {
        match self {
            // ON CONFLICT DO UPDATE needs SELECT on the conflict target besides INSERT and UPDATE.
            Access::Write => "SELECT, INSERT, UPDATE",
            Access::Read => "SELECT",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Access::Write => "writer",
            Access::Read => "reader",
        }
    }
}

/// A login role of the lab's own database.
pub struct LabRole<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub access: Access,
    pub tables: &'a [&'a str],
}

/// A PostgreSQL string literal (standard_conforming_strings, the default since 9.1).
fn pg_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[derive(Clone)]
pub struct Database {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub name: String,
    password: String,
    pub ssl: SslMode,
    /// PEM file of the CA that signed the server's certificate (verify-full), else the public CAs.
    pub root_cert: Option<std::path::PathBuf>,
}

/// Everything but the password.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("name", &self.name)
            .field("ssl", &self.ssl)
            .finish_non_exhaustive()
    }
}

impl Database {
    pub fn new(host: String, port: u16, user: String, name: String, password: String) -> Self {
        Self { host, port, user, name, password, ssl: SslMode::Disable, root_cert: None }
    }

    pub fn with_tls(mut self, ssl: SslMode, root_cert: Option<std::path::PathBuf>) -> Self {
        self.ssl = ssl;
        self.root_cert = root_cert;
        self
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
        let failed = || {
            format!(
                "cannot log in to database {} at {}:{} as {} (sslmode={})",
                self.name,
                self.host,
                self.port,
                self.user,
                self.ssl.as_str()
            )
        };
        let late =
            || anyhow!("database {}:{} did not answer within {timeout:?}", self.host, self.port);
        let client = match self.ssl {
            SslMode::Disable => {
                let (client, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls))
                    .await
                    .map_err(|_| late())?
                    .map_err(|e| self.login_error(e))
                    .with_context(failed)?;
                drive(conn);
                client
            }
            mode => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls::client_config(
                    mode,
                    self.root_cert.as_deref(),
                )?);
                let (client, conn) = tokio::time::timeout(timeout, cfg.connect(tls))
                    .await
                    .map_err(|_| late())?
                    .map_err(|e| self.login_error(e))
                    .with_context(failed)?;
                drive(conn);
                client
            }
        };
        Ok(client)
    }

    /// A refused password as its own error (waiting does not help); anything else as it is.
    fn login_error(&self, e: tokio_postgres::Error) -> anyhow::Error {
        if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD) {
            PasswordRefused { user: self.user.clone() }.into()
        } else {
            e.into()
        }
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

    /// Creates or updates the login roles the lab hands to its clusters (idempotent, on every
    /// `up`): no superuser, no role or database creation, no inherited rights, and on the lab's
    /// tables only `access`. The password goes as a SCRAM verifier computed here, so its plain
    /// text never reaches the server (nor its logs).
    pub async fn ensure_role(&self, role: &LabRole<'_>) -> Result<()> {
        if role.name == self.user {
            bail!("database.user is `{}`, the name labctl gives its {} role; choose another database.user", role.name, role.access.describe());
        }
        let ident = schema::pg_ident(role.name);
        let verifier = postgres_protocol::password::scram_sha_256(role.password.as_bytes());
        let tables: Vec<String> = role.tables.iter().map(|t| schema::pg_ident(t)).collect();
        let sql = format!(
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {name}) THEN \
                 CREATE ROLE {ident}; \
               END IF; \
             END $$; \
             ALTER ROLE {ident} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT \
               NOREPLICATION NOBYPASSRLS PASSWORD {verifier}; \
             REVOKE ALL ON TABLE {tables} FROM {ident}; \
             GRANT USAGE ON SCHEMA public TO {ident}; \
             GRANT {privileges} ON TABLE {tables} TO {ident};",
            name = pg_literal(role.name),
            verifier = pg_literal(&verifier),
            tables = tables.join(", "),
            privileges = role.access.privileges(),
        );
        let c = self.connect(Duration::from_secs(10)).await?;
        c.batch_execute(&sql)
            .await
            .with_context(|| format!("creating the database role {}", role.name))?;
        Ok(())
    }

    /// Applies `init-db.sql` (idempotent) and checks that both hypertables exist.
    pub async fn apply_schema(&self) -> Result<Vec<String>> {
        let c = self.connect(Duration::from_secs(10)).await?;
        c.batch_execute(&schema::init_db_sql()).await.context("applying init-db.sql")?;
        let rows = c
            .query(
                "SELECT hypertable_name::text FROM timescaledb_information.hypertables ORDER BY 1",
                &[],
            )
            .await
            .context("reading timescaledb_information.hypertables")?;
        let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for t in schema::TABLES {
            if !found.iter().any(|f| f == t.name) {
                bail!(
                    "table {} is not a hypertable after applying init-db.sql (found: {found:?})",
                    t.name
                );
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
    let mut stats = TableStats {
        table: t.name.into(),
        rows: row.get(0),
        rows_exact: false,
        newest: row.get(1),
        chunks: row.get(2),
    };
    if stats.rows < EXACT_BELOW {
        stats.rows = client
            .query_one(&format!("SELECT count(*) FROM {}", t.name), &[])
            .await
            .with_context(|| format!("counting {}", t.name))?
            .get(0);
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

/// Runs a connection's I/O in the background for as long as its client lives.
fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("database connection closed: {e}");
        }
    });
}

/// rustls settings for the two encrypted modes.
mod tls {
    use std::{path::Path, sync::Arc};

    use anyhow::{Context, Result};
    use rustls::{
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
        pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
        ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    };

    use super::SslMode;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        Ok(match mode {
            SslMode::VerifyFull => {
                let mut roots = RootCertStore::empty();
                match root_cert {
                    Some(path) => {
                        for cert in CertificateDer::pem_file_iter(path)
                            .with_context(|| format!("reading sslrootcert {}", path.display()))?
                        {
                            roots
                                .add(cert.with_context(|| {
                                    format!("a certificate in {}", path.display())
                                })?)
                                .context("adding the root certificate")?;
                        }
                    }
                    None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
                .with_no_client_auth(),
        })
    }

    /// sslmode=require: encryption without checking who answers, as libpq does it. The
    /// handshake's signatures are still verified.
    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
