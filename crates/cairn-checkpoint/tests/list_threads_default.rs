//! The trait's default `list_threads` pages through `list`; page boundaries fall among
//! checkpoint ids shared by several threads (`copy_thread` keeps ids) and must not skip any.
//! The in-memory saver's own `list_threads` reads the index instead: a thread with a damaged
//! value does not fail the listing.

use async_trait::async_trait;
use cairn_checkpoint::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointSource, CheckpointTuple, InMemorySaver, ListQuery, PruneStrategy,
    Result, TypedValue, ValueCodec,
};

/// The in-memory saver behind only the trait's required methods, so that `list_threads` is
/// the trait's default.
struct OnTheDefault(InMemorySaver);

#[async_trait]
impl CheckpointSaver for OnTheDefault {
    async fn get_tuple(&self, config: &CheckpointConfig) -> Result<Option<CheckpointTuple>> {
        self.0.get_tuple(config).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<CheckpointTuple>> {
        self.0.list(query).await
    }
    async fn put(
        &self,
        config: &CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        self.0.put(config, checkpoint, metadata, new_versions).await
    }
    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> Result<()> {
        self.0.put_writes(config, writes, task_id, task_path).await
    }
    async fn delete_thread(&self, thread_id: &str) -> Result<()> {
        self.0.delete_thread(thread_id).await
    }
    async fn copy_thread(&self, source: &str, target: &str) -> Result<()> {
        self.0.copy_thread(source, target).await
    }
    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()> {
        self.0.prune(thread_ids, strategy).await
    }
    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()> {
        self.0.delete_for_runs(run_ids).await
    }
}

/// Threads t0, t1, t2 of 300 checkpoints each, sharing ids; the last config of t1.
async fn three_threads(saver: &dyn CheckpointSaver) -> CheckpointConfig {
    let mut config = CheckpointConfig::thread("t1");
    for step in 0..300 {
        config = saver
            .put(
                &config,
                Checkpoint::new(),
                CheckpointMetadata::new(CheckpointSource::Loop, step),
                Default::default(),
            )
            .await
            .unwrap();
    }
    saver.copy_thread("t1", "t2").await.unwrap();
    saver.copy_thread("t1", "t0").await.unwrap();
    config
}

async fn lists_three_threads(saver: &dyn CheckpointSaver) {
    let config = three_threads(saver).await;
    let all = saver.list_threads(None, 10).await.unwrap();
    let names: Vec<&str> = all.iter().map(|t| t.thread_id.as_str()).collect();
    assert_eq!(names, ["t0", "t1", "t2"]);
    for t in &all {
        assert_eq!(t.checkpoints, 300, "{}", t.thread_id);
        assert_eq!(t.namespaces, [""]);
        assert_eq!(t.latest.config.checkpoint_id, config.checkpoint_id);
        assert_eq!(t.latest.metadata.step, Some(299));
    }
    let page = saver.list_threads(Some("t0"), 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].thread_id, "t1");
    assert!(saver.list_threads(Some("t2"), 5).await.unwrap().is_empty());
}

#[tokio::test]
async fn default_list_threads_counts_across_page_boundaries() {
    lists_three_threads(&OnTheDefault(InMemorySaver::new())).await;
}

#[tokio::test]
async fn the_in_memory_list_threads_agrees_with_the_default() {
    let own = InMemorySaver::new();
    let default = OnTheDefault(InMemorySaver::new());
    lists_three_threads(&own).await;
    lists_three_threads(&default).await;
    // With namespaces and a thread only in a subgraph namespace.
    for saver in [&own as &dyn CheckpointSaver, &default] {
        saver
            .put(
                &CheckpointConfig::thread("t1").with_ns("sub:1"),
                Checkpoint::new(),
                CheckpointMetadata::new(CheckpointSource::Loop, 0),
                Default::default(),
            )
            .await
            .unwrap();
        saver
            .put(
                &CheckpointConfig::thread("t3").with_ns("sub:2"),
                Checkpoint::new(),
                CheckpointMetadata::new(CheckpointSource::Loop, 0),
                Default::default(),
            )
            .await
            .unwrap();
    }
    let (a, b) = (
        own.list_threads(None, 10).await.unwrap(),
        default.list_threads(None, 10).await.unwrap(),
    );
    assert_eq!(a.len(), 4);
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.thread_id, b.thread_id);
        assert_eq!(a.checkpoints, b.checkpoints);
        assert_eq!(a.namespaces, b.namespaces);
        // The two savers were given checkpoints of their own ids: the same namespace.
        assert_eq!(a.latest.config.checkpoint_ns, b.latest.config.checkpoint_ns);
        assert_eq!(a.latest.metadata, b.latest.metadata);
    }
}

#[tokio::test]
async fn a_damaged_value_does_not_fail_the_in_memory_listing() {
    let saver = InMemorySaver::new();
    let codec = ValueCodec::default();
    let missing = ChannelVersion::first_after(None);
    let version = ChannelVersion::first_after(Some(&missing));
    let mut cp = Checkpoint::new();
    cp.channel_values.insert(
        "messages".into(),
        codec.encode_append(&missing, ["x"].iter()).unwrap(),
    );
    cp.channel_versions
        .insert("messages".into(), version.clone());
    saver
        .put(
            &CheckpointConfig::thread("damaged"),
            cp,
            CheckpointMetadata::new(CheckpointSource::Loop, 0),
            [("messages".to_owned(), version)].into(),
        )
        .await
        .unwrap();
    saver
        .put(
            &CheckpointConfig::thread("fine"),
            Checkpoint::new(),
            CheckpointMetadata::new(CheckpointSource::Loop, 0),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(saver.list(&ListQuery::thread("damaged")).await.is_err());
    let listed = saver.list_threads(None, 10).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.thread_id.as_str()).collect();
    assert_eq!(names, ["damaged", "fine"]);
}
