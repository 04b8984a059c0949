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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
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
            ChannelVersion::Str(s) => parse_counter(s),
        }
    }

    /// The version after this one, in Cairn's format: a zero-padded counter plus a random
    /// suffix, like LangGraph's. The suffix keeps versions written on different branches of a
    /// thread (after a fork) distinct, so stored channel values are never overwritten by a
    /// branch that reaches the same counter. (The runtime draws one suffix per run, see
    /// [`ChannelVersion::next_in_run`].)
    pub fn next(&self) -> ChannelVersion {
        ChannelVersion::first_after(Some(self))
    }

    /// The version that follows `current` (`None`: the channel has no version yet).
    pub fn first_after(current: Option<&ChannelVersion>) -> ChannelVersion {
        ChannelVersion::next_in_run(current, crate::id::random_u64())
    }

    /// The version that follows `current` in a run whose new versions all carry the suffix
    /// `run_suffix` ([`ChannelVersion::new_run_suffix`], drawn once per run). Within a run
    /// the counter alone keeps versions apart (each step's is above every earlier one), and
    /// a fork is a new run with a suffix of its own, so versions of different branches still
    /// never meet; sharing the suffix lets a stored checkpoint header name it once.
    ///
    /// The suffix must be fresh for every run (take it from
    /// [`new_run_suffix`](ChannelVersion::new_run_suffix), never a constant): savers key stored
    /// values by version, so a suffix used again by a run that forks from an older checkpoint
    /// would give a new value the version of another branch's value, and overwrite it.
    ///
    /// ```
    /// use cairn_checkpoint::ChannelVersion;
    /// let run = ChannelVersion::new_run_suffix();
    /// let a = ChannelVersion::next_in_run(None, run);
    /// let b = ChannelVersion::next_in_run(Some(&a), run);
    /// assert_eq!((a.counter(), b.counter()), (1, 2));
    /// assert_eq!(a.to_storage_string()[33..], b.to_storage_string()[33..]);
    /// ```
    pub fn next_in_run(current: Option<&ChannelVersion>, run_suffix: u64) -> ChannelVersion {
        // Saturating: a counter at i64::MAX (only damaged data holds one; the runtime
        // refuses to go on from such a checkpoint) must not overflow.
        let counter = current.map_or(0, ChannelVersion::counter).saturating_add(1);
        ChannelVersion::Str(format_version(counter, run_suffix))
    }

    /// A random suffix for the versions of one run (see [`ChannelVersion::next_in_run`]).
    pub fn new_run_suffix() -> u64 {
        crate::id::random_u64()
    }

    /// The version as a string (integers in decimal), for storage engines that keep text.
    pub fn to_storage_string(&self) -> String {
        match self {
            ChannelVersion::Int(n) => n.to_string(),
            ChannelVersion::Str(s) => s.clone(),
        }
    }
}

/// An integer or a string, like `#[serde(untagged)]` would read it, without its cost: the
/// derived form buffers each version and, for every string version, builds and formats the
/// error of trying it as an integer first (a third of the instructions of reading a
/// PostgreSQL history, whose headers are JSON).
impl<'de> Deserialize<'de> for ChannelVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ChannelVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a channel version: an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ChannelVersion, E> {
                Ok(ChannelVersion::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ChannelVersion, E> {
                i64::try_from(v).map(ChannelVersion::Int).map_err(|_| {
                    E::invalid_value(serde::de::Unexpected::Unsigned(v), &"an i64 version")
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ChannelVersion, E> {
                Ok(ChannelVersion::Str(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<ChannelVersion, E> {
                Ok(ChannelVersion::Str(v))
            }
            // UTF-8 bytes (MessagePack `bin`) read as a string, as the untagged form did.
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ChannelVersion, E> {
                std::str::from_utf8(v)
                    .map(|s| ChannelVersion::Str(s.to_owned()))
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The leading integer of a string version (the text before the first `.`); 0 when it is
/// not an integer. Same result as `s.split('.').next().parse().unwrap_or(0)`, without the
/// general-purpose parser (versions are compared on every step).
pub(crate) fn parse_counter(s: &str) -> i64 {
    let head = s.split_once('.').map_or(s, |(head, _)| head);
    let digits = head.as_bytes();
    // Short all-digit heads (Cairn's and LangGraph's zero-padded counters) parse directly.
    if !digits.is_empty() && digits.len() <= 40 && digits.iter().all(u8::is_ascii_digit) {
        let significant = &digits[digits.iter().take_while(|d| **d == b'0').count()..];
        if significant.len() <= 18 {
            return significant
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        }
    }
    head.parse().unwrap_or(0)
}

/// `{counter:032}.{suffix:016x}` without the formatting machinery.
impl ChannelVersion {
    /// The counter and random suffix of a string version in the format Cairn writes
    /// (`{counter:032}.{suffix:016x}`, see [`first_after`](Self::first_after)), so that a
    /// storage format can keep it in about 10 bytes instead of 49; `None` for integers and
    /// for any other string, which must be stored as they are.
    ///
    /// ```
    /// use cairn_checkpoint::ChannelVersion;
    /// let v = ChannelVersion::first_after(None);
    /// let (counter, suffix) = v.compact_parts().expect("Cairn's own format");
    /// assert_eq!(counter, 1);
    /// assert_eq!(ChannelVersion::from_compact_parts(counter, suffix), Some(v));
    /// assert_eq!(ChannelVersion::Str("2.0.5".into()).compact_parts(), None);
    /// ```
    pub fn compact_parts(&self) -> Option<(u64, u64)> {
        match self {
            ChannelVersion::Str(s) => ChannelVersion::compact_parts_of(s),
            ChannelVersion::Int(_) => None,
        }
    }

    /// [`compact_parts`](Self::compact_parts) of a version's storage string, without
    /// building a `ChannelVersion` first.
    ///
    /// ```
    /// use cairn_checkpoint::ChannelVersion;
    /// let v = ChannelVersion::first_after(None);
    /// assert_eq!(ChannelVersion::compact_parts_of(&v.to_storage_string()), v.compact_parts());
    /// assert_eq!(ChannelVersion::compact_parts_of("7"), None);
    /// ```
    pub fn compact_parts_of(s: &str) -> Option<(u64, u64)> {
        let b = s.as_bytes();
        if b.len() != 49 || b[32] != b'.' {
            return None;
        }
        // This runs for every version of every stored header. A counter up to i64::MAX has
        // at most 19 digits, so the first 13 of the 32 must be zeros, and 19 digits cannot
        // overflow a u64 (10^19 - 1 < 2^64): no checked arithmetic per digit.
        let (zeros, digits) = b[..32].split_at(13);
        if zeros.iter().any(|&d| d != b'0') {
            return None;
        }
        let mut counter: u64 = 0;
        for &d in digits {
            let digit = d.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            counter = counter * 10 + u64::from(digit);
        }
        if counter > i64::MAX as u64 {
            return None;
        }
        let mut suffix: u64 = 0;
        for &h in &b[33..] {
            let nibble = match h {
                b'0'..=b'9' => h - b'0',
                b'a'..=b'f' => h - b'a' + 10,
                _ => return None,
            };
            suffix = (suffix << 4) | u64::from(nibble);
        }
        Some((counter, suffix))
    }

    /// The string version [`compact_parts`](Self::compact_parts) returned `(counter,
    /// suffix)` for; `None` when `counter` is out of range.
    pub fn from_compact_parts(counter: u64, suffix: u64) -> Option<ChannelVersion> {
        let counter = i64::try_from(counter).ok()?;
        Some(ChannelVersion::Str(format_version(counter, suffix)))
    }
}

fn format_version(counter: i64, suffix: u64) -> String {
    if counter < 0 {
        return format!("{counter:032}.{suffix:016x}");
    }
    let mut out = [b'0'; 32 + 1 + 16];
    let mut n = counter as u64;
    let mut i = 32;
    while n > 0 && i > 0 {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out[32] = b'.';
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (k, byte) in out[33..].iter_mut().enumerate() {
        *byte = HEX[((suffix >> (60 - 4 * k)) & 0xf) as usize];
    }
    // ASCII only: the check passes at once and nothing is replaced.
    String::from_utf8_lossy(&out).into_owned()
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
    fn fast_paths_match_the_general_ones() {
        for counter in [0i64, 1, 9, 10, 12345, i64::MAX, -3] {
            for suffix in [0u64, 1, 0xdead_beef, u64::MAX] {
                assert_eq!(
                    format_version(counter, suffix),
                    format!("{counter:032}.{suffix:016x}")
                );
            }
        }
        for s in [
            "00000000000000000000000000000003.0.7329",
            "3",
            "12.x",
            "",
            ".5",
            "abc",
            "-4.1",
            "+4.1",
            "99999999999999999999.1",
            "9223372036854775807",
            "00000000000000000000000000000000000000000000000007",
        ] {
            let expected: i64 = s.split('.').next().unwrap_or("").parse().unwrap_or(0);
            assert_eq!(parse_counter(s), expected, "{s:?}");
        }
    }

    /// The digit-by-digit parse agrees with the standard parsers on Cairn's form and refuses
    /// everything else.
    #[test]
    fn compact_parts_match_the_standard_parsers() {
        let general = |s: &str| -> Option<(u64, u64)> {
            let b = s.as_bytes();
            if b.len() != 49 || b[32] != b'.' || !b[..32].iter().all(u8::is_ascii_digit) {
                return None;
            }
            if !b[33..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            {
                return None;
            }
            let counter: i64 = s[..32].parse().ok()?;
            Some((
                u64::try_from(counter).ok()?,
                u64::from_str_radix(&s[33..], 16).ok()?,
            ))
        };
        let mut cases: Vec<String> = [0i64, 1, 10, 12345, i64::MAX]
            .into_iter()
            .flat_map(|c| [0u64, 0xdead_beef, u64::MAX].map(|x| format_version(c, x)))
            .collect();
        cases.extend(
            [
                "00000000000000000000000000000001.ABCDEF0123456789",
                "00000000000000000000000000000001.abcdef012345678g",
                "0000000000000000000000000000000x.abcdef0123456789",
                "00000000000000000000000000000001-abcdef0123456789",
                "99999999999999999999999999999999.abcdef0123456789",
                "00000000000009223372036854775808.0000000000000000",
                "00000000000009999999999999999999.0000000000000000",
                "00000000000010000000000000000001.0000000000000000",
                "10000000000000000000000000000001.0000000000000000",
                "0000000000000000000000000000000:.0000000000000000",
                "00000000000000000000000000000003.0.7329",
                "7",
            ]
            .map(String::from),
        );
        for s in &cases {
            assert_eq!(ChannelVersion::compact_parts_of(s), general(s), "{s:?}");
        }
    }

    #[test]
    fn untagged_serde_roundtrip() {
        let json = serde_json::to_string(&vec![ChannelVersion::Int(7), ChannelVersion::from("x")])
            .expect("serialize");
        assert_eq!(json, r#"[7,"x"]"#);
        let back: Vec<ChannelVersion> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, [ChannelVersion::Int(7), ChannelVersion::from("x")]);
        // What the derived untagged form refused stays refused, with a message.
        for bad in ["1.5", "true", "null", "[1]", "{}", "18446744073709551615"] {
            let err = serde_json::from_str::<ChannelVersion>(bad).expect_err(bad);
            assert!(!err.to_string().is_empty(), "{bad}");
        }
        assert_eq!(
            serde_json::from_str::<ChannelVersion>("-3").expect("negative"),
            ChannelVersion::Int(-3)
        );
        // MessagePack, as headers of older SQLite schemas hold them.
        let packed = rmp_serde::to_vec(&back).expect("msgpack");
        let unpacked: Vec<ChannelVersion> = rmp_serde::from_slice(&packed).expect("msgpack");
        assert_eq!(unpacked, back);
        // A MessagePack `bin` of UTF-8 reads as a string version; other bytes are refused.
        let bin = [0xc4, 0x03, b'0', b'.', b'1'];
        let from_bin: ChannelVersion = rmp_serde::from_slice(&bin).expect("bin");
        assert_eq!(from_bin, ChannelVersion::from("0.1"));
        assert!(rmp_serde::from_slice::<ChannelVersion>(&[0xc4, 0x01, 0xff]).is_err());
    }
}
