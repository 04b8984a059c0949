//! Key names: where each piece of a thread lives in Redis.

use cairn_checkpoint::{Error, Result};

/// Field of a checkpoint hash holding the checkpoint header (JSON, without channel values).
pub(crate) const FIELD_CHECKPOINT: &str = "checkpoint";
/// Field of a checkpoint hash holding the metadata (JSON).
pub(crate) const FIELD_METADATA: &str = "metadata";
/// Field of a checkpoint hash holding the parent checkpoint id (absent for a root).
pub(crate) const FIELD_PARENT: &str = "parent";
/// Field of a checkpoint hash holding the metadata's `run_id` (absent when it has none).
pub(crate) const FIELD_RUN: &str = "run";

/// The names of every key a [`crate::RedisSaver`] uses.
///
/// User-supplied strings (thread ids, namespaces, run ids) appear in key names only
/// hex-encoded, so `:`, `{`, `}`, spaces or any Unicode in them cannot collide with the
/// layout's separators or move a key into another thread's hash tag. Checkpoint ids are
/// appended verbatim as the last component of a key, where no separator can follow them.
///
/// Every key of one thread starts with the hash tag `{<prefix>:<hex thread id>}`, so the
/// whole thread hashes to one Cluster slot. The two global indexes (all threads, threads of
/// a run) are outside any thread's tag.
///
/// ```
/// let keys = cairn_redis::KeyLayout::new("cairn").unwrap();
/// assert_eq!(keys.thread_tag("t:1"), "{cairn:743a31}");
/// assert_eq!(keys.checkpoints_key("t:1", ""), "{cairn:743a31}:cps:");
/// assert_eq!(keys.checkpoint_key("t:1", "sub", "1f0-ab"), "{cairn:743a31}:cp:737562:1f0-ab");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// A layout under `prefix`. The prefix must be non-empty and must not contain `{` or `}`
    /// (it is part of every hash tag).
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(Error::InvalidArgument(format!(
                "Redis key prefix {prefix:?} must be non-empty and contain no '{{' or '}}' \
                 (it is part of each thread's hash tag)"
            )));
        }
        Ok(KeyLayout { prefix })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{<prefix>:<hex thread id>}`: the hash tag every key of the thread starts with.
    pub fn thread_tag(&self, thread_id: &str) -> String {
        format!("{{{}:{}}}", self.prefix, hex(thread_id))
    }

    /// `<prefix>:threads`: set of every thread id with stored data.
    pub fn threads_key(&self) -> String {
        format!("{}:threads", self.prefix)
    }

    /// `<prefix>:run:<hex run id>`: set of thread ids holding checkpoints of the run.
    pub fn run_threads_key(&self, run_id: &str) -> String {
        format!("{}:run:{}", self.prefix, hex(run_id))
    }

    /// `{tag}:keys`: set of every other key of the thread (what `delete_thread` removes).
    pub fn thread_keys_key(&self, thread_id: &str) -> String {
        format!("{}:keys", self.thread_tag(thread_id))
    }

    /// Whether `key` is some thread's key set ([`thread_keys_key`](Self::thread_keys_key)).
    pub fn is_thread_keys_key(key: &str) -> bool {
        key.ends_with("}:keys")
    }

    /// `{tag}:ns`: set of the thread's namespaces.
    pub fn namespaces_key(&self, thread_id: &str) -> String {
        format!("{}:ns", self.thread_tag(thread_id))
    }

    /// `{tag}:runs`: set of the global run keys ([`Self::run_threads_key`]) naming the thread.
    pub fn thread_runs_key(&self, thread_id: &str) -> String {
        format!("{}:runs", self.thread_tag(thread_id))
    }

    /// `{tag}:cps:<hex ns>`: sorted set (all scores 0, ordered by id) of the namespace's
    /// checkpoint ids.
    pub fn checkpoints_key(&self, thread_id: &str, checkpoint_ns: &str) -> String {
        format!("{}:cps:{}", self.thread_tag(thread_id), hex(checkpoint_ns))
    }

    /// `{tag}:b:<hex ns>:<hex channel>:<version>`: one channel value (string key), stored
    /// once per version and shared by every checkpoint of the namespace that refers to it.
    /// `version` is [`cairn_checkpoint::ChannelVersion::to_storage_string`].
    pub fn blob_key(
        &self,
        thread_id: &str,
        checkpoint_ns: &str,
        channel: &str,
        version: &str,
    ) -> String {
        format!(
            "{}{}:{version}",
            self.blob_prefix(thread_id, checkpoint_ns),
            hex(channel)
        )
    }

    /// `{tag}:b:<hex ns>:<hex channel>:`: what every value key of the channel starts with
    /// (the links of an append chain differ only in the version that follows).
    pub(crate) fn blob_channel_prefix(
        &self,
        thread_id: &str,
        checkpoint_ns: &str,
        channel: &str,
    ) -> String {
        self.blob_key(thread_id, checkpoint_ns, channel, "")
    }

    /// The channel prefix ([`Self::blob_channel_prefix`]) of `key`, a value key of the
    /// thread whose hash tag is `tag`; `None` when `key` is not one.
    pub(crate) fn channel_prefix_of(key: &str, tag: &str) -> Option<String> {
        let rest = key.strip_prefix(tag)?;
        // `:b:<hex ns>:<hex channel>:<version>`: hex has no `:`, the version may.
        let mut parts = rest.splitn(5, ':');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(""), Some("b"), Some(ns), Some(channel), Some(_)) => {
                Some(format!("{tag}:b:{ns}:{channel}:"))
            }
            _ => None,
        }
    }

    /// `{tag}:b:<hex ns>:`: what every value key of the namespace starts with.
    pub fn blob_prefix(&self, thread_id: &str, checkpoint_ns: &str) -> String {
        format!("{}:b:{}:", self.thread_tag(thread_id), hex(checkpoint_ns))
    }

    /// `{tag}:cp:<hex ns>:<id>`: hash of one checkpoint: `checkpoint` (header JSON),
    /// `metadata` (JSON), `parent` and `run` (ids, when present).
    pub fn checkpoint_key(&self, thread_id: &str, checkpoint_ns: &str, id: &str) -> String {
        format!(
            "{}:cp:{}:{}",
            self.thread_tag(thread_id),
            hex(checkpoint_ns),
            id
        )
    }

    /// `{tag}:w:<hex ns>:<id>`: hash of one checkpoint's pending writes, field
    /// `<task id length>:<task id><index>`.
    pub fn writes_key(&self, thread_id: &str, checkpoint_ns: &str, id: &str) -> String {
        format!(
            "{}:w:{}:{}",
            self.thread_tag(thread_id),
            hex(checkpoint_ns),
            id
        )
    }

    /// `{tag}:run:<hex run id>`: set of the thread's checkpoints written by the run, member
    /// `<namespace length>:<namespace><checkpoint id>`.
    pub fn run_checkpoints_key(&self, thread_id: &str, run_id: &str) -> String {
        format!("{}:run:{}", self.thread_tag(thread_id), hex(run_id))
    }
}

/// Lowercase hex of the UTF-8 bytes of `s`.
pub(crate) fn hex(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `<byte length of a>:<a><b>`: joins two strings so that neither can be mistaken for the
/// other whatever they contain.
pub(crate) fn join(a: &str, b: &str) -> String {
    format!("{}:{a}{b}", a.len())
}

/// Splits what [`join`] made; `None` when `s` is not of that shape.
pub(crate) fn split(s: &str) -> Option<(&str, &str)> {
    let (len, rest) = s.split_once(':')?;
    let len: usize = len.parse().ok()?;
    if !rest.is_char_boundary(len.min(rest.len())) || len > rest.len() {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_split_roundtrip_awkward_strings() {
        for (a, b) in [
            ("", ""),
            ("a:b", "c"),
            ("3:x", ":"),
            ("ñé{}", "-4"),
            ("x", ""),
        ] {
            let joined = join(a, b);
            assert_eq!(split(&joined), Some((a, b)), "{joined}");
        }
        assert_eq!(split("nonsense"), None);
        assert_eq!(split("9:short"), None);
        assert_eq!(split("1:é"), None, "length inside a character");
    }

    #[test]
    fn value_keys_give_back_their_channel_prefix() {
        let keys = KeyLayout::new("p").unwrap();
        let tag = keys.thread_tag("t");
        for (ns, version) in [
            ("", "1"),
            ("a:b", "00000000000000000000000000000002.0.5"),
            ("x", "v:w"),
        ] {
            let key = keys.blob_key("t", ns, "ch", version);
            assert_eq!(
                KeyLayout::channel_prefix_of(&key, &tag),
                Some(keys.blob_channel_prefix("t", ns, "ch")),
                "{key}"
            );
        }
        assert_eq!(
            KeyLayout::channel_prefix_of(&keys.checkpoint_key("t", "", "1"), &tag),
            None
        );
        assert_eq!(KeyLayout::channel_prefix_of("other", &tag), None);
    }

    #[test]
    fn user_strings_cannot_break_the_layout() {
        let keys = KeyLayout::new("p").unwrap();
        assert_eq!(keys.thread_tag("a}b{"), "{p:617d627b}");
        assert_ne!(
            keys.checkpoint_key("t", "a:b", "c"),
            keys.checkpoint_key("t", "a", "b:c")
        );
        assert!(KeyLayout::new("bad{").is_err());
        assert!(KeyLayout::new("").is_err());
    }
}
