//! The shared conformance kit against a real PostgreSQL server, with prepared statements on
//! and off. Every case of one test process shares one fresh schema (cases isolate themselves
//! by id); each case gets its own saver, since each `#[tokio::test]` has its own runtime and a
//! pool's connections are bound to the runtime that opened them. The shared schema is left
//! behind when the run ends; the next run drops test schemas older than an hour.

mod support;

use std::sync::Arc;

use cairn_checkpoint::CheckpointSaver;

async fn make(prepared: bool) -> Option<Arc<dyn CheckpointSaver>> {
    let url = support::url()?;
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| support::sweep_stale_schemas(&url))
        .await;
    let saver = support::options(&url, support::process_schema_name())
        .prepared_statements(prepared)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("CAIRN_TEST_POSTGRES_URL is set but connecting failed: {e}"));
    Some(Arc::new(saver))
}

async fn make_prepared() -> Option<Arc<dyn CheckpointSaver>> {
    make(true).await
}

async fn make_unprepared() -> Option<Arc<dyn CheckpointSaver>> {
    make(false).await
}

mod prepared {
    cairn_checkpoint::conformance_tests!(super::make_prepared);
}

mod unprepared {
    cairn_checkpoint::conformance_tests!(super::make_unprepared);
}
