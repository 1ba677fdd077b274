//! What the PostgreSQL source (`source/postgres.rs`) and target
//! (`sink/postgres/`) have in common: connections, errors, type mapping;
//! all over tokio-postgres with binary COPY. The shared state store is in
//! the core crate (`backfill_core::state::postgres`), beside SQLite's, and
//! describes and classifies errors for all three.
//!
//! Connections speak TLS as libpq's `sslmode` asks (`backfill_core::pgtls`).
//! Connection strings are secrets: messages show them through
//! [`mask_url`](backfill_core::spec::mask_url) only, and tokio-postgres's own
//! errors never contain them.

pub mod types;

use backfill_core::ErrorClass;
use backfill_core::pgtls::SetupError;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

pub use backfill_core::spec::quote_ident;
pub(crate) use backfill_core::state::postgres::{describe, is_transient};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to {shown}: {}", describe(source))]
    Connect {
        shown: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what}: {}", describe(source))]
    Sql {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what}: column \"{column}\": {reason}")]
    Column {
        what: String,
        column: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl PgError {
    pub fn sql(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let what = what.into();
        move |source| PgError::Sql { what, source }
    }

    /// Connection trouble, serialization failures, deadlocks and resource
    /// shortages are worth a retry; everything else is the job's fault.
    pub fn class(&self) -> ErrorClass {
        match self {
            PgError::Connect { source, .. } | PgError::Sql { source, .. } => {
                if is_transient(source) {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            }
            _ => ErrorClass::Permanent,
        }
    }

    /// A wrong password, an unknown database or a refused connection at the
    /// start are fixed in the job file or the environment, not by retrying.
    pub fn is_configuration(&self) -> bool {
        match self {
            PgError::Connect { source, .. } if backfill_core::pgtls::is_tls_refusal(source) => true,
            PgError::Connect { source, .. } => matches!(
                source.code(),
                Some(c) if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    || *c == SqlState::INVALID_CATALOG_NAME
            ),
            PgError::Sql { source, .. } => matches!(
                source.code(),
                Some(c) if *c == SqlState::UNDEFINED_TABLE
                    || *c == SqlState::UNDEFINED_COLUMN
                    || *c == SqlState::INVALID_SCHEMA_NAME
                    || *c == SqlState::SYNTAX_ERROR
                    || *c == SqlState::INSUFFICIENT_PRIVILEGE
            ),
            PgError::Column { .. } | PgError::Invalid(_) => true,
        }
    }
}

/// Opens a connection; its driver task ends when the client is dropped.
/// Sessions run in UTC so `timestamptz` values and range literals agree, and
/// with `standard_conforming_strings` on, which [`quote_literal`] relies on
/// (off, a backslash in a literal would start an escape).
pub async fn connect(url: &str, shown: &str) -> Result<Client, PgError> {
    let connect_error = |source| PgError::Connect {
        shown: shown.to_string(),
        source,
    };
    let prepared = backfill_core::pgtls::prepare(url).map_err(|e| match e {
        SetupError::Config(source) => connect_error(source),
        SetupError::Tls(message) => {
            PgError::Invalid(format!("cannot connect to {shown}: {message}"))
        }
    })?;
    let (client, connection) = prepared
        .config
        .connect(prepared.tls)
        .await
        .map_err(connect_error)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection closed: {e}");
        }
    });
    client
        .batch_execute(
            "SET TIME ZONE 'UTC'; SET application_name = 'backfill'; \
             SET standard_conforming_strings = on",
        )
        .await
        .map_err(PgError::sql("setting up the session"))?;
    Ok(client)
}

/// A SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
