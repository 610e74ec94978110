//! A `&str` from bytes that are ASCII, checked as ASCII only.
//!
//! privacy-router's Avro pass checks each string it reads as ASCII first
//! (`<[u8]>::is_ascii`, a word at a time) and as UTF-8 only when it is not.
//! The few strings that the steps after the pass read as `str`s (the
//! event's envelope) were then checked again by `str::from_utf8`, which
//! reads a short string byte by byte up to its first aligned word: about
//! 670 instructions an event, 4–5% of the pass's own. [`from_ascii`] makes
//! the `str` with the ASCII check alone.
//!
//! Sound because every ASCII byte sequence is UTF-8: each byte below 0x80
//! is a UTF-8 character of its own.

/// `bytes` as a `str` if every byte is ASCII; `None` otherwise (the caller
/// then checks it as UTF-8).
#[inline]
pub fn from_ascii(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: every byte is below 0x80, and a sequence of such bytes is
        // UTF-8 (each is a one-byte character).
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        None
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
        assert_eq!(from_ascii(b""), Some(""));
    }
}
