//! Shared by the integration tests: which server to use, and a fresh schema per test run.
//!
//! * `CAIRN_TEST_POSTGRES_URL` unset: the tests are skipped with a one-line notice, unless
//!   `CAIRN_REQUIRE_SERVERS=1`, which turns the skip into a failure (CI sets it).
//! * Set but unreachable: the tests fail (whoever set the URL wants the tests run).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::sync::OnceLock;

use cairn_postgres::{PostgresOptions, PostgresSaver};

const URL_VAR: &str = "CAIRN_TEST_POSTGRES_URL";

/// The test server's URL, or `None` to skip (after printing why, once per process).
pub fn url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CAIRN_REQUIRE_SERVERS").as_deref() == Ok("1") {
                panic!(
                    "CAIRN_REQUIRE_SERVERS=1 but {URL_VAR} is not set; set it, e.g. \
                     {URL_VAR}=postgres://postgres@127.0.0.1:5432/cairn_test"
                );
            }
            static NOTICE: OnceLock<()> = OnceLock::new();
            NOTICE.get_or_init(|| {
                eprintln!(
                    "skipping PostgreSQL tests: set \
                     {URL_VAR}=postgres://postgres@127.0.0.1:5432/<db>"
                )
            });
            None
        }
    }
}

/// A schema name no other test run uses.
pub fn fresh_schema_name() -> String {
    format!("cairn_test_{}", uuid::Uuid::new_v4().simple())
}

/// One schema for the whole test process (the conformance cases isolate themselves by id).
pub fn process_schema_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(fresh_schema_name)
}

/// Options for the test server in `schema`.
pub fn options(url: &str, schema: &str) -> PostgresOptions {
    PostgresOptions::new(url).schema(schema).max_size(8)
}

/// A saver over a fresh schema, with the schema's name; `None` to skip.
pub async fn fresh_saver() -> Option<(PostgresSaver, String)> {
    let url = url()?;
    let schema = fresh_schema_name();
    let saver = options(&url, &schema)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{URL_VAR} is set but connecting failed: {e}"));
    Some((saver, schema))
}

/// A plain connection to the test server, for checks behind the saver's back.
pub async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{URL_VAR} is set but connecting failed: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Drops a test schema and everything in it.
pub async fn drop_schema(url: &str, schema: &str) {
    admin_client(url)
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop the test schema");
}
