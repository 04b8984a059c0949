//! Turning driver and pool errors into [`cairn_checkpoint::Error`]s that say what happened
//! and what to do.

use std::error::Error as _;

use cairn_checkpoint::Error;
use deadpool_postgres::{PoolError, TimeoutType};

/// The backend name every error of this crate carries.
pub(crate) const BACKEND: &str = "postgres";

/// SQLSTATE classes and codes that mean the connection is gone (not the statement wrong).
pub(crate) fn means_connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // 57P01 admin_shutdown (pg_terminate_backend), 57P02 crash_shutdown,
        // 57P03 cannot_connect_now, class 08 connection exceptions.
        Some(db) => {
            let code = db.code().code();
            code.starts_with("57P") || code.starts_with("08")
        }
        // I/O errors while talking to the server.
        None => e.source().is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// A driver error, with the server's message, detail and hint spelled out (the driver's own
/// `Display` only says "db error").
pub(crate) fn pg_error(context: &str, e: tokio_postgres::Error) -> Error {
    let mut message = match e.as_db_error() {
        Some(db) => {
            let mut m = format!(
                "{context}: {} (SQLSTATE {})",
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                m.push_str("; detail: ");
                m.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                m.push_str("; hint: ");
                m.push_str(hint);
            }
            m
        }
        None => match e.source() {
            Some(source) => format!("{context}: {e}: {source}"),
            None => format!("{context}: {e}"),
        },
    };
    if means_connection_lost(&e) {
        message.push_str(
            "; the connection to the server was lost: the pool discards it and the next call \
             uses a fresh connection, so retrying is safe (every saver write is idempotent)",
        );
    }
    Error::Backend {
        backend: BACKEND,
        message,
        source: Some(Box::new(e)),
    }
}

/// An error getting a connection out of the pool.
pub(crate) fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Backend(inner) => pg_error(
            "could not connect to the server (check the URL, credentials and that the server is up)",
            inner,
        ),
        PoolError::Timeout(TimeoutType::Wait) => Error::Backend {
            backend: BACKEND,
            message: "timed out waiting for a free pooled connection; raise \
                      PostgresOptions::max_size or wait_timeout, or make fewer concurrent calls"
                .into(),
            source: Some(Box::new(e)),
        },
        PoolError::Timeout(TimeoutType::Create) => Error::Backend {
            backend: BACKEND,
            message: "timed out connecting to the server (PostgresOptions::connect_timeout); \
                      check the host, port and network"
                .into(),
            source: Some(Box::new(e)),
        },
        other => Error::Backend {
            backend: BACKEND,
            message: format!("could not get a pooled connection: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

/// A saver call given text PostgreSQL cannot store.
pub(crate) fn check_text(what: &str, s: &str) -> Result<(), Error> {
    if s.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{what} {s:?} contains a NUL character, which PostgreSQL text cannot store"
        )));
    }
    Ok(())
}

/// Like [`check_text`] for every string and key inside a JSON value (jsonb rejects `\u0000`).
pub(crate) fn check_json(what: &str, v: &serde_json::Value) -> Result<(), Error> {
    match v {
        serde_json::Value::String(s) => check_text(what, s),
        serde_json::Value::Array(items) => items.iter().try_for_each(|i| check_json(what, i)),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, i)| {
            check_text(what, k)?;
            check_json(what, i)
        }),
        _ => Ok(()),
    }
}
