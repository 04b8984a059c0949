//! Typed graph state: one channel per field, each with its own reducer.

use cairn_checkpoint::{ChannelVersion, Result, TypedValue, ValueCodec};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a field combines the values written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReducerKind {
    /// The new value replaces the old one. Two tasks writing the field in the same
    /// super-step is an error ([`crate::GraphError::ConflictingWrites`]), as in LangGraph.
    Replace,
    /// The new items are appended (any `Extend` collection, typically `Vec`).
    Append,
    /// The new entries are merged in, later keys winning (maps: `Extend`).
    Merge,
    /// The new value is added (`AddAssign`).
    Add,
    /// A function of the user's: `fn(&mut T, T)`.
    Custom,
}

/// One field (channel) of a [`State`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    /// The field's name, which is also its channel name in checkpoints.
    pub name: &'static str,
    /// How writes to it are combined.
    pub reducer: ReducerKind,
}

/// A graph's state: a struct whose fields are channels.
///
/// Implement it with `#[derive(State)]` (see the crate docs); the derive generates the
/// partial-update type `<Name>Update` and every method below. Writing it by hand is possible
/// but rarely useful.
///
/// `apply` must apply exactly the fields `written` reports, through their reducers; the
/// runtime relies on it to know which channels changed.
///
/// The update type's setters are named after the fields, so a field may not be named
/// `default`, `clone` or `fmt` (its setter would hide the trait method of that name):
///
/// ```compile_fail
/// use cairn_graph::State;
/// #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
/// struct Settings {
///     default: String,
/// }
/// ```
///
/// and a custom update type name must be one:
///
/// ```compile_fail
/// use cairn_graph::State;
/// #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
/// #[state(update = "Not A Name")]
/// struct Settings {
///     theme: String,
/// }
/// ```
pub trait State: Clone + Default + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// A partial update: the fields a node writes.
    type Update: Clone
        + Default
        + Send
        + Sync
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
        + 'static;

    /// The fields, in declaration order (a field's index is its position here).
    fn fields() -> &'static [FieldInfo];

    /// Bit `i` is set when `update` writes field `i`.
    fn written(update: &Self::Update) -> u64;

    /// Applies `update` through each written field's reducer.
    fn apply(&mut self, update: Self::Update);

    /// Encodes field `index` of this state.
    fn encode_field(&self, index: usize, codec: &ValueCodec) -> Result<TypedValue>;

    /// Replaces field `index` with the decoded `value`.
    fn decode_field(&mut self, index: usize, value: &TypedValue, codec: &ValueCodec) -> Result<()>;

    /// Like [`decode_field`](Self::decode_field), for a value whose first `shared` items are
    /// known to be, byte for byte, the first `shared` items of the stored value `known`'s
    /// field `index` was decoded from (the caller checked, with
    /// [`cairn_checkpoint::ListFrames`]): a `Vec` field with the append reducer clones those
    /// items from `known` instead of decoding them (it is used when `shared` is the value's
    /// whole item count). Every other field is decoded (the default).
    ///
    /// The result must equal what `decode_field` gives. `#[derive(State)]` copies the shared
    /// items with `Clone`, which holds for items whose decoding is a function of their bytes
    /// and whose `Clone` makes an independent copy; an item type that fills fields from a
    /// clock or a random source while decoding (a `#[serde(default = ...)]` id, say), or that
    /// holds shared handles (`Arc<Mutex<_>>`), sees in older snapshots the newer snapshot's
    /// copies. `get_state_history` relies on this.
    fn decode_field_sharing(
        &mut self,
        index: usize,
        value: &TypedValue,
        codec: &ValueCodec,
        known: &Self,
        shared: usize,
    ) -> Result<()> {
        let _ = (known, shared);
        self.decode_field(index, value, codec)
    }

    /// Encodes each field `update` writes, as `(field index, value)`.
    fn encode_update(update: &Self::Update, codec: &ValueCodec)
        -> Result<Vec<(usize, TypedValue)>>;

    /// Sets field `index` of `update` from the decoded `value`.
    fn decode_update_field(
        update: &mut Self::Update,
        index: usize,
        value: &TypedValue,
        codec: &ValueCodec,
    ) -> Result<()>;

    /// For a field stored item by item (an `append` field holding a `Vec`): how many items
    /// it holds. `None` for every other field (the default). The runtime then stores only
    /// the items added since the last saved version, as an append value
    /// ([`cairn_checkpoint::AppendValue`]), so a growing list costs linear storage.
    fn item_count(&self, index: usize) -> Option<usize> {
        let _ = index;
        None
    }

    /// Encodes the items of field `index` from position `from` on as an append value
    /// extending version `base` of the field's channel. `Ok(None)` when the field is not
    /// stored item by item or holds fewer than `from` items (the default).
    fn encode_field_items(
        &self,
        index: usize,
        from: usize,
        base: &ChannelVersion,
        codec: &ValueCodec,
    ) -> Result<Option<TypedValue>> {
        let _ = (index, from, base, codec);
        Ok(None)
    }

    /// The index of the field named `name`.
    fn field_index(name: &str) -> Option<usize> {
        Self::fields().iter().position(|f| f.name == name)
    }
}

/// The reducer functions `#[derive(State)]` calls; usable in custom reducers too.
pub mod reducers {
    use std::ops::AddAssign;

    /// The new value replaces the current one.
    pub fn replace<T>(current: &mut T, new: T) {
        *current = new;
    }

    /// The new items are appended.
    ///
    /// ```
    /// let mut v = vec![1, 2];
    /// cairn_graph::reducers::append(&mut v, vec![3]);
    /// assert_eq!(v, [1, 2, 3]);
    /// ```
    pub fn append<T, I>(current: &mut T, new: T)
    where
        T: Extend<I> + IntoIterator<Item = I>,
    {
        current.extend(new);
    }

    /// The new entries are merged in; for a key present in both, the new value wins.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// let mut m = BTreeMap::from([("a", 1), ("b", 2)]);
    /// cairn_graph::reducers::merge(&mut m, BTreeMap::from([("b", 3), ("c", 4)]));
    /// assert_eq!(m, BTreeMap::from([("a", 1), ("b", 3), ("c", 4)]));
    /// ```
    pub fn merge<T, I>(current: &mut T, new: T)
    where
        T: Extend<I> + IntoIterator<Item = I>,
    {
        current.extend(new);
    }

    /// The new value is added to the current one.
    pub fn add<T: AddAssign>(current: &mut T, new: T) {
        *current += new;
    }
}

/// Items the derive macro's generated code refers to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use cairn_checkpoint::{ChannelVersion, Error, Result, TypedValue, ValueCodec};
    pub use serde;

    /// Reads an update field that is present as written (`Some`), even when its value is
    /// `null`: the update of an `Option` field to `None` (`Some(None)`) is written as `null`,
    /// which serde's own `Option` reading would take for "not written". An absent field is
    /// `None` through `#[serde(default)]`.
    pub fn present<'de, D, T>(deserializer: D) -> core::result::Result<Option<T>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: serde::Deserialize<'de>,
    {
        T::deserialize(deserializer).map(Some)
    }

    /// Wraps a field for the derive's choice of storage: `Vec` fields with the append
    /// reducer are stored item by item ([`ItemByItem`]), every other field whole
    /// ([`Whole`]). The choice is made by method resolution on the concrete field type.
    pub struct Field<'a, T>(pub &'a T);

    /// Storage of a `Vec` field with the append reducer: item by item.
    pub trait ItemByItem {
        /// How many items the field holds.
        fn item_count(&self) -> Option<usize>;
        /// The items from `from` on, as an append value extending `base`.
        fn encode_items(
            &self,
            from: usize,
            base: &cairn_checkpoint::ChannelVersion,
            codec: &ValueCodec,
        ) -> Result<Option<TypedValue>>;
    }

    impl<T: serde::Serialize> ItemByItem for Field<'_, Vec<T>> {
        fn item_count(&self) -> Option<usize> {
            Some(self.0.len())
        }
        fn encode_items(
            &self,
            from: usize,
            base: &cairn_checkpoint::ChannelVersion,
            codec: &ValueCodec,
        ) -> Result<Option<TypedValue>> {
            match self.0.get(from..) {
                Some(items) => codec.encode_append(base, items.iter()).map(Some),
                None => Ok(None),
            }
        }
    }

    /// Storage of any other field: whole.
    pub trait Whole {
        /// `None`: not stored item by item.
        fn item_count(&self) -> Option<usize>;
        /// `None`: not stored item by item.
        fn encode_items(
            &self,
            from: usize,
            base: &cairn_checkpoint::ChannelVersion,
            codec: &ValueCodec,
        ) -> Result<Option<TypedValue>>;
    }

    impl<T> Whole for &Field<'_, T> {
        fn item_count(&self) -> Option<usize> {
            None
        }
        fn encode_items(
            &self,
            _from: usize,
            _base: &cairn_checkpoint::ChannelVersion,
            _codec: &ValueCodec,
        ) -> Result<Option<TypedValue>> {
            Ok(None)
        }
    }

    /// Decoding of a `Vec` field with the append reducer whose items can be cloned: the
    /// items a stored older version shares with a decoded newer one are cloned from it. A
    /// trait of its own, so that the `Clone` bound never changes how a field is stored.
    pub trait ShareItems {
        /// The field's type.
        type Value;
        /// The field's first `count` items, cloned; `None` if it holds fewer.
        fn shared_items(&self, count: usize) -> Option<Self::Value>;
    }

    impl<T: Clone> ShareItems for Field<'_, Vec<T>> {
        type Value = Vec<T>;
        fn shared_items(&self, count: usize) -> Option<Vec<T>> {
            self.0.get(..count).map(<[T]>::to_vec)
        }
    }

    /// Decoding of any other field: always decoded.
    pub trait NoShare {
        /// The field's type.
        type Value;
        /// `None`: decoded as a whole.
        fn shared_items(&self, count: usize) -> Option<Self::Value>;
    }

    impl<T> NoShare for &Field<'_, T> {
        type Value = T;
        fn shared_items(&self, _count: usize) -> Option<T> {
            None
        }
    }

    /// The error for a field index the state does not have.
    pub fn no_such_field(index: usize) -> Error {
        Error::InvalidArgument(format!("the state has no field number {index}"))
    }
}
