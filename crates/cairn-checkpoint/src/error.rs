//! The one error type every saver and codec returns.

use std::fmt;

/// Result alias used throughout Cairn's checkpoint crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a piece of stored data lives, so a corrupt value can be found and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataLocation {
    /// Thread the data belongs to.
    pub thread_id: String,
    /// Checkpoint namespace (`""` for the root graph).
    pub checkpoint_ns: String,
    /// Checkpoint id, when the data belongs to one checkpoint.
    pub checkpoint_id: Option<String>,
    /// Channel name, when the data is one channel's value or one pending write.
    pub channel: Option<String>,
}

impl fmt::Display for DataLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "thread {:?}", self.thread_id)?;
        if !self.checkpoint_ns.is_empty() {
            write!(f, ", namespace {:?}", self.checkpoint_ns)?;
        }
        if let Some(id) = &self.checkpoint_id {
            write!(f, ", checkpoint {id}")?;
        }
        if let Some(channel) = &self.channel {
            write!(f, ", channel {channel:?}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong while storing or loading checkpoints.
///
/// Callers can match on the variants: a [`Error::Corrupt`] value means the stored bytes are
/// damaged (the rest of the thread stays readable), [`Error::Backend`] means the storage engine
/// failed (often transient: retry), [`Error::InvalidArgument`] means the call itself was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value is larger than the codec's configured limit.
    #[error(
        "value of {size} bytes exceeds the limit of {limit} bytes; \
         store less in the state or raise the limit with ValueCodec::with_max_value_bytes"
    )]
    ValueTooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A value could not be encoded.
    #[error("could not encode a value as {format}: {message}")]
    Encode {
        /// The format that was asked for (`msgpack`, `json`).
        format: &'static str,
        /// What the encoder reported.
        message: String,
    },

    /// A value could not be decoded into the requested type.
    #[error("could not decode a {type_tag:?} value: {message}")]
    Decode {
        /// The envelope's type tag.
        type_tag: String,
        /// What the decoder reported.
        message: String,
    },

    /// Stored data is damaged or unreadable. Says where, so it can be inspected or deleted.
    #[error("corrupt data in {location}: {reason}; inspect or delete this checkpoint (the rest of the thread is unaffected)")]
    Corrupt {
        /// Where the damaged data is.
        location: DataLocation,
        /// What was wrong with it.
        reason: String,
    },

    /// The caller passed something the saver cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The storage engine failed (I/O, connection, SQL error, ...).
    #[error("{backend} error: {message}")]
    Backend {
        /// Which backend (`sqlite`, `postgres`, `redis`, ...).
        backend: &'static str,
        /// Human-readable summary, including what to do when it is known.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// Builds a [`Error::Backend`] from any driver error.
    pub fn backend<E>(backend: &'static str, context: impl fmt::Display, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error::Backend {
            backend,
            message: format!("{context}: {source}"),
            source: Some(Box::new(source)),
        }
    }

    /// Builds a [`Error::Corrupt`].
    pub fn corrupt(location: DataLocation, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            location,
            reason: reason.into(),
        }
    }
}
