//! Unsigned LEB128 numbers and length-prefixed byte strings, for the compact blobs Cairn
//! stores (`stored_metadata.rs`, `packed_writes.rs`). Reading refuses truncated input and
//! numbers past 64 bits instead of panicking or wrapping.

/// Appends `n` as unsigned LEB128 (seven bits per byte, low bits first).
pub(crate) fn put(out: &mut impl bytes::BufMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

/// The number at the start of `bytes` and how many bytes it took; `None` when it is cut
/// short or above `u64::MAX`.
pub(crate) fn read(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        n |= part << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// Reads an unsigned LEB128 number from the front of `rest`, advancing it. `what` names the
/// blob in the error.
pub(crate) fn take(rest: &mut &[u8], what: &str) -> Result<u64, String> {
    match read(rest) {
        Some((n, used)) => {
            *rest = &rest[used..];
            Ok(n)
        }
        // Ten bytes hold any u64: a number not done by then is too large, not cut short.
        None if rest.len() >= 10 => Err(format!("a number in {what} is larger than 64 bits")),
        None => Err(format!("{what} ends inside a number")),
    }
}

/// Appends `bytes` after their length.
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads bytes [`put_bytes`] wrote from the front of `rest`, advancing it.
pub(crate) fn take_bytes<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a [u8], String> {
    let len = take(rest, what)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= rest.len())
        .ok_or_else(|| format!("{what} ends inside a string of {len} bytes"))?;
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Ok(bytes)
}

/// Reads a UTF-8 string [`put_bytes`] wrote.
pub(crate) fn take_str(rest: &mut &[u8], what: &str) -> Result<String, String> {
    let bytes = take_bytes(rest, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("a string in {what} is not UTF-8"))
}

/// `n` mapped so that small magnitudes of either sign take few bytes (−1 → 1, 1 → 2).
pub(crate) fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub(crate) fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_round_trip_and_damage_is_an_error() {
        for n in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = bytes::BytesMut::new();
            put(&mut out, n);
            assert_eq!(read(&out), Some((n, out.len())), "{n}");
            let mut rest = &out[..];
            assert_eq!(take(&mut rest, "x"), Ok(n));
            assert!(rest.is_empty());
        }
        let mut one = Vec::new();
        put(&mut one, 100);
        assert_eq!(one.len(), 1);
        for n in [0, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(n)), n);
        }
        assert_eq!(zigzag(-1), 1);
        let mut out = Vec::new();
        put_bytes(&mut out, "é".as_bytes());
        assert_eq!(take_str(&mut out.as_slice(), "x"), Ok("é".to_owned()));

        let past_64_bits = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(take(&mut &past_64_bits[..], "x")
            .unwrap_err()
            .contains("larger than 64 bits"));
        assert!(take(&mut &[0x80][..], "x")
            .unwrap_err()
            .contains("ends inside a number"));
        assert!(take_bytes(&mut &[0x05, b'a'][..], "x")
            .unwrap_err()
            .contains("ends inside a string"));
        assert!(take_str(&mut &[0x01, 0xff][..], "x")
            .unwrap_err()
            .contains("not UTF-8"));
    }
}
