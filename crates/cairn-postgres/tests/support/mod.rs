//! Shared by the integration tests: which server to use, and a fresh schema per test run.
//!
//! * `CAIRN_TEST_POSTGRES_URL` unset: the tests are skipped with a one-line notice, unless
//!   `CAIRN_REQUIRE_SERVERS=1`, which turns the skip into a failure (CI sets it).
//! * Set but unreachable: the tests fail (whoever set the URL wants the tests run).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

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
                // Written to the stderr handle, not with eprintln!, which the test harness
                // captures and hides for passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping PostgreSQL tests: set \
                     {URL_VAR}=postgres://postgres@127.0.0.1:5432/<db>"
                );
            });
            None
        }
    }
}

const SCHEMA_PREFIX: &str = "cairn_test_";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A schema name no other test run uses: `cairn_test_<unix seconds>_<uuid>`.
pub fn fresh_schema_name() -> String {
    format!(
        "{SCHEMA_PREFIX}{}_{}",
        unix_now(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Drops test schemas more than an hour old: the schema the conformance cases share cannot
/// be dropped when the last case ends (nothing runs then), so the next run sweeps it.
pub async fn sweep_stale_schemas(url: &str) {
    let admin = admin_client(url).await;
    let rows = admin
        .query(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
            &[&SCHEMA_PREFIX],
        )
        .await
        .expect("list test schemas");
    let cutoff = unix_now().saturating_sub(3600);
    for row in rows {
        let name: String = row.get(0);
        let created = name[SCHEMA_PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|t| t < cutoff) {
            // Another run may be sweeping the same schema: ignore its errors.
            let _ = admin
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await;
        }
    }
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
