//! The conformance kit: one suite of behaviour every [`CheckpointSaver`] must pass.
//!
//! Each case is an async function taking `&dyn CheckpointSaver` and panicking (with a message
//! saying what went wrong) when the saver breaks the contract written on the trait. The kit
//! covers every behaviour of LangGraph's `langgraph-checkpoint-conformance` suite (put,
//! put_writes, get_tuple, list, delete_thread, delete_for_runs, copy_thread, prune) plus
//! Cairn's own cases (concurrency, large values, unicode names, exact version round-trips,
//! paging).
//!
//! # Using the kit in a backend
//!
//! Enable the `testkit` feature in the backend's dev-dependencies, write a factory and let
//! [`conformance_tests!`](crate::conformance_tests) generate one `#[tokio::test]` per case:
//!
//! ```ignore
//! // crates/cairn-foo/tests/conformance.rs
//! use std::sync::Arc;
//! use cairn_checkpoint::CheckpointSaver;
//!
//! async fn make_saver() -> Option<Arc<dyn CheckpointSaver>> {
//!     let Ok(url) = std::env::var("FOO_URL") else {
//!         eprintln!("FOO_URL not set: skipping the foo conformance tests");
//!         return None; // the case returns without running
//!     };
//!     Some(Arc::new(cairn_foo::FooSaver::connect(&url).await.expect("connect")))
//! }
//!
//! mod conformance {
//!     cairn_checkpoint::conformance_tests!(super::make_saver);
//! }
//! ```
//!
//! `cargo test` then lists each case by name (`conformance::put_roundtrip`,
//! `conformance::list_filter_multiple_keys`, ...). The crate must have `tokio` (features
//! `macros`, `rt-multi-thread`) as a dev-dependency. To run everything in one test instead,
//! call [`run_all`], which runs every case and panics with the list of failures; [`cases`]
//! gives the cases one by one.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! let saver = Arc::new(cairn_checkpoint::InMemorySaver::new());
//! cairn_checkpoint::conformance::put_roundtrip(saver.as_ref()).await;
//! cairn_checkpoint::conformance::run_all(saver).await;
//! # });
//! ```
//!
//! # Isolation: the store is shared
//!
//! A factory may hand every case a saver over the same store (one PostgreSQL database, one
//! Redis server), and the generated tests run concurrently. So each case
//!
//! * writes only to fresh thread ids (a UUID v4 in every id) and fresh run ids;
//! * when it lists across threads or deletes by run id, filters on a metadata marker of its
//!   own and asserts only about its own data (what it wrote is present, what it deleted is
//!   absent), never about the total size of the store.
//!
//! Nothing assumes the store starts empty, and nothing cleans it up: point the kit at a
//! scratch database.
//!
//! # The cases
//!
//! | group | cases |
//! |---|---|
//! | put | [`put_returns_config`], [`put_roundtrip`], [`put_preserves_channel_values`], [`put_preserves_channel_versions`], [`put_preserves_versions_seen`], [`put_preserves_metadata`], [`put_root_namespace`], [`put_child_namespace`], [`put_default_namespace`], [`put_multiple_checkpoints_same_thread`], [`put_multiple_threads_isolated`], [`put_parent_config`], [`put_incremental_channel_update`], [`put_new_channel_added`], [`put_channel_removed`], [`put_preserves_run_id`], [`put_preserves_versions_seen_values`] |
//! | put_writes | [`put_writes_basic`], [`put_writes_multiple_writes_same_task`], [`put_writes_multiple_tasks`], [`put_writes_preserves_task_id`], [`put_writes_preserves_channel_and_value`], [`put_writes_task_path`], [`put_writes_idempotent`], [`put_writes_special_channels`], [`put_writes_across_namespaces`], [`put_writes_cleared_on_next_checkpoint`] |
//! | get_tuple | [`get_tuple_nonexistent_returns_none`], [`get_tuple_latest_when_no_checkpoint_id`], [`get_tuple_specific_checkpoint_id`], [`get_tuple_config_structure`], [`get_tuple_checkpoint_fields`], [`get_tuple_metadata`], [`get_tuple_parent_config`], [`get_tuple_pending_writes`], [`get_tuple_respects_namespace`], [`get_tuple_nonexistent_checkpoint_id`] |
//! | list | [`list_all`], [`list_by_thread`], [`list_by_namespace`], [`list_ordering`], [`list_filter_single_key`], [`list_filter_step`], [`list_filter_multiple_keys`], [`list_filter_no_match`], [`list_filter_custom_keys`], [`list_filter_numbers_compare_by_value`], [`list_before`], [`list_limit`], [`list_limit_plus_before`], [`list_combined_thread_and_filter`], [`list_empty_result`], [`list_includes_pending_writes`], [`list_multiple_namespaces`] |
//! | list_threads | [`list_threads_counts_and_latest`], [`list_threads_pages_in_order`] |
//! | delete_thread | [`delete_thread_removes_checkpoints`], [`delete_thread_removes_writes`], [`delete_thread_removes_all_namespaces`], [`delete_thread_preserves_other_threads`], [`delete_thread_nonexistent_noop`] |
//! | delete_for_runs | [`delete_for_runs_single`], [`delete_for_runs_multiple`], [`delete_for_runs_preserves_other_runs`], [`delete_for_runs_removes_writes`], [`delete_for_runs_empty_list_noop`], [`delete_for_runs_nonexistent_noop`], [`delete_for_runs_across_namespaces`] |
//! | copy_thread | [`copy_thread_basic`], [`copy_thread_all_checkpoints`], [`copy_thread_preserves_metadata`], [`copy_thread_preserves_namespaces`], [`copy_thread_preserves_writes`], [`copy_thread_preserves_ordering`], [`copy_thread_source_unchanged`], [`copy_thread_nonexistent_source`], [`copy_thread_over_writes_of_the_target`] |
//! | prune | [`prune_keep_latest_single_thread`], [`prune_keep_latest_multiple_threads`], [`prune_keep_latest_across_namespaces`], [`prune_keep_latest_keeps_writes`], [`prune_delete_all`], [`prune_preserves_other_threads`], [`prune_empty_list_noop`], [`prune_nonexistent_noop`] |
//! | Cairn: concurrency | [`concurrent_threads_interleaved`] (64 threads written by interleaved futures in one task), [`concurrent_tasks_write_64_threads`] (64 tokio tasks released together; takes a [`SaverHandle`]) |
//! | Cairn: values and names | [`large_value_roundtrip`] (10 MB value and write), [`unicode_names_roundtrip`], [`versions_roundtrip_unchanged`], [`checkpoint_roundtrips_exactly`], [`metadata_roundtrips_exactly`], [`deeply_nested_metadata_is_refused_or_read_back`], [`metadata_keys_named_like_fields_are_refused`], [`namespaces_keep_their_own_values`], [`next_versions_in_a_run_move_forward`], [`raw_values_roundtrip`], [`put_channel_without_value_is_absent`] |
//! | Cairn: reads | [`get_tuple_unknown_checkpoint_id_returns_none`], [`get_tuple_known_leaves_out_only_known_values`], [`list_paging_covers_every_checkpoint_once`], [`list_all_threads_by_metadata`], [`list_without_namespace_covers_all_namespaces`], [`list_by_checkpoint_id`], [`list_limit_zero_returns_nothing`] |
//! | Cairn: writes | [`put_writes_regular_first_wins_special_last_wins`], [`pending_writes_ordered_by_path_task_index`], [`put_writes_without_checkpoint_id_is_an_error`], [`put_writes_and_put_saves_both`] |
//! | Cairn: deletion | [`delete_thread_removes_values`], [`delete_for_runs_keeps_values_of_survivors`], [`prune_keep_latest_keeps_values`], [`prune_after_every_run_is_deleted_keeps_no_values`], [`copy_thread_is_independent_of_source`] |
//! | Cairn: append values | [`append_values_read_back_whole`], [`append_values_branch_independently`], [`append_values_survive_copy_thread`], [`prune_keep_latest_keeps_append_values_whole`], [`delete_for_runs_keeps_append_chains`], [`append_value_with_missing_base_is_corrupt`] (see [`crate::AppendValue`]) |
//! | Cairn: batches | [`put_batch_stores_checkpoints_in_order`], [`put_batch_now_stores_checkpoints_in_order`], [`put_batch_stops_at_a_failing_request`], [`put_batch_matches_one_call_per_request`] (see [`CheckpointSaver::put_batch`](crate::CheckpointSaver::put_batch)) |
//! | Cairn: model | [`random_operations_match_the_model`] (random operations, every read compared with [`InMemorySaver`](crate::InMemorySaver)) |

use std::future::Future;
use std::pin::Pin;

mod append;
mod batch;
mod cairn;
mod copy_thread;
mod delete_for_runs;
mod delete_thread;
mod get_tuple;
pub mod helpers;
mod list;
mod list_threads;
mod model;
mod prune;
mod put;
mod put_writes;
mod support;

pub use append::*;
pub use batch::*;
pub use cairn::*;
pub use copy_thread::*;
pub use delete_for_runs::*;
pub use delete_thread::*;
pub use get_tuple::*;
pub use list::*;
pub use list_threads::*;
pub use model::*;
pub use prune::*;
pub use put::*;
pub use put_writes::*;

#[allow(unused_imports)] // used in the docs' links
use crate::CheckpointSaver;

/// A saver shared by the cases (and by the tasks some cases spawn).
pub type SaverHandle = std::sync::Arc<dyn crate::CheckpointSaver>;

/// The future one case returns when run through [`Case::run`].
pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One conformance case, for running the kit in a loop.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The case's name (its function's name).
    pub name: &'static str,
    /// Runs the case against a saver; panics on failure.
    pub run: fn(SaverHandle) -> CaseFuture,
}

/// Every case of the kit, in a stable order.
pub fn cases() -> &'static [Case] {
    static CASES: &[Case] = crate::__cairn_conformance_cases!(list);
    CASES
}

/// Runs every case against `saver`, one after the other, and panics listing the cases that
/// failed (each case's own panic message is printed as it happens).
pub async fn run_all(saver: SaverHandle) {
    let all = cases();
    let mut failures = Vec::new();
    for case in all {
        let outcome = tokio::spawn((case.run)(saver.clone())).await;
        if let Err(e) = outcome {
            let reason = if e.is_panic() {
                let payload = e.into_panic();
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".to_owned())
            } else {
                e.to_string()
            };
            failures.push(format!("{}: {reason}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases failed:\n  - {}",
        failures.len(),
        all.len(),
        failures.join("\n  - ")
    );
}

/// The list of cases, expanded into tests (`tests $make`) or into [`Case`]s (`list`).
///
/// Cases in the first group take `&dyn CheckpointSaver`; cases after the `;` take a
/// [`SaverHandle`] (they spawn tasks that share the saver).
#[doc(hidden)]
#[macro_export]
macro_rules! __cairn_conformance_cases {
    (@cases [tests $make:path] $($name:ident)* ; $($shared:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let ::std::option::Option::Some(saver) = $make().await {
                    $crate::conformance::$name(&*saver).await;
                }
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $shared() {
                if let ::std::option::Option::Some(saver) = $make().await {
                    $crate::conformance::$shared(saver).await;
                }
            }
        )*
    };
    (@cases [list] $($name:ident)* ; $($shared:ident)*) => {
        &[
            $(
                $crate::conformance::Case {
                    name: stringify!($name),
                    run: |saver| ::std::boxed::Box::pin(async move {
                        $crate::conformance::$name(&*saver).await
                    }),
                },
            )*
            $(
                $crate::conformance::Case {
                    name: stringify!($shared),
                    run: |saver| ::std::boxed::Box::pin($crate::conformance::$shared(saver)),
                },
            )*
        ]
    };
    ($($mode:tt)*) => {
        $crate::__cairn_conformance_cases! { @cases [$($mode)*]
            // put
            put_returns_config put_roundtrip put_preserves_channel_values
            put_preserves_channel_versions put_preserves_versions_seen put_preserves_metadata
            put_root_namespace put_child_namespace put_default_namespace
            put_multiple_checkpoints_same_thread put_multiple_threads_isolated put_parent_config
            put_incremental_channel_update put_new_channel_added put_channel_removed
            put_preserves_run_id put_preserves_versions_seen_values
            // put_writes
            put_writes_basic put_writes_multiple_writes_same_task put_writes_multiple_tasks
            put_writes_preserves_task_id put_writes_preserves_channel_and_value
            put_writes_task_path put_writes_idempotent put_writes_special_channels
            put_writes_across_namespaces put_writes_cleared_on_next_checkpoint
            // get_tuple
            get_tuple_nonexistent_returns_none get_tuple_latest_when_no_checkpoint_id
            get_tuple_specific_checkpoint_id get_tuple_config_structure
            get_tuple_checkpoint_fields get_tuple_metadata get_tuple_parent_config
            get_tuple_pending_writes get_tuple_respects_namespace
            get_tuple_nonexistent_checkpoint_id
            // list
            list_all list_by_thread list_by_namespace list_ordering list_filter_single_key
            list_filter_step list_filter_multiple_keys list_filter_no_match
            list_filter_custom_keys list_filter_numbers_compare_by_value list_before list_limit list_limit_plus_before
            list_combined_thread_and_filter list_empty_result list_includes_pending_writes
            list_multiple_namespaces
            // list_threads
            list_threads_counts_and_latest list_threads_pages_in_order
            // delete_thread
            delete_thread_removes_checkpoints delete_thread_removes_writes
            delete_thread_removes_all_namespaces delete_thread_preserves_other_threads
            delete_thread_nonexistent_noop
            // delete_for_runs
            delete_for_runs_single delete_for_runs_multiple delete_for_runs_preserves_other_runs
            delete_for_runs_removes_writes delete_for_runs_empty_list_noop
            delete_for_runs_nonexistent_noop delete_for_runs_across_namespaces
            // copy_thread
            copy_thread_basic copy_thread_all_checkpoints copy_thread_preserves_metadata
            copy_thread_preserves_namespaces copy_thread_preserves_writes
            copy_thread_preserves_ordering copy_thread_source_unchanged
            copy_thread_nonexistent_source copy_thread_over_writes_of_the_target
            // prune
            prune_keep_latest_single_thread prune_keep_latest_multiple_threads
            prune_keep_latest_across_namespaces prune_keep_latest_keeps_writes prune_delete_all
            prune_preserves_other_threads prune_empty_list_noop prune_nonexistent_noop
            // Cairn's own
            concurrent_threads_interleaved large_value_roundtrip unicode_names_roundtrip
            versions_roundtrip_unchanged get_tuple_unknown_checkpoint_id_returns_none
            list_paging_covers_every_checkpoint_once list_all_threads_by_metadata
            list_without_namespace_covers_all_namespaces list_by_checkpoint_id
            deeply_nested_metadata_is_refused_or_read_back
            metadata_keys_named_like_fields_are_refused
            namespaces_keep_their_own_values next_versions_in_a_run_move_forward
            list_limit_zero_returns_nothing put_writes_regular_first_wins_special_last_wins
            pending_writes_ordered_by_path_task_index put_writes_without_checkpoint_id_is_an_error
            put_writes_and_put_saves_both get_tuple_known_leaves_out_only_known_values
            checkpoint_roundtrips_exactly metadata_roundtrips_exactly raw_values_roundtrip
            put_channel_without_value_is_absent delete_thread_removes_values
            delete_for_runs_keeps_values_of_survivors prune_keep_latest_keeps_values
            prune_after_every_run_is_deleted_keeps_no_values
            copy_thread_is_independent_of_source random_operations_match_the_model
            // Cairn: append values
            append_values_read_back_whole append_values_branch_independently
            append_values_survive_copy_thread prune_keep_latest_keeps_append_values_whole
            delete_for_runs_keeps_append_chains append_value_with_missing_base_is_corrupt
            // Cairn: batches
            put_batch_stores_checkpoints_in_order put_batch_now_stores_checkpoints_in_order
            put_batch_stops_at_a_failing_request
            put_batch_matches_one_call_per_request
            ;
            concurrent_tasks_write_64_threads
        }
    };
}

/// Generates one `#[tokio::test]` per conformance case, each running against a saver made by
/// `$make`, an `async fn() -> Option<Arc<dyn CheckpointSaver>>`. When `$make` returns `None`
/// (the backend is not available) the test returns without checking anything; the factory
/// says why.
///
/// Invoke it inside a module of a test crate that has `tokio` (features `macros`,
/// `rt-multi-thread`) as a dependency:
///
/// ```ignore
/// mod conformance {
///     cairn_checkpoint::conformance_tests!(super::make_saver);
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::__cairn_conformance_cases! { tests $make }
    };
}
