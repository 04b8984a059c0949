//! The conformance kit against the reference in-memory saver.
//!
//! One shared saver for every case, as a backend over one shared database would be: the cases
//! must stay out of each other's way.

use std::sync::{Arc, OnceLock};

use cairn_checkpoint::{CheckpointSaver, InMemorySaver};

static SHARED: OnceLock<Arc<InMemorySaver>> = OnceLock::new();

async fn shared_saver() -> Option<Arc<dyn CheckpointSaver>> {
    let saver = SHARED
        .get_or_init(|| Arc::new(InMemorySaver::new()))
        .clone();
    Some(saver)
}

async fn fresh_saver() -> Option<Arc<dyn CheckpointSaver>> {
    Some(Arc::new(InMemorySaver::new()))
}

mod conformance {
    cairn_checkpoint::conformance_tests!(super::shared_saver);
}

mod fresh {
    cairn_checkpoint::conformance_tests!(super::fresh_saver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_on_one_saver() {
    cairn_checkpoint::conformance::run_all(Arc::new(InMemorySaver::new())).await;
}

#[test]
fn every_case_is_listed_once() {
    let cases = cairn_checkpoint::conformance::cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "a case is listed twice");
    assert!(cases.len() >= 81, "the kit covers LangGraph's 81 cases");
}
