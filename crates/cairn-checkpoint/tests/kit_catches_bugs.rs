//! The kit is only worth something if it fails on broken savers. Each test here wraps the
//! in-memory saver with one deliberate bug and checks the cases that pin that behaviour fail.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_checkpoint::conformance::{cases, SaverHandle};
use cairn_checkpoint::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointTuple, InMemorySaver, ListQuery, PruneStrategy, Result, TypedValue,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bug {
    None,
    GetFallsBackToLatest,
    ListIgnoresBefore,
    ListOldestFirst,
    DropsTaskPath,
    IntVersionsBecomeStrings,
    KeepLatestDeletesAll,
    DeleteForRunsDoesNothing,
    CopyThreadDoesNothing,
}

struct Broken {
    inner: InMemorySaver,
    bug: Bug,
}

fn stringify(versions: ChannelVersions) -> ChannelVersions {
    versions
        .into_iter()
        .map(|(k, v)| (k, ChannelVersion::Str(v.to_string())))
        .collect()
}

#[async_trait]
impl CheckpointSaver for Broken {
    async fn get_tuple(&self, config: &CheckpointConfig) -> Result<Option<CheckpointTuple>> {
        let found = self.inner.get_tuple(config).await?;
        if found.is_none() && self.bug == Bug::GetFallsBackToLatest {
            let latest = CheckpointConfig {
                checkpoint_id: None,
                ..config.clone()
            };
            return self.inner.get_tuple(&latest).await;
        }
        Ok(found)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<CheckpointTuple>> {
        let mut query = query.clone();
        if self.bug == Bug::ListIgnoresBefore {
            query.before = None;
        }
        let mut listed = self.inner.list(&query).await?;
        if self.bug == Bug::ListOldestFirst {
            listed.reverse();
        }
        Ok(listed)
    }

    async fn put(
        &self,
        config: &CheckpointConfig,
        mut checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        mut new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        if self.bug == Bug::IntVersionsBecomeStrings {
            checkpoint.channel_versions = stringify(checkpoint.channel_versions);
            new_versions = stringify(new_versions);
        }
        self.inner
            .put(config, checkpoint, metadata, new_versions)
            .await
    }

    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> Result<()> {
        let task_path = if self.bug == Bug::DropsTaskPath {
            ""
        } else {
            task_path
        };
        self.inner
            .put_writes(config, writes, task_id, task_path)
            .await
    }

    async fn delete_thread(&self, thread_id: &str) -> Result<()> {
        self.inner.delete_thread(thread_id).await
    }

    async fn copy_thread(&self, source: &str, target: &str) -> Result<()> {
        if self.bug == Bug::CopyThreadDoesNothing {
            return Ok(());
        }
        self.inner.copy_thread(source, target).await
    }

    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()> {
        let strategy = if self.bug == Bug::KeepLatestDeletesAll {
            PruneStrategy::Delete
        } else {
            strategy
        };
        self.inner.prune(thread_ids, strategy).await
    }

    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()> {
        if self.bug == Bug::DeleteForRunsDoesNothing {
            return Ok(());
        }
        self.inner.delete_for_runs(run_ids).await
    }
}

/// Runs the named cases against a saver with `bug`; returns the names of those that passed.
async fn passing(bug: Bug, names: &[&str]) -> Vec<String> {
    let saver: SaverHandle = Arc::new(Broken {
        inner: InMemorySaver::new(),
        bug,
    });
    let mut passed = Vec::new();
    for name in names {
        let case = cases()
            .iter()
            .find(|c| c.name == *name)
            .unwrap_or_else(|| panic!("no case named {name}"));
        if tokio::spawn((case.run)(saver.clone())).await.is_ok() {
            passed.push((*name).to_owned());
        }
    }
    passed
}

async fn assert_caught(bug: Bug, names: &[&str]) {
    let passed = passing(bug, names).await;
    assert!(passed.is_empty(), "{bug:?} went unnoticed by {passed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_without_a_bug_passes() {
    let names: Vec<&str> = cases().iter().map(|c| c.name).collect();
    assert_eq!(passing(Bug::None, &names).await.len(), names.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_get_tuple_falling_back_to_latest() {
    assert_caught(
        Bug::GetFallsBackToLatest,
        &[
            "get_tuple_nonexistent_checkpoint_id",
            "get_tuple_unknown_checkpoint_id_returns_none",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_list_ignoring_before() {
    assert_caught(
        Bug::ListIgnoresBefore,
        &[
            "list_before",
            "list_limit_plus_before",
            "list_paging_covers_every_checkpoint_once",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_list_oldest_first() {
    assert_caught(
        Bug::ListOldestFirst,
        &[
            "list_ordering",
            "list_all_threads_by_metadata",
            "list_without_namespace_covers_all_namespaces",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_a_lost_task_path() {
    assert_caught(
        Bug::DropsTaskPath,
        &[
            "put_writes_task_path",
            "pending_writes_ordered_by_path_task_index",
            "copy_thread_preserves_writes",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_versions_changing_type() {
    assert_caught(
        Bug::IntVersionsBecomeStrings,
        &[
            "put_preserves_channel_versions",
            "versions_roundtrip_unchanged",
            "checkpoint_roundtrips_exactly",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_keep_latest_deleting_everything() {
    assert_caught(
        Bug::KeepLatestDeletesAll,
        &[
            "prune_keep_latest_single_thread",
            "prune_keep_latest_multiple_threads",
            "prune_keep_latest_across_namespaces",
            "prune_keep_latest_keeps_writes",
            "prune_keep_latest_keeps_values",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_delete_for_runs_doing_nothing() {
    assert_caught(
        Bug::DeleteForRunsDoesNothing,
        &[
            "delete_for_runs_single",
            "delete_for_runs_multiple",
            "delete_for_runs_preserves_other_runs",
            "delete_for_runs_removes_writes",
            "delete_for_runs_across_namespaces",
            "delete_for_runs_keeps_values_of_survivors",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_copy_thread_doing_nothing() {
    assert_caught(
        Bug::CopyThreadDoesNothing,
        &[
            "copy_thread_basic",
            "copy_thread_preserves_namespaces",
            "copy_thread_preserves_writes",
            "copy_thread_preserves_ordering",
            "copy_thread_is_independent_of_source",
            "unicode_names_roundtrip",
        ],
    )
    .await;
}
