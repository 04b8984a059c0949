//! # cairn-checkpoint
//!
//! The checkpoint store core of Cairn: the data model ([`Checkpoint`], [`CheckpointMetadata`],
//! [`CheckpointTuple`], [`CheckpointConfig`], [`ChannelVersion`], [`PendingWrite`]), the
//! [`CheckpointSaver`] contract every backend implements, value codecs ([`ValueCodec`]), the
//! reference [`InMemorySaver`] and, behind the `testkit` feature, the conformance kit every
//! backend's tests run.
//!
//! ```
//! use cairn_checkpoint::*;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let saver = InMemorySaver::new();
//! let codec = ValueCodec::default();
//! let thread = CheckpointConfig::thread("chat-42");
//!
//! // Save two checkpoints; the second changes only `messages`.
//! let mut cp = Checkpoint::new();
//! let v1 = saver.get_next_version(None);
//! cp.channel_values.insert("messages".into(), codec.encode(&["hi"])?);
//! cp.channel_versions.insert("messages".into(), v1.clone());
//! let first = saver.put(&thread, cp.clone(), CheckpointMetadata::new(CheckpointSource::Input, -1),
//!                       [("messages".to_string(), v1.clone())].into()).await?;
//! let mut next = cp.successor();
//! let v2 = saver.get_next_version(Some(&v1));
//! next.channel_values.insert("messages".into(), codec.encode(&["hi", "hello!"])?);
//! next.channel_versions.insert("messages".into(), v2.clone());
//! saver.put(&first, next, CheckpointMetadata::new(CheckpointSource::Loop, 0),
//!           [("messages".to_string(), v2)].into()).await?;
//!
//! // The latest checkpoint, its parent, and the history newest first.
//! let latest = saver.get_tuple(&thread).await?.expect("saved");
//! assert_eq!(latest.channel_value::<Vec<String>>(&codec, "messages")?.unwrap().len(), 2);
//! assert_eq!(latest.parent_config, Some(first));
//! let history = saver.list(&ListQuery::thread("chat-42")).await?;
//! assert_eq!(history.iter().map(|t| t.metadata.step).collect::<Vec<_>>(), [Some(0), Some(-1)]);
//! # Ok::<(), Error>(()) }).unwrap();
//! ```

#![warn(missing_docs)]

mod append;
mod checkpoint;
mod error;
mod header;
mod id;
mod memory;
mod saver;
mod value;
mod version;

#[cfg(feature = "testkit")]
pub mod conformance;

pub use append::{
    append_base, append_diff, append_heads, chain_fetch_bound, has_append_values, mark_chain_live,
    AppendChains, AppendValue, TAG_APPEND,
};
pub use checkpoint::{
    now_rfc3339, special_write_index, write_index, Checkpoint, CheckpointConfig,
    CheckpointMetadata, CheckpointSource, CheckpointTuple, ListQuery, MetadataFilter, PendingWrite,
    CHECKPOINT_FORMAT_VERSION, ERROR, INTERRUPT, MAX_METADATA_DEPTH, RESERVED_METADATA_KEYS,
    RESUME, SCHEDULED,
};
pub use error::{DataLocation, Error, Result};
pub use header::{decode_header, decode_header_versions, encode_header, HeaderError};
pub use id::new_checkpoint_id;
pub use memory::{InMemorySaver, MemoryStats};
pub use saver::{
    CheckpointSaver, KnownValues, LatestCheckpoint, PruneStrategy, PutRequest, TaskWrites,
    ThreadSummary,
};
pub use value::{
    msgpack_map_entries, put_msgpack_array_header, put_msgpack_map_header, Format, ListFrames,
    TypedValue, ValueCodec, DEFAULT_MAX_VALUE_BYTES, TAG_BYTES, TAG_EMPTY, TAG_JSON, TAG_MSGPACK,
};
pub use version::{ChannelVersion, ChannelVersions};
