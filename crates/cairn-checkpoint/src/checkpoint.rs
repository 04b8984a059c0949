//! The checkpoint data model, shaped like LangGraph's so threads can move between the two.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{DataLocation, Error, Result};
use crate::value::{TypedValue, ValueCodec};
use crate::version::ChannelVersions;

/// Format version of [`Checkpoint`] (LangGraph's current `v`).
pub const CHECKPOINT_FORMAT_VERSION: u32 = 4;

/// A snapshot of every channel of a graph at the end of a super-step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version ([`CHECKPOINT_FORMAT_VERSION`]).
    pub v: u32,
    /// Time-ordered unique id (see [`new_checkpoint_id`](crate::new_checkpoint_id)).
    pub id: String,
    /// Creation time, RFC 3339 in UTC.
    pub ts: String,
    /// Channel name → value. On `put`, savers store only the channels named in `new_versions`;
    /// on read, every channel listed in `channel_versions` is filled from stored values.
    #[serde(default)]
    pub channel_values: BTreeMap<String, TypedValue>,
    /// Channel name → current version.
    #[serde(default)]
    pub channel_versions: ChannelVersions,
    /// Node name → channel name → the version that node last saw.
    #[serde(default)]
    pub versions_seen: BTreeMap<String, ChannelVersions>,
    /// Channels updated in the step that made this checkpoint.
    #[serde(default)]
    pub updated_channels: Option<Vec<String>>,
}

impl Checkpoint {
    /// An empty checkpoint with a fresh id and the current time.
    pub fn new() -> Self {
        let (id, ts) = id_and_ts();
        Checkpoint {
            v: CHECKPOINT_FORMAT_VERSION,
            id,
            ts,
            channel_values: BTreeMap::new(),
            channel_versions: ChannelVersions::new(),
            versions_seen: BTreeMap::new(),
            updated_channels: None,
        }
    }

    /// A copy of this checkpoint with a new id and timestamp (the next checkpoint of a thread
    /// starts as a copy of the last one).
    pub fn successor(&self) -> Self {
        let (id, ts) = id_and_ts();
        Checkpoint {
            id,
            ts,
            ..self.clone()
        }
    }
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint::new()
    }
}

/// A new checkpoint id and its `ts`: the time the id holds.
fn id_and_ts() -> (String, String) {
    let (id, time) = crate::id::checkpoint_id_and_time();
    (id, rfc3339_micros(time))
}

/// The current time as RFC 3339 (UTC, microseconds).
pub fn now_rfc3339() -> String {
    rfc3339_micros(std::time::SystemTime::now())
}

/// `time` as RFC 3339 with microseconds, like `humantime::format_rfc3339_micros`, with the
/// date and time of day formatted once per second per thread (every checkpoint needs one).
fn rfc3339_micros(time: std::time::SystemTime) -> String {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};
    thread_local! {
        /// (unix second, `YYYY-MM-DDTHH:MM:SS` of that second).
        static PREFIX: RefCell<Option<(u64, String)>> = const { RefCell::new(None) };
    }
    let Ok(since) = time.duration_since(UNIX_EPOCH) else {
        return humantime::format_rfc3339_micros(time).to_string();
    };
    let secs = since.as_secs();
    PREFIX.with(|prefix| {
        let mut prefix = prefix.borrow_mut();
        if prefix.as_ref().is_none_or(|(s, _)| *s != secs) {
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                .to_string();
            *prefix = Some((secs, whole.trim_end_matches('Z').to_owned()));
        }
        let head = prefix.as_ref().map_or("", |(_, p)| p.as_str());
        let mut out = String::with_capacity(head.len() + 8);
        out.push_str(head);
        out.push('.');
        let micros = since.subsec_micros();
        for div in [100_000, 10_000, 1_000, 100, 10, 1] {
            out.push(char::from(b'0' + ((micros / div) % 10) as u8));
        }
        out.push('Z');
        out
    })
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointSource {
    /// The input of an invocation was applied (step -1 of a new run).
    Input,
    /// A super-step of the Pregel loop ran.
    Loop,
    /// The state was changed with `update_state`.
    Update,
    /// The checkpoint was copied from another one.
    Fork,
}

impl CheckpointSource {
    /// The lowercase name LangGraph uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointSource::Input => "input",
            CheckpointSource::Loop => "loop",
            CheckpointSource::Update => "update",
            CheckpointSource::Fork => "fork",
        }
    }
}

/// What is known about a checkpoint besides its channels. Listing filters on these keys.
///
/// ```
/// use cairn_checkpoint::{CheckpointMetadata, CheckpointSource};
/// let meta = CheckpointMetadata::new(CheckpointSource::Loop, 3)
///     .with_run_id("run-1")
///     .with("user", "ada");
/// let filter = [("user".to_string(), serde_json::json!("ada"))].into();
/// assert!(meta.matches(&filter));
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// Why the checkpoint was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<CheckpointSource>,
    /// Super-step number: -1 for the input checkpoint, 0, 1, ... for loop steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    /// Namespace → checkpoint id of the parent graphs' checkpoints (subgraphs).
    #[serde(default)]
    pub parents: BTreeMap<String, String>,
    /// The run that wrote this checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The caller's own keys.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// How deep a caller's metadata value may nest arrays and objects (see
/// [`CheckpointMetadata::check_nesting`]): a margin below the 128 levels JSON parsers read.
pub const MAX_METADATA_DEPTH: usize = 100;

/// Names of [`CheckpointMetadata`]'s own fields: stored metadata is one JSON object, so a caller
/// key with one of these names would collide with the field (see [`CheckpointMetadata::check`]).
pub const RESERVED_METADATA_KEYS: [&str; 4] = ["source", "step", "parents", "run_id"];

/// Equality filter on metadata keys: every key must be present with an equal value.
pub type MetadataFilter = BTreeMap<String, serde_json::Value>;

impl CheckpointMetadata {
    /// Metadata with a source and step.
    pub fn new(source: CheckpointSource, step: i64) -> Self {
        CheckpointMetadata {
            source: Some(source),
            step: Some(step),
            ..CheckpointMetadata::default()
        }
    }

    /// Sets the run id.
    pub fn with_run_id(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }

    /// Adds a caller key.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The metadata as one JSON object (the shape stored and filtered on).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            // A struct of strings, numbers and JSON values always serializes to an object.
            _ => serde_json::Map::new(),
        }
    }

    /// Refuses metadata a store could keep but never read back: a caller's value nesting
    /// arrays and objects more than [`MAX_METADATA_DEPTH`] levels deep (JSON parsers,
    /// serde_json's among them, stop at 128). Savers that store metadata as JSON call it
    /// before storing, so a bad value fails its `put` instead of making the checkpoint
    /// unreadable.
    ///
    /// ```
    /// use cairn_checkpoint::{CheckpointMetadata, CheckpointSource};
    /// let mut deep = serde_json::json!(1);
    /// for _ in 0..150 {
    ///     deep = serde_json::json!([deep]);
    /// }
    /// let metadata = CheckpointMetadata::new(CheckpointSource::Loop, 1).with("deep", deep);
    /// assert!(metadata.check_nesting().is_err());
    /// ```
    pub fn check_nesting(&self) -> Result<()> {
        fn depth(value: &serde_json::Value) -> usize {
            match value {
                serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        match self
            .extra
            .iter()
            .find(|(_, value)| depth(value) > MAX_METADATA_DEPTH)
        {
            None => Ok(()),
            Some((key, _)) => Err(Error::Encode {
                format: "json",
                message: format!(
                    "the checkpoint metadata key {key:?} nests more than {MAX_METADATA_DEPTH} \
                     levels of arrays and objects (the limit keeps a margin below the 128 \
                     levels JSON parsers read back): flatten it"
                ),
            }),
        }
    }

    /// Refuses metadata a store could not keep as it is: values nested too deep (see
    /// [`check_nesting`](Self::check_nesting)), and caller keys named like a field
    /// ([`RESERVED_METADATA_KEYS`]), which stored as one JSON object would collide with it
    /// (read back as the field, or not at all). One exception, LangGraph's form: a caller key
    /// `run_id` holding a string is the run id when the field is unset or equal to it
    /// ([`normalized`](Self::normalized) moves it there). Every saver calls it (through
    /// `normalized`) before storing.
    ///
    /// ```
    /// use cairn_checkpoint::{CheckpointMetadata, CheckpointSource};
    /// let meta = CheckpointMetadata::new(CheckpointSource::Loop, 1);
    /// assert!(meta.clone().with("source", "slack").check().is_err());
    /// assert!(meta.clone().with_run_id("a").with("run_id", "b").check().is_err());
    /// let langgraph_form = meta.with("run_id", "r");
    /// assert!(langgraph_form.check().is_ok());
    /// assert_eq!(langgraph_form.normalized().unwrap().run_id.as_deref(), Some("r"));
    /// ```
    pub fn check(&self) -> Result<()> {
        self.check_nesting()?;
        for key in RESERVED_METADATA_KEYS {
            let Some(value) = self.extra.get(key) else {
                continue;
            };
            if key == "run_id" {
                if let serde_json::Value::String(named) = value {
                    if self.run_id.as_ref().is_none_or(|run_id| run_id == named) {
                        continue;
                    }
                }
            }
            return Err(Error::InvalidArgument(format!(
                "the checkpoint metadata holds a key of its own named {key:?} ({value}), a \
                 name reserved for its fields ({}); rename the key{}",
                RESERVED_METADATA_KEYS.join(", "),
                if key == "run_id" {
                    " (a run id goes in the run_id field, e.g. RunConfig::with_run_id)"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    }

    /// The metadata as savers store it: [`check`](Self::check)ed, and a caller key `run_id`
    /// (LangGraph's form) moved to the run id, so every saver reads it back the same way and
    /// `delete_for_runs` finds it.
    pub fn normalized(&self) -> Result<std::borrow::Cow<'_, CheckpointMetadata>> {
        self.check()?;
        if !matches!(self.extra.get("run_id"), Some(serde_json::Value::String(_))) {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        self.clone().into_normalized().map(std::borrow::Cow::Owned)
    }

    /// [`normalized`](Self::normalized), taking the metadata (no copy when it is already
    /// in its stored form).
    pub fn into_normalized(mut self) -> Result<CheckpointMetadata> {
        self.check()?;
        if let Some(serde_json::Value::String(run_id)) = self.extra.remove("run_id") {
            self.run_id = Some(run_id);
        }
        Ok(self)
    }

    /// Whether every `(key, value)` of `filter` is present and equal in this metadata
    /// (numbers by value: `1` equals `1.0`).
    pub fn matches(&self, filter: &MetadataFilter) -> bool {
        if filter.is_empty() {
            return true;
        }
        let json = self.to_json();
        filter
            .iter()
            .all(|(k, v)| json.get(k).is_some_and(|have| json_equal(have, v)))
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`), as the SQL backends'
/// filters compare them (PostgreSQL's `jsonb`, SQLite's `json_extract`).
fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let int = |n: &serde_json::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            match (int(x), int(y)) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Which checkpoint a call is about.
///
/// `checkpoint_ns` is `""` for the root graph; `checkpoint_id: None` means the latest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CheckpointConfig {
    /// The conversation / run this checkpoint belongs to.
    pub thread_id: String,
    /// Namespace: `""` for the root graph, `node:task_id` (nested with `|`) for subgraphs.
    #[serde(default)]
    pub checkpoint_ns: String,
    /// A specific checkpoint; `None` for the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<String>,
}

impl CheckpointConfig {
    /// The latest checkpoint of `thread_id` in the root namespace.
    pub fn thread(thread_id: impl Into<String>) -> Self {
        CheckpointConfig {
            thread_id: thread_id.into(),
            checkpoint_ns: String::new(),
            checkpoint_id: None,
        }
    }

    /// The same config in namespace `ns`.
    pub fn with_ns(mut self, ns: impl Into<String>) -> Self {
        self.checkpoint_ns = ns.into();
        self
    }

    /// The same config pointing at checkpoint `id`.
    pub fn with_checkpoint_id(mut self, id: impl Into<String>) -> Self {
        self.checkpoint_id = Some(id.into());
        self
    }
}

/// What to list: all fields are optional and combine with AND.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListQuery {
    /// Only this thread (`None`: all threads).
    pub thread_id: Option<String>,
    /// Only this namespace (`None`: all namespaces).
    pub checkpoint_ns: Option<String>,
    /// Only this checkpoint.
    pub checkpoint_id: Option<String>,
    /// Metadata equality filter.
    pub filter: MetadataFilter,
    /// Only checkpoints whose id is smaller than this one (strictly older).
    pub before: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

impl ListQuery {
    /// Every checkpoint of every thread.
    pub fn all() -> Self {
        ListQuery::default()
    }

    /// The checkpoints of one thread, in every namespace.
    pub fn thread(thread_id: impl Into<String>) -> Self {
        ListQuery {
            thread_id: Some(thread_id.into()),
            ..ListQuery::default()
        }
    }

    /// The checkpoints matching a config: its thread, its namespace and, if set, its id.
    pub fn from_config(config: &CheckpointConfig) -> Self {
        ListQuery {
            thread_id: Some(config.thread_id.clone()),
            checkpoint_ns: Some(config.checkpoint_ns.clone()),
            checkpoint_id: config.checkpoint_id.clone(),
            ..ListQuery::default()
        }
    }

    /// Restricts to namespace `ns`.
    pub fn ns(mut self, ns: impl Into<String>) -> Self {
        self.checkpoint_ns = Some(ns.into());
        self
    }

    /// Adds a metadata equality condition. Numbers compare by value (`1` matches `1.0`), on
    /// every saver.
    pub fn filter(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.filter.insert(key.into(), value.into());
        self
    }

    /// Only checkpoints older than `checkpoint_id`.
    pub fn before(mut self, checkpoint_id: impl Into<String>) -> Self {
        self.before = Some(checkpoint_id.into());
        self
    }

    /// At most `limit` results.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// Channel of a write recording a task's error.
pub const ERROR: &str = "__error__";
/// Channel of a write recording a scheduled task.
pub const SCHEDULED: &str = "__scheduled__";
/// Channel of a write recording an interrupt.
pub const INTERRUPT: &str = "__interrupt__";
/// Channel of a write recording a resume value.
pub const RESUME: &str = "__resume__";

/// The fixed write index of a special channel, as LangGraph's `WRITES_IDX_MAP`; `None` for a
/// regular channel (whose index is its position in the `put_writes` call).
pub fn special_write_index(channel: &str) -> Option<i64> {
    match channel {
        ERROR => Some(-1),
        SCHEDULED => Some(-2),
        INTERRUPT => Some(-3),
        RESUME => Some(-4),
        _ => None,
    }
}

/// The index a write is stored under: the special index for special channels, else its
/// position within its `put_writes` call.
pub fn write_index(channel: &str, position: usize) -> i64 {
    special_write_index(channel).unwrap_or(position as i64)
}

/// A write a task made, saved before the step's checkpoint exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingWrite {
    /// The task that made the write.
    pub task_id: String,
    /// The channel written.
    pub channel: String,
    /// The value written.
    pub value: TypedValue,
    /// The task's path (LangGraph's `task_path`), `""` when unknown.
    #[serde(default)]
    pub task_path: String,
}

/// A checkpoint as read back: config, checkpoint, metadata, parent and pending writes.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointTuple {
    /// Config naming exactly this checkpoint (thread, namespace and id).
    pub config: CheckpointConfig,
    /// The checkpoint, with `channel_values` filled.
    pub checkpoint: Checkpoint,
    /// Its metadata.
    pub metadata: CheckpointMetadata,
    /// Config naming the previous checkpoint of the same thread and namespace, if any.
    pub parent_config: Option<CheckpointConfig>,
    /// Writes saved against this checkpoint, ordered by task path, task id, then write index.
    pub pending_writes: Vec<PendingWrite>,
}

impl CheckpointTuple {
    /// Decodes one channel's value, naming thread, checkpoint and channel if it is corrupt.
    /// `Ok(None)` when the channel has no value in this checkpoint.
    pub fn channel_value<T: serde::de::DeserializeOwned>(
        &self,
        codec: &ValueCodec,
        channel: &str,
    ) -> Result<Option<T>> {
        let Some(value) = self.checkpoint.channel_values.get(channel) else {
            return Ok(None);
        };
        codec.decode(value).map(Some).map_err(|e| match e {
            Error::Decode { message, type_tag } => Error::corrupt(
                self.location(Some(channel)),
                format!("cannot decode the {type_tag:?} value: {message}"),
            ),
            other => other,
        })
    }

    /// Where this checkpoint lives, for error messages.
    pub fn location(&self, channel: Option<&str>) -> DataLocation {
        DataLocation {
            thread_id: self.config.thread_id.clone(),
            checkpoint_ns: self.config.checkpoint_ns.clone(),
            checkpoint_id: Some(self.checkpoint.id.clone()),
            channel: channel.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_match_humantime() {
        let mut t = UNIX_EPOCH + Duration::from_micros(1_764_148_609_123_456);
        for step in [
            0u64,
            1,
            999_999,
            1_000_000,
            86_399_000_001,
            31_536_000_000_007,
        ] {
            t += Duration::from_micros(step);
            assert_eq!(
                super::rfc3339_micros(t),
                humantime::format_rfc3339_micros(t).to_string()
            );
        }
        let epoch = UNIX_EPOCH;
        assert_eq!(
            super::rfc3339_micros(epoch),
            humantime::format_rfc3339_micros(epoch).to_string()
        );
        assert!(super::now_rfc3339().ends_with('Z'));
    }
}
