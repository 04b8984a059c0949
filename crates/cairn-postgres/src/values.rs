//! The channel values of a read: which to fetch, how the fetched rows come back (grouped by
//! thread, namespace and channel, append chains included), and turning them into each
//! checkpoint's whole values.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use cairn_checkpoint::{
    chain_fetch_bound, has_append_values, AppendChains, ChannelVersion, CheckpointTuple, Error,
    Result, TypedValue, TAG_APPEND,
};
use tokio_postgres::Row;

use crate::error::{pg_error, BACKEND};

/// `(thread, namespace, channel)` of a group of values.
type GroupName<'a> = (&'a str, &'a str, &'a str);

/// The values a read asks for, as the columns of the values statement
/// ([`Statements::blobs`](crate::schema::Statements::blobs)). Each key belongs to a *group*,
/// its `(thread, namespace, channel)`: the statement returns rows by group number, not by
/// name, and fetches append chains per group.
#[derive(Default)]
pub(crate) struct ValueKeys<'a> {
    pub threads: Vec<&'a str>,
    pub namespaces: Vec<&'a str>,
    pub channels: Vec<&'a str>,
    pub versions: Vec<Cow<'a, str>>,
    /// Whether a chain starting at the key's version can be fetched as the range of
    /// versions up to it ([`chain_fetch_bound`]).
    pub bounded: Vec<bool>,
    /// The key's group number.
    pub groups: Vec<i32>,
    names: Vec<GroupName<'a>>,
    group_of: HashMap<GroupName<'a>, usize>,
    seen: HashSet<(usize, Cow<'a, str>)>,
}

impl<'a> ValueKeys<'a> {
    /// Asks for the value of `channel` at `version` (once, however often it is asked for).
    pub fn add(
        &mut self,
        thread: &'a str,
        ns: &'a str,
        channel: &'a str,
        version: &'a ChannelVersion,
    ) {
        let text = match version {
            ChannelVersion::Str(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(other.to_storage_string()),
        };
        self.add_text(
            thread,
            ns,
            channel,
            text,
            chain_fetch_bound(version).is_some(),
        );
    }

    /// [`add`](Self::add) for a version known by its storage string.
    pub fn add_text(
        &mut self,
        thread: &'a str,
        ns: &'a str,
        channel: &'a str,
        version: Cow<'a, str>,
        bounded: bool,
    ) {
        let Some(group) = self.group_number(thread, ns, channel) else {
            return;
        };
        if !self.seen.insert((group, version.clone())) {
            return;
        }
        self.threads.push(thread);
        self.namespaces.push(ns);
        self.channels.push(channel);
        self.versions.push(version);
        self.bounded.push(bounded);
        // `group_number` keeps group numbers within `i32`.
        self.groups.push(group as i32);
    }

    /// The number of `(thread, ns, channel)`, assigned on first sight; `None` past
    /// `i32::MAX` groups (the statement's group column), which no read reaches.
    fn group_number(&mut self, thread: &'a str, ns: &'a str, channel: &'a str) -> Option<usize> {
        let next = self.names.len();
        if next > i32::MAX as usize {
            return None;
        }
        let group = *self.group_of.entry((thread, ns, channel)).or_insert(next);
        if group == next {
            self.names.push((thread, ns, channel));
        }
        Some(group)
    }

    /// Whether nothing was asked for.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Every group number.
    pub fn all_groups(&self) -> HashSet<usize> {
        (0..self.names.len()).collect()
    }

    /// The channel names of the groups.
    pub fn channel_names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.names.iter().map(|(_, _, channel)| *channel)
    }

    /// The columns of the chains statement for `groups`: each group with the largest of its
    /// versions as the bound when all of them bound a chain range (text order is byte order,
    /// as in the `"C"` collation), none otherwise.
    pub fn chain_request(&self, groups: &HashSet<usize>) -> ChainRequest<'_> {
        let mut bounds: HashMap<usize, Option<&str>> = HashMap::new();
        for ((group, version), bounded) in self.groups.iter().zip(&self.versions).zip(&self.bounded)
        {
            let group = *group as usize;
            if !groups.contains(&group) {
                continue;
            }
            let version = bounded.then_some(version.as_ref());
            bounds
                .entry(group)
                .and_modify(|b| *b = b.zip(version).map(|(x, y)| x.max(y)))
                .or_insert(version);
        }
        let mut request = ChainRequest::default();
        for (group, bound) in bounds {
            let Some(&(thread, ns, channel)) = self.names.get(group) else {
                continue;
            };
            request.threads.push(thread);
            request.namespaces.push(ns);
            request.channels.push(channel);
            request.bounds.push(bound);
            request.groups.push(group as i32);
        }
        request
    }

    /// The bound column: the version itself where it bounds the chain range, else NULL.
    pub fn bounds(&self) -> Vec<Option<&str>> {
        self.versions
            .iter()
            .zip(&self.bounded)
            .map(|(v, bounded)| bounded.then_some(v.as_ref()))
            .collect()
    }
}

/// Groups whose chains to fetch, as the columns of the chains statement
/// ([`Statements::chains`](crate::schema::Statements::chains)).
#[derive(Default)]
pub(crate) struct ChainRequest<'a> {
    pub threads: Vec<&'a str>,
    pub namespaces: Vec<&'a str>,
    pub channels: Vec<&'a str>,
    pub bounds: Vec<Option<&'a str>>,
    pub groups: Vec<i32>,
}

/// The fetched values: per group (as numbered by [`ValueKeys`]), version → stored value.
pub(crate) struct Fetched(Vec<HashMap<String, TypedValue>>);

impl Fetched {
    /// Nothing fetched yet for the groups of `keys`.
    pub fn new(keys: &ValueKeys<'_>) -> Fetched {
        let mut groups: Vec<HashMap<String, TypedValue>> = Vec::new();
        groups.resize_with(keys.names.len(), HashMap::new);
        Fetched(groups)
    }

    /// Adds the rows of a values statement: group number, version, type tag, bytes.
    pub fn add_rows(&mut self, rows: &[Row]) -> Result<()> {
        let read = |e| pg_error("reading a value", e);
        for row in rows {
            let group: i32 = row.try_get(0).map_err(read)?;
            let Some(slot) = usize::try_from(group).ok().and_then(|g| self.0.get_mut(g)) else {
                return Err(Error::Backend {
                    backend: BACKEND,
                    message: format!("the values statement returned unknown group {group}"),
                    source: None,
                });
            };
            let version: String = row.try_get(1).map_err(read)?;
            let type_tag: String = row.try_get(2).map_err(read)?;
            let data: Vec<u8> = row.try_get(3).map_err(read)?;
            slot.insert(version, TypedValue::new(type_tag, data));
        }
        Ok(())
    }

    /// The groups where a fetched value is an append value.
    pub fn append_groups(&self) -> HashSet<usize> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, values)| values.values().any(|v| v.type_tag == TAG_APPEND))
            .map(|(group, _)| group)
            .collect()
    }

    /// The stored value of `channel` at `version` in `thread` and `ns`, if fetched.
    pub fn get(
        &self,
        keys: &ValueKeys<'_>,
        (thread, ns, channel): GroupName<'_>,
        version: &str,
    ) -> Option<&TypedValue> {
        let group = *keys.group_of.get(&(thread, ns, channel))?;
        self.0.get(group)?.get(version)
    }

    /// The checkpoint values of `versions` (channel → version) in `thread` and `ns`: the
    /// fetched ones that are not the empty marker. Groups holding an append value among
    /// them are added to `chained`.
    pub fn values_of<'v>(
        &self,
        keys: &ValueKeys<'_>,
        (thread, ns): (&str, &str),
        versions: impl Iterator<Item = (&'v String, &'v ChannelVersion)>,
        chained: &mut HashSet<usize>,
    ) -> BTreeMap<String, TypedValue> {
        let mut values = BTreeMap::new();
        for (channel, version) in versions {
            let Some(&group) = keys.group_of.get(&(thread, ns, channel.as_str())) else {
                continue;
            };
            let text = match version {
                ChannelVersion::Str(s) => Cow::Borrowed(s.as_str()),
                other => Cow::Owned(other.to_storage_string()),
            };
            let Some(value) = self.0.get(group).and_then(|g| g.get(text.as_ref())) else {
                continue;
            };
            if value.is_empty_marker() {
                continue;
            }
            if value.type_tag == TAG_APPEND {
                chained.insert(group);
            }
            values.insert(channel.clone(), value.clone());
        }
        values
    }

    /// The chains of the `chained` groups, one [`AppendChains`] per thread and namespace,
    /// holding every value fetched for those groups (the range their chains pass through).
    /// The values are moved, not copied.
    pub fn into_chains(self, keys: &ValueKeys<'_>, chained: &HashSet<usize>) -> Chains {
        let mut chains = Chains::default();
        for (group, values) in self.0.into_iter().enumerate() {
            if !chained.contains(&group) {
                continue;
            }
            let Some(&(thread, ns, channel)) = keys.names.get(group) else {
                continue;
            };
            let into = chains
                .0
                .entry(thread.to_owned())
                .or_default()
                .entry(ns.to_owned())
                .or_default();
            for (version, value) in values {
                into.insert(channel, &version, value);
            }
        }
        chains
    }
}

/// Thread → namespace → chains (nested, so that a tuple's names find them without copying).
#[derive(Default)]
pub(crate) struct Chains(HashMap<String, HashMap<String, AppendChains>>);

impl Chains {
    /// The chains of `thread` and `ns` (empty when nothing of theirs was fetched: resolving
    /// then reports the missing links).
    pub fn of(&mut self, thread: &str, ns: &str) -> &mut AppendChains {
        if !self.0.get(thread).is_some_and(|n| n.contains_key(ns)) {
            self.0
                .entry(thread.to_owned())
                .or_default()
                .insert(ns.to_owned(), AppendChains::default());
        }
        self.0
            .get_mut(thread)
            .and_then(|n| n.get_mut(ns))
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Replaces the append values of `tuples` (newest first, as listed) by whole values.
    /// Oldest first, so the whole value of a version is built once and each later
    /// checkpoint adds its own items.
    pub fn resolve(&mut self, tuples: &mut [CheckpointTuple]) -> Result<()> {
        for tuple in tuples.iter_mut().rev() {
            if has_append_values(&tuple.checkpoint) {
                let (thread, ns) = (&tuple.config.thread_id, &tuple.config.checkpoint_ns);
                self.of(thread, ns).resolve_tuple(tuple)?;
            }
        }
        Ok(())
    }
}
