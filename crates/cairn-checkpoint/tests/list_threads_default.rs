//! The trait's default `list_threads` pages through `list`; page boundaries fall among
//! checkpoint ids shared by several threads (`copy_thread` keeps ids) and must not skip any.

use cairn_checkpoint::{
    Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver, CheckpointSource,
    InMemorySaver,
};

#[tokio::test]
async fn default_list_threads_counts_across_page_boundaries() {
    let saver = InMemorySaver::new();
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
