//! Connections to the database server: plain on loopback or a private network, or TLS
//! (rustls) verifying the server's certificate against a given CA bundle, as managed
//! instances require.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::SslMode;
use postgres::{Client, Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// How connections reach the server.
#[derive(Clone)]
pub enum Transport {
    Plain,
    /// TLS, the server's certificate verified (chain and host name) against these roots.
    Tls(MakeRustlsConnect),
}

impl Transport {
    /// TLS with the CA certificates of a PEM file (the provider's bundle, or the CA that
    /// signed the node's own server certificate).
    pub fn tls_with_ca(ca_pem: &Path) -> Result<Transport, StoreError> {
        let unreadable = |e: String| StoreError::TlsSetup(format!("{}: {e}", ca_pem.display()));
        let pem = std::fs::read(ca_pem).map_err(|e| unreadable(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| unreadable(e.to_string()))?;
            roots.add(cert).map_err(|e| unreadable(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(unreadable("no certificate in the file".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| unreadable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Transport::Tls(MakeRustlsConnect::new(config)))
    }

    /// The connection settings with the TLS mode this transport needs: TLS is required
    /// when configured, never attempted otherwise (and a connection string asking for
    /// it without a CA to verify the server by is refused rather than downgraded).
    fn configure(&self, config: &Config) -> Result<Config, StoreError> {
        let mut config = config.clone();
        match self {
            Transport::Plain if config.get_ssl_mode() == SslMode::Require => {
                return Err(StoreError::TlsSetup(
                    "sslmode=require needs the CA of the database server (--db-ca)".into(),
                ))
            }
            Transport::Plain => config.ssl_mode(SslMode::Disable),
            Transport::Tls(_) => config.ssl_mode(SslMode::Require),
        };
        Ok(config)
    }

    pub fn connect(&self, config: &Config) -> Result<Client, StoreError> {
        let config = self.configure(config)?;
        Ok(match self {
            Transport::Plain => config.connect(NoTls)?,
            Transport::Tls(tls) => config.connect(tls.clone())?,
        })
    }

    pub fn pool(&self, config: &Config, size: u32) -> Result<Pool, StoreError> {
        let config = self.configure(config)?;
        fn build<M: r2d2::ManageConnection>(
            manager: M,
            size: u32,
        ) -> Result<r2d2::Pool<M>, r2d2::Error> {
            r2d2::Pool::builder()
                .max_size(size.max(1))
                .min_idle(Some(1))
                // A broken connection is noticed when it is returned; checking each one
                // out with a round trip would cost every request a query.
                .test_on_check_out(false)
                .connection_timeout(Duration::from_secs(10))
                .build(manager)
        }
        Ok(match self {
            Transport::Plain => {
                Pool::Plain(build(PostgresConnectionManager::new(config, NoTls), size)?)
            }
            Transport::Tls(tls) => Pool::Tls(build(
                PostgresConnectionManager::new(config, tls.clone()),
                size,
            )?),
        })
    }
}

pub enum Pool {
    Plain(r2d2::Pool<PostgresConnectionManager<NoTls>>),
    Tls(r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>),
}

impl Pool {
    pub fn get(&self) -> Result<Connection, StoreError> {
        Ok(match self {
            Pool::Plain(pool) => Connection::Plain(pool.get()?),
            Pool::Tls(pool) => Connection::Tls(pool.get()?),
        })
    }
}

/// A pooled connection, returned to the pool when dropped.
pub enum Connection {
    Plain(r2d2::PooledConnection<PostgresConnectionManager<NoTls>>),
    Tls(r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>),
}

impl Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        match self {
            Connection::Plain(c) => c,
            Connection::Tls(c) => c,
        }
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Client {
        match self {
            Connection::Plain(c) => c,
            Connection::Tls(c) => c,
        }
    }
}
