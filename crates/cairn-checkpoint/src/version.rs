//! Channel versions: how the runtime knows which channels changed since a node last ran.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The version of one channel's value.
///
/// LangGraph uses plain integers in some savers and zero-padded strings such as
/// `"00000000000000000000000000000003.0.7329"` in others; both are accepted here so threads
/// can move between the two. Versions are ordered by their leading integer first, then by
/// the rest of the string, so `Int(3) < Str("0…04.x")` and two strings with the same counter
/// compare by their suffix.
///
/// ```
/// use cairn_checkpoint::ChannelVersion;
/// let a = ChannelVersion::Int(3);
/// let b = ChannelVersion::Str("00000000000000000000000000000004.0.5".into());
/// assert!(a < b);
/// assert_eq!(b.counter(), 4);
/// assert_eq!(a.next().counter(), 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChannelVersion {
    /// An integer version.
    Int(i64),
    /// A string version whose leading digits (before the first `.`) are the counter.
    Str(String),
}

impl ChannelVersion {
    /// The integer counter of this version (the leading digits of a string version; 0 when a
    /// string has none).
    pub fn counter(&self) -> i64 {
        match self {
            ChannelVersion::Int(n) => *n,
            ChannelVersion::Str(s) => {
                let head = s.split('.').next().unwrap_or("");
                head.parse().unwrap_or(0)
            }
        }
    }

    /// The version after this one, in Cairn's format: a zero-padded counter plus a random
    /// suffix, like LangGraph's. The suffix keeps versions written on different branches of a
    /// thread (after a fork) distinct, so stored channel values are never overwritten by a
    /// branch that reaches the same counter.
    pub fn next(&self) -> ChannelVersion {
        ChannelVersion::first_after(Some(self))
    }

    /// The version that follows `current` (`None`: the channel has no version yet).
    pub fn first_after(current: Option<&ChannelVersion>) -> ChannelVersion {
        let counter = current.map_or(0, ChannelVersion::counter) + 1;
        let suffix = crate::id::random_u64();
        ChannelVersion::Str(format!("{counter:032}.{suffix:016x}"))
    }

    /// The version as a string (integers in decimal), for storage engines that keep text.
    pub fn to_storage_string(&self) -> String {
        match self {
            ChannelVersion::Int(n) => n.to_string(),
            ChannelVersion::Str(s) => s.clone(),
        }
    }
}

impl fmt::Display for ChannelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelVersion::Int(n) => write!(f, "{n}"),
            ChannelVersion::Str(s) => f.write_str(s),
        }
    }
}

impl From<i64> for ChannelVersion {
    fn from(n: i64) -> Self {
        ChannelVersion::Int(n)
    }
}

impl From<&str> for ChannelVersion {
    fn from(s: &str) -> Self {
        ChannelVersion::Str(s.to_owned())
    }
}

impl Ord for ChannelVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.counter()
            .cmp(&other.counter())
            .then_with(|| match (self, other) {
                (ChannelVersion::Int(_), ChannelVersion::Int(_)) => Ordering::Equal,
                (ChannelVersion::Int(_), ChannelVersion::Str(_)) => Ordering::Less,
                (ChannelVersion::Str(_), ChannelVersion::Int(_)) => Ordering::Greater,
                (ChannelVersion::Str(a), ChannelVersion::Str(b)) => a.cmp(b),
            })
    }
}

impl PartialOrd for ChannelVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Channel name → version.
pub type ChannelVersions = BTreeMap<String, ChannelVersion>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_and_strings_order_by_counter() {
        let mut v = [
            ChannelVersion::Str("00000000000000000000000000000002.0.9".into()),
            ChannelVersion::Int(1),
            ChannelVersion::Int(3),
            ChannelVersion::Str("00000000000000000000000000000002.0.1".into()),
        ];
        v.sort();
        assert_eq!(v[0], ChannelVersion::Int(1));
        assert_eq!(v[1].to_string(), "00000000000000000000000000000002.0.1");
        assert_eq!(v[2].to_string(), "00000000000000000000000000000002.0.9");
        assert_eq!(v[3], ChannelVersion::Int(3));
    }

    #[test]
    fn next_versions_increase_and_differ() {
        let a = ChannelVersion::first_after(None);
        let b = a.next();
        let b2 = a.next();
        assert_eq!(a.counter(), 1);
        assert!(b > a);
        assert_eq!(b.counter(), 2);
        assert_ne!(
            b, b2,
            "branches reaching the same counter get distinct versions"
        );
    }

    #[test]
    fn untagged_serde_roundtrip() {
        let json = serde_json::to_string(&vec![ChannelVersion::Int(7), ChannelVersion::from("x")])
            .expect("serialize");
        assert_eq!(json, r#"[7,"x"]"#);
        let back: Vec<ChannelVersion> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back[0], ChannelVersion::Int(7));
    }
}
