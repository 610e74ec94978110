//! A `&str` from bytes that are ASCII, checked as ASCII only.
//!
//! privacy-router's Avro pass checks each string it reads as ASCII first
//! ([`is_ascii`], a few words inline for a short string) and as UTF-8 only
//! when it is not. The few strings that the steps after the pass read as
//! `str`s (the event's envelope) were then checked again by
//! `str::from_utf8`, which reads a short string byte by byte up to its
//! first aligned word: about 670 instructions an event, 4–5% of the pass's
//! own. [`from_ascii`] makes the `str` with the ASCII check alone; the JSON
//! pass makes its whole text a `str` with it too.
//!
//! Sound because every ASCII byte sequence is UTF-8: each byte below 0x80
//! is a UTF-8 character of its own.

/// `bytes` as a `str` if every byte is ASCII; `None` otherwise (the caller
/// then checks it as UTF-8).
#[inline(always)]
pub fn from_ascii(bytes: &[u8]) -> Option<&str> {
    if is_ascii(bytes) {
        // SAFETY: every byte is below 0x80, and a sequence of such bytes is
        // UTF-8 (each is a one-byte character).
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        None
    }
}

/// Whether every byte is below 0x80: `<[u8]>::is_ascii`, inline for the
/// short strings most fields hold. The standard library's check is a call
/// that aligns its reads first (a byte at a time up to an aligned word), so
/// a string of a dozen bytes costs it more than its bytes; here a string of
/// up to 64 bytes is read as a few unaligned words, the last of them
/// overlapping the one before, and a longer one goes to the standard
/// library's vectorised loop.
#[inline(always)]
#[must_use]
pub fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let n = bytes.len();
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or([0x80; 8]));
    match n {
        0 => true,
        1..=3 => (bytes[0] | bytes[n / 2] | bytes[n - 1]) < 0x80,
        4..=7 => {
            let half =
                |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or([0x80; 4]));
            (half(0) | half(n - 4)) & 0x8080_8080 == 0
        }
        8..=64 => {
            let acc = bytes.chunks_exact(8).fold(word(n - 8), |acc, w| {
                acc | u64::from_ne_bytes(w.try_into().unwrap_or([0x80; 8]))
            });
            acc & HIGH == 0
        }
        _ => bytes.is_ascii(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_the_same_str_and_anything_else_is_none() {
        let text: Vec<u8> = (0..=0x7f).cycle().take(300).collect();
        for start in 0..20 {
            for end in start..text.len() {
                let b = &text[start..end];
                assert_eq!(from_ascii(b), Some(std::str::from_utf8(b).unwrap()));
                // One byte of 0x80 or above, first or last: none.
                for (at, high) in [(0, 0x80), (b.len().wrapping_sub(1), 0xff)] {
                    if at < b.len() {
                        let mut c = b.to_vec();
                        c[at] = high;
                        assert_eq!(from_ascii(&c), None);
                    }
                }
            }
        }
        assert_eq!(from_ascii("caf\u{e9}".as_bytes()), None);
        // Every length up to past the vectorised threshold, with one high
        // byte at each position: the same answer as the standard library.
        for n in 0..100 {
            let clean = vec![b'a'; n];
            assert!(is_ascii(&clean));
            for at in 0..n {
                for high in [0x80, 0xc3, 0xff] {
                    let mut c = clean.clone();
                    c[at] = high;
                    assert!(!is_ascii(&c), "length {n}, {high:#x} at {at}");
                    assert_eq!(is_ascii(&c), c.is_ascii());
                }
            }
        }
        assert_eq!(from_ascii(b""), Some(""));
    }
}
