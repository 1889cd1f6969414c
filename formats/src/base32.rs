//! Nix base32, the encoding of store path hash parts and of `nix-base32` hashes.
//!
//! The alphabet omits `e o u t`, and the bit order is the Nix one: the byte string is read as a
//! little-endian bit stream and the most significant 5-bit group is printed first.

use thiserror::Error;

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A string that is not the Nix base32 form of some bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Base32Error {
    #[error("invalid base32 character `{0}'")]
    InvalidChar(char),
    #[error("base32 string of length {0} does not encode a whole number of bytes")]
    BadLength(usize),
}

/// Length of the encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n * 8 - 1) / 5 + 1
    }
}

/// Number of bytes a base32 string of `len` characters decodes to.
pub const fn decoded_len(len: usize) -> usize {
    len * 5 / 8
}

/// Digit values by byte, `NOT_A_DIGIT` for bytes outside the alphabet (store paths are
/// parsed for every row a query returns, so this is a table, not a search).
const DIGIT_VALUES: [u8; 256] = {
    let mut t = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};
const NOT_A_DIGIT: u8 = 0xff;

/// Value of one digit, if it is one.
pub fn digit_value(c: u8) -> Option<u8> {
    match DIGIT_VALUES[usize::from(c)] {
        NOT_A_DIGIT => None,
        v => Some(v),
    }
}

/// Encodes `bytes` in Nix base32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let mut c = bytes[i] >> j;
        if i + 1 < bytes.len() && j != 0 {
            c |= bytes[i + 1] << (8 - j);
        }
        out.push(ALPHABET[(c & 0x1f) as usize] as char);
    }
    out
}

/// Decodes a Nix base32 string; rejects characters outside the alphabet and encodings whose
/// unused high bits are not zero (so every byte string has exactly one accepted encoding).
pub fn decode(s: &str) -> Result<Vec<u8>, Base32Error> {
    let input = s.as_bytes();
    let size = decoded_len(input.len());
    if encoded_len(size) != input.len() {
        return Err(Base32Error::BadLength(input.len()));
    }
    let mut out = vec![0u8; size];
    for (n, &ch) in input.iter().rev().enumerate() {
        let digit = digit_value(ch).ok_or(Base32Error::InvalidChar(ch as char))?;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= digit << j;
        let carry = if j == 0 { 0 } else { (u16::from(digit) >> (8 - j)) as u8 };
        if i + 1 < size {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(Base32Error::InvalidChar(ch as char));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digit_table_matches_the_alphabet() {
        for c in 0..=255u8 {
            let want = ALPHABET.iter().position(|&a| a == c).map(|p| p as u8);
            assert_eq!(digit_value(c), want, "byte {c}");
        }
    }

    #[test]
    fn known_answers() {
        // SHA-256 of "" printed by `guix hash` style nix-base32.
        let sha256_empty =
            crate::hash::base16_decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
        assert_eq!(encode(&sha256_empty), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(decode("e").is_err());
        assert!(decode("0e").is_err());
        // "zz" would need 10 bits of which only 8 fit.
        assert!(decode("zz").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,80}") {
            let _ = decode(&s);
        }
    }
}
