//! Unsigned LEB128 numbers and length-prefixed byte strings, for the compact blobs Cairn
//! stores (`stored_metadata.rs`, `packed_writes.rs`). Reading refuses truncated input and
//! numbers past 64 bits instead of panicking or wrapping.

/// Appends `n` as unsigned LEB128 (seven bits per byte, low bits first).
pub(crate) fn put(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads an unsigned LEB128 number from the front of `rest`, advancing it. `what` names the
/// blob in the error.
pub(crate) fn take(rest: &mut &[u8], what: &str) -> Result<u64, String> {
    let mut n: u64 = 0;
    let mut shift = 0;
    loop {
        let (&byte, tail) = rest
            .split_first()
            .ok_or_else(|| format!("{what} ends inside a number"))?;
        *rest = tail;
        if shift == 63 && byte > 1 {
            return Err(format!("a number in {what} is larger than 64 bits"));
        }
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(n);
        }
        shift += 7;
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
        for n in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put(&mut out, n);
            let mut rest = out.as_slice();
            assert_eq!(take(&mut rest, "x"), Ok(n));
            assert!(rest.is_empty());
        }
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
