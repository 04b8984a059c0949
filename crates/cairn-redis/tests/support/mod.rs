//! What the Redis tests share: the server URL from the environment and a key prefix unique
//! to this test process, so runs never see each other's data.

#![allow(dead_code)] // each test file uses a different part

use std::sync::{Once, OnceLock};
use std::time::Duration;

use cairn_redis::{RedisOptions, RedisSaver};

/// `CAIRN_TEST_REDIS_URL`, or `None` (after a one-line notice) when it is unset; panics when
/// it is unset but `CAIRN_REQUIRE_SERVERS=1`.
pub fn url() -> Option<String> {
    match std::env::var("CAIRN_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CAIRN_REQUIRE_SERVERS").as_deref() == Ok("1") {
                panic!(
                    "CAIRN_REQUIRE_SERVERS=1 but CAIRN_TEST_REDIS_URL is not set: \
                     set CAIRN_TEST_REDIS_URL=redis://127.0.0.1:6379/"
                );
            }
            static NOTICE: Once = Once::new();
            // Written to stderr directly: the test harness captures `eprintln!`.
            NOTICE.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping Redis tests: set CAIRN_TEST_REDIS_URL=redis://127.0.0.1:6379/"
                );
            });
            None
        }
    }
}

/// A key prefix unique to this test process (and to `suffix`).
pub fn prefix(suffix: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(|| format!("cairn-test-{}", uuid::Uuid::new_v4().simple()));
    format!("{run}-{suffix}")
}

/// Options under this process's prefix for `suffix`.
pub fn options(suffix: &str) -> RedisOptions {
    RedisOptions::default().with_key_prefix(prefix(suffix))
}

/// A saver with `options`; `None` when no server is configured; panics when the configured
/// server cannot be reached.
pub async fn saver(options: RedisOptions) -> Option<RedisSaver> {
    let url = url()?;
    Some(
        RedisSaver::connect_with(&url, options)
            .await
            .unwrap_or_else(|e| {
                panic!("CAIRN_TEST_REDIS_URL={url} is set but connecting failed: {e}")
            }),
    )
}

/// A plain connection for raw commands (inspecting and damaging stored data).
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// Deletes every key under `prefix` (test cleanup).
pub async fn delete_prefix(url: &str, prefix: &str) {
    let mut conn = raw(url).await;
    for pattern in [format!("{prefix}:*"), format!("{{{prefix}:*")] {
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("scan");
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .expect("del");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// A TTL long enough never to fire during a test run, short enough to clean up after it.
pub const TEST_TTL: Duration = Duration::from_secs(3600);

/// Sets every key of `keys` to expire in `ms` milliseconds.
pub async fn expire_in<'k>(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: impl Iterator<Item = &'k String>,
    ms: u64,
) {
    for key in keys {
        let _: () = redis::cmd("PEXPIRE")
            .arg(key)
            .arg(ms)
            .query_async(conn)
            .await
            .expect("PEXPIRE");
    }
}
