//! Helpers for a backend's own tests: one checkpoint holding one channel, and a list channel
//! read back. They panic with the failing call on error, as the cases do.

use crate::{
    ChannelVersion, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver,
    CheckpointSource, TypedValue, ValueCodec,
};

/// Stores a checkpoint after `parent` whose only value is `channel` = `value` at `version`
/// (metadata: a loop step 0 of run `run_id`); returns its config.
pub async fn put_channel(
    saver: &dyn CheckpointSaver,
    parent: &CheckpointConfig,
    channel: &str,
    version: &ChannelVersion,
    value: TypedValue,
    run_id: &str,
) -> CheckpointConfig {
    let mut cp = Checkpoint::new();
    cp.channel_values.insert(channel.into(), value);
    cp.channel_versions.insert(channel.into(), version.clone());
    let meta = CheckpointMetadata::new(CheckpointSource::Loop, 0).with_run_id(run_id);
    match saver
        .put(
            parent,
            cp,
            meta,
            [(channel.to_owned(), version.clone())].into(),
        )
        .await
    {
        Ok(stored) => stored,
        Err(e) => panic!("put of {channel} version {version} failed: {e}"),
    }
}

/// The list of strings `channel` of the checkpoint `config` names reads back as (decoded with
/// the default codec).
pub async fn read_list(
    saver: &dyn CheckpointSaver,
    config: &CheckpointConfig,
    channel: &str,
) -> Vec<String> {
    let tuple = match saver.get_tuple(config).await {
        Ok(Some(tuple)) => tuple,
        Ok(None) => panic!("no checkpoint for {config:?}"),
        Err(e) => panic!("get_tuple({config:?}) failed: {e}"),
    };
    match tuple.channel_value(&ValueCodec::default(), channel) {
        Ok(Some(list)) => list,
        Ok(None) => panic!("{config:?} holds no value for {channel}"),
        Err(e) => panic!("decoding {channel} of {config:?} failed: {e}"),
    }
}
