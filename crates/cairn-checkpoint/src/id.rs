//! Checkpoint ids: time-ordered UUIDs whose string order is creation order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::{Timestamp, Uuid};

static LAST_ID: Mutex<u128> = Mutex::new(0);

/// Seed of [`random_u64`], drawn once per process from the OS.
static SEED: OnceLock<u64> = OnceLock::new();
/// Calls of [`random_u64`] so far (each call mixes a distinct counter value).
static DRAWS: AtomicU64 = AtomicU64::new(0);

/// A random-looking 64-bit number without a system call: splitmix64 over a per-process
/// counter seeded once from the OS. Distinct calls in one process never repeat (splitmix64's
/// finalizer is a bijection of distinct inputs), and two processes differ by their seeds.
pub(crate) fn random_u64() -> u64 {
    let seed = *SEED.get_or_init(|| Uuid::new_v4().as_u64_pair().0);
    let n = DRAWS.fetch_add(1, Ordering::Relaxed);
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A new checkpoint id: a version-6 (time-ordered) UUID, as LangGraph uses.
///
/// Ids are strictly increasing within a process, even when many are made in the same clock
/// tick, so sorting ids as strings sorts checkpoints by creation.
///
/// ```
/// let a = cairn_checkpoint::new_checkpoint_id();
/// let b = cairn_checkpoint::new_checkpoint_id();
/// assert!(a < b);
/// assert_eq!(a.len(), 36);
/// ```
pub fn new_checkpoint_id() -> String {
    checkpoint_id_and_time().0
}

/// A new checkpoint id (see [`new_checkpoint_id`]) and the time it holds, for the
/// checkpoint's `ts`: its header then stores `ts` as 0 microseconds after the id. The time is
/// the clock's, or a little later when the id had to step past one made meanwhile (on another
/// thread, or before the clock went back), so `ts` follows id order too.
pub(crate) fn checkpoint_id_and_time() -> (String, SystemTime) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ts = Timestamp::from_unix_time(now.as_secs(), now.subsec_nanos(), 0, 14);
    let node = random_u64().to_be_bytes();
    let candidate = Uuid::new_v6(ts, &[node[0], node[1], node[2], node[3], node[4], node[5]]);
    let mut last = LAST_ID
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let value = if candidate.as_u128() > *last {
        candidate.as_u128()
    } else {
        // Same tick (or the clock went back): step past the last id. Adding one changes only
        // the node bits, so the result is still a well-formed v6 UUID.
        *last + 1
    };
    *last = value;
    drop(last);
    let id = Uuid::from_u128(value);
    // Stepping past an id keeps its time (only node bits change).
    let time = id.get_timestamp().map_or(UNIX_EPOCH + now, |t| {
        let (secs, nanos) = t.to_unix();
        UNIX_EPOCH + std::time::Duration::new(secs, nanos)
    });
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    (id.hyphenated().encode_lower(&mut buf).to_owned(), time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..2000).map(|_| new_checkpoint_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let ids = h.join().expect("thread");
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "ids from one thread increase"
            );
            all.extend(ids);
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "ids are unique");
        let parsed = Uuid::parse_str(&all[0]).expect("valid uuid");
        assert_eq!(parsed.get_version_num(), 6);
    }

    #[test]
    fn random_numbers_do_not_repeat() {
        let mut seen: Vec<u64> = (0..10_000).map(|_| random_u64()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
    }
}
