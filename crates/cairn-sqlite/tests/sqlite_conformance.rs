//! The shared conformance kit, against a database file and an in-memory database.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cairn_checkpoint::CheckpointSaver;
use cairn_sqlite::SqliteSaver;

/// One database file for every case of this binary: each case opens its own `SqliteSaver`
/// on it, so the cases also exercise several savers (as several processes would) sharing
/// one file concurrently. The temporary directory lives as long as the test process.
fn shared_file() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("conformance.db");
        std::mem::forget(dir);
        path
    })
}

async fn make_file() -> Option<Arc<dyn CheckpointSaver>> {
    Some(Arc::new(
        SqliteSaver::open(shared_file()).expect("open the database file"),
    ))
}

async fn make_memory() -> Option<Arc<dyn CheckpointSaver>> {
    Some(Arc::new(
        SqliteSaver::in_memory().expect("open an in-memory database"),
    ))
}

mod file {
    cairn_checkpoint::conformance_tests!(super::make_file);
}

mod memory {
    cairn_checkpoint::conformance_tests!(super::make_memory);
}
