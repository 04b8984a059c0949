//! The shared conformance kit against a real Redis server, twice: with default options (no
//! expiry) and with a TTL refreshed on read (every key expiring, reads extending it). Each
//! `#[tokio::test]` has its own runtime, so each case gets its own saver (connection
//! manager); all cases of a suite share one key prefix unique to this process, and isolate
//! themselves by thread and run ids.

mod support;

use std::sync::Arc;

use cairn_checkpoint::CheckpointSaver;

async fn make_plain() -> Option<Arc<dyn CheckpointSaver>> {
    let saver = support::saver(support::options("conformance")).await?;
    Some(Arc::new(saver))
}

async fn make_with_ttl() -> Option<Arc<dyn CheckpointSaver>> {
    let options = support::options("conformance-ttl")
        .with_ttl(support::TEST_TTL)
        .with_refresh_ttl_on_read(true);
    let saver = support::saver(options).await?;
    Some(Arc::new(saver))
}

mod plain {
    cairn_checkpoint::conformance_tests!(super::make_plain);
}

mod with_ttl {
    cairn_checkpoint::conformance_tests!(super::make_with_ttl);
}
